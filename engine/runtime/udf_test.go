package runtime

import (
	"context"
	"fmt"
	"math"
	"os"
	"testing"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/udf"
)

// TestUDFNode runs a JobSpec whose middle node is the example WebAssembly
// UDF that prices energy (udf/examples/cost) at parallelism 2, and checks
// every output row against the same tariff computed in Go.
func TestUDFNode(t *testing.T) {
	wasm, err := os.ReadFile("../../udf/examples/testdata/cost.wasm")
	if err != nil {
		t.Fatal(err)
	}
	b := jobspec.New("pricing").Parallelism(2)
	b.Schema("reading", jobspec.String("meter"), jobspec.Float("kwh"), jobspec.Int("ts"))
	b.Source("readings", "reading", jobspec.EventTime("ts", 0)).
		Project("meter", "kwh").
		UDF(udf.Digest(wasm), "cost", []jobspec.Field{jobspec.String("meter"), jobspec.Float("kwh"), jobspec.Float("cost")}).
		Sink("priced")
	spec, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rt, err := udf.NewRuntime(ctx, udf.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	var in []record.Record
	for i := range 2000 {
		ts := int64(i) * 60_000 // one reading a minute: peak and off-peak hours
		in = append(in, record.Record{Time: ts, Values: []record.Value{record.String(fmt.Sprint("m", i%7)), record.Float(float64(i%10) / 4), record.Int(ts)}})
	}
	var got Collector
	_, err = Run(ctx, spec, Options{
		Sources: map[string]Source{"readings": SliceSource(in, 128)},
		Sinks:   map[string]Sink{"priced": got.Sink()},
		UDFs:    rt,
		Modules: func(_ context.Context, digest string) ([]byte, error) { return wasm, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	out := got.Records()
	if len(out) != len(in) {
		t.Fatalf("%d rows out of %d", len(out), len(in))
	}
	for _, r := range out {
		hour := (r.Time / 3_600_000) % 24
		rate := 0.25
		if hour >= 17 && hour < 21 {
			rate = 0.40
		}
		if want := r.Values[1].F * rate; math.Abs(r.Values[2].F-want) > 1e-12 {
			t.Fatalf("row %v: cost %v, want %v", r.Values, r.Values[2].F, want)
		}
	}
	// Without a UDF runtime the job is refused, not run without its code.
	if _, err := Run(ctx, spec, Options{Sources: map[string]Source{"readings": SliceSource(in, 128)}, Sinks: map[string]Sink{"priced": got.Sink()}}); err == nil {
		t.Fatal("a job with a udf node ran without Options.UDFs")
	}
}
