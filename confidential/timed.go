package confidential

import (
	goruntime "runtime"
	"sync/atomic"
	"time"

	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/engine/state"
)

// TimedEvery is how often a TimedCodec measures a call: one Seal or Open (or
// SealInPlace, OpenInPlace) in TimedEvery on average, counting TimedEvery
// times its thread CPU time. A sampled call costs several microseconds on a
// virtual machine (three reads of the thread clock, each a system call, and
// a thread lock), as much as sealing a 16 KiB frame: at one call in 8 that
// added about 1 µs to every call, 1% of a q5 run's CPU, charged to sealed
// runs only; at one in 32 it is a quarter of that.
//
// Which calls are sampled is decided by a hash of the call's number, not by
// the number modulo TimedEvery: the frames of a run follow patterns (a
// watermark frame after so many batch frames, frames of several edges in
// turn), and a fixed stride in step with one would time only one kind of
// frame. The set of sampled call numbers is fixed, so a run of very few
// calls may time none (a stride always timed the first).
const TimedEvery = 32

// TimedCodec is a runtime.FrameCodec that estimates the CPU time spent in
// the codec it wraps: sealing's share of a run's work, measured within the
// run. NewTimedCodec returns one.
type TimedCodec interface {
	runtime.FrameCodec
	// Spent returns the estimated CPU time spent so far in the wrapped
	// codec's Seal and Open (and their in-place forms): the thread CPU
	// time of the sampled calls, scaled by TimedEvery. It is zero where the
	// thread CPU clock is not available (outside Linux).
	Spent() time.Duration
	// Calls returns the number of calls made so far, timed or not.
	Calls() int64
}

// NewTimedCodec wraps c in a TimedCodec. The wrapper implements
// runtime.InPlaceCodec exactly when c does, forwarding its in-place methods,
// so the runtime seals and opens in place as it would with c itself. It is
// safe for concurrent use if c is.
//
// A sampled call runs locked to its OS thread and reads that thread's CPU
// clock (CLOCK_THREAD_CPUTIME_ID) before and after: time the thread was
// descheduled does not count, which matters on a shared machine. The clock
// reads themselves take CPU time between two readings (1 to 3 µs on a
// virtual machine, as much as sealing a 2 KiB frame), so a sampled call
// reads the clock three times and subtracts the reading of an empty region.
func NewTimedCodec(c runtime.FrameCodec) TimedCodec {
	t := &timedCodec{c: c}
	if ip, ok := c.(runtime.InPlaceCodec); ok {
		return &timedInPlaceCodec{timedCodec: t, ip: ip}
	}
	return t
}

// timedCodec times a FrameCodec.
type timedCodec struct {
	c     runtime.FrameCodec
	spent atomic.Int64 // nanoseconds, scaled
	calls atomic.Int64
}

var (
	_ TimedCodec           = (*timedCodec)(nil)
	_ runtime.InPlaceCodec = (*timedInPlaceCodec)(nil)
)

func (t *timedCodec) Spent() time.Duration { return max(time.Duration(t.spent.Load()), 0) }

func (t *timedCodec) Calls() int64 { return t.calls.Load() }

// sample reports whether this call is one to time: one in TimedEvery, chosen
// by a hash of the call's number (see TimedEvery).
func (t *timedCodec) sample() bool { return sampled(uint64(t.calls.Add(1))) }

// sampled reports whether call number n is one to time: the murmur3
// finalizer of n (state.Mix), modulo TimedEvery, is zero.
func sampled(n uint64) bool { return state.Mix(n)%TimedEvery == 0 }

// timed runs f locked to its thread and adds its thread CPU time, scaled, to
// spent. The clock's own cost within the region (the return of one read and
// the entry of the next) is measured on the spot, by an empty region read
// just before, and subtracted: it varies over time by a factor of two on a
// virtual machine, so no one calibration holds.
func (t *timedCodec) timed(f func()) {
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	t0 := threadCPU()
	t1 := threadCPU()
	f()
	t2 := threadCPU()
	// Not clamped at zero: a sample whose empty region read long offsets
	// one whose empty region read short, so the sum stays unbiased.
	t.spent.Add(TimedEvery * int64((t2-t1)-(t1-t0)))
}

func (t *timedCodec) Seal(h runtime.FrameHeader, dst, p []byte) (out []byte, err error) {
	if !t.sample() {
		return t.c.Seal(h, dst, p)
	}
	t.timed(func() { out, err = t.c.Seal(h, dst, p) })
	return out, err
}

func (t *timedCodec) Open(h runtime.FrameHeader, dst, s []byte) (out []byte, err error) {
	if !t.sample() {
		return t.c.Open(h, dst, s)
	}
	t.timed(func() { out, err = t.c.Open(h, dst, s) })
	return out, err
}

// timedInPlaceCodec times an InPlaceCodec.
type timedInPlaceCodec struct {
	*timedCodec
	ip runtime.InPlaceCodec
}

func (t *timedInPlaceCodec) SealOffset() int { return t.ip.SealOffset() }

func (t *timedInPlaceCodec) SealInPlace(h runtime.FrameHeader, buf []byte) (out []byte, err error) {
	if !t.sample() {
		return t.ip.SealInPlace(h, buf)
	}
	t.timed(func() { out, err = t.ip.SealInPlace(h, buf) })
	return out, err
}

func (t *timedInPlaceCodec) OpenInPlace(h runtime.FrameHeader, sealed []byte) (out []byte, err error) {
	if !t.sample() {
		return t.ip.OpenInPlace(h, sealed)
	}
	t.timed(func() { out, err = t.ip.OpenInPlace(h, sealed) })
	return out, err
}
