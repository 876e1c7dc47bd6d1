// Package party holds the identities of the parties of sealflow (data owners,
// service providers, the infrastructure operator, output recipients, workers
// and the orchestrator) and the signed statements they exchange.
//
// A party's KeyFile holds an Ed25519 signing key and an HPKE private key; its
// Identity is the public part, named by ID, the SHA-256 of the signing key.
// Every governance action is a Statement signed by its issuer (Sign) and
// checked by Verify, then by a ReplayGuard, before anything acts on it.
package party

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sealflow/sealflow/seal"
)

// Role is what a party is to sealflow.
type Role string

// The roles.
const (
	RoleOwner        Role = "owner"        // a data owner: registers and seals streams, sets policies
	RoleProvider     Role = "provider"     // a service provider: deploys services
	RoleOperator     Role = "operator"     // the infrastructure operator: offers nodes and claims their location
	RoleRecipient    Role = "recipient"    // a recipient of output streams
	RoleWorker       Role = "worker"       // a worker node, keys generated inside its TEE
	RoleOrchestrator Role = "orchestrator" // the orchestrator, keys generated inside its TEE
)

// Roles returns every role.
func Roles() []Role {
	return []Role{RoleOwner, RoleProvider, RoleOperator, RoleRecipient, RoleWorker, RoleOrchestrator}
}

// Valid reports whether r is one of the roles.
func (r Role) Valid() bool {
	for _, v := range Roles() {
		if r == v {
			return true
		}
	}
	return false
}

// ID names a party: the lowercase hex SHA-256 of its Ed25519 signing public key.
type ID string

// IDOf returns the ID of a signing public key.
func IDOf(signingKey ed25519.PublicKey) ID {
	sum := sha256.Sum256(signingKey)
	return ID(hex.EncodeToString(sum[:]))
}

// Short returns the first 12 hex digits of id, for display.
func (id ID) Short() string {
	if len(id) > 12 {
		return string(id[:12])
	}
	return string(id)
}

// Valid reports whether id is 64 lowercase hex digits.
func (id ID) Valid() bool {
	if len(id) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// MaxName is the longest party name, in bytes.
const MaxName = 128

func checkName(name string) error {
	if name == "" || len(name) > MaxName || !utf8.ValidString(name) {
		return fmt.Errorf("party: name %q must be 1 to %d bytes of UTF-8", name, MaxName)
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("party: name %q contains the unprintable character %U", name, r)
		}
	}
	return nil
}

// Identity is the public part of a party: what others need to verify its
// statements and to wrap keys to it.
type Identity struct {
	Role Role   `json:"role"`
	Name string `json:"name"`
	// SigningKey is the Ed25519 public key that signs the party's statements.
	SigningKey []byte `json:"signing_key"`
	// KEM is the HPKE KEM id of HPKEKey (see seal.KEMX25519,
	// seal.KEMMLKEM768X25519).
	KEM uint16 `json:"kem_id"`
	// HPKEKey is the HPKE public key keys are wrapped to.
	HPKEKey []byte `json:"hpke_key"`
}

// ID returns the party's ID.
func (i *Identity) ID() ID { return IDOf(i.SigningKey) }

// String describes the identity for people: role, name, short id and KEM.
func (i *Identity) String() string {
	return fmt.Sprintf("%s %q %s (%s)", i.Role, i.Name, i.ID().Short(), seal.KEMName(i.KEM))
}

// HPKEPublicKey returns the party's HPKE public key, to wrap keys to it with
// seal.Wrap.
func (i *Identity) HPKEPublicKey() (hpke.PublicKey, error) {
	kem, err := seal.KEMByID(i.KEM)
	if err != nil {
		return nil, fmt.Errorf("party: identity %s: %w", i.Name, err)
	}
	pk, err := kem.NewPublicKey(i.HPKEKey)
	if err != nil {
		return nil, fmt.Errorf("party: identity %s: HPKE public key of %d bytes for %s: %w", i.Name, len(i.HPKEKey), seal.KEMName(i.KEM), err)
	}
	return pk, nil
}

// Validate checks the identity's role, name and key sizes.
func (i *Identity) Validate() error {
	if !i.Role.Valid() {
		return fmt.Errorf("party: identity role %q is not one of %v", i.Role, Roles())
	}
	if err := checkName(i.Name); err != nil {
		return err
	}
	if len(i.SigningKey) != ed25519.PublicKeySize {
		return fmt.Errorf("party: identity %q: signing key of %d bytes, want %d", i.Name, len(i.SigningKey), ed25519.PublicKeySize)
	}
	_, err := i.HPKEPublicKey()
	return err
}

// MaxIdentity is the largest encoded identity ParseIdentity reads, in bytes.
const MaxIdentity = 8 << 10

// identityJSON is the JSON form of an identity: its fields and, for people,
// its ID, which ParseIdentity checks when present.
type identityJSON struct {
	ID ID `json:"id,omitempty"`
	identityFields
}

type identityFields Identity

// MarshalJSON writes the identity with its ID.
func (i *Identity) MarshalJSON() ([]byte, error) {
	return json.Marshal(identityJSON{ID: i.ID(), identityFields: identityFields(*i)})
}

// ParseIdentity decodes an identity from JSON strictly (no unknown fields, no
// duplicate or trailing data, at most MaxIdentity bytes; an "id" field, when
// present, must be the identity's ID) and validates it.
func ParseIdentity(b []byte) (*Identity, error) {
	var j identityJSON
	if err := decodeStrict(b, MaxIdentity, &j); err != nil {
		return nil, fmt.Errorf("party: identity: %w", err)
	}
	id := Identity(j.identityFields)
	if err := id.Validate(); err != nil {
		return nil, err
	}
	if j.ID != "" && j.ID != id.ID() {
		return nil, fmt.Errorf("party: identity %q says id %s, but its signing key's id is %s", id.Name, j.ID.Short(), id.ID().Short())
	}
	return &id, nil
}

// decodeStrict decodes one JSON value into v, refusing unknown fields,
// duplicate top-level keys and trailing data.
func decodeStrict(b []byte, max int, v any) error {
	if len(b) > max {
		return fmt.Errorf("%d bytes exceed the maximum %d", len(b), max)
	}
	if err := noDuplicateKeys(b); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// noDuplicateKeys refuses a JSON object with a key twice at its top level, so
// that no two readers can disagree on what a signed object says.
func noDuplicateKeys(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); !ok || d != '{' {
		return errors.New("not a JSON object")
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		k, _ := t.(string)
		if seen[k] {
			return fmt.Errorf("duplicate key %q", k)
		}
		seen[k] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	return nil
}

// KeyFile is a party's private key material: an Ed25519 signing key and an
// HPKE private key, with the party's role and name. It is saved as JSON with
// file mode 0600.
type KeyFile struct {
	identity Identity
	created  time.Time
	signing  ed25519.PrivateKey
	hpke     hpke.PrivateKey
}

// Generate creates a new party: a fresh Ed25519 signing key and a fresh HPKE
// key of kem (nil for DHKEM(X25519, HKDF-SHA256); hpke.MLKEM768X25519() for
// the post-quantum hybrid).
func Generate(role Role, name string, kem hpke.KEM) (*KeyFile, error) {
	if kem == nil {
		kem, _ = seal.KEMByID(seal.KEMX25519)
	}
	if _, err := seal.KEMByID(kem.ID()); err != nil {
		return nil, fmt.Errorf("party: generate: %w", err)
	}
	_, signing, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("party: generate signing key: %w", err)
	}
	hk, err := kem.GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("party: generate HPKE key: %w", err)
	}
	return newKeyFile(role, name, time.Now().UTC().Truncate(time.Second), signing, hk)
}

func newKeyFile(role Role, name string, created time.Time, signing ed25519.PrivateKey, hk hpke.PrivateKey) (*KeyFile, error) {
	kf := &KeyFile{
		identity: Identity{
			Role: role, Name: name,
			SigningKey: signing.Public().(ed25519.PublicKey),
			KEM:        hk.KEM().ID(),
			HPKEKey:    hk.PublicKey().Bytes(),
		},
		created: created,
		signing: signing,
		hpke:    hk,
	}
	if err := kf.identity.Validate(); err != nil {
		return nil, err
	}
	return kf, nil
}

// Identity returns a copy of the party's public identity.
func (kf *KeyFile) Identity() *Identity {
	id := kf.identity
	id.SigningKey = bytes.Clone(id.SigningKey)
	id.HPKEKey = bytes.Clone(id.HPKEKey)
	return &id
}

// ID returns the party's ID.
func (kf *KeyFile) ID() ID { return kf.identity.ID() }

// Created returns when the key file was generated.
func (kf *KeyFile) Created() time.Time { return kf.created }

// SigningKey returns the party's Ed25519 private key.
func (kf *KeyFile) SigningKey() ed25519.PrivateKey { return kf.signing }

// HPKEKey returns the party's HPKE private key.
func (kf *KeyFile) HPKEKey() hpke.PrivateKey { return kf.hpke }

// Unwrap opens a key wrapped to this party with seal.Wrap.
func (kf *KeyFile) Unwrap(info []byte, w seal.Wrapped) ([]byte, error) {
	return seal.Unwrap(kf.hpke, info, w)
}

// keyFileJSON is the file form of a KeyFile.
type keyFileJSON struct {
	Version     int       `json:"version"`
	Role        Role      `json:"role"`
	Name        string    `json:"name"`
	Created     time.Time `json:"created"`
	SigningSeed []byte    `json:"signing_seed"`
	KEM         uint16    `json:"kem_id"`
	HPKEPrivate []byte    `json:"hpke_private"`
	// ID is written for people reading the file; ParseKeyFile checks it.
	ID ID `json:"id"`
}

// keyFileVersion is the version of the key file format.
const keyFileVersion = 1

// MaxKeyFile is the largest key file Load reads, in bytes.
const MaxKeyFile = 16 << 10

// MarshalJSON returns the file form of the key file. It contains the private
// keys.
func (kf *KeyFile) MarshalJSON() ([]byte, error) {
	hb, err := kf.hpke.Bytes()
	if err != nil {
		return nil, fmt.Errorf("party: serialize HPKE key: %w", err)
	}
	return json.MarshalIndent(keyFileJSON{
		Version: keyFileVersion, Role: kf.identity.Role, Name: kf.identity.Name, Created: kf.created,
		SigningSeed: kf.signing.Seed(), KEM: kf.identity.KEM, HPKEPrivate: hb, ID: kf.ID(),
	}, "", "  ")
}

// ParseKeyFile decodes a key file strictly and rebuilds its keys.
func ParseKeyFile(b []byte) (*KeyFile, error) {
	var j keyFileJSON
	if err := decodeStrict(b, MaxKeyFile, &j); err != nil {
		return nil, fmt.Errorf("party: key file: %w", err)
	}
	if j.Version != keyFileVersion {
		return nil, fmt.Errorf("party: key file version %d, want %d", j.Version, keyFileVersion)
	}
	if len(j.SigningSeed) != ed25519.SeedSize {
		return nil, fmt.Errorf("party: key file: signing seed of %d bytes, want %d", len(j.SigningSeed), ed25519.SeedSize)
	}
	kem, err := seal.KEMByID(j.KEM)
	if err != nil {
		return nil, fmt.Errorf("party: key file: %w", err)
	}
	hk, err := kem.NewPrivateKey(j.HPKEPrivate)
	if err != nil {
		return nil, fmt.Errorf("party: key file: HPKE private key for %s: %w", seal.KEMName(j.KEM), err)
	}
	kf, err := newKeyFile(j.Role, j.Name, j.Created, ed25519.NewKeyFromSeed(j.SigningSeed), hk)
	if err != nil {
		return nil, err
	}
	if j.ID != kf.ID() {
		return nil, fmt.Errorf("party: key file says id %s, but its signing key's id is %s", j.ID.Short(), kf.ID().Short())
	}
	return kf, nil
}

// Save writes the key file to path with mode 0600. It refuses to overwrite an
// existing file.
func (kf *KeyFile) Save(path string) error {
	b, err := kf.MarshalJSON()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("party: %s already exists; refusing to overwrite a key file", path)
		}
		return fmt.Errorf("party: save key file: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("party: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("party: sync %s: %w", path, err)
	}
	return f.Close()
}

// Load reads a key file saved by Save. It refuses a file that other users can
// read or write (mode bits 0077), as ssh does.
func Load(path string) (*KeyFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("party: load key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("party: load key file: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("party: key file %s has mode %v: others may read it; run chmod 600 %s", path, st.Mode().Perm(), path)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("party: read %s: %w", path, err)
	}
	kf, err := ParseKeyFile(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return kf, nil
}
