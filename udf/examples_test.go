package udf

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/udf/examples/anomaly/model"
)

var (
	meterKWh = &record.Schema{Fields: []record.Field{{Name: "meter", Type: record.TypeString}, {Name: "kwh", Type: record.TypeFloat}}}
	costOut  = &record.Schema{Fields: []record.Field{{Name: "meter", Type: record.TypeString}, {Name: "kwh", Type: record.TypeFloat}, {Name: "cost", Type: record.TypeFloat}}}
	scoreOut = &record.Schema{Fields: []record.Field{{Name: "meter", Type: record.TypeString}, {Name: "kwh", Type: record.TypeFloat},
		{Name: "count", Type: record.TypeInt}, {Name: "ewma", Type: record.TypeFloat}, {Name: "score", Type: record.TypeFloat}}}
	anomalyOut = &record.Schema{Fields: []record.Field{{Name: "meter", Type: record.TypeString}, {Name: "kwh", Type: record.TypeFloat},
		{Name: "p", Type: record.TypeFloat}, {Name: "anomaly", Type: record.TypeBool}}}
)

var exampleWasm sync.Map // name -> []byte

// example returns the committed module of an example.
func example(t testing.TB, name string) []byte {
	t.Helper()
	if b, ok := exampleWasm.Load(name); ok {
		return b.([]byte)
	}
	path := filepath.Join("examples", "testdata", name+".wasm")
	if name == "flat_c" { // built with clang, not go generate
		path = filepath.Join("examples", "flat_c", "flat.wasm")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read example %s (run go generate ./udf/examples): %v", name, err)
	}
	exampleWasm.Store(name, b)
	return b
}

// instance loads an example into a runtime sharing the tests' compilation
// cache and instantiates fn.
func instance(t testing.TB, r *Runtime, name string, fn Function) *Instance {
	t.Helper()
	ctx := context.Background()
	wasm := example(t, name)
	m, err := r.Load(ctx, Digest(wasm), wasm)
	if err != nil {
		t.Fatal(err)
	}
	in, err := m.Instantiate(ctx, fn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(ctx) })
	return in
}

// readings returns n readings of three meters over two days, with a spike
// every 37th reading.
func readings(n int) []record.Record {
	out := make([]record.Record, n)
	for i := range out {
		kwh := 1 + 0.1*float64(i%7) + 0.05*float64(i%3)
		if i%37 == 36 {
			kwh *= 6
		}
		out[i] = record.Record{
			Time:   int64(i) * 48 * 3_600_000 / int64(n),
			Values: []record.Value{record.String(fmt.Sprintf("m%d", i%3)), record.Float(kwh)},
		}
	}
	return out
}

// runBatches feeds recs through inst in batches of size and returns a copy
// of all output records.
func runBatches(t testing.TB, inst *Instance, recs []record.Record, size int) []record.Record {
	t.Helper()
	var all []record.Record
	var out record.Batch
	for i := 0; i < len(recs); i += size {
		b := record.Batch{Records: recs[i:min(i+size, len(recs))]}
		if err := inst.Call(context.Background(), &b, &out); err != nil {
			t.Fatalf("batch at %d: %v", i, err)
		}
		for _, r := range out.Records {
			all = append(all, record.Record{Time: r.Time, Values: append([]record.Value(nil), r.Values...)})
		}
	}
	return all
}

// TestExampleCost runs the cost example's per-record (cost, ABI version 1)
// and columnar (cost_columnar, version 2) functions.
func TestExampleCost(t *testing.T) {
	for _, tc := range []struct {
		fn       string
		columnar bool
	}{{"cost", false}, {"cost_columnar", true}, {"cost_flat", true}} {
		t.Run(tc.fn, func(t *testing.T) {
			r := newRuntime(t, Config{})
			inst := instance(t, r, "cost", Function{Name: tc.fn, In: meterKWh, Out: costOut})
			recs := readings(1000)
			checkCost(t, recs, runBatches(t, inst, recs, 256), tc.fn == "cost_flat")
			if inst.columnar != tc.columnar {
				t.Fatalf("%s: called columnar = %v, want %v", tc.fn, inst.columnar, tc.columnar)
			}
			if tc.columnar && (len(inst.col.dec.Reads) != 2 || inst.col.dec.Reads[0] || !inst.col.dec.Reads[1]) {
				t.Fatalf("%s: sends input fields %v, want only kwh", tc.fn, inst.col.dec.Reads)
			}
		})
	}
}

// TestExampleFlatC runs the trivial map written in C against the columnar
// ABI without an SDK (examples/flat_c): the sandbox admits it under the
// same rules (it imports nothing), its output equals the Go guest's
// cost_flat on the same batches, through Call and through the operator,
// and after the first call only kwh crosses into the module.
func TestExampleFlatC(t *testing.T) {
	r := newRuntime(t, Config{})
	fn := Function{Name: "cost_flat", In: meterKWh, Out: costOut}
	c := instance(t, r, "flat_c", fn)
	if !c.columnar {
		t.Fatal("the C module is not called in the columnar ABI")
	}
	if imps := c.m.compiled.ImportedFunctions(); len(imps) != 0 {
		t.Fatalf("the C module imports %d functions, want none", len(imps))
	}
	goGuest := instance(t, r, "cost", fn)
	recs := readings(1000)
	got := runBatches(t, c, recs, 256)
	checkCost(t, recs, got, true)
	if want := runBatches(t, goGuest, recs, 256); !sameRecords(got, want) {
		t.Fatal("the C guest's output differs from the Go guest's")
	}
	if len(c.col.dec.Reads) != 2 || c.col.dec.Reads[0] || !c.col.dec.Reads[1] {
		t.Fatalf("sends input fields %v, want only kwh", c.col.dec.Reads)
	}
	var d collect
	op := NewOperator(context.Background(), c)
	few := readings(300)
	if err := op.ProcessBatch(0, &record.Batch{Records: few}, &d); err != nil {
		t.Fatal(err)
	}
	checkCost(t, few, d.recs, true)

	// A null kwh gives a null cost; other outputs are passed by name.
	nulls := readings(10)
	nulls[3].Values[1] = record.Value{}
	swapped := &record.Schema{Fields: []record.Field{costOut.Fields[2], costOut.Fields[0]}}
	out := runBatches(t, instance(t, r, "flat_c", Function{Name: "cost_flat", In: meterKWh, Out: swapped}), nulls, 10)
	for i, o := range out {
		want := []record.Value{record.Float(nulls[i].Values[1].F * 0.25), nulls[i].Values[0]}
		if i == 3 {
			want[0] = record.Value{}
		}
		if !equalValues(o.Values, want) {
			t.Fatalf("record %d = %v, want %v", i, o.Values, want)
		}
	}

	// A schema it cannot serve is an error of the call, saying why.
	bad := instance(t, r, "flat_c", Function{Name: "cost_flat", In: meterKWh, Out: meterKWh})
	if err := bad.Call(context.Background(), &record.Batch{Records: recs[:4]}, &record.Batch{}); !errors.Is(err, ErrGuest) || !strings.Contains(err.Error(), "output has no field cost") {
		t.Fatalf("output without cost: %v, want the guest's error", err)
	}
}

// checkCost checks the cost example's output; flat: at the off-peak rate
// at all hours.
func checkCost(t *testing.T, recs, got []record.Record, flat bool) {
	t.Helper()
	if len(got) != len(recs) {
		t.Fatalf("%d outputs for %d inputs", len(got), len(recs))
	}
	peak := 0
	for i, in := range recs {
		kwh := in.Values[1].F
		rate := 0.25
		if h := in.Time / 3_600_000 % 24; h >= 17 && h <= 20 {
			peak++
			if !flat {
				rate = 0.40
			}
		}
		want := []record.Value{in.Values[0], in.Values[1], record.Float(kwh * rate)}
		if got[i].Time != in.Time || !equalValues(got[i].Values, want) {
			t.Fatalf("record %d: got %v at %d, want %v at %d", i, got[i].Values, got[i].Time, want, in.Time)
		}
	}
	if peak == 0 || peak == len(recs) {
		t.Fatalf("test data has %d of %d peak-hour records; want both tariffs exercised", peak, len(recs))
	}
}

func TestExampleScorer(t *testing.T) {
	r := newRuntime(t, Config{})
	inst := instance(t, r, "scorer", Function{Name: "score", In: meterKWh, Out: scoreOut})
	recs := readings(700)
	got := runBatches(t, inst, recs, 100) // state must carry across batches
	type st struct {
		n    int64
		ewma float64
	}
	state := map[string]*st{}
	for i, in := range recs {
		m, kwh := in.Values[0].S, in.Values[1].F
		s := state[m]
		if s == nil {
			s = &st{}
			state[m] = s
		}
		score := 0.0
		if s.n == 0 {
			s.ewma = kwh
		} else {
			score = (kwh - s.ewma) / s.ewma
			s.ewma = 0.2*kwh + 0.8*s.ewma
		}
		s.n++
		want := []record.Value{in.Values[0], in.Values[1], record.Int(s.n), record.Float(s.ewma), record.Float(score)}
		if !equalValues(got[i].Values, want) {
			t.Fatalf("record %d: got %v, want %v", i, got[i].Values, want)
		}
	}
}

func TestExampleAnomaly(t *testing.T) {
	r := newRuntime(t, Config{})
	inst := instance(t, r, "anomaly", Function{Name: "detect", In: meterKWh, Out: anomalyOut})
	recs := readings(740)
	got := runBatches(t, inst, recs, 256)
	ref := model.NewDetector()
	flagged := 0
	for i, in := range recs {
		p, anomalous := ref.Observe(in.Values[0].S, in.Values[1].F)
		// math.Exp is assembly on amd64 and pure Go in wasm: p may differ
		// in the last bits.
		want := []record.Value{in.Values[0], in.Values[1], record.Float(p), record.Bool(anomalous)}
		if gp := got[i].Values[2].F; math.Abs(gp-p) <= 1e-12*math.Max(1, math.Abs(p)) {
			want[2].F = gp
		}
		if !equalValues(got[i].Values, want) {
			t.Fatalf("record %d: got %v, want %v", i, got[i].Values, want)
		}
		if anomalous {
			flagged++
			if i%37 != 36 {
				t.Errorf("record %d (no spike, kwh %.2f) flagged with p=%.3f", i, in.Values[1].F, p)
			}
		}
	}
	if spikes := len(recs) / 37; flagged < spikes/2 {
		t.Errorf("flagged %d of %d spikes", flagged, spikes)
	}
}

func TestGuestErrorKeepsInstance(t *testing.T) {
	r := newRuntime(t, Config{})
	wrongIn := &record.Schema{Fields: []record.Field{{Name: "meter", Type: record.TypeString}, {Name: "kw", Type: record.TypeFloat}}}
	bad := instance(t, r, "cost", Function{Name: "cost", In: wrongIn, Out: costOut})
	b := record.Batch{Records: readings(3)}
	var out record.Batch
	err := bad.Call(context.Background(), &b, &out)
	if !errors.Is(err, ErrGuest) || !strings.Contains(err.Error(), `input has no field \"kwh\"`) {
		t.Fatalf("Call with a schema lacking kwh = %v, want a guest error naming the field", err)
	}
	narrow := &record.Schema{Fields: costOut.Fields[:2]}
	bad2 := instance(t, r, "cost", Function{Name: "cost", In: meterKWh, Out: narrow})
	if err := bad2.Call(context.Background(), &b, &out); !errors.Is(err, ErrGuest) || !strings.Contains(err.Error(), "produced 3 values, output schema has 2") {
		t.Fatalf("Call with a narrow output schema = %v", err)
	}
	if bad.Restarts != 0 || bad2.Restarts != 0 {
		t.Errorf("a guest error restarted the instance")
	}
}

// TestNodeOperator runs the cost example as a JobSpec udf node's operator.
func TestNodeOperator(t *testing.T) {
	r := newRuntime(t, Config{})
	ctx := context.Background()
	wasm := example(t, "cost")
	u := &jobspec.UDF{Module: Digest(wasm), Function: "cost", Output: []jobspec.Field{
		{Name: "meter", Type: record.TypeString}, {Name: "kwh", Type: record.TypeFloat}, {Name: "cost", Type: record.TypeFloat}}}
	fetched := 0
	src := func(_ context.Context, digest string) ([]byte, error) {
		fetched++
		if digest != u.Module {
			return nil, fmt.Errorf("no module %s", digest)
		}
		return wasm, nil
	}
	var ops []*Operator
	for range 2 { // two subtasks: one fetch and compile, two instances
		op, err := r.NodeOperator(ctx, u, meterKWh, src)
		if err != nil {
			t.Fatal(err)
		}
		defer op.Close(ctx)
		ops = append(ops, op)
	}
	if fetched != 1 {
		t.Errorf("module fetched %d times for two subtasks, want 1", fetched)
	}
	var e emitter
	b := record.Batch{Records: readings(10)}
	if err := ops[1].ProcessBatch(0, &b, &e); err != nil {
		t.Fatal(err)
	}
	if err := ops[1].ProcessWatermark(0, 42, &e); err != nil {
		t.Fatal(err)
	}
	if len(e.recs) != 10 || e.wm != 42 || e.recs[3].Values[2].F != b.Records[3].Values[1].F*0.25 {
		t.Fatalf("operator emitted %v, watermark %d", e.recs, e.wm)
	}
	u2 := *u
	u2.Module = Digest([]byte("missing"))
	if _, err := r.NodeOperator(ctx, &u2, meterKWh, src); err == nil || !strings.Contains(err.Error(), "no module") {
		t.Errorf("NodeOperator with an unknown module = %v", err)
	}
	u3 := *u
	u3.Allow = []string{"network"}
	if _, err := r.NodeOperator(ctx, &u3, meterKWh, src); refusedBy(err) != RuleCapability {
		t.Errorf("NodeOperator allowing network = %v, want a %s refusal", err, RuleCapability)
	}
}

type emitter struct {
	recs []record.Record
	wm   int64
}

func (e *emitter) Emit(r record.Record) {
	e.recs = append(e.recs, record.Record{Time: r.Time, Values: append([]record.Value(nil), r.Values...)})
}
func (e *emitter) EmitSide(string, record.Record) {}
func (e *emitter) EmitWatermark(wm int64)         { e.wm = wm }

// TestCommittedModulesMatchSource rebuilds the examples with the local Go
// toolchain and compares them with the committed modules. It is slow (a
// minute per module on a loaded machine), so it runs only with
// SEALFLOW_REBUILD_WASM=1.
func TestCommittedModulesMatchSource(t *testing.T) {
	if os.Getenv("SEALFLOW_REBUILD_WASM") != "1" {
		t.Skip("set SEALFLOW_REBUILD_WASM=1 to rebuild the example modules")
	}
	for _, name := range []string{"cost", "scorer", "anomaly", "hostile"} {
		t.Run(name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), name+".wasm")
			cmd := exec.Command("go", "build", "-buildmode=c-shared", "-ldflags=-s -w", "-trimpath", "-o", out, "./"+name)
			cmd.Dir = "examples"
			cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
			if msg, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("build %s: %v\n%s", name, err, msg)
			}
			fresh, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(fresh, example(t, name)) {
				t.Errorf("examples/testdata/%s.wasm is stale (%s, fresh build %s): run go generate ./udf/examples", name, Digest(example(t, name)), Digest(fresh))
			}
			if len(fresh) > 3<<20 {
				t.Errorf("%s.wasm is %d bytes, over the 3 MiB budget", name, len(fresh))
			}
		})
	}
}

func equalValues(a, b []record.Value) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].T != b[i].T || a[i].I != b[i].I || a[i].S != b[i].S {
			return false
		}
		if a[i].F != b[i].F && !(math.IsNaN(a[i].F) && math.IsNaN(b[i].F)) {
			return false
		}
	}
	return true
}

// TestGuestMemoryStaysBounded checks that a Go guest's heap does not grow
// call after call: the SDK lets the guest's garbage collector finish its
// cycles, so a long-running UDF does not walk into its memory limit.
// TestGuestMemoryStaysBounded calls functions that allocate on every call
// (the per-record cost map; churn, columnar, 64 KiB of garbage a call):
// the guest's memory must stop growing.
func TestGuestMemoryStaysBounded(t *testing.T) {
	for _, tc := range []struct {
		module, fn string
		out        *record.Schema
	}{{"cost", "cost", costOut}, {"hostile", "churn", meterKWh}} {
		t.Run(tc.fn, func(t *testing.T) {
			r := newRuntime(t, Config{})
			inst := instance(t, r, tc.module, Function{Name: tc.fn, In: meterKWh, Out: tc.out})
			b := record.Batch{Records: readings(256)}
			var out record.Batch
			var warm uint32
			for i := range 400 {
				if err := inst.Call(context.Background(), &b, &out); err != nil {
					t.Fatal(err)
				}
				if i == 49 {
					warm = inst.MemoryBytes()
				}
			}
			if end := inst.MemoryBytes(); end > warm+1<<20 {
				t.Errorf("guest memory grew from %d to %d bytes over 350 calls", warm, end)
			}
			if got := out.Records[1].Values[0].S; got != b.Records[1].Values[0].S+"!" && tc.fn == "churn" {
				t.Errorf("churn output %q", got)
			}
		})
	}
}

// TestJobSpecUDFNode resolves a JobSpec with a udf node and runs the node's
// operator on the schema the spec infers for its input, as the engine
// runtime does for each subtask.
func TestJobSpecUDFNode(t *testing.T) {
	wasm := example(t, "cost")
	b := jobspec.New("pricing")
	b.Schema("reading", jobspec.String("meter"), jobspec.Float("kwh"))
	b.Source("meters.readings", "reading").
		UDF(Digest(wasm), "cost", []jobspec.Field{jobspec.String("meter"), jobspec.Float("kwh"), jobspec.Float("cost")}).As("price").
		Sink("meters.cost")
	spec, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	if mods := spec.Modules(); len(mods) != 1 || mods[0] != Digest(wasm) {
		t.Fatalf("spec.Modules() = %v", mods)
	}
	res, err := spec.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	info := res.Nodes["price"]
	r := newRuntime(t, Config{})
	ctx := context.Background()
	op, err := r.NodeOperator(ctx, info.Node.Params.UDF, info.In[0], func(context.Context, string) ([]byte, error) { return wasm, nil })
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close(ctx)
	if !equalSchemaFields(op.inst.fn.Out, info.Out) {
		t.Fatalf("operator output schema %v, spec infers %v", op.inst.fn.Out, info.Out)
	}
	var e emitter
	in := record.Batch{Records: readings(5)}
	if err := op.ProcessBatch(0, &in, &e); err != nil {
		t.Fatal(err)
	}
	if len(e.recs) != 5 || len(e.recs[0].Values) != len(info.Out.Fields) {
		t.Fatalf("emitted %v", e.recs)
	}
}

func equalSchemaFields(a, b *record.Schema) bool {
	if len(a.Fields) != len(b.Fields) {
		return false
	}
	for i := range a.Fields {
		if a.Fields[i] != b.Fields[i] {
			return false
		}
	}
	return true
}

// TestGoGuestRunaway runs a Go guest that loops forever or allocates
// without bound: each runaway batch fails with an error saying which limit
// stopped it, and the same instance then serves normal batches.
func TestGoGuestRunaway(t *testing.T) {
	normal := record.Batch{Records: readings(8)}
	runaway := record.Batch{Records: []record.Record{{Time: 1, Values: []record.Value{record.String("m0"), record.Float(-1)}}}}
	for _, tc := range []struct {
		fn   string
		cfg  Config
		is   error
		want string
	}{
		{"spin", Config{BatchTimeout: 500 * time.Millisecond}, ErrDeadline, "CPU time limit of 500ms"},
		{"hog", Config{BatchTimeout: time.Minute, MemoryLimitPages: 512}, ErrMemoryLimit, "512 pages (32 MiB)"},
	} {
		t.Run(tc.fn, func(t *testing.T) {
			r := newRuntime(t, tc.cfg)
			inst := instance(t, r, "hostile", Function{Name: tc.fn, In: meterKWh, Out: meterKWh})
			var out record.Batch
			if err := inst.Call(context.Background(), &normal, &out); err != nil || out.Len() != normal.Len() {
				t.Fatalf("normal batch: %v (%d records)", err, out.Len())
			}
			err := inst.Call(context.Background(), &runaway, &out)
			t.Logf("runaway batch: %v", err)
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("runaway batch: %v, want %v containing %q", err, tc.is, tc.want)
			}
			for i := range 2 {
				if err := inst.Call(context.Background(), &normal, &out); err != nil || out.Len() != normal.Len() {
					t.Fatalf("normal batch %d after the runaway: %v (%d records)", i, err, out.Len())
				}
			}
			if inst.Restarts != 1 {
				t.Errorf("Restarts = %d, want 1", inst.Restarts)
			}
		})
	}
}

// TestCapabilities checks that a guest sees a deterministic fake clock and
// random source unless the spec grants "clock" and "random", and the real
// ones when it does.
func TestCapabilities(t *testing.T) {
	r := newRuntime(t, Config{})
	probeOut := &record.Schema{Fields: []record.Field{{Name: "now", Type: record.TypeInt}, {Name: "random", Type: record.TypeInt}}}
	probe := func(allow ...string) (now time.Time, random int64) {
		inst := instance(t, r, "hostile", Function{Name: "probe", In: meterKWh, Out: probeOut, Allow: allow})
		var out record.Batch
		if err := inst.Call(context.Background(), &record.Batch{Records: readings(1)}, &out); err != nil {
			t.Fatal(err)
		}
		return time.UnixMilli(out.Records[0].Values[0].I), out.Records[0].Values[1].I
	}
	now1, rand1 := probe()
	now2, rand2 := probe()
	if !now1.Equal(now2) || rand1 != rand2 {
		t.Errorf("without capabilities two instances saw (%v, %d) and (%v, %d); want the same fakes", now1, rand1, now2, rand2)
	}
	if d := time.Since(now1); d < 24*time.Hour {
		t.Errorf("without the clock capability the guest saw the real time %v", now1)
	}
	nowA, randA := probe(CapClock, CapRandom)
	_, randB := probe(CapClock, CapRandom)
	if d := time.Since(nowA); d < -time.Minute || d > time.Minute {
		t.Errorf("with the clock capability the guest saw %v, %v from now", nowA, d)
	}
	if randA == randB || randA == rand1 {
		t.Errorf("with the random capability two instances drew %d and %d (fake: %d)", randA, randB, rand1)
	}
}
