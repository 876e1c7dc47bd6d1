package confidential

import (
	"bytes"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/seal"
)

// FuzzExchangeOpen feeds arbitrary bytes to ExchangeCodec.Open as the first
// frame of a channel: it must never panic, and must accept only the one
// genuine frame.
func FuzzExchangeOpen(f *testing.F) {
	keys := seal.NewKeyring()
	if _, err := keys.Generate("job-f", 1); err != nil {
		f.Fatal(err)
	}
	sealer, err := NewExchangeCodec("job-f", keys, WithPadding(32))
	if err != nil {
		f.Fatal(err)
	}
	h := hdr("job-f", 2, 1, 0, 1)
	genuine, err := sealer.Seal(h, nil, []byte("\x01genuine exchange frame"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(genuine)
	f.Add(genuine[:len(genuine)-1])
	f.Add([]byte{})
	f.Add([]byte("\x01\x02\x00\x05job-f"))
	f.Fuzz(func(t *testing.T, frame []byte) {
		c, err := NewExchangeCodec("job-f", keys, WithRejectHandler(func(string, string, error) {}))
		if err != nil {
			t.Fatal(err)
		}
		// Open appends to a caller's buffer: what is there must survive.
		dst := append(make([]byte, 0, 8), "kept"...)
		pt, err := c.Open(h, dst, frame)
		if err == nil && !bytes.Equal(frame, genuine) {
			t.Fatalf("accepted a frame that is not the genuine one: %x -> %q", frame, pt)
		}
		if err == nil && string(pt) != "kept\x01genuine exchange frame" {
			t.Fatalf("opened the genuine frame into %q, want the plaintext appended to %q", pt, "kept")
		}
		if err != nil && seal.ReasonOf(err) == "" {
			t.Fatalf("refusal %v names no seal reason", err)
		}
	})
}

// FuzzDecodeBody decodes arbitrary bytes as the opened body of an ingest or
// output frame (last or not): it must never panic, and what it accepts must
// re-encode to the same bytes.
func FuzzDecodeBody(f *testing.F) {
	good, err := appendBody(nil, meterSchema, batchOf(meterReading(1), meterReading(2)), false, 0)
	if err != nil {
		f.Fatal(err)
	}
	last, err := appendBody(nil, meterSchema, batchOf(meterReading(3)), true, 4)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, false)
	f.Add(last, true)
	f.Add([]byte{0}, true)
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, body []byte, isLast bool) {
		var (
			d record.Decoder
			b record.Batch
		)
		n, err := decodeBody(body, isLast, meterSchema, &d, &b)
		if err != nil {
			return
		}
		if isLast && (n < 1 || n > MaxPartitions) {
			t.Fatalf("accepted partition count %d", n)
		}
		again, err := appendBody(nil, meterSchema, &b, isLast, n)
		if err != nil {
			t.Fatalf("re-encoding an accepted body: %v", err)
		}
		if !bytes.Equal(again, body) {
			t.Fatalf("body %x decoded and re-encoded to %x", body, again)
		}
	})
}
