package udf

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/tetratelabs/wazero/api"
)

// Stopping a running guest (see RATIONALE.md, "CPU time").
//
// wazero stops a guest only through WithCloseOnContextDone, which makes
// every loop header of the compiled code exit to Go to check whether the
// module was closed. Go's wasm code enters a loop in nearly every function,
// so that check made a Go guest four times slower. Instead, Load rewrites
// the module: it adds two mutable i32 globals, $interrupt (exported as
// interruptExport, written only by the host) and $budget, and at the start
// of every loop body the instructions
//
//	$budget = $budget - 1
//	if $budget == 0 {
//		memory.grow 0          ;; an exit to Go (see below)
//		if $interrupt { unreachable }
//		$budget = checkEvery
//	}
//
// (a decrement and a branch in the compiled code). When a call's context is
// done (its batch deadline or the task's cancellation) the watchdog sets
// $interrupt, and the guest traps within checkEvery loop iterations.
//
// The exit to Go matters: compiled wasm cannot be preempted by Go's
// scheduler, so a guest that never leaves it would block a garbage
// collection's stop-the-world, and with it the watchdog's timer, forever.
// memory.grow (of 0 pages: a no-op) is implemented in Go by wazero, where a
// pending preemption takes effect.
//
// As with wazero's own check, only loops are instrumented: code without
// loops runs a bounded number of instructions per call frame, and call depth
// is bounded by wazero's stack limit. The globals are appended after the
// module's own, so no instruction of the original code can name them, and
// the export name is refused in modules that already use it.

// checkEvery is how many loop iterations a guest runs between checks of
// $interrupt (a few hundred microseconds of guest code at most).
const checkEvery = 1 << 16

// interruptExport is the export name of the added global.
const interruptExport = "sealflow_interrupt"

// errNoInstrument is the base of every instrumentation error.
var errNoInstrument = errors.New("cannot instrument module")

// Section ids of the WebAssembly binary format.
const (
	secCustom   = 0
	secImport   = 2
	secMemory   = 5
	secGlobal   = 6
	secExport   = 7
	secStart    = 8
	secElement  = 9
	secCode     = 10
	secData     = 11
	secDataCnt  = 12
	importFunc  = 0
	importTable = 1
	importMem   = 2
	importGlob  = 3
	importTag   = 4
)

// instrument returns wasm with the interrupt global and its checks (see
// above). It refuses modules with a start function (it would run before the
// host can interrupt it; reactors use _initialize) and instructions it does
// not know, rather than leave a loop unchecked.
func instrument(wasm []byte) ([]byte, error) {
	if len(wasm) < 8 || string(wasm[:4]) != "\x00asm" || binary.LittleEndian.Uint32(wasm[4:8]) != 1 {
		return nil, fmt.Errorf("%w: not a WebAssembly 1.0 binary", errNoInstrument)
	}
	type section struct {
		id   byte
		body []byte
	}
	var secs []section
	for p := 8; p < len(wasm); {
		id := wasm[p]
		size, k := binary.Uvarint(wasm[p+1:])
		if k <= 0 || size > uint64(len(wasm)-p-1-k) {
			return nil, fmt.Errorf("%w: section %d overruns the module", errNoInstrument, id)
		}
		p += 1 + k
		secs = append(secs, section{id, wasm[p : p+int(size)]})
		p += int(size)
	}
	// Count the global index space before ours.
	var nglobals uint64
	hasMemory := false
	for _, s := range secs {
		switch s.id {
		case secMemory:
			hasMemory = true
		case secStart:
			return nil, fmt.Errorf("%w: it has a start function (a UDF module initializes in _initialize, which the host can stop)", errNoInstrument)
		case secImport:
			n, mem, err := countImports(s.body)
			if err != nil {
				return nil, err
			}
			nglobals += n
			hasMemory = hasMemory || mem
		case secGlobal:
			r := reader{b: s.body}
			nglobals += r.u32()
			if r.err != nil {
				return nil, r.err
			}
		case secExport:
			if err := checkNoExport(s.body, interruptExport); err != nil {
				return nil, err
			}
		}
	}
	gidx, budget := binary.AppendUvarint(nil, nglobals), binary.AppendUvarint(nil, nglobals+1)
	check := slices.Concat(
		[]byte{0x23}, budget, []byte{0x41, 0x01, 0x6B, 0x24}, budget, // $budget = $budget - 1
		[]byte{0x23}, budget, []byte{0x45, 0x04, 0x40}, // if $budget == 0
	)
	if hasMemory {
		check = append(check, 0x41, 0x00, 0x40, 0x00, 0x1A) // memory.grow 0; drop
	}
	check = slices.Concat(check,
		[]byte{0x23}, gidx, []byte{0x04, 0x40, 0x00, 0x0B}, // if $interrupt unreachable end
		[]byte{0x41}, sleb32(checkEvery), []byte{0x24}, budget, // $budget = checkEvery
		[]byte{0x0B}) // end
	// $interrupt: mut i32 = 0; $budget: mut i32 = checkEvery.
	newGlobals := slices.Concat([]byte{0x7F, 0x01, 0x41, 0x00, 0x0B, 0x7F, 0x01, 0x41}, sleb32(checkEvery), []byte{0x0B})
	newExport := binary.AppendUvarint(nil, uint64(len(interruptExport)))
	newExport = append(newExport, interruptExport...)
	newExport = append(newExport, importGlob)
	newExport = append(newExport, gidx...)

	out := make([]byte, 0, len(wasm)+len(wasm)/16)
	out = append(out, wasm[:8]...)
	emit := func(id byte, body []byte) {
		out = append(out, id)
		out = binary.AppendUvarint(out, uint64(len(body)))
		out = append(out, body...)
	}
	var haveGlobal, haveExport bool
	// Sections that come after the global (and export) section.
	afterGlobal := map[byte]bool{secExport: true, secStart: true, secElement: true, secDataCnt: true, secCode: true, secData: true}
	afterExport := map[byte]bool{secStart: true, secElement: true, secDataCnt: true, secCode: true, secData: true}
	for _, s := range secs {
		if s.id != secCustom {
			if !haveGlobal && afterGlobal[s.id] {
				emit(secGlobal, append([]byte{2}, newGlobals...))
				haveGlobal = true
			}
			if !haveExport && afterExport[s.id] {
				emit(secExport, append([]byte{1}, newExport...))
				haveExport = true
			}
		}
		switch s.id {
		case secGlobal:
			body, err := appendEntries(s.body, 2, newGlobals)
			if err != nil {
				return nil, err
			}
			emit(secGlobal, body)
			haveGlobal = true
		case secExport:
			body, err := appendEntries(s.body, 1, newExport)
			if err != nil {
				return nil, err
			}
			emit(secExport, body)
			haveExport = true
		case secCode:
			body, err := instrumentCode(s.body, check)
			if err != nil {
				return nil, err
			}
			emit(secCode, body)
		default:
			emit(s.id, s.body)
		}
	}
	if !haveGlobal {
		emit(secGlobal, append([]byte{2}, newGlobals...))
	}
	if !haveExport {
		emit(secExport, append([]byte{1}, newExport...))
	}
	return out, nil
}

// appendEntries adds n entries to a vector section body.
func appendEntries(body []byte, n uint64, entries []byte) ([]byte, error) {
	r := reader{b: body}
	have := r.u32()
	if r.err != nil {
		return nil, r.err
	}
	out := binary.AppendUvarint(make([]byte, 0, len(body)+len(entries)+5), have+n)
	out = append(out, body[r.p:]...)
	return append(out, entries...), nil
}

// sleb32 encodes a non-negative i32.const immediate.
func sleb32(v uint32) []byte {
	var out []byte
	for {
		b := byte(v & 0x7F)
		v >>= 7
		if v == 0 && b&0x40 == 0 {
			return append(out, b)
		}
		out = append(out, b|0x80)
	}
}

// countImports returns the number of imported globals and whether a memory
// is imported.
func countImports(body []byte) (globals uint64, memory bool, err error) {
	r := reader{b: body}
	for n := r.u32(); n > 0 && r.err == nil; n-- {
		r.name()
		r.name()
		switch kind := r.byte(); kind {
		case importFunc:
			r.u32()
		case importTable:
			r.byte()
			r.limits()
		case importMem:
			r.limits()
			memory = true
		case importGlob:
			r.byte()
			r.byte()
			globals++
		case importTag:
			r.byte()
			r.u32()
		default:
			r.fail("import kind %d", kind)
		}
	}
	return globals, memory, r.err
}

func checkNoExport(body []byte, name string) error {
	r := reader{b: body}
	for n := r.u32(); n > 0 && r.err == nil; n-- {
		if r.name() == name {
			return fmt.Errorf("%w: it exports %q, a name the host reserves", errNoInstrument, name)
		}
		r.byte()
		r.u32()
	}
	return r.err
}

// instrumentCode inserts check after every loop instruction of every
// function body of a code section.
func instrumentCode(body, check []byte) ([]byte, error) {
	r := reader{b: body}
	n := r.u32()
	out := binary.AppendUvarint(make([]byte, 0, len(body)+len(body)/8), n)
	var fn []byte
	for i := uint64(0); i < n && r.err == nil; i++ {
		size := r.u32()
		if r.err != nil || size > uint64(len(r.b)-r.p) {
			return nil, fmt.Errorf("%w: function %d overruns the code section", errNoInstrument, i)
		}
		f := reader{b: r.b[r.p : r.p+int(size)]}
		r.p += int(size)
		for nl := f.u32(); nl > 0 && f.err == nil; nl-- { // locals
			f.u32()
			f.valtype()
		}
		fn = append(fn[:0], f.b[:f.p]...)
		for f.err == nil && f.p < len(f.b) {
			start := f.p
			op := f.byte()
			f.immediates(op)
			fn = append(fn, f.b[start:f.p]...)
			if op == 0x03 && f.err == nil { // loop
				fn = append(fn, check...)
			}
		}
		if f.err != nil {
			return nil, fmt.Errorf("function %d: %w", i, f.err)
		}
		out = binary.AppendUvarint(out, uint64(len(fn)))
		out = append(out, fn...)
	}
	if r.err == nil && r.p != len(r.b) {
		r.fail("%d bytes after the last function", len(r.b)-r.p)
	}
	return out, r.err
}

// reader decodes the parts of the binary format instrument needs. The first
// error sticks; reads after it return zero.
type reader struct {
	b   []byte
	p   int
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: at byte %d: %s", errNoInstrument, r.p, fmt.Sprintf(format, args...))
	}
	r.p = len(r.b)
}

func (r *reader) byte() byte {
	if r.p >= len(r.b) {
		r.fail("truncated")
		return 0
	}
	r.p++
	return r.b[r.p-1]
}

func (r *reader) skip(n int) {
	if n > len(r.b)-r.p {
		r.fail("truncated")
		return
	}
	r.p += n
}

// u32 reads an unsigned LEB128 (up to 64 bits: memarg offsets).
func (r *reader) u32() uint64 {
	if r.p >= len(r.b) {
		r.fail("truncated")
		return 0
	}
	v, k := binary.Uvarint(r.b[r.p:])
	if k <= 0 {
		r.fail("bad LEB128")
		return 0
	}
	r.p += k
	return v
}

// sleb skips a signed LEB128 of at most 10 bytes.
func (r *reader) sleb() {
	for i := 0; i < 10; i++ {
		if r.byte()&0x80 == 0 {
			return
		}
	}
	r.fail("bad signed LEB128")
}

func (r *reader) name() string {
	n := r.u32()
	if n > uint64(len(r.b)-r.p) {
		r.fail("truncated name")
		return ""
	}
	s := string(r.b[r.p : r.p+int(n)])
	r.p += int(n)
	return s
}

func (r *reader) limits() {
	flags := r.byte()
	r.u32()
	if flags&1 != 0 {
		r.u32()
	}
}

func (r *reader) valtype() {
	switch t := r.byte(); t {
	case 0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x70, 0x6F, 0x69: // i32 i64 f32 f64 v128 funcref externref exnref
	default:
		r.fail("value type 0x%02x", t)
	}
}

func (r *reader) memarg() {
	align := r.u32()
	if align&0x40 != 0 { // multi-memory: a memory index follows
		r.u32()
	}
	r.u32()
}

// immediates skips the immediates of the instruction with opcode op. An
// opcode it does not know is an error.
func (r *reader) immediates(op byte) {
	switch {
	case op == 0x00, op == 0x01, op == 0x05, op == 0x0A, op == 0x0B, op == 0x0F, op == 0x19,
		op == 0x1A, op == 0x1B, op >= 0x45 && op <= 0xC4, op == 0xD1:
		// no immediates
	case op >= 0x02 && op <= 0x04, op == 0x06: // block loop if try: block type (s33)
		r.sleb()
	case op == 0x07, op == 0x08, op == 0x09, op == 0x18, // catch throw rethrow delegate
		op == 0x0C, op == 0x0D, op == 0x10, op == 0x12, op == 0xD2,
		op >= 0x20 && op <= 0x26:
		r.u32()
	case op == 0x0E: // br_table
		for n := r.u32(); n > 0 && r.err == nil; n-- {
			r.u32()
		}
		r.u32()
	case op == 0x11, op == 0x13: // call_indirect, return_call_indirect
		r.u32()
		r.u32()
	case op == 0x1C: // select t*
		for n := r.u32(); n > 0 && r.err == nil; n-- {
			r.valtype()
		}
	case op == 0x1F: // try_table
		r.sleb()
		for n := r.u32(); n > 0 && r.err == nil; n-- {
			switch kind := r.byte(); kind {
			case 0, 1:
				r.u32()
				r.u32()
			case 2, 3:
				r.u32()
			default:
				r.fail("catch kind %d", kind)
			}
		}
	case op >= 0x28 && op <= 0x3E:
		r.memarg()
	case op == 0x3F, op == 0x40:
		r.u32()
	case op == 0x41, op == 0x42:
		r.sleb()
	case op == 0x43:
		r.skip(4)
	case op == 0x44:
		r.skip(8)
	case op == 0xD0: // ref.null heaptype
		r.sleb()
	case op == 0xFC:
		switch sub := r.u32(); {
		case sub <= 7: // saturating truncations
		case sub == 8, sub == 10, sub == 12, sub == 14: // memory.init memory.copy table.init table.copy
			r.u32()
			r.u32()
		case sub == 9, sub == 11, sub == 13, sub >= 15 && sub <= 17:
			r.u32()
		default:
			r.fail("instruction 0xFC %d", sub)
		}
	case op == 0xFD:
		switch sub := r.u32(); {
		case sub <= 11, sub == 92, sub == 93: // loads and stores
			r.memarg()
		case sub == 12, sub == 13: // v128.const, i8x16.shuffle
			r.skip(16)
		case sub >= 21 && sub <= 34: // extract/replace lane
			r.skip(1)
		case sub >= 84 && sub <= 91: // load/store lane
			r.memarg()
			r.skip(1)
		case sub <= 0x113:
		default:
			r.fail("instruction 0xFD %d", sub)
		}
	case op == 0xFE:
		switch sub := r.u32(); {
		case sub == 3: // atomic.fence
			r.skip(1)
		case sub <= 0x4E:
			r.memarg()
		default:
			r.fail("instruction 0xFE %d", sub)
		}
	default:
		r.fail("instruction 0x%02x", op)
	}
}

// watchdog interrupts an instance's running call when the call's context is
// done, by setting the interrupt global the checks read.
type watchdog struct {
	mu     sync.Mutex
	global api.MutableGlobal
	armed  bool
	fired  bool

	// For batch calls (armCall), reused across calls so a call allocates
	// nothing: a context and an AfterFunc per call cost about as much as
	// the rest of the host's per-call work. Nor does a call reset and stop
	// the timer (a timer-heap update each) or read the clock (75 ns on the
	// benchmark machine): the timer ticks every period while calls run and
	// counts the ticks that find the same call armed (see expire).
	timer   *time.Timer     // runs expire(its gen) every period while calls are armed
	gen     uint64          // timer's generation: a tick of an older timer counts nothing
	pending bool            // timer is set
	period  time.Duration   // the armed call's timeout / deadlineTicks
	timed   bool            // armCall armed the watchdog (not arm)
	seq     uint64          // counts armCall's calls
	seen    uint64          // the call the last tick found armed
	ticks   int             // how many ticks found it armed
	expired bool            // the deadline passed during the armed call
	hooked  context.Context // the context whose cancellation fires the watchdog
	unhook  func() bool
}

// deadlineTicks is how many timer periods make a call's timeout: a call
// is stopped by the first tick after it has run deadlineTicks periods,
// between its timeout and its timeout plus one period (an eighth) after it
// started.
const deadlineTicks = 8

// run calls f with the watchdog armed on ctx and reports whether it fired
// (ctx was done before f returned).
func (w *watchdog) run(ctx context.Context, f func() error) (fired bool, err error) {
	stop := w.arm(ctx)
	err = f()
	return w.disarm(stop), err
}

// arm makes the watchdog interrupt the instance when ctx is done, until
// disarm.
func (w *watchdog) arm(ctx context.Context) (stop func() bool) {
	if w.global == nil { // unbounded (benchmarks only)
		return nil
	}
	w.mu.Lock()
	w.armed, w.fired = true, false
	w.mu.Unlock()
	return context.AfterFunc(ctx, w.fire)
}

// disarm stops the watchdog arm started and reports whether it fired. The
// interrupt global is clear again when it returns.
func (w *watchdog) disarm(stop func() bool) (fired bool) {
	if stop == nil {
		return false
	}
	stop()
	w.mu.Lock()
	w.armed = false
	fired = w.fired
	if fired {
		w.global.Set(0)
	}
	w.mu.Unlock()
	return fired
}

// armCall makes the watchdog interrupt the instance when ctx is done or
// timeout has passed, until disarmCall. The deadline timer is reused, and
// the hook on ctx stays registered while calls use the same ctx (an
// operator's calls all use its task's), until release.
func (w *watchdog) armCall(ctx context.Context, timeout time.Duration) {
	if w.global == nil { // unbounded (benchmarks only)
		return
	}
	if ctx != w.hooked {
		w.release()
		w.hooked = ctx
		if ctx.Done() != nil {
			w.unhook = context.AfterFunc(ctx, w.fire)
		}
	}
	w.mu.Lock()
	w.armed, w.fired, w.expired, w.timed = true, false, false, true
	w.seq++
	w.period = max(timeout/deadlineTicks, 1)
	if !w.pending { // else the timer ticks already, set by an earlier call
		w.pending = true
		if w.timer == nil {
			gen := w.gen
			w.timer = time.AfterFunc(w.period, func() { w.expire(gen) })
		} else {
			w.timer.Reset(w.period)
		}
	}
	w.mu.Unlock()
	if ctx.Err() != nil { // done before the call was armed: the hook has run
		w.fire()
	}
}

// disarmCall stops the watchdog armCall started and reports whether it
// fired, and if so whether because the deadline passed. The interrupt
// global is clear again when it returns.
func (w *watchdog) disarmCall() (fired, expired bool) {
	if w.global == nil {
		return false, false
	}
	w.mu.Lock()
	w.armed, w.timed = false, false
	fired, expired = w.fired, w.expired
	if fired {
		w.global.Set(0)
	}
	w.mu.Unlock()
	return fired, expired
}

// expire is the deadline timer's function, a tick. A tick that finds no
// call armed leaves the timer unset until the next call. One that finds a
// call armed counts the ticks that found the same call: the first comes
// at most a period after the call started, so the deadlineTicks+1st comes
// after at least the call's timeout, and stops it. Otherwise the timer is
// set for the next tick. A tick of timer generation gen, older than the
// watchdog's (a tick that was running when release dropped its timer),
// does nothing.
func (w *watchdog) expire(gen uint64) {
	w.mu.Lock()
	if gen != w.gen {
		w.mu.Unlock()
		return
	}
	w.pending = false
	if w.armed && w.timed {
		if w.seen != w.seq {
			w.seen, w.ticks = w.seq, 0
		}
		w.ticks++
		if w.ticks > deadlineTicks {
			w.fired, w.expired = true, true
			w.global.Set(1)
		} else {
			w.pending = true
			w.timer.Reset(w.period)
		}
	}
	w.mu.Unlock()
}

// release removes the hook on the last call's context and stops the
// deadline timer. A tick Stop can no longer stop may still be running,
// waiting for the lock: the timer is dropped and its generation left behind,
// so that tick counts nothing. Counted, it would tick beside the next
// call's timer, and a call could count two ticks at once and be stopped
// up to a period before its timeout.
func (w *watchdog) release() {
	if w.unhook != nil {
		w.unhook()
		w.unhook = nil
	}
	w.hooked = nil
	if w.timer != nil {
		w.mu.Lock()
		if !w.timer.Stop() {
			w.timer = nil
			w.gen++
		}
		w.pending = false
		w.mu.Unlock()
	}
}

func (w *watchdog) fire() {
	w.mu.Lock()
	if w.armed {
		w.fired = true
		w.global.Set(1)
	}
	w.mu.Unlock()
}
