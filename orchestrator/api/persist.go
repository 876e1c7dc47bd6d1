package api

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
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
	State   json.RawMessage `json:"state,omitempty"`
	Log     []byte          `json:"log,omitempty"`
	Genesis string          `json:"genesis_digest"`
}

// The plaintext of a sealed state blob is, since version 2,
//
//	"SFP2" | header length u32 | header | state length u32 | state | log
//
// where header is the JSON of persisted without state and log (it never
// changes, so the server encodes it once), state is the machine's JSON and
// log the ledger's own encoding. Unlike version 1 (all of persisted as JSON)
// it neither re-validates the state JSON nor base64-encodes the log on every
// save. Version 1 blobs are still read.
const persistMagic = "SFP2"

// encodePersisted returns the version 2 plaintext.
func encodePersisted(header, state, log []byte) []byte {
	b := make([]byte, 0, len(persistMagic)+8+len(header)+len(state)+len(log))
	b = append(b, persistMagic...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(header)))
	b = append(b, header...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(state)))
	b = append(b, state...)
	return append(b, log...)
}

// decodePersisted parses a plaintext of version 2 or 1.
func decodePersisted(plain []byte) (*persisted, error) {
	var p persisted
	if !bytes.HasPrefix(plain, []byte(persistMagic)) {
		if err := json.Unmarshal(plain, &p); err != nil {
			return nil, fmt.Errorf("decoding: %w", err)
		}
		return &p, nil
	}
	rest := plain[len(persistMagic):]
	field := func(what string) ([]byte, error) {
		if len(rest) < 4 {
			return nil, fmt.Errorf("decoding: the %s length is missing", what)
		}
		n := binary.BigEndian.Uint32(rest)
		if uint64(n) > uint64(len(rest)-4) {
			return nil, fmt.Errorf("decoding: the %s claims %d bytes, %d remain", what, n, len(rest)-4)
		}
		v := rest[4 : 4+n]
		rest = rest[4+n:]
		return v, nil
	}
	header, err := field("header")
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(header, &p); err != nil {
		return nil, fmt.Errorf("decoding the header: %w", err)
	}
	if p.Version != 2 {
		return nil, fmt.Errorf("decoding: header version %d in a version 2 encoding", p.Version)
	}
	if p.State, err = field("state"); err != nil {
		return nil, err
	}
	p.Log = rest
	return &p, nil
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
