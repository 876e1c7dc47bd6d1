package checkpoint

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/seal"
)

// Format is the sealed-object format version written by this package.
const Format = 1

// magic opens every sealed snapshot object.
const magic = "SFCK"

// Limits of the sealed-object header.
const (
	// MaxName is the longest job or task id, in bytes.
	MaxName = 255
	// MinChunk and MaxChunk bound the plaintext size of one sealed chunk.
	MinChunk = 1 << 10
	MaxChunk = 16 << 20
	// DefaultChunk is the plaintext size of a sealed chunk unless the Store
	// is configured otherwise.
	DefaultChunk = 1 << 20
	// MaxPlaintext is the largest snapshot, in bytes (1 TiB).
	MaxPlaintext = 1 << 40
	// SaltSize is the size of the per-object random salt.
	SaltSize = 32
	// tagSize is the AES-GCM tag size.
	tagSize = 16
)

// headerFixed is the size of a header without its job and task ids.
const headerFixed = len(magic) + 1 + 1 + 4 + 8 + 1 + 1 + 8 + 4 + 4 + 8 + 4 + seal.KeyIDSize + SaltSize

// Header is the clear header of a sealed snapshot object. It names the
// snapshot (job, version, task, key-group range, checkpoint id), the key that
// sealed it and how the body is chunked. It is not encrypted, but it is bound
// to the body: the key of every chunk is derived from the header's exact
// bytes, so a changed header makes every chunk fail to open.
//
// Its binary encoding, all integers big endian:
//
//	"SFCK" | format u8 | flags u8 (0, or 2: an index) | chunk size u32 | plaintext length u64 |
//	job length u8 | job | task length u8 | task | version i64 |
//	key groups from u32 | key groups to u32 | checkpoint u64 |
//	key epoch u32 | key id [8] | salt [32]
//
// The body that follows is ceil(length/chunk) chunks (one empty chunk for an
// empty snapshot), each the AES-256-GCM sealing of chunk-size bytes of
// plaintext (the last one shorter), with the nonce counter || last-flag as in
// the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár, "Online
// Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance" (CRYPTO
// 2015): chunks cannot be reordered, dropped or the object cut short.
type Header struct {
	// ID names the snapshot.
	ID SnapshotID
	// ChunkSize is the plaintext size of every chunk but the last.
	ChunkSize uint32
	// Length is the plaintext length of the snapshot.
	Length uint64
	// Epoch and KeyID name the checkpoint key that sealed the snapshot.
	Epoch uint32
	KeyID seal.KeyID
	// Salt is random per object; with the header it derives the object's key.
	Salt [SaltSize]byte
	// Index is set on the index object of an incremental snapshot (see
	// Index): its plaintext lists the packs and chunks the snapshot is made
	// of, not the snapshot itself. It is a header flag, bound to the body
	// like the rest of the header.
	Index bool
}

// flagIndex is the header flag of an index object.
const flagIndex = 2

// Size returns the length of the header's binary encoding.
func (h *Header) Size() int { return headerFixed + len(h.ID.Job) + len(h.ID.Task) }

// Chunks returns the number of chunks of the body.
func (h *Header) Chunks() uint64 {
	if h.Length == 0 {
		return 1
	}
	return (h.Length + uint64(h.ChunkSize) - 1) / uint64(h.ChunkSize)
}

// SealedSize returns the size of the whole sealed object: header and body.
func (h *Header) SealedSize() uint64 {
	return uint64(h.Size()) + h.Length + h.Chunks()*tagSize
}

// AppendBinary appends the header's encoding to b. It fails when the header
// would not parse.
func (h *Header) AppendBinary(b []byte) ([]byte, error) {
	if err := h.check(); err != nil {
		return b, err
	}
	b = append(b, magic...)
	flags := byte(0)
	if h.Index {
		flags = flagIndex
	}
	b = append(b, Format, flags)
	b = binary.BigEndian.AppendUint32(b, h.ChunkSize)
	b = binary.BigEndian.AppendUint64(b, h.Length)
	b = append(b, byte(len(h.ID.Job)))
	b = append(b, h.ID.Job...)
	b = append(b, byte(len(h.ID.Task)))
	b = append(b, h.ID.Task...)
	b = binary.BigEndian.AppendUint64(b, uint64(h.ID.Version))
	b = binary.BigEndian.AppendUint32(b, uint32(h.ID.KeyGroups.From))
	b = binary.BigEndian.AppendUint32(b, uint32(h.ID.KeyGroups.To))
	b = binary.BigEndian.AppendUint64(b, h.ID.Checkpoint)
	b = binary.BigEndian.AppendUint32(b, h.Epoch)
	b = append(b, h.KeyID[:]...)
	b = append(b, h.Salt[:]...)
	return b, nil
}

func (h *Header) check() error {
	if err := h.ID.Validate(); err != nil {
		return err
	}
	if h.ChunkSize < MinChunk || h.ChunkSize > MaxChunk {
		return fmt.Errorf("checkpoint: chunk size %d is outside [%d, %d]", h.ChunkSize, MinChunk, MaxChunk)
	}
	if h.Length > MaxPlaintext {
		return fmt.Errorf("checkpoint: snapshot length %d exceeds the maximum %d", h.Length, uint64(MaxPlaintext))
	}
	return nil
}

// ErrShortHeader is returned by ParseHeader when b ends before the header
// does; the caller may read more bytes and retry.
var ErrShortHeader = errors.New("checkpoint: sealed object ends inside its header")

// ParseHeader decodes the header at the start of a sealed snapshot object
// and returns it with its size in bytes. It checks the header's form only:
// whether it names the snapshot the caller wants, and whether the body opens,
// is for Store.Get to decide.
func ParseHeader(b []byte) (Header, int, error) {
	var h Header
	if len(b) < len(magic)+2 {
		return h, 0, ErrShortHeader
	}
	if string(b[:len(magic)]) != magic {
		return h, 0, fmt.Errorf("checkpoint: object starts with %q, not the sealed-snapshot magic %q", b[:len(magic)], magic)
	}
	if b[4] != Format {
		return h, 0, fmt.Errorf("checkpoint: sealed-object format %d, want %d", b[4], Format)
	}
	if b[5]&^flagIndex != 0 {
		return h, 0, fmt.Errorf("checkpoint: sealed-object flags %#x, want none or %#x (index)", b[5], flagIndex)
	}
	h.Index = b[5] == flagIndex
	p := b[6:]
	need := func(n int) bool { return len(p) >= n }
	if !need(4 + 8 + 1) {
		return h, 0, ErrShortHeader
	}
	h.ChunkSize = binary.BigEndian.Uint32(p)
	h.Length = binary.BigEndian.Uint64(p[4:])
	p = p[12:]
	jl := int(p[0])
	if !need(1 + jl + 1) {
		return h, 0, ErrShortHeader
	}
	h.ID.Job = string(p[1 : 1+jl])
	p = p[1+jl:]
	tl := int(p[0])
	if !need(1 + tl + 8 + 4 + 4 + 8 + 4 + seal.KeyIDSize + SaltSize) {
		return h, 0, ErrShortHeader
	}
	h.ID.Task = string(p[1 : 1+tl])
	p = p[1+tl:]
	h.ID.Version = int64(binary.BigEndian.Uint64(p))
	from, to := binary.BigEndian.Uint32(p[8:]), binary.BigEndian.Uint32(p[12:])
	if from > state.MaxMaxParallelism || to > state.MaxMaxParallelism {
		return h, 0, fmt.Errorf("checkpoint: key-group range [%d,%d) exceeds the maximum parallelism %d", from, to, state.MaxMaxParallelism)
	}
	h.ID.KeyGroups = state.Range{From: int(from), To: int(to)}
	h.ID.Checkpoint = binary.BigEndian.Uint64(p[16:])
	h.Epoch = binary.BigEndian.Uint32(p[24:])
	copy(h.KeyID[:], p[28:])
	copy(h.Salt[:], p[28+seal.KeyIDSize:])
	if err := h.check(); err != nil {
		return h, 0, err
	}
	return h, h.Size(), nil
}

// objectAEAD derives the AES-256-GCM instance of one object from the
// checkpoint key's secret, the object's salt and its header bytes (HKDF-SHA256,
// RFC 5869).
func objectAEAD(secret []byte, salt [SaltSize]byte, header []byte) (cipher.AEAD, error) {
	info := append([]byte("sealflow checkpoint object v1\x00"), header...)
	key, err := hkdf.Key(sha256.New, secret, salt[:], string(info), seal.KeySize)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: deriving the object key: %w", err)
	}
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: object key: %w", err)
	}
	return cipher.NewGCM(block)
}

// chunkNonce is the STREAM nonce of chunk i: its index and whether it is the
// last chunk.
func chunkNonce(i uint64, last bool) [12]byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[:], i)
	if last {
		n[11] = 1
	}
	return n
}

func validName(what, s string) error {
	if len(s) == 0 || len(s) > MaxName {
		return fmt.Errorf("checkpoint: %s id %q has %d bytes, want 1 to %d", what, short(s), len(s), MaxName)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("checkpoint: %s id %q is not valid UTF-8", what, short(s))
	}
	return nil
}

func short(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
