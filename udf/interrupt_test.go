package udf

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/tetratelabs/wazero/api"
)

// TestDeadlineDuringGC runs a spinning guest on every P while the garbage
// collector keeps starting: compiled wasm cannot be preempted, so without
// the instrumented checks' exits to Go a collection's stop-the-world (and
// with it the watchdog's timer) would wait for the guests forever.
func TestDeadlineDuringGC(t *testing.T) {
	ctx := context.Background()
	r := newRuntime(t, Config{BatchTimeout: 200 * time.Millisecond})
	wasm := abiModule(emptyRequestSize, insLoopForever)
	m, err := r.Load(ctx, Digest(wasm), wasm)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			default:
				runtime.GC()
			}
		}
	}()
	defer close(done)
	var wg sync.WaitGroup
	errs := make([]error, runtime.GOMAXPROCS(0)+1)
	for i := range errs {
		wg.Go(func() {
			inst, err := m.Instantiate(ctx, Function{Name: "f", In: xSchema, Out: xSchema})
			if err != nil {
				errs[i] = err
				return
			}
			defer inst.Close(ctx)
			var out record.Batch
			errs[i] = inst.Call(ctx, &oneX, &out)
		})
	}
	stopped := make(chan struct{})
	go func() { wg.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("spinning guests were not stopped within 30s of their 200ms deadline")
	}
	for i, err := range errs {
		if !errors.Is(err, ErrDeadline) {
			t.Errorf("guest %d: err = %v, want %v", i, err, ErrDeadline)
		}
	}
}

func TestInstrumentRefusals(t *testing.T) {
	good := abiModule(1<<30, nil)
	// The same module with a start section (id 8, function 0) before its
	// code section (id 10).
	var withStart []byte
	for p := 8; p < len(good); {
		r := reader{b: good, p: p + 1}
		size := int(r.u32())
		if good[p] == secCode {
			withStart = append(append(append([]byte(nil), good[:p]...), secStart, 1, 0), good[p:]...)
		}
		p = r.p + size
	}
	reserved := wasmModule{
		funcs: []wasmFunc{
			{params: []byte{wI32}, results: []byte{wI32}, body: []byte{0x41, 0x00}, export: "sealflow_alloc"},
			{params: []byte{wI32}, results: []byte{wI32}, body: []byte{0x41, 0x00}, export: interruptExport},
		},
		memPages: 1,
	}.bytes()
	unknown := wasmModule{
		funcs: []wasmFunc{
			{params: []byte{wI32}, results: []byte{wI32}, body: []byte{0x41, 0x00}, export: "sealflow_alloc"},
			{body: []byte{0xFC, 0x7F}},
		},
		memPages: 1,
	}.bytes()
	for _, tc := range []struct {
		name string
		wasm []byte
		want string
	}{
		{"start function", withStart, "start function"},
		{"reserved export", reserved, `exports "sealflow_interrupt"`},
		{"unknown instruction", unknown, "instruction 0xFC 127"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := instrument(tc.wasm)
			if !errors.Is(err, errNoInstrument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("instrument = %v, want an error containing %q", err, tc.want)
			}
			r := newRuntime(t, Config{})
			if _, err := r.Load(context.Background(), Digest(tc.wasm), tc.wasm); refusedBy(err) != RuleDecode {
				t.Fatalf("Load = %v, want a %s refusal", err, RuleDecode)
			}
		})
	}
}

// TestInstrumentExamples checks that every example module instruments, that
// each of its loops got exactly one check, and that it still validates.
func TestInstrumentExamples(t *testing.T) {
	for _, name := range []string{"cost", "scorer", "anomaly", "hostile"} {
		t.Run(name, func(t *testing.T) {
			wasm := example(t, name)
			out, err := instrument(wasm)
			if err != nil {
				t.Fatal(err)
			}
			// Each check ends "if unreachable end; i32.const checkEvery".
			checkTail := append([]byte{0x04, 0x40, 0x00, 0x0B, 0x41}, sleb32(checkEvery)...)
			loops, checks := countLoops(t, wasm), bytes.Count(out, checkTail)-bytes.Count(wasm, checkTail)
			if loops == 0 || loops != checks {
				t.Errorf("%d loops, %d checks inserted (want equal and > 0)", loops, checks)
			}
			if got := countLoops(t, out); got != loops {
				t.Errorf("instrumented module has %d loops, want %d", got, loops)
			}
			again, err := instrument(out) // the instrumented module exports the reserved name
			if err == nil || again != nil {
				t.Errorf("instrumenting twice: err = %v, want a refusal", err)
			}
		})
	}
}

// countLoops counts the loop instructions of a module's code section.
func countLoops(t *testing.T, wasm []byte) int {
	t.Helper()
	n := 0
	for p := 8; p < len(wasm); {
		r := reader{b: wasm, p: p + 1}
		size := int(r.u32())
		if wasm[p] == secCode {
			body := reader{b: wasm[r.p : r.p+size]}
			for fn := body.u32(); fn > 0; fn-- {
				fsize := int(body.u32())
				f := reader{b: body.b[body.p : body.p+fsize]}
				body.p += fsize
				for nl := f.u32(); nl > 0; nl-- {
					f.u32()
					f.valtype()
				}
				for f.err == nil && f.p < len(f.b) {
					op := f.byte()
					f.immediates(op)
					if op == 0x03 {
						n++
					}
				}
				if f.err != nil {
					t.Fatal(f.err)
				}
			}
		}
		p = r.p + size
	}
	return n
}

// fakeGlobal records what the watchdog sets.
type fakeGlobal struct {
	api.MutableGlobal
	mu  sync.Mutex
	v   uint64
	set int
}

func (g *fakeGlobal) Set(v uint64) { g.mu.Lock(); g.v, g.set = v, g.set+1; g.mu.Unlock() }

// TestWatchdogCallArming checks the reusable call watchdog: a late run of
// an earlier call's deadline timer does not interrupt a later call, a
// deadline that passes does, and a context done before the call was armed
// interrupts it at once.
func TestWatchdogCallArming(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name          string
		ctx           context.Context
		timeout       time.Duration
		during        func(w *watchdog)
		fired, expire bool
	}{
		{"stale timer run", context.Background(), time.Hour, func(w *watchdog) { w.expire(w.gen) }, false, false},
		{"deadline passes", context.Background(), time.Millisecond, func(*watchdog) { time.Sleep(50 * time.Millisecond) }, true, true},
		{"done before arming", canceled, time.Hour, func(*watchdog) {}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &fakeGlobal{}
			w := &watchdog{global: g}
			defer w.release()
			w.armCall(tc.ctx, tc.timeout)
			tc.during(w)
			fired, expired := w.disarmCall()
			if fired != tc.fired || expired != tc.expire {
				t.Fatalf("fired, expired = %v, %v, want %v, %v", fired, expired, tc.fired, tc.expire)
			}
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.v != 0 || (g.set > 0) != tc.fired {
				t.Fatalf("interrupt global %d after %d sets; want clear, set only if fired", g.v, g.set)
			}
		})
	}
}

// TestWatchdogTimerKeptAcrossCalls checks the timer a call leaves ticking:
// when it ticks during a later call, it does not interrupt it, and the
// later call is interrupted once its own timeout has passed, within a
// period. The first call ends at once, or after 7 of its periods (the
// later call must not inherit its ticks).
func TestWatchdogTimerKeptAcrossCalls(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, tc := range []struct {
		name         string
		firstTimeout time.Duration
		firstRuns    time.Duration
	}{
		{"quick first call", 30 * time.Millisecond, 0},
		{"first call ran 7 periods", timeout, 7 * timeout / deadlineTicks},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &fakeGlobal{}
			w := &watchdog{global: g}
			defer w.release()
			ctx := context.Background()
			w.armCall(ctx, tc.firstTimeout)
			time.Sleep(tc.firstRuns)
			if fired, _ := w.disarmCall(); fired {
				t.Fatal("the first call was interrupted before its timeout")
			}
			start := time.Now()
			w.armCall(ctx, timeout) // the first call's timer is still set
			for time.Since(start) < 2*time.Second {
				w.mu.Lock()
				fired := w.fired
				w.mu.Unlock()
				if fired {
					break
				}
				time.Sleep(time.Millisecond)
			}
			took := time.Since(start)
			fired, expired := w.disarmCall()
			if !fired || !expired || took < timeout {
				t.Fatalf("fired, expired = %v, %v after %v, want the timeout of %v to interrupt the call, not before", fired, expired, took, timeout)
			}
			if took > timeout*(deadlineTicks+1)/deadlineTicks+200*time.Millisecond {
				t.Fatalf("interrupted after %v, want about a period (%v) after the timeout at most", took, timeout/deadlineTicks)
			}
		})
	}
}

// TestWatchdogTicks drives the call watchdog's ticks by hand (the calls'
// timeout is an hour, so the timer itself never ticks): whatever happened
// before, a call is stopped by the deadlineTicks+1st tick that finds it
// armed, not before, and a tick of a timer release dropped counts nothing.
func TestWatchdogTicks(t *testing.T) {
	ctx := context.Background()
	other, cancel := context.WithCancel(context.Background())
	defer cancel()
	// long runs a call on ctx that deadlineTicks ticks find armed.
	long := func(t *testing.T, w *watchdog, ctx context.Context) {
		w.armCall(ctx, time.Hour)
		for range deadlineTicks {
			w.expire(w.gen)
		}
		if fired, _ := w.disarmCall(); fired {
			t.Fatalf("%d ticks stopped a call", deadlineTicks)
		}
	}
	for _, tc := range []struct {
		name string
		ctx  context.Context // of the checked call
		// before runs before the checked call and returns the ticks
		// to run once it is armed that must count nothing.
		before func(t *testing.T, w *watchdog) (stale []uint64)
	}{
		{"a long call, then ticks of the next", ctx, func(t *testing.T, w *watchdog) []uint64 {
			long(t, w, ctx)
			return nil
		}},
		{"a long call, then a tick between calls", ctx, func(t *testing.T, w *watchdog) []uint64 {
			long(t, w, ctx)
			w.expire(w.gen)
			return nil
		}},
		{"a tick running when release dropped its timer", other, func(t *testing.T, w *watchdog) []uint64 {
			long(t, w, ctx)
			// The timer fired and its tick waits for the lock: Stop
			// can no longer stop it.
			w.timer.Stop()
			return []uint64{w.gen}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &fakeGlobal{}
			w := &watchdog{global: g}
			defer w.release()
			stale := tc.before(t, w)
			w.armCall(tc.ctx, time.Hour)
			for _, gen := range stale {
				w.expire(gen)
			}
			for k := 1; k <= deadlineTicks+1; k++ {
				w.expire(w.gen)
				w.mu.Lock()
				fired := w.fired
				w.mu.Unlock()
				if fired != (k == deadlineTicks+1) {
					t.Fatalf("after %d ticks of the call, fired = %v; want it stopped by tick %d", k, fired, deadlineTicks+1)
				}
			}
			if fired, expired := w.disarmCall(); !fired || !expired {
				t.Fatalf("fired, expired = %v, %v, want true, true", fired, expired)
			}
		})
	}
}

// TestWatchdogAcrossCalls runs many quick calls on one context for longer
// than the batch deadline (the deadline is per call), then stops a runaway
// call by canceling that context, and another by the deadline.
func TestWatchdogAcrossCalls(t *testing.T) {
	r := newRuntime(t, Config{BatchTimeout: 200 * time.Millisecond})
	wasm := abiModule(emptyRequestSize, insLoopForever)
	m, err := r.Load(context.Background(), Digest(wasm), wasm)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := m.Instantiate(context.Background(), Function{Name: "f", In: xSchema, Out: xSchema})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out record.Batch
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); {
		if err := inst.Call(ctx, &record.Batch{}, &out); err != nil {
			t.Fatalf("quick call: %v", err)
		}
	}
	time.AfterFunc(20*time.Millisecond, cancel)
	if err := inst.Call(ctx, &oneX, &out); !errors.Is(err, context.Canceled) || errors.Is(err, ErrDeadline) {
		t.Fatalf("runaway call, context canceled: %v, want context.Canceled", err)
	}
	if err := inst.Call(context.Background(), &oneX, &out); !errors.Is(err, ErrDeadline) {
		t.Fatalf("runaway call on another context: %v, want ErrDeadline", err)
	}
	if err := inst.Call(context.Background(), &record.Batch{}, &out); err != nil {
		t.Fatalf("call after the runaways: %v", err)
	}
}
