package confidential

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/seal"
)

// rejections collects what a RejectFunc reports.
type rejections struct {
	mu      sync.Mutex
	reasons []string
}

func (r *rejections) handler() RejectFunc {
	return func(scope, reason string, err error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.reasons = append(r.reasons, reason)
	}
}

func (r *rejections) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.reasons...)
}

func hdr(job string, edge, from, to int, seq uint64) runtime.FrameHeader {
	return runtime.FrameHeader{Job: job, Edge: edge, From: from, To: to, Seq: seq}
}

func TestExchangeCodecRoundTripConcurrent(t *testing.T) {
	c, err := NewEphemeralExchangeCodec("job-1", WithPadding(64))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for from := range 4 {
		for to := range 4 {
			wg.Go(func() {
				for seq := uint64(1); seq <= 50; seq++ {
					h := hdr("job-1", 3, from, to, seq)
					pt := fmt.Appendf(nil, "frame %d/%d #%d", from, to, seq)
					sealed, err := c.Seal(h, nil, pt)
					if err != nil {
						errs <- err
						return
					}
					if bytes.Contains(sealed, pt) {
						errs <- fmt.Errorf("sealed frame %s contains its plaintext", h)
						return
					}
					if len(sealed) != seal.HeaderSizeFor("job-1")+64+seal.Overhead {
						errs <- fmt.Errorf("sealed frame %s has %d bytes, want one padding bucket", h, len(sealed))
						return
					}
					got, err := c.Open(h, nil, sealed)
					if err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(got, pt) {
						errs <- fmt.Errorf("frame %s opened to %q, want %q", h, got, pt)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestExchangeCodecRefuses delivers, after a good first frame, a bad frame in
// place of the second and checks that it is refused with the right reason,
// reported and counted, and that the genuine second frame still opens.
func TestExchangeCodecRefuses(t *testing.T) {
	const job = "job-x"
	keys := seal.NewKeyring()
	if _, err := keys.Generate(job, 1); err != nil {
		t.Fatal(err)
	}
	otherKeys := seal.NewKeyring() // another job's key set, same job name
	if _, err := otherKeys.Generate(job, 1); err != nil {
		t.Fatal(err)
	}
	unadmitted := seal.NewKeyring() // a sender holding a later epoch the job never received
	if _, err := unadmitted.Generate(job, 2); err != nil {
		t.Fatal(err)
	}
	ch := hdr(job, 1, 0, 1, 1)
	type frames struct{ f1, f2, f3 []byte }
	mk := func(t *testing.T, k *seal.Keyring, h runtime.FrameHeader, opts ...Option) frames {
		c, err := NewExchangeCodec(job, k, opts...)
		if err != nil {
			t.Fatal(err)
		}
		var fs [3][]byte
		for i := range fs {
			h.Seq = uint64(i + 1)
			if fs[i], err = c.Seal(h, nil, fmt.Appendf(nil, "payload %d", i+1)); err != nil {
				t.Fatal(err)
			}
		}
		return frames{fs[0], fs[1], fs[2]}
	}
	for _, tc := range []struct {
		name   string
		bad    func(t *testing.T, good frames) []byte
		reason seal.Reason
	}{
		{"flipped bit", func(t *testing.T, g frames) []byte {
			b := bytes.Clone(g.f2)
			b[len(b)-20] ^= 1
			return b
		}, seal.ReasonTampered},
		{"flipped header bit", func(t *testing.T, g frames) []byte {
			h, err := seal.ParseHeader(g.f2)
			if err != nil {
				t.Fatal(err)
			}
			h.MaxTime++ // claim another event-time range
			b, err := h.AppendBinary(nil)
			if err != nil {
				t.Fatal(err)
			}
			return append(b, g.f2[h.Size():]...)
		}, seal.ReasonTampered},
		{"replayed frame", func(t *testing.T, g frames) []byte { return g.f1 }, seal.ReasonReplayed},
		{"reordered frame", func(t *testing.T, g frames) []byte { return g.f3 }, seal.ReasonGap},
		{"frame of another channel", func(t *testing.T, g frames) []byte {
			return mk(t, keys, hdr(job, 1, 1, 1, 1)).f2
		}, seal.ReasonForeign},
		{"another key set's key", func(t *testing.T, g frames) []byte { return mk(t, otherKeys, ch).f2 }, seal.ReasonForeign},
		{"unadmitted sender", func(t *testing.T, g frames) []byte { return mk(t, unadmitted, ch).f2 }, seal.ReasonUnknownEpoch},
		{"plaintext frame", func(t *testing.T, g frames) []byte { return mk(t, nil, ch, WithPlaintext()).f2 }, seal.ReasonPlaintext},
		{"garbage", func(t *testing.T, g frames) []byte { return []byte("not a frame") }, seal.ReasonMalformed},
	} {
		// Each case with Open and with OpenInPlace, which must refuse the
		// same frames (it overwrites them, so it gets copies).
		for _, inPlace := range []bool{false, true} {
			name := tc.name
			if inPlace {
				name = "in place/" + name
			}
			t.Run(name, func(t *testing.T) {
				var rej rejections
				counter := seal.NewRejectionCounter()
				c, err := NewExchangeCodec(job, keys, WithRejectHandler(rej.handler()), WithRejectionCounter(counter))
				if err != nil {
					t.Fatal(err)
				}
				open := c.Open
				if inPlace {
					open = func(h runtime.FrameHeader, _, sealed []byte) ([]byte, error) {
						return c.OpenInPlace(h, bytes.Clone(sealed))
					}
				}
				good := mk(t, keys, ch)
				h := ch
				if _, err := open(h, nil, good.f1); err != nil {
					t.Fatalf("first genuine frame: %v", err)
				}
				h.Seq = 2
				pt, err := open(h, nil, tc.bad(t, good))
				if err == nil {
					t.Fatalf("bad frame accepted, opened to %q", pt)
				}
				if got := seal.ReasonOf(err); got != tc.reason {
					t.Fatalf("refused with reason %q (%v), want %q", got, err, tc.reason)
				}
				var refusal interface{ RefusedBy() string }
				if !errors.As(err, &refusal) || refusal.RefusedBy() != "seal."+string(tc.reason) {
					t.Errorf("error %v does not name the rule seal.%s", err, tc.reason)
				}
				if got := rej.list(); len(got) != 1 || got[0] != string(tc.reason) {
					t.Errorf("reported %v, want [%s]", got, tc.reason)
				}
				kind := "exchange"
				if tc.reason == seal.ReasonMalformed {
					kind = "unknown"
				}
				if n := counterValue(t, counter, kind, string(tc.reason)); n != 1 {
					t.Errorf("counter %s/%s = %v, want 1", kind, tc.reason, n)
				}
				if pt, err := open(h, nil, good.f2); err != nil || string(pt) != "payload 2" {
					t.Errorf("genuine frame after the refusal: %q, %v", pt, err)
				}
			})
		}
	}
}

func counterValue(t *testing.T, c *seal.RejectionCounter, kind, reason string) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Collector().(*prometheus.CounterVec).WithLabelValues(kind, reason).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestExchangeCodecAppends checks the buffer contract of Seal and Open: both
// append to the caller's buffer, leaving what it held intact, and with
// buffers the caller reuses a frame costs no allocation.
func TestExchangeCodecAppends(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   []Option
		prefix string
	}{
		{"empty dst", nil, ""},
		{"prefixed dst", nil, "prefix"},
		{"padded, prefixed dst", []Option{WithPadding(256)}, "prefix"},
		{"plaintext mode", []Option{WithPlaintext()}, "prefix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewEphemeralExchangeCodec("job-a", tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			var sealed, opened []byte
			pt := bytes.Repeat([]byte("frame "), 200)
			roundTrip := func(i int) {
				h := hdr("job-a", 3, 1, 2, uint64(i))
				pt[0] = byte(i)
				s, err := c.Seal(h, append(sealed[:0], tc.prefix...), pt)
				if err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
				if string(s[:len(tc.prefix)]) != tc.prefix {
					t.Fatalf("frame %d: Seal overwrote the %q already in dst", i, tc.prefix)
				}
				o, err := c.Open(h, append(opened[:0], tc.prefix...), s[len(tc.prefix):])
				if err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
				if string(o[:len(tc.prefix)]) != tc.prefix || !bytes.Equal(o[len(tc.prefix):], pt) {
					t.Fatalf("frame %d: opened %q, want %q then the %d plaintext bytes", i, o, tc.prefix, len(pt))
				}
				sealed, opened = s, o
			}
			roundTrip(1)
			next := 2
			if allocs := testing.AllocsPerRun(20, func() { roundTrip(next); next++ }); allocs != 0 {
				t.Fatalf("a round trip with reused buffers allocated %.1f times per frame, want none", allocs)
			}
		})
	}
}

// TestExchangeCodecInPlace checks SealInPlace and OpenInPlace: on one channel
// frames sealed in place and by Seal (as the runtime mixes batches and
// watermarks) share its sequence and open with Open and OpenInPlace alike;
// a frame is sealed and opened within its buffer, and with reused buffers
// a frame costs no allocation.
func TestExchangeCodecInPlace(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []Option
	}{
		{"sealed", nil},
		{"padded", []Option{WithPadding(256)}},
		{"plaintext mode", []Option{WithPlaintext()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sender, err := NewEphemeralExchangeCodec("job-a", tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			receiver := sender // the codec is shared by a run's subtasks
			off := sender.SealOffset()
			if want := seal.HeaderSizeFor("job-a") + seal.NonceSize; tc.name != "plaintext mode" && off != want {
				t.Fatalf("SealOffset = %d, want %d", off, want)
			}
			pt := bytes.Repeat([]byte("frame "), 200)
			buf := make([]byte, 0, off+len(pt)+512)
			var sealed []byte
			frame := func(i int) {
				h := hdr("job-a", 3, 1, 2, uint64(i))
				pt[0] = byte(i)
				var f []byte
				if i%3 == 0 {
					if f, err = sender.Seal(h, sealed[:0], pt); err != nil {
						t.Fatalf("frame %d: Seal: %v", i, err)
					}
					sealed = f
				} else {
					b := append(buf[:off], pt...)
					if f, err = sender.SealInPlace(h, b); err != nil {
						t.Fatalf("frame %d: SealInPlace: %v", i, err)
					}
					if &f[0] != &buf[:1][0] {
						t.Fatalf("frame %d: sealed outside its buffer, which had room", i)
					}
				}
				if tc.name != "plaintext mode" && bytes.Contains(f, pt[1:]) {
					t.Fatalf("frame %d: the sealed frame holds its plaintext", i)
				}
				var o []byte
				if i%2 == 0 {
					o, err = receiver.OpenInPlace(h, f)
					if err == nil && &o[0] != &f[off] {
						t.Fatalf("frame %d: not opened in its buffer", i)
					}
				} else {
					o, err = receiver.Open(h, nil, f)
				}
				if err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
				if !bytes.Equal(o, pt) {
					t.Fatalf("frame %d opened to %d bytes, want the %d plaintext bytes", i, len(o), len(pt))
				}
			}
			for i := 1; i <= 12; i++ {
				frame(i)
			}
			// SealInPlace, OpenInPlace on a steady channel: no allocation.
			next := 13
			inPlaceRound := func() {
				h := hdr("job-a", 3, 1, 2, uint64(next))
				next++
				f, err := sender.SealInPlace(h, append(buf[:off], pt...))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := receiver.OpenInPlace(h, f); err != nil {
					t.Fatal(err)
				}
			}
			if allocs := testing.AllocsPerRun(20, inPlaceRound); allocs != 0 {
				t.Fatalf("an in-place round trip allocated %.1f times per frame, want none", allocs)
			}
			// Out of order and short buffers are refused.
			if _, err := sender.SealInPlace(hdr("job-a", 3, 1, 2, uint64(next+1)), append(buf[:off], pt...)); err == nil {
				t.Fatal("SealInPlace accepted a frame out of order")
			}
			if _, err := sender.SealInPlace(hdr("job-a", 3, 1, 2, uint64(next)), buf[:off-1]); err == nil {
				t.Fatal("SealInPlace accepted a buffer shorter than its offset")
			}
		})
	}
}
