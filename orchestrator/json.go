package orchestrator

import (
	"bytes"
	"encoding/json"
	"errors"

	"github.com/sealflow/sealflow/party"
)

// strictJSON decodes data into v, refusing unknown fields and trailing data.
func strictJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// Identity is a party identity in a statement body: it decodes with
// party.ParseIdentity (strict, and checks the "id" field it carries).
type Identity struct{ *party.Identity }

// UnmarshalJSON implements json.Unmarshaler.
func (i *Identity) UnmarshalJSON(b []byte) error {
	id, err := party.ParseIdentity(b)
	if err != nil {
		return err
	}
	i.Identity = id
	return nil
}

// MarshalJSON implements json.Marshaler.
func (i Identity) MarshalJSON() ([]byte, error) {
	if i.Identity == nil {
		return []byte("null"), nil
	}
	return i.Identity.MarshalJSON()
}
