package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// KeySize is the size of a data key: AES-256.
const KeySize = 32

// KeyID identifies a data key without revealing it: the first 8 bytes of
// SHA-256 over a domain label, the key's scope and epoch, and the key itself.
// It is carried in every frame header and named in key-release log entries.
type KeyID [KeyIDSize]byte

// String returns the key id in hex.
func (id KeyID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is all zero (plaintext frames carry no key id).
func (id KeyID) IsZero() bool { return id == KeyID{} }

// ParseKeyID parses a key id written by KeyID.String.
func ParseKeyID(s string) (KeyID, error) {
	var id KeyID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != KeyIDSize {
		return id, fmt.Errorf("seal: key id %q is not %d hex-encoded bytes", truncate(s), KeyIDSize)
	}
	copy(id[:], b)
	return id, nil
}

// DeriveKeyID returns the id of a data key for (scope, epoch).
func DeriveKeyID(scope string, epoch uint32, secret []byte) KeyID {
	h := sha256.New()
	var n [4]byte
	h.Write([]byte("sealflow seal key id v1\x00"))
	binary.BigEndian.PutUint32(n[:], uint32(len(scope)))
	h.Write(n[:])
	h.Write([]byte(scope))
	binary.BigEndian.PutUint32(n[:], epoch)
	h.Write(n[:])
	h.Write(secret)
	var id KeyID
	copy(id[:], h.Sum(nil))
	return id
}

// ErrKeyZeroed is returned when a key is used after Zero.
var ErrKeyZeroed = errors.New("seal: the key was zeroed (dropped from its keyring)")

// Key is a data key for one (scope, epoch): 32 secret bytes and the AES-256-GCM
// instance built from them once, so that sealing does not rebuild it. A Key is
// safe for concurrent use.
type Key struct {
	scope string
	epoch uint32
	id    KeyID

	mu     sync.Mutex // guards secret against Zero
	secret [KeySize]byte
	aead   atomic.Pointer[aeadBox]
	sealed atomic.Uint64 // frames sealed with this key, by every Sealer
}

// MaxFramesPerKey is how many frames Sealers seal with one key before they
// refuse and ask for a new epoch: with random 96-bit nonces, 2^32 messages
// keep the chance of a nonce collision negligible (NIST SP 800-38D, 8.3).
const MaxFramesPerKey = 1 << 32

type aeadBox struct{ cipher.AEAD }

// NewKey returns a key for (scope, epoch) holding a copy of secret, which
// must be KeySize bytes. The caller should zero its own copy of secret.
func NewKey(scope string, epoch uint32, secret []byte) (*Key, error) {
	if err := checkScope(scope); err != nil {
		return nil, err
	}
	if len(secret) != KeySize {
		return nil, fmt.Errorf("seal: key for scope %q epoch %d has %d bytes, want %d", truncate(scope), epoch, len(secret), KeySize)
	}
	block, err := aes.NewCipher(secret)
	if err != nil {
		return nil, fmt.Errorf("seal: key for scope %q epoch %d: %w", truncate(scope), epoch, err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("seal: key for scope %q epoch %d: %w", truncate(scope), epoch, err)
	}
	k := &Key{scope: scope, epoch: epoch, id: DeriveKeyID(scope, epoch, secret)}
	copy(k.secret[:], secret)
	k.aead.Store(&aeadBox{gcm})
	return k, nil
}

// GenerateKey returns a new random key for (scope, epoch).
func GenerateKey(scope string, epoch uint32) (*Key, error) {
	var secret [KeySize]byte
	rand.Read(secret[:]) // never returns an error; crashes the program if the system's randomness fails
	defer clear(secret[:])
	return NewKey(scope, epoch, secret[:])
}

// Scope returns the stream or job/edge id the key belongs to.
func (k *Key) Scope() string { return k.scope }

// Epoch returns the key's epoch.
func (k *Key) Epoch() uint32 { return k.epoch }

// ID returns the key's id.
func (k *Key) ID() KeyID { return k.id }

// String describes the key without revealing it.
func (k *Key) String() string {
	return fmt.Sprintf("key %s (scope %q, epoch %d)", k.id, truncate(k.scope), k.epoch)
}

// Bytes returns a copy of the key's secret, to wrap it for a recipient (see
// Wrap). The caller should zero the copy when done.
func (k *Key) Bytes() ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.aead.Load() == nil {
		return nil, ErrKeyZeroed
	}
	return slices.Clone(k.secret[:]), nil
}

// Equal reports, in constant time, whether k and o hold the same secret for
// the same scope and epoch.
func (k *Key) Equal(o *Key) bool {
	if k.scope != o.scope || k.epoch != o.epoch {
		return false
	}
	k.mu.Lock()
	a := k.secret
	k.mu.Unlock()
	o.mu.Lock()
	b := o.secret
	o.mu.Unlock()
	eq := subtle.ConstantTimeCompare(a[:], b[:]) == 1
	clear(a[:])
	clear(b[:])
	return eq
}

// Zero overwrites the key's secret and makes the key unusable. The AES key
// schedule inside the Go runtime's cipher cannot be overwritten; it becomes
// garbage once no Sealer or Opener holds the key.
func (k *Key) Zero() {
	k.mu.Lock()
	defer k.mu.Unlock()
	clear(k.secret[:])
	k.aead.Store(nil)
}

// Zeroed reports whether Zero was called.
func (k *Key) Zeroed() bool { return k.aead.Load() == nil }

func (k *Key) gcm() cipher.AEAD {
	if b := k.aead.Load(); b != nil {
		return b.AEAD
	}
	return nil
}

// Keyring holds data keys per (scope, epoch). For each scope the key of the
// highest epoch is current: Sealers seal with it. Keys of older epochs stay for
// opening until dropped; dropping a key zeroes it. A Keyring is safe for
// concurrent use.
type Keyring struct {
	mu     sync.RWMutex
	scopes map[string]*scopeKeys
}

type scopeKeys struct {
	epochs  map[uint32]*Key
	current *Key
}

// NewKeyring returns an empty keyring.
func NewKeyring() *Keyring { return &Keyring{scopes: map[string]*scopeKeys{}} }

// Add installs a key, for example one received by Unwrap. Adding a key for an
// epoch that already holds a different key is an error; adding the same key
// again returns the one already held.
func (r *Keyring) Add(k *Key) (*Key, error) {
	if k.Zeroed() {
		return nil, fmt.Errorf("seal: cannot add %s: %w", k, ErrKeyZeroed)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.scopes[k.scope]
	if s == nil {
		s = &scopeKeys{epochs: map[uint32]*Key{}}
		r.scopes[k.scope] = s
	}
	if old := s.epochs[k.epoch]; old != nil {
		if old.id == k.id && old.Equal(k) {
			return old, nil
		}
		return nil, fmt.Errorf("seal: scope %q already holds a different key (%s) for epoch %d than %s", truncate(k.scope), old.id, k.epoch, k.id)
	}
	s.epochs[k.epoch] = k
	if s.current == nil || k.epoch > s.current.epoch {
		s.current = k
	}
	return k, nil
}

// AddSecret installs secret as the key of (scope, epoch); see Add.
func (r *Keyring) AddSecret(scope string, epoch uint32, secret []byte) (*Key, error) {
	k, err := NewKey(scope, epoch, secret)
	if err != nil {
		return nil, err
	}
	got, err := r.Add(k)
	if got != k {
		k.Zero()
	}
	return got, err
}

// Generate creates a random key for (scope, epoch) and installs it. It is an
// error if the epoch already has a key.
func (r *Keyring) Generate(scope string, epoch uint32) (*Key, error) {
	k, err := GenerateKey(scope, epoch)
	if err != nil {
		return nil, err
	}
	if _, err := r.Add(k); err != nil {
		k.Zero()
		return nil, err
	}
	return k, nil
}

// Rotate generates the key of the epoch after the scope's current one (epoch
// 1 for a scope without keys) and makes it current. Older epochs stay for
// opening until dropped.
func (r *Keyring) Rotate(scope string) (*Key, error) {
	epoch := uint32(1)
	if cur, ok := r.Current(scope); ok {
		if cur.epoch == ^uint32(0) {
			return nil, fmt.Errorf("seal: scope %q is at the last epoch %d", truncate(scope), cur.epoch)
		}
		epoch = cur.epoch + 1
	}
	return r.Generate(scope, epoch)
}

// Current returns the key of the scope's highest epoch, used for sealing.
func (r *Keyring) Current(scope string) (*Key, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if s := r.scopes[scope]; s != nil && s.current != nil {
		return s.current, true
	}
	return nil, false
}

// Key returns the key of (scope, epoch).
func (r *Keyring) Key(scope string, epoch uint32) (*Key, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if s := r.scopes[scope]; s != nil {
		k, ok := s.epochs[epoch]
		return k, ok
	}
	return nil, false
}

// lookup is Key and reports whether the scope has any key, for the Opener's
// distinction between foreign scopes and unknown epochs.
func (r *Keyring) lookup(scope string, epoch uint32) (k *Key, scopeKnown bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	s := r.scopes[scope]
	if s == nil {
		return nil, false
	}
	return s.epochs[epoch], true
}

// KeyByID returns the key with the given id, searching every scope.
func (r *Keyring) KeyByID(id KeyID) (*Key, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, s := range r.scopes {
		for _, k := range s.epochs {
			if k.id == id {
				return k, true
			}
		}
	}
	return nil, false
}

// Epochs returns the scope's epochs, in increasing order.
func (r *Keyring) Epochs(scope string) []uint32 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	s := r.scopes[scope]
	if s == nil {
		return nil
	}
	out := make([]uint32, 0, len(s.epochs))
	for e := range s.epochs {
		out = append(out, e)
	}
	slices.Sort(out)
	return out
}

// Drop removes and zeroes the key of (scope, epoch) and reports whether there
// was one. If it was current, the highest remaining epoch becomes current.
func (r *Keyring) Drop(scope string, epoch uint32) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.scopes[scope]
	if s == nil || s.epochs[epoch] == nil {
		return false
	}
	r.dropLocked(scope, s, epoch)
	return true
}

// DropBefore removes and zeroes every key of the scope with an epoch below
// epoch and returns how many it dropped.
func (r *Keyring) DropBefore(scope string, epoch uint32) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.scopes[scope]
	if s == nil {
		return 0
	}
	n := 0
	for e := range s.epochs {
		if e < epoch {
			r.dropLocked(scope, s, e)
			n++
		}
	}
	return n
}

func (r *Keyring) dropLocked(scope string, s *scopeKeys, epoch uint32) {
	k := s.epochs[epoch]
	delete(s.epochs, epoch)
	k.Zero()
	if s.current == k {
		s.current = nil
		for _, o := range s.epochs {
			if s.current == nil || o.epoch > s.current.epoch {
				s.current = o
			}
		}
	}
	if len(s.epochs) == 0 {
		delete(r.scopes, scope)
	}
}

// Zero drops and zeroes every key.
func (r *Keyring) Zero() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for scope, s := range r.scopes {
		for _, k := range s.epochs {
			k.Zero()
		}
		delete(r.scopes, scope)
	}
}
