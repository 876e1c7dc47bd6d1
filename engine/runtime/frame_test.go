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
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/record"
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
	f.Add([]byte{0x7f})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, frame []byte) {
		var d record.Decoder
		var b record.Batch
		isBatch, wm, err := decodeFrame(frame, s, &d, &b)
		if err != nil {
			if !errors.Is(err, errBadFrame) {
				t.Fatalf("decodeFrame error %v does not wrap errBadFrame", err)
			}
			return
		}
		// What decodes re-encodes to the same bytes.
		var again []byte
		if isBatch {
			again, err = appendBatchFrame(nil, s, &b)
			if err != nil {
				t.Fatalf("re-encoding a decoded batch: %v", err)
			}
		} else {
			again = appendWatermarkFrame(nil, wm)
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

func (c *aeadCodec) Seal(h FrameHeader, p []byte) ([]byte, error) {
	c.sealed.Add(1)
	nonce, ad := c.nonceAD(h)
	out := c.aead.Seal(nil, nonce, p, ad)
	if c.tamper && h.Seq == 3 {
		out[0] ^= 1
	}
	return out, nil
}

func (c *aeadCodec) Open(h FrameHeader, s []byte) ([]byte, error) {
	c.opened.Add(1)
	nonce, ad := c.nonceAD(h)
	return c.aead.Open(nil, nonce, s, ad)
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
