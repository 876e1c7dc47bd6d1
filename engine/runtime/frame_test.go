package runtime

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/exchange"
)

func FuzzDecodeFrame(f *testing.F) {
	s := &record.Schema{Fields: []record.Field{{Name: "a", Type: record.TypeInt}, {Name: "s", Type: record.TypeString}}}
	good, err := appendBatchFrame(nil, s, &record.Batch{Records: []record.Record{{Time: 5, Values: []record.Value{record.Int(1), record.String("x")}}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(appendWatermarkFrame(nil, -7))
	f.Add([]byte{frameWatermark, 1})
	f.Add(appendBarrierFrame(nil, 42))
	f.Add([]byte{0x7f})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, frame []byte) {
		var d record.Decoder
		var b record.Batch
		kind, v, err := decodeFrame(frame, s, &d, &b)
		if err != nil {
			if !errors.Is(err, errBadFrame) {
				t.Fatalf("decodeFrame error %v does not wrap errBadFrame", err)
			}
			return
		}
		// What decodes re-encodes to the same bytes.
		var again []byte
		switch kind {
		case frameBatch:
			again, err = appendBatchFrame(nil, s, &b)
			if err != nil {
				t.Fatalf("re-encoding a decoded batch: %v", err)
			}
		case frameWatermark:
			again = appendWatermarkFrame(nil, v)
		case frameBarrier:
			again = appendBarrierFrame(nil, uint64(v))
		default:
			t.Fatalf("decodeFrame returned kind 0x%02x", kind)
		}
		if !bytes.Equal(again, frame) {
			t.Fatalf("frame %x decodes and re-encodes to %x", frame, again)
		}
	})
}

// aeadCodec seals frames with AES-GCM, the header as associated data and a
// nonce derived from it, like the confidential-pipeline codec will.
type aeadCodec struct {
	aead           cipher.AEAD
	sealed, opened atomic.Int64
	tamper         bool // flip a bit of every sealed frame of edge 0 seq 3
}

func newAEADCodec(t *testing.T) *aeadCodec {
	block, err := aes.NewCipher(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	g, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return &aeadCodec{aead: g}
}

func (c *aeadCodec) nonceAD(h FrameHeader) ([]byte, []byte) {
	ad, _ := h.AppendBinary(nil)
	sum := sha256.Sum256(ad)
	return sum[:c.aead.NonceSize()], ad
}

func (c *aeadCodec) Seal(h FrameHeader, dst, p []byte) ([]byte, error) {
	c.sealed.Add(1)
	nonce, ad := c.nonceAD(h)
	start := len(dst)
	out := c.aead.Seal(dst, nonce, p, ad)
	if c.tamper && h.Seq == 3 {
		out[start] ^= 1
	}
	return out, nil
}

func (c *aeadCodec) Open(h FrameHeader, dst, s []byte) ([]byte, error) {
	c.opened.Add(1)
	nonce, ad := c.nonceAD(h)
	return c.aead.Open(dst, nonce, s, ad)
}

// TestCodecSealsEveryFrame runs the windowed job with an AEAD codec: results
// must be unchanged, every frame sealed and opened, and a tampered frame
// must fail the job.
func TestCodecSealsEveryFrame(t *testing.T) {
	const n = 5000
	want := expectWindowed(n)
	for _, tamper := range []bool{false, true} {
		codec := newAEADCodec(t)
		codec.tamper = tamper
		var c Collector
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		res, err := Run(ctx, windowedSpec(2), Options{
			Sources:   map[string]Source{"events": GeneratorSource(n, 100, func(i int64, r *record.Record) error { event(i, r); return nil })},
			Sinks:     map[string]Sink{"results": c.Sink()},
			Codec:     codec,
			BatchSize: 100,
		})
		cancel()
		if tamper {
			if err == nil || !strings.Contains(err.Error(), "opening frame") {
				t.Fatalf("tampered run: err = %v, want a frame that fails to open", err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if got := rows(c.Records()); !slices.Equal(got, want) {
			t.Fatalf("sealed run: got %d rows, want %d", len(got), len(want))
		}
		if codec.sealed.Load() != res.Frames || codec.opened.Load() != res.Frames || res.Frames == 0 {
			t.Fatalf("sealed %d and opened %d frames; the run sent %d", codec.sealed.Load(), codec.opened.Load(), res.Frames)
		}
	}
}

func TestFrameHeaderBinaryDistinct(t *testing.T) {
	hs := []FrameHeader{
		{Job: "j", Edge: 1, From: 2, To: 3, Seq: 4},
		{Job: "j", Edge: 1, From: 2, To: 3, Seq: 5},
		{Job: "j", Edge: 1, From: 3, To: 2, Seq: 4},
		{Job: "j", Edge: 2, From: 2, To: 3, Seq: 4},
		{Job: "k", Edge: 1, From: 2, To: 3, Seq: 4},
		{Job: "j\x01", Edge: 2, From: 3, To: 4, Seq: 4},
	}
	seen := map[string]FrameHeader{}
	for _, h := range hs {
		b, _ := h.AppendBinary(nil)
		if prev, dup := seen[string(b)]; dup {
			t.Fatalf("headers %v and %v encode the same", prev, h)
		}
		seen[string(b)] = h
	}
	if b, _ := hs[0].AppendBinary(nil); binary.BigEndian.Uint64(b[len(b)-8:]) != 4 {
		t.Fatal("sequence not at the end of the header encoding")
	}
}

// copyingTransport is a Local transport whose Send copies the frame and that
// says so (CopiesFrames), as the NATS transport does: the runtime may then
// reuse its frame buffers.
type copyingTransport struct{ *exchange.Local }

func (c copyingTransport) CopiesFrames() bool { return true }

func (c copyingTransport) Sender(ctx context.Context, id exchange.ChannelID) (exchange.Sender, error) {
	s, err := c.Local.Sender(ctx, id)
	return copyingSender{s}, err
}

type copyingSender struct{ exchange.Sender }

func (s copyingSender) Send(ctx context.Context, frame []byte) error {
	return s.Sender.Send(ctx, bytes.Clone(frame))
}

// bufferRecorder wraps a codec and keeps every frame Seal returned, so a
// test can count the distinct buffers frames were sealed into.
type bufferRecorder struct {
	FrameCodec
	mu     sync.Mutex
	frames [][]byte
}

func (r *bufferRecorder) Seal(h FrameHeader, dst, p []byte) ([]byte, error) {
	out, err := r.FrameCodec.Seal(h, dst, p)
	r.mu.Lock()
	r.frames = append(r.frames, out)
	r.mu.Unlock()
	return out, err
}

// buffers returns the number of distinct backing arrays of the recorded
// frames. The recorder holds every frame, so no array is freed and
// reallocated at the same address meanwhile.
func (r *bufferRecorder) buffers() int {
	seen := map[*byte]bool{}
	for _, f := range r.frames {
		seen[&f[:cap(f)][cap(f)-1]] = true
	}
	return len(seen)
}

// TestFrameBufferReuse checks the frame buffer contract: over a transport
// that copies frames, the runtime seals into a few buffers it reuses; over
// one that hands frames to the consumer (Local), every frame has its own
// buffer, whether the codec seals into dst or returns the plaintext itself.
// Results must be exact either way: a buffer reused while a consumer still
// holds it would corrupt them.
func TestFrameBufferReuse(t *testing.T) {
	const n = 20000
	want := expectWindowed(n)
	for _, tc := range []struct {
		name   string
		copies bool
		codec  func() FrameCodec
	}{
		{"local/aead", false, func() FrameCodec { return newAEADCodec(t) }},
		{"local/identity", false, func() FrameCodec { return IdentityCodec{} }},
		{"copying/aead", true, func() FrameCodec { return newAEADCodec(t) }},
		{"copying/identity", true, func() FrameCodec { return IdentityCodec{} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &bufferRecorder{FrameCodec: tc.codec()}
			var tr exchange.Transport = exchange.NewLocal(4, 1<<20, nil)
			if tc.copies {
				tr = copyingTransport{tr.(*exchange.Local)}
			}
			var c Collector
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			res, err := Run(ctx, windowedSpec(2), Options{
				Sources:           map[string]Source{"events": GeneratorSource(n, 100, func(i int64, r *record.Record) error { event(i, r); return nil })},
				Sinks:             map[string]Sink{"results": c.Sink()},
				Transport:         tr,
				Codec:             rec,
				BatchSize:         100,
				WatermarkInterval: -1, // a watermark frame after every batch
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := rows(c.Records()); !slices.Equal(got, want) {
				t.Fatalf("got %d rows, want %d", len(got), len(want))
			}
			frames, bufs := len(rec.frames), rec.buffers()
			if int64(frames) != res.Frames || frames < 200 {
				t.Fatalf("recorded %d sealed frames; the run sent %d (want at least 200)", frames, res.Frames)
			}
			if !tc.copies && bufs != frames {
				t.Fatalf("%d frames handed to consumers share %d buffers; each needs its own", frames, bufs)
			}
			// Per producing subtask: one batch and one watermark buffer,
			// and a few regrowths of each.
			if tc.copies && bufs > 16 {
				t.Fatalf("%d frames were sealed into %d buffers; the transport copies frames, so a few reused buffers suffice", frames, bufs)
			}
		})
	}
}

// inPlaceCodec is an InPlaceCodec: frames are a 5-byte marker and the
// AES-GCM sealed plaintext; batch frames are sealed and, where the transport
// hands frames over, opened in place. It counts both kinds of calls.
type inPlaceCodec struct {
	aeadCodec
	sealedInPlace, openedInPlace atomic.Int64
}

const inPlaceMarker = "SEAL:"

func (c *inPlaceCodec) SealOffset() int { return len(inPlaceMarker) }

func (c *inPlaceCodec) Seal(h FrameHeader, dst, p []byte) ([]byte, error) {
	return c.aeadCodec.Seal(h, append(dst, inPlaceMarker...), p)
}

func (c *inPlaceCodec) SealInPlace(h FrameHeader, buf []byte) ([]byte, error) {
	c.sealedInPlace.Add(1)
	nonce, ad := c.nonceAD(h)
	copy(buf, inPlaceMarker)
	p := buf[len(inPlaceMarker):]
	return c.aead.Seal(buf[:len(inPlaceMarker)], nonce, p, ad), nil
}

func (c *inPlaceCodec) open(h FrameHeader, dst, s []byte, inPlace bool) ([]byte, error) {
	if !bytes.HasPrefix(s, []byte(inPlaceMarker)) {
		return nil, errors.New("frame without the marker")
	}
	nonce, ad := c.nonceAD(h)
	s = s[len(inPlaceMarker):]
	if inPlace {
		dst = s[:0]
	}
	return c.aead.Open(dst, nonce, s, ad)
}

func (c *inPlaceCodec) Open(h FrameHeader, dst, s []byte) ([]byte, error) {
	c.opened.Add(1)
	return c.open(h, dst, s, false)
}

func (c *inPlaceCodec) OpenInPlace(h FrameHeader, s []byte) ([]byte, error) {
	c.openedInPlace.Add(1)
	out, err := c.open(h, nil, s, true)
	if err == nil && len(out) > 0 && &out[0] != &s[len(inPlaceMarker)] {
		return nil, errors.New("not opened in place")
	}
	return out, err
}

// owningTransport says its receivers own the frames they get (FrameOwner).
type owningTransport struct{ exchange.Transport }

func (o owningTransport) ReceiverOwnsFrames() bool { return true }

// copyingOwningTransport copies frames on send and its receivers own them,
// as the NATS transport's do.
type copyingOwningTransport struct{ copyingTransport }

func (copyingOwningTransport) ReceiverOwnsFrames() bool { return true }

// TestInPlaceCodec runs the windowed job with an InPlaceCodec: every batch
// frame is sealed in place (watermark frames through Seal), frames are opened
// in place exactly when the transport's receivers own them, and results are
// exact, over a transport that hands frames over (Local) and one that copies
// them and lets the runtime reuse its buffers. A tampered frame fails the job
// when opened in place too.
func TestInPlaceCodec(t *testing.T) {
	const n = 20000
	want := expectWindowed(n)
	for _, tc := range []struct {
		name          string
		copies, owner bool
		tamper        bool
	}{
		{"local", false, false, false},
		{"local/owner", false, true, false},
		{"copying", true, false, false},
		{"copying/owner", true, true, false},
		{"copying/owner/tampered", true, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			codec := &inPlaceCodec{aeadCodec: *newAEADCodec(t)}
			codec.tamper = tc.tamper
			local := exchange.NewLocal(4, 1<<20, nil)
			var tr exchange.Transport = local
			switch {
			case tc.copies && tc.owner:
				tr = copyingOwningTransport{copyingTransport{local}}
			case tc.copies:
				tr = copyingTransport{local}
			case tc.owner:
				tr = owningTransport{local}
			}
			var c Collector
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			res, err := Run(ctx, windowedSpec(2), Options{
				Sources:           map[string]Source{"events": GeneratorSource(n, 100, func(i int64, r *record.Record) error { event(i, r); return nil })},
				Sinks:             map[string]Sink{"results": c.Sink()},
				Transport:         tr,
				Codec:             codec,
				BatchSize:         100,
				WatermarkInterval: -1, // a watermark frame after every batch
			})
			if tc.tamper {
				if err == nil || !strings.Contains(err.Error(), "opening frame") {
					t.Fatalf("tampered run: err = %v, want a frame that fails to open", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := rows(c.Records()); !slices.Equal(got, want) {
				t.Fatalf("got %d rows, want %d", len(got), len(want))
			}
			inPlace, appended := codec.sealedInPlace.Load(), codec.sealed.Load()
			if inPlace < 100 || appended < 100 || inPlace+appended != res.Frames {
				t.Fatalf("sealed %d frames in place and %d by Seal; the run sent %d (want both kinds, batches and watermarks)", inPlace, appended, res.Frames)
			}
			opened, openedInPlace := codec.opened.Load(), codec.openedInPlace.Load()
			switch {
			case opened+openedInPlace != res.Frames:
				t.Fatalf("opened %d + %d in place frames; the run sent %d", opened, openedInPlace, res.Frames)
			case tc.owner && opened != 0, !tc.owner && openedInPlace != 0:
				t.Fatalf("receivers own frames: %v, but %d frames were opened by Open and %d in place", tc.owner, opened, openedInPlace)
			}
		})
	}
}
