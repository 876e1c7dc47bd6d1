package udf

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/record"
)

var xSchema = &record.Schema{Fields: []record.Field{{Name: "x", Type: record.TypeInt}}}

// oneX is a batch whose request is larger than abiModule's okSize.
var oneX = record.Batch{Records: []record.Record{{Time: 0, Values: []record.Value{record.Int(1)}}}}

// emptyRequestSize is the request size of an empty batch of xSchema in and
// out: version, two one-field schemas, an empty batch.
const emptyRequestSize = 1 + 4 + 4 + 3

func newRuntime(t testing.TB, cfg Config) *Runtime {
	t.Helper()
	if cfg.Cache == nil {
		cfg.Cache = sharedCache
	}
	r, err := NewRuntime(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	return r
}

func refusedBy(err error) string {
	var r interface{ RefusedBy() string }
	if errors.As(err, &r) {
		return r.RefusedBy()
	}
	return ""
}

func TestLoadRefusesImports(t *testing.T) {
	r := newRuntime(t, Config{})
	ctx := context.Background()
	for _, tc := range []struct{ module, name, want string }{
		{"wasi_snapshot_preview1", "path_open", "filesystem"},
		{"wasi_snapshot_preview1", "fd_readdir", "filesystem"},
		{"wasi_snapshot_preview1", "sock_accept", "network"},
		{"wasi_snapshot_preview1", "sock_recv", "network"},
		{"env", "host_secret", "only WASI"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wasm := importModule(tc.module, tc.name)
			_, err := r.Load(ctx, Digest(wasm), wasm)
			if refusedBy(err) != RuleImport {
				t.Fatalf("Load = %v, want a %s refusal", err, RuleImport)
			}
			if !strings.Contains(err.Error(), tc.module+"."+tc.name) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name the import %s.%s and %q", err, tc.module, tc.name, tc.want)
			}
		})
	}
	// The allowed subset loads.
	wasm := importModule("wasi_snapshot_preview1", "fd_write")
	if _, err := r.Load(ctx, Digest(wasm), wasm); err != nil {
		t.Errorf("module importing fd_write refused: %v", err)
	}
}

func TestLoadRefusals(t *testing.T) {
	r := newRuntime(t, Config{})
	ctx := context.Background()
	good := abiModule(emptyRequestSize, insLoopForever)
	noAlloc := wasmModule{funcs: []wasmFunc{{params: []byte{wI32, wI32}, results: []byte{wI64}, body: []byte{0x42, 0x00}, export: "f"}}, memPages: 1}.bytes()
	badAlloc := wasmModule{funcs: []wasmFunc{{params: []byte{wI64}, results: []byte{wI32}, body: []byte{0x41, 0x00}, export: "sealflow_alloc"}}, memPages: 1}.bytes()
	noMem := wasmModule{funcs: []wasmFunc{{params: []byte{wI32}, results: []byte{wI32}, body: []byte{0x41, 0x00}, export: "sealflow_alloc"}}}.bytes()
	for _, tc := range []struct {
		name   string
		digest string
		wasm   []byte
		rule   string
		want   string
	}{
		{"digest mismatch", Digest([]byte("other code")), good, RuleDigest, "hash to " + Digest(good)},
		{"not wasm", Digest([]byte("\x00asm junk")), []byte("\x00asm junk"), RuleDecode, "not valid WebAssembly"},
		{"no allocator", Digest(noAlloc), noAlloc, RuleExport, `"sealflow_alloc"`},
		{"allocator type", Digest(badAlloc), badAlloc, RuleExport, "(i64) -> (i32)"},
		{"no memory", Digest(noMem), noMem, RuleExport, "no memory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.Load(ctx, tc.digest, tc.wasm)
			if refusedBy(err) != tc.rule || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load = %v, want a %s refusal containing %q", err, tc.rule, tc.want)
			}
		})
	}
	m, err := r.Load(ctx, strings.ToUpper(Digest(good)[7:]) /* wrong form */, good)
	if refusedBy(err) != RuleDigest || m != nil {
		t.Errorf("digest without sha256: prefix: Load = %v, want a %s refusal", err, RuleDigest)
	}
	m1, err := r.Load(ctx, Digest(good), good)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := r.Load(ctx, Digest(good), good)
	if err != nil || m1 != m2 {
		t.Errorf("second Load of one digest compiled again (%p, %p, %v)", m1, m2, err)
	}
}

func TestInstantiateRefusals(t *testing.T) {
	r := newRuntime(t, Config{})
	ctx := context.Background()
	wasm := abiModule(emptyRequestSize, insLoopForever)
	m, err := r.Load(ctx, Digest(wasm), wasm)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		fn   Function
		rule string
		want string
	}{
		{"filesystem capability", Function{Name: "f", In: xSchema, Out: xSchema, Allow: []string{"filesystem"}}, RuleCapability, `"filesystem"`},
		{"network capability", Function{Name: "f", In: xSchema, Out: xSchema, Allow: []string{CapClock, "network"}}, RuleCapability, `"network"`},
		{"missing function", Function{Name: "g", In: xSchema, Out: xSchema}, RuleExport, `"g"`},
		{"wrong signature", Function{Name: "sealflow_alloc", In: xSchema, Out: xSchema}, RuleExport, "(i32, i32) -> (i64)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.Instantiate(ctx, tc.fn)
			if refusedBy(err) != tc.rule || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Instantiate = %v, want a %s refusal containing %q", err, tc.rule, tc.want)
			}
		})
	}
	if _, err := m.Instantiate(ctx, Function{Name: "f", In: xSchema, Out: xSchema, Allow: []string{CapClock, CapRandom}}); err != nil {
		t.Errorf("granting clock and random: %v", err)
	}
}

// TestSandboxStopsAndRecovers checks that a runaway batch (an infinite loop,
// a memory blow-up) fails with an error saying why, and that the same
// instance then serves the next batch from a fresh instantiation.
func TestSandboxStopsAndRecovers(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		bad     []byte
		cfg     Config
		wantErr error
		want    string
	}{
		{"infinite loop", insLoopForever, Config{BatchTimeout: 100 * time.Millisecond}, ErrDeadline, "CPU time limit of 100ms"},
		{"memory blow-up", insGrowForever, Config{MemoryLimitPages: 32, BatchTimeout: 10 * time.Second}, ErrMemoryLimit, "32 pages (2 MiB)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRuntime(t, tc.cfg)
			wasm := abiModule(emptyRequestSize, tc.bad)
			m, err := r.Load(ctx, Digest(wasm), wasm)
			if err != nil {
				t.Fatal(err)
			}
			inst, err := m.Instantiate(ctx, Function{Name: "f", In: xSchema, Out: xSchema})
			if err != nil {
				t.Fatal(err)
			}
			defer inst.Close(ctx)
			var out record.Batch
			start := time.Now()
			err = inst.Call(ctx, &oneX, &out)
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "batch of 1 records") {
				t.Fatalf("runaway batch: err = %v, want %v containing %q", err, tc.wantErr, tc.want)
			}
			t.Logf("runaway batch: %v", err)
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("runaway batch took %v to stop", d)
			}
			for i := range 2 {
				if err := inst.Call(ctx, &record.Batch{}, &out); err != nil {
					t.Fatalf("batch %d after the failure: %v", i, err)
				}
			}
			if inst.Restarts != 1 {
				t.Errorf("Restarts = %d, want 1", inst.Restarts)
			}
			if err := inst.Call(ctx, &oneX, &out); !errors.Is(err, tc.wantErr) {
				t.Errorf("second runaway batch: err = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestCallCanceled(t *testing.T) {
	r := newRuntime(t, Config{BatchTimeout: time.Minute})
	wasm := abiModule(emptyRequestSize, insLoopForever)
	m, err := r.Load(context.Background(), Digest(wasm), wasm)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := m.Instantiate(context.Background(), Function{Name: "f", In: xSchema, Out: xSchema})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- inst.Call(ctx, &oneX, &record.Batch{}) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Call after cancel = %v, want context.Canceled", err)
	}
}

func TestDecodeResponse(t *testing.T) {
	s := xSchema
	ok, _ := record.AppendBatch([]byte{0x00}, s, &oneX)
	for _, tc := range []struct {
		name string
		resp []byte
		want string // "" for success
		is   error
	}{
		{"ok", ok, "", nil},
		{"empty", nil, "empty response", nil},
		{"guest error", append([]byte{0x01}, "bad input"...), `"bad input"`, ErrGuest},
		{"bad status", []byte{0x07}, "status byte 7", nil},
		{"truncated batch", ok[:len(ok)-1], "output batch", record.ErrMalformed},
		{"wrong schema", []byte{0x00, 0xB1, 0x02, 0x00}, "2 fields", record.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d record.Decoder
			var out record.Batch
			err := DecodeResponse(&d, tc.resp, s, &out)
			if tc.want == "" {
				if err != nil || out.Len() != 1 || out.Records[0].Values[0].I != 1 {
					t.Fatalf("DecodeResponse = %v, %v", err, out.Records)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Fatalf("DecodeResponse = %v, want an error containing %q (is %v)", err, tc.want, tc.is)
			}
		})
	}
}

func FuzzDecodeResponse(f *testing.F) {
	ok, _ := record.AppendBatch([]byte{0x00}, xSchema, &oneX)
	f.Add(ok)
	f.Add([]byte{0x01, 'x'})
	f.Add([]byte{0x00, 0xB1, 0x01, 0x00})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var d record.Decoder
		var out record.Batch
		if err := DecodeResponse(&d, b, xSchema, &out); err != nil {
			return
		}
		// An accepted batch re-encodes to the same bytes.
		re, err := record.AppendBatch([]byte{0x00}, xSchema, &out)
		if err != nil || string(re) != string(b) {
			t.Fatalf("accepted response %x re-encodes to %x (%v)", b, re, err)
		}
	})
}

// TestConcurrentLoads loads one module from several goroutines: all get the
// same compiled module.
func TestConcurrentLoads(t *testing.T) {
	r := newRuntime(t, Config{})
	wasm := abiModule(emptyRequestSize, nil)
	mods := make(chan *Module, 4)
	for range cap(mods) {
		go func() {
			m, err := r.Load(context.Background(), Digest(wasm), wasm)
			if err != nil {
				t.Error(err)
			}
			mods <- m
		}()
	}
	first := <-mods
	for range cap(mods) - 1 {
		if m := <-mods; m != first {
			t.Fatalf("concurrent loads returned different modules %p and %p", m, first)
		}
	}
	// The compiled code survives the duplicates' release.
	inst, err := first.Instantiate(context.Background(), Function{Name: "f", In: xSchema, Out: xSchema})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close(context.Background())
	if err := inst.Call(context.Background(), &record.Batch{}, &record.Batch{}); err != nil {
		t.Fatal(err)
	}
}

// TestTrapIsNotALimit checks that a guest that traps far from its limits is
// reported as a trap, not as a deadline or memory limit, and recovers.
func TestTrapIsNotALimit(t *testing.T) {
	r := newRuntime(t, Config{MemoryLimitPages: 32})
	wasm := abiModule(emptyRequestSize, []byte{0x00}) // unreachable
	m, err := r.Load(context.Background(), Digest(wasm), wasm)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := m.Instantiate(context.Background(), Function{Name: "f", In: xSchema, Out: xSchema})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close(context.Background())
	err = inst.Call(context.Background(), &oneX, &record.Batch{})
	if err == nil || errors.Is(err, ErrMemoryLimit) || errors.Is(err, ErrDeadline) || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("trap: err = %v, want an unreachable trap that is neither a deadline nor a memory limit", err)
	}
	if err := inst.Call(context.Background(), &record.Batch{}, &record.Batch{}); err != nil {
		t.Fatalf("batch after the trap: %v", err)
	}
}
