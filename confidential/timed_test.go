package confidential

import (
	"bytes"
	"fmt"
	goruntime "runtime"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/runtime"
)

// opaqueCodec hides everything of a FrameCodec but Seal and Open.
type opaqueCodec struct{ runtime.FrameCodec }

func TestTimedCodec(t *testing.T) {
	for _, tc := range []struct {
		name    string
		inPlace bool
	}{{"in place", true}, {"seal and open only", false}} {
		t.Run(tc.name, func(t *testing.T) {
			sealer, err := NewEphemeralExchangeCodec("timed")
			if err != nil {
				t.Fatal(err)
			}
			// The opener shares the sealer's key but has its own channels.
			opener, err := NewExchangeCodec("timed", sealer.keys)
			if err != nil {
				t.Fatal(err)
			}
			var inner runtime.FrameCodec = sealer
			if !tc.inPlace {
				inner = opaqueCodec{sealer}
			}
			timed := NewTimedCodec(inner)
			ip, ok := timed.(runtime.InPlaceCodec)
			if ok != tc.inPlace {
				t.Fatalf("wrapper implements InPlaceCodec: %v, want %v (as the wrapped codec)", ok, tc.inPlace)
			}
			if ok && ip.SealOffset() != sealer.SealOffset() {
				t.Errorf("SealOffset %d, want the wrapped codec's %d", ip.SealOffset(), sealer.SealOffset())
			}
			pt := bytes.Repeat([]byte("sealflow"), 8<<10)
			const frames = 50 * TimedEvery // about 50 timed calls: one sample whose empty region reads long (a signal, a fault) cannot cancel them all
			for i := range frames {
				h := runtime.FrameHeader{Job: "timed", Edge: 1, From: 0, To: 1, Seq: uint64(i + 1)}
				var frame []byte
				if ok && i%2 == 0 {
					buf := append(make([]byte, ip.SealOffset(), ip.SealOffset()+len(pt)+64), pt...)
					frame, err = ip.SealInPlace(h, buf)
				} else {
					frame, err = timed.Seal(h, nil, pt)
				}
				if err != nil {
					t.Fatalf("frame %d: seal: %v", i, err)
				}
				got, err := opener.Open(h, nil, frame)
				if err != nil || !bytes.Equal(got, pt) {
					t.Fatalf("frame %d: the wrapped codec's frame does not open with the plain codec: %v", i, err)
				}
			}
			// Frames out of order are refused through the wrapper as by the codec.
			if _, err := timed.Seal(runtime.FrameHeader{Job: "timed", Edge: 1, From: 0, To: 1, Seq: frames + 5}, nil, pt); err == nil {
				t.Error("an out-of-order frame was sealed through the wrapper")
			}
			if timed.Calls() != frames+1 {
				t.Errorf("Calls %d, want %d", timed.Calls(), frames+1)
			}
			if goruntime.GOOS == "linux" && timed.Spent() <= 0 {
				t.Errorf("Spent %v after sealing %d frames of %d bytes, want > 0", timed.Spent(), frames, len(pt))
			}
		})
	}
	// Opening, in place and not, through the wrapper.
	sealer, _ := NewEphemeralExchangeCodec("timed")
	opener, _ := NewExchangeCodec("timed", sealer.keys)
	timed := NewTimedCodec(opener)
	pt := []byte("hello")
	for i := range 3 {
		h := runtime.FrameHeader{Job: "timed", Edge: 2, From: 1, To: 0, Seq: uint64(i + 1)}
		frame, err := sealer.Seal(h, nil, pt)
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		if i == 1 {
			got, err = timed.(runtime.InPlaceCodec).OpenInPlace(h, frame)
		} else {
			got, err = timed.Open(h, nil, frame)
		}
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("frame %d opened through the wrapper: %q, %v", i, got, err)
		}
	}
	if _, err := timed.Open(runtime.FrameHeader{Job: "timed", Edge: 2, From: 1, To: 0, Seq: 4}, nil, []byte("forged frame")); err == nil {
		t.Error("a forged frame opened through the wrapper")
	}
	// The clock's own cost is not counted: per timed call, an identity codec
	// reads as less than half a thread-clock read measured beside it (without
	// the subtraction it reads as at least a whole one). Best of three rounds:
	// other packages' tests load the machine and the clock's cost with it.
	if goruntime.GOOS == "linux" {
		var got, read time.Duration
		for range 3 {
			read = clockRead(1000)
			empty := NewTimedCodec(runtime.IdentityCodec{})
			const calls = 1000 * TimedEvery
			for i := range calls {
				empty.Seal(runtime.FrameHeader{Seq: uint64(i)}, nil, pt)
			}
			// spent is TimedEvery × the sum over the about 1000 timed
			// calls, unclamped (Spent clamps at zero, which would hide a
			// clock cost subtracted twice).
			if got = time.Duration(empty.(*timedCodec).spent.Load()) / calls; got < read/2 && got > -read/2 {
				break
			}
		}
		t.Logf("identity codec: %v per timed call; one clock read %v", got, read)
		if got >= read/2 {
			t.Errorf("an identity codec reads as %v per timed call, not under half a clock read (%v): the clock's cost is counted", got, read)
		}
		if got <= -read/2 {
			t.Errorf("an identity codec reads as %v per timed call, below minus half a clock read (%v): the clock's cost is subtracted more than once", got, read)
		}
	}
	// A codec without in-place methods stays without them.
	if _, ok := NewTimedCodec(runtime.IdentityCodec{}).(runtime.InPlaceCodec); ok {
		t.Error("wrapping IdentityCodec made it an InPlaceCodec")
	}
}

// TestTimedCodecSamplesEveryPhase checks that the calls a TimedCodec times
// are not those of one phase of a periodic pattern of frames: for patterns of
// period 2 to 64 (a watermark frame every so many batch frames, edges taking
// turns), each phase gets close to its share of the samples. Sampling every
// TimedEvery-th call put every sample on one phase of any period dividing
// TimedEvery, so a run whose every eighth frame was a watermark timed only
// watermarks.
func TestTimedCodecSamplesEveryPhase(t *testing.T) {
	const calls = 1 << 20
	for _, period := range []int{2, 3, 4, 8, 16, 32, 64} {
		t.Run(fmt.Sprint(period), func(t *testing.T) {
			perPhase := make([]int, period)
			total := 0
			for n := uint64(1); n <= calls; n++ {
				if sampled(n) {
					perPhase[n%uint64(period)]++
					total++
				}
			}
			if want := calls / TimedEvery; total < want*9/10 || total > want*11/10 {
				t.Fatalf("%d calls sampled of %d, want about %d", total, calls, want)
			}
			for phase, got := range perPhase {
				if want := total / period; got < want*8/10 || got > want*12/10 {
					t.Fatalf("phase %d of %d got %d samples, want about %d: %v", phase, period, got, want, perPhase)
				}
			}
		})
	}
}

// BenchmarkTimedCodec seals and opens one frame per iteration, plain and
// wrapped in a TimedCodec: what the timing adds per frame (two thread-clock
// reads and a thread lock, one call in TimedEvery). The identity codec
// isolates that cost; cpu-ns/op is the process's CPU time per iteration,
// steadier than ns/op on a shared machine.
func BenchmarkTimedCodec(b *testing.B) {
	for _, size := range []int{0, 1 << 10, 64 << 10} {
		for _, wrapped := range []bool{false, true} {
			name := fmt.Sprintf("%d/timed=%t", size, wrapped)
			if size == 0 {
				name = fmt.Sprintf("identity/timed=%t", wrapped)
			}
			b.Run(name, func(b *testing.B) {
				var codec runtime.FrameCodec = runtime.IdentityCodec{}
				if size > 0 {
					c, err := NewEphemeralExchangeCodec("bench")
					if err != nil {
						b.Fatal(err)
					}
					codec = c
				}
				if wrapped {
					codec = NewTimedCodec(codec)
				}
				pt := make([]byte, max(size, 16))
				var sealed, opened []byte
				var err error
				b.SetBytes(int64(size))
				h := runtime.FrameHeader{Job: "bench", Edge: 1, From: 0, To: 1}
				cpu0 := cpuTime()
				for i := range b.N {
					h.Seq = uint64(i + 1)
					if sealed, err = codec.Seal(h, sealed[:0], pt); err != nil {
						b.Fatal(err)
					}
					if opened, err = codec.Open(h, opened[:0], sealed); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

// clockRead returns the mean time between two consecutive thread-clock
// reads over n pairs on one locked thread: what one read costs.
func clockRead(n int) time.Duration {
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	var sum time.Duration
	for range n {
		a := threadCPU()
		sum += threadCPU() - a
	}
	return sum / time.Duration(n)
}
