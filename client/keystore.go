package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/sealflow/sealflow/seal"
)

// OwnerKeys is a data owner's local keystore: the data-key epochs of its
// streams, which it generated, uploaded wrapped to the orchestrator and uses
// to seal records at the source. It lives in a file of mode 0600 next to the
// owner's key file (see KeystorePath).
type OwnerKeys struct {
	// Streams maps a stream name to its epochs; each key is seal.KeySize bytes.
	Streams map[string]map[uint32][]byte `json:"streams"`
}

// KeystorePath returns the keystore file that belongs to a party key file:
// "<keyfile>.streams.json".
func KeystorePath(keyFile string) string { return keyFile + ".streams.json" }

// LoadOwnerKeys reads a keystore; a missing file is an empty keystore.
func LoadOwnerKeys(path string) (*OwnerKeys, error) {
	k := &OwnerKeys{Streams: map[string]map[uint32][]byte{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return k, nil
	}
	if err != nil {
		return nil, fmt.Errorf("owner keystore: %w", err)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("owner keystore %s has mode %v: others can read the stream keys; run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	if err := json.Unmarshal(b, k); err != nil {
		return nil, fmt.Errorf("owner keystore %s: %w", path, err)
	}
	if k.Streams == nil {
		k.Streams = map[string]map[uint32][]byte{}
	}
	for s, eps := range k.Streams {
		for e, key := range eps {
			if len(key) != seal.KeySize {
				return nil, fmt.Errorf("owner keystore %s: stream %s epoch %d: key of %d bytes, want %d", path, s, e, len(key), seal.KeySize)
			}
		}
	}
	return k, nil
}

// Save writes the keystore atomically with mode 0600.
func (k *OwnerKeys) Save(path string) error {
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".keystore-*")
	if err != nil {
		return fmt.Errorf("owner keystore: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("owner keystore: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("owner keystore: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Key returns a stream's key of an epoch.
func (k *OwnerKeys) Key(stream string, epoch uint32) ([]byte, bool) {
	key, ok := k.Streams[stream][epoch]
	return key, ok
}

// Latest returns a stream's highest epoch and its key.
func (k *OwnerKeys) Latest(stream string) (uint32, []byte, bool) {
	var best uint32
	found := false
	for e := range k.Streams[stream] {
		if !found || e > best {
			best, found = e, true
		}
	}
	if !found {
		return 0, nil, false
	}
	return best, k.Streams[stream][best], true
}

// Put stores a stream's key of an epoch.
func (k *OwnerKeys) Put(stream string, epoch uint32, key []byte) {
	if k.Streams[stream] == nil {
		k.Streams[stream] = map[uint32][]byte{}
	}
	k.Streams[stream][epoch] = append([]byte(nil), key...)
}
