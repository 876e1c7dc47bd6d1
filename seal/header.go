// Package seal protects records in transit and at rest: sealed frames
// (AES-256-GCM with the frame header as associated data), key epochs held in a
// Keyring, and HPKE wrapping of data keys to a recipient's public key.
//
// A frame is the unit that travels over NATS or is stored in an object store:
//
//	header (associated data) || nonce (12 bytes) || ciphertext || tag (16 bytes)
//
// The header names what the frame is (Kind), which stream or job edge it belongs
// to (Scope), the producer partition, the key epoch, the frame's sequence number
// in its partition, the event-time range of its records and flags. Because the
// header is authenticated, an Opener detects tampering with the header or the
// body, frames replayed or delivered out of order, frames moved to another
// stream, and streams cut short (see Reason). The infrastructure that carries
// frames sees headers (routing metadata) and ciphertext only; optional padding
// to a bucket size hides the exact size of each frame's contents.
package seal

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// Version is the frame format version written by this package.
const Version = 1

// Kind says what a frame carries. It is authenticated, so a frame of one kind
// cannot be passed off as another (an exchange frame as a checkpoint, say).
type Kind uint8

// The frame kinds.
const (
	KindIngest     Kind = 1 // records sealed at the source by a data owner
	KindExchange   Kind = 2 // records between two tasks of a job
	KindOutput     Kind = 3 // records of a derived (output) stream
	KindCheckpoint Kind = 4 // a piece of a sealed state snapshot
	KindControl    Kind = 5 // control messages between orchestrator and workers
)

// String returns the kind's name ("ingest", "exchange", ...).
func (k Kind) String() string {
	switch k {
	case KindIngest:
		return "ingest"
	case KindExchange:
		return "exchange"
	case KindOutput:
		return "output"
	case KindCheckpoint:
		return "checkpoint"
	case KindControl:
		return "control"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Valid reports whether k is one of the defined kinds.
func (k Kind) Valid() bool { return k >= KindIngest && k <= KindControl }

// Flags are the frame's flag bits.
type Flags uint8

// The flag bits. Any other bit makes a header malformed.
const (
	// FlagLast marks the last frame of a partition's stream: an Opener
	// reports a stream that ends without it as truncated.
	FlagLast Flags = 1 << iota
	// FlagPadded says the plaintext was padded to a bucket size before sealing;
	// its true length is sealed inside it.
	FlagPadded
	// FlagPlaintext says the body is not encrypted. It exists only to measure
	// the overhead of sealing; an Opener refuses it unless told otherwise.
	FlagPlaintext

	knownFlags = FlagLast | FlagPadded | FlagPlaintext
)

// MaxScope is the longest scope, in bytes.
const MaxScope = 255

// MaxBody is the largest frame body (ciphertext and tag, or plaintext), in
// bytes: 64 MiB, NATS's largest configurable payload.
const MaxBody = 64 << 20

// KeyIDSize is the size of a KeyID.
const KeyIDSize = 8

// headerFixed is the size of a header without its scope.
const headerFixed = 4 + 4 + 4 + 8 + 8 + 8 + KeyIDSize + 4

// Header describes a frame. Its binary encoding is the frame's associated data.
type Header struct {
	// Version is the format version (Version).
	Version uint8
	// Kind is what the frame carries.
	Kind Kind
	// Flags are the frame's flags.
	Flags Flags
	// Scope is the stream id (ingest, output) or the job/edge id (exchange,
	// checkpoint, control) the frame belongs to; 1 to MaxScope bytes of UTF-8.
	Scope string
	// Partition is the producer partition within the scope.
	Partition uint32
	// Epoch is the key epoch the frame is sealed with.
	Epoch uint32
	// Seq is the frame's sequence number within (Scope, Partition), from 0,
	// continuous across key epochs.
	Seq uint64
	// MinTime and MaxTime bound the event times of the frame's records
	// (milliseconds since the Unix epoch, by convention); MinTime <= MaxTime.
	MinTime, MaxTime int64
	// KeyID identifies the key the frame is sealed with (zero when plaintext).
	KeyID KeyID
	// BodyLen is the length of the body that follows the header; set by
	// Sealer, checked by ParseHeader.
	BodyLen uint32
}

// Size returns the length of the header's binary encoding.
func (h *Header) Size() int { return headerFixed + len(h.Scope) }

// AppendBinary appends the header's binary encoding to b:
//
//	version u8 | kind u8 | flags u8 | scope length u8 | scope |
//	partition u32 | epoch u32 | seq u64 | min time i64 | max time i64 |
//	key id [8] | body length u32
//
// all integers big endian. It returns an error when the header would not parse.
func (h *Header) AppendBinary(b []byte) ([]byte, error) {
	if err := h.check(); err != nil {
		return b, err
	}
	return h.appendUnchecked(b), nil
}

func (h *Header) appendUnchecked(b []byte) []byte {
	b = append(b, h.Version, byte(h.Kind), byte(h.Flags), byte(len(h.Scope)))
	b = append(b, h.Scope...)
	b = binary.BigEndian.AppendUint32(b, h.Partition)
	b = binary.BigEndian.AppendUint32(b, h.Epoch)
	b = binary.BigEndian.AppendUint64(b, h.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(h.MinTime))
	b = binary.BigEndian.AppendUint64(b, uint64(h.MaxTime))
	b = append(b, h.KeyID[:]...)
	b = binary.BigEndian.AppendUint32(b, h.BodyLen)
	return b
}

// check validates the fields that ParseHeader validates.
func (h *Header) check() error {
	if h.Version != Version {
		return fmt.Errorf("seal: header version %d, want %d", h.Version, Version)
	}
	if !h.Kind.Valid() {
		return fmt.Errorf("seal: header kind %d is not a known frame kind", uint8(h.Kind))
	}
	if h.Flags&^knownFlags != 0 {
		return fmt.Errorf("seal: header flags %#x carry unknown bits %#x", uint8(h.Flags), uint8(h.Flags&^knownFlags))
	}
	if err := checkScope(h.Scope); err != nil {
		return err
	}
	if h.MinTime > h.MaxTime {
		return fmt.Errorf("seal: header time range [%d, %d] is inverted", h.MinTime, h.MaxTime)
	}
	if h.Flags&FlagPlaintext != 0 && (h.Epoch != 0 || !h.KeyID.IsZero()) {
		return fmt.Errorf("seal: plaintext header names key epoch %d and key id %s, want none", h.Epoch, h.KeyID)
	}
	if h.BodyLen > MaxBody {
		return fmt.Errorf("seal: header body length %d exceeds the maximum %d", h.BodyLen, MaxBody)
	}
	return nil
}

func checkScope(s string) error {
	if len(s) == 0 || len(s) > MaxScope {
		return fmt.Errorf("seal: scope %q has %d bytes, want 1 to %d", truncate(s), len(s), MaxScope)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("seal: scope %q is not valid UTF-8", truncate(s))
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// rawHeader is a header parsed without allocating: the scope stays a slice of
// the frame.
type rawHeader struct {
	Header
	scope []byte
	size  int
}

// parseRaw parses the header at the start of frame into r and checks that the
// body that follows has exactly the declared length. r.Scope is left empty.
func parseRaw(frame []byte, r *rawHeader) error {
	if len(frame) < 4 {
		return fmt.Errorf("seal: frame of %d bytes is shorter than a header", len(frame))
	}
	r.Version, r.Kind, r.Flags = frame[0], Kind(frame[1]), Flags(frame[2])
	n := int(frame[3])
	size := headerFixed + n
	if len(frame) < size {
		return fmt.Errorf("seal: frame of %d bytes is shorter than its %d-byte header", len(frame), size)
	}
	r.scope = frame[4 : 4+n]
	p := frame[4+n:]
	r.Partition = binary.BigEndian.Uint32(p[0:])
	r.Epoch = binary.BigEndian.Uint32(p[4:])
	r.Seq = binary.BigEndian.Uint64(p[8:])
	r.MinTime = int64(binary.BigEndian.Uint64(p[16:]))
	r.MaxTime = int64(binary.BigEndian.Uint64(p[24:]))
	copy(r.KeyID[:], p[32:40])
	r.BodyLen = binary.BigEndian.Uint32(p[40:])
	r.size = size
	if r.Version != Version {
		return fmt.Errorf("seal: frame version %d, want %d", r.Version, Version)
	}
	if !r.Kind.Valid() {
		return fmt.Errorf("seal: frame kind %d is not a known frame kind", uint8(r.Kind))
	}
	if r.Flags&^knownFlags != 0 {
		return fmt.Errorf("seal: frame flags %#x carry unknown bits %#x", uint8(r.Flags), uint8(r.Flags&^knownFlags))
	}
	if n == 0 || !utf8.Valid(r.scope) {
		return fmt.Errorf("seal: frame scope %q is empty or not UTF-8", truncate(string(r.scope)))
	}
	if r.MinTime > r.MaxTime {
		return fmt.Errorf("seal: frame time range [%d, %d] is inverted", r.MinTime, r.MaxTime)
	}
	if r.Flags&FlagPlaintext != 0 && (r.Epoch != 0 || !r.KeyID.IsZero()) {
		return fmt.Errorf("seal: plaintext frame names key epoch %d and key id %s, want none", r.Epoch, r.KeyID)
	}
	if r.BodyLen > MaxBody {
		return fmt.Errorf("seal: frame body length %d exceeds the maximum %d", r.BodyLen, MaxBody)
	}
	if got := len(frame) - size; got != int(r.BodyLen) {
		return fmt.Errorf("seal: frame body has %d bytes, header says %d", got, r.BodyLen)
	}
	return nil
}

// ParseHeader parses the header of a frame and checks that the frame's body has
// the length the header declares. It verifies nothing cryptographically: use it
// to route frames, and an Opener to trust them.
func ParseHeader(frame []byte) (Header, error) {
	var r rawHeader
	if err := parseRaw(frame, &r); err != nil {
		return Header{}, err
	}
	h := r.Header
	h.Scope = string(r.scope)
	return h, nil
}

// FrameLen returns the length of the frame at the start of b, so that frames
// stored back to back can be split. It checks only the header's length fields.
func FrameLen(b []byte) (int, error) {
	if len(b) < 4 {
		return 0, fmt.Errorf("seal: %d bytes are shorter than a header", len(b))
	}
	size := headerFixed + int(b[3])
	if len(b) < size {
		return 0, fmt.Errorf("seal: %d bytes are shorter than a %d-byte header", len(b), size)
	}
	body := binary.BigEndian.Uint32(b[size-4:])
	if body > MaxBody {
		return 0, fmt.Errorf("seal: frame body length %d exceeds the maximum %d", body, MaxBody)
	}
	total := size + int(body)
	if len(b) < total {
		return 0, fmt.Errorf("seal: %d bytes are shorter than the %d-byte frame they start", len(b), total)
	}
	return total, nil
}

// HeaderSizeFor returns the size of the header of a frame of scope.
func HeaderSizeFor(scope string) int { return headerFixed + len(scope) }
