package runtime

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/sealflow/sealflow/engine/record"
)

// FrameHeader identifies one frame on one exchange channel. A FrameCodec that
// seals frames binds it as associated data, so a frame moved to another
// channel, replayed, reordered or dropped fails to open. Sender and receiver
// derive it independently: Seq counts the frames of the channel from 1.
type FrameHeader struct {
	Job            string
	Edge, From, To int
	Seq            uint64
}

// AppendBinary appends a canonical encoding of the header, for use as
// associated data.
func (h FrameHeader) AppendBinary(b []byte) ([]byte, error) {
	b = binary.AppendUvarint(b, uint64(len(h.Job)))
	b = append(b, h.Job...)
	b = binary.AppendUvarint(b, uint64(h.Edge))
	b = binary.AppendUvarint(b, uint64(h.From))
	b = binary.AppendUvarint(b, uint64(h.To))
	return binary.BigEndian.AppendUint64(b, h.Seq), nil
}

// String returns job/edge/from->to#seq.
func (h FrameHeader) String() string {
	return h.Job + "/e" + strconv.Itoa(h.Edge) + "/" + strconv.Itoa(h.From) + "->" + strconv.Itoa(h.To) + "#" + strconv.FormatUint(h.Seq, 10)
}

// FrameCodec transforms every frame crossing an exchange: Seal on the
// producing side, Open on the consuming side. Confidential pipelines plug AEAD
// sealing in here, so the exchange and the substrate see only ciphertext. A
// codec is shared by all subtasks of a run and must be safe for concurrent use.
//
// Both methods append to a buffer the caller owns, so the runtime reuses one
// buffer per exchange edge for sealed frames and one per consuming subtask for
// opened frames, and sealing allocates nothing in steady state. A codec must
// not keep dst, the input or the result past the call.
type FrameCodec interface {
	// Seal appends the sealed form of plaintext to dst and returns the
	// extended slice. dst and plaintext must not overlap. A codec that does
	// not transform frames may instead return plaintext itself (as
	// IdentityCodec does), so the caller must not assume the result lies in
	// dst.
	Seal(hdr FrameHeader, dst, plaintext []byte) ([]byte, error)
	// Open appends the plaintext of a sealed frame to dst and returns the
	// extended slice, or returns an error (and nothing appended that the
	// caller should read) if the frame is not authentic for hdr. dst and
	// sealed must not overlap. Like Seal, a codec that does not transform
	// frames may return sealed itself.
	Open(hdr FrameHeader, dst, sealed []byte) ([]byte, error)
}

// InPlaceCodec is a FrameCodec that can also seal and open a frame within
// the frame's own buffer. The runtime then encodes a batch after
// SealOffset bytes of room and seals it where it lies, and opens a frame
// it owns (one the transport hands over in a fresh buffer, see
// FrameOwner) in that buffer, so neither side needs a second frame-sized
// buffer or a pass over one. Its frames are the same as Seal's; Seal and
// Open stay in use for the frames the runtime does not own.
type InPlaceCodec interface {
	FrameCodec
	// SealOffset is the room SealInPlace needs before a frame's plaintext:
	// the same for every frame of the codec.
	SealOffset() int
	// SealInPlace seals the plaintext buf[SealOffset():] as the frame hdr,
	// writing over buf[:SealOffset()] and appending to buf, and returns the
	// sealed frame: buf extended, or a copy if buf's capacity was short.
	SealInPlace(hdr FrameHeader, buf []byte) ([]byte, error)
	// OpenInPlace opens the frame hdr in its own buffer and returns its
	// plaintext, a subslice of sealed. It overwrites sealed, also when it
	// refuses the frame, so the caller must own it.
	OpenInPlace(hdr FrameHeader, sealed []byte) ([]byte, error)
}

// FrameOwner is implemented by a transport whose receivers hand every frame
// over in a buffer of its own, which nothing else reads or writes afterwards
// (the NATS transport: the client copies each message off the connection).
// The runtime then opens frames in place with an InPlaceCodec.
type FrameOwner interface {
	// ReceiverOwnsFrames reports whether received frames are the
	// receiver's to overwrite.
	ReceiverOwnsFrames() bool
}

// IdentityCodec passes frames through unchanged: the default, for pipelines
// whose exchanges need no confidentiality.
type IdentityCodec struct{}

// Seal returns plaintext itself, without copying it into dst.
func (IdentityCodec) Seal(_ FrameHeader, _, plaintext []byte) ([]byte, error) { return plaintext, nil }

// Open returns sealed itself, without copying it into dst.
func (IdentityCodec) Open(_ FrameHeader, _, sealed []byte) ([]byte, error) { return sealed, nil }

// sameArray reports whether a and b share their backing array (both
// non-empty capacity slices ending at the same element of it).
func sameArray(a, b []byte) bool {
	return cap(a) > 0 && cap(b) > 0 && &a[:cap(a)][cap(a)-1] == &b[:cap(b)][cap(b)-1]
}

// Frame kinds: the first byte of a plaintext frame.
const (
	frameBatch     = 0x01 // followed by a record batch (record.AppendBatch)
	frameWatermark = 0x02 // followed by a big-endian int64 watermark
	frameBarrier   = 0x03 // followed by a big-endian uint64 checkpoint id
)

func appendBatchFrame(dst []byte, s *record.Schema, b *record.Batch) ([]byte, error) {
	return record.AppendBatch(append(dst, frameBatch), s, b)
}

func appendWatermarkFrame(dst []byte, wm int64) []byte {
	return binary.BigEndian.AppendUint64(append(dst, frameWatermark), uint64(wm))
}

func appendBarrierFrame(dst []byte, id uint64) []byte {
	return binary.BigEndian.AppendUint64(append(dst, frameBarrier), id)
}

// errBadFrame is wrapped by decodeFrame errors.
var errBadFrame = errors.New("malformed frame")

// decodeFrame decodes a plaintext frame: a batch into b (kind frameBatch), a
// watermark (frameWatermark, v the watermark) or a checkpoint barrier
// (frameBarrier, v the checkpoint id).
func decodeFrame(f []byte, s *record.Schema, d *record.Decoder, b *record.Batch) (kind byte, v int64, err error) {
	if len(f) == 0 {
		return 0, 0, fmt.Errorf("%w: empty", errBadFrame)
	}
	switch f[0] {
	case frameBatch:
		if err := d.Decode(f[1:], s, b); err != nil {
			return 0, 0, fmt.Errorf("%w: %w", errBadFrame, err)
		}
		return frameBatch, 0, nil
	case frameWatermark, frameBarrier:
		if len(f) != 9 {
			return 0, 0, fmt.Errorf("%w: frame of kind 0x%02x has %d bytes, want 9", errBadFrame, f[0], len(f))
		}
		v := int64(binary.BigEndian.Uint64(f[1:]))
		if f[0] == frameBarrier && v <= 0 {
			return 0, 0, fmt.Errorf("%w: barrier for checkpoint %d", errBadFrame, uint64(v))
		}
		return f[0], v, nil
	}
	return 0, 0, fmt.Errorf("%w: unknown kind 0x%02x", errBadFrame, f[0])
}
