package api

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Store keeps the orchestrator's sealed state blob on untrusted storage.
type Store interface {
	// Load returns the last saved blob, or (nil, nil) when nothing was saved.
	Load(ctx context.Context) ([]byte, error)
	// Save replaces the saved blob.
	Save(ctx context.Context, blob []byte) error
}

// KVStore is a Store in a NATS JetStream key-value bucket (untrusted: it holds
// only the sealed blob).
type KVStore struct {
	KV  jetstream.KeyValue
	Key string
}

// Load implements Store.
func (s *KVStore) Load(ctx context.Context) ([]byte, error) {
	e, err := s.KV.Get(ctx, s.Key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("loading sealed state from key-value bucket: %w", err)
	}
	return e.Value(), nil
}

// Save implements Store.
func (s *KVStore) Save(ctx context.Context, blob []byte) error {
	if _, err := s.KV.Put(ctx, s.Key, blob); err != nil {
		return fmt.Errorf("saving sealed state to key-value bucket: %w", err)
	}
	return nil
}

// MemStore is a Store in memory, for tests.
type MemStore struct{ Blob []byte }

// Load implements Store.
func (s *MemStore) Load(context.Context) ([]byte, error) { return s.Blob, nil }

// Save implements Store.
func (s *MemStore) Save(_ context.Context, b []byte) error {
	s.Blob = append([]byte(nil), b...)
	return nil
}

// persisted is what the sealed blob holds: the orchestrator's own keys (so
// its pinned identity survives restarts), its state and its log.
type persisted struct {
	Version int             `json:"version"`
	KeyFile json.RawMessage `json:"key_file"`
	TLSKey  []byte          `json:"tls_key"`
	TLSCert []byte          `json:"tls_cert"`
	State   json.RawMessage `json:"state"`
	Log     []byte          `json:"log"`
	Genesis string          `json:"genesis_digest"`
}

const sealedAD = "sealflow orchestrator state v1"

// sealBlob encrypts b with AES-256-GCM under key; the genesis digest is
// associated data, so a blob of another deployment does not open.
func sealBlob(key [32]byte, genesis string, b []byte) ([]byte, error) {
	block, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, err
	}
	g, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, g.NonceSize())
	rand.Read(nonce)
	return g.Seal(nonce, nonce, b, []byte(sealedAD+genesis)), nil
}

func openBlob(key [32]byte, genesis string, b []byte) ([]byte, error) {
	block, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, err
	}
	g, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	if len(b) < g.NonceSize()+g.Overhead() {
		return nil, errors.New("sealed state is too short")
	}
	out, err := g.Open(nil, b[:g.NonceSize()], b[g.NonceSize():], []byte(sealedAD+genesis))
	if err != nil {
		return nil, errors.New("sealed state does not open: it was sealed by another TEE, another measurement or another genesis, or it was modified")
	}
	return out, nil
}
