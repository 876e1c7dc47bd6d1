package runtime

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/exchange"
)

// countSpec is shaped like Nexmark q5's first stage over the test events:
// records per key in 2 s windows sliding by 500 ms (or 2 s tumbling
// windows), behind a watermark that trails by 2 ms, less than the test
// events' disorder (up to 5 ms). The default watermark span is 500 ms, about
// 500 events, so a combiner flushes about 7 keys × 2 panes per 500 events.
func countSpec(par int, sliding bool) *jobspec.Spec {
	w := &jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 2000}
	if sliding {
		w = &jobspec.Window{Type: jobspec.WindowSliding, SizeMs: 2000, SlideMs: 500}
	}
	return &jobspec.Spec{
		Name: "count", Parallelism: par, MaxParallelism: 32,
		Schemas: map[string][]jobspec.Field{"ev": eventsSchema},
		Nodes: []jobspec.Node{
			{ID: "src", Kind: jobspec.KindSource, Params: jobspec.Params{Stream: "events", Schema: "ev", TimeField: "ts", Watermark: &jobspec.Watermark{MaxOutOfOrdernessMs: 2}}},
			{ID: "byk", Kind: jobspec.KindKeyBy, Inputs: []string{"src"}, Params: jobspec.Params{Keys: []string{"k"}}},
			{ID: "cnt", Kind: jobspec.KindWindowAggregate, Inputs: []string{"byk"}, Params: jobspec.Params{
				Window:     w,
				Aggregates: []jobspec.Aggregate{{Fn: jobspec.AggCount, As: "n"}}}},
			{ID: "out", Kind: jobspec.KindSink, Inputs: []string{"cnt"}, Params: jobspec.Params{Stream: "results"}},
		},
	}
}

// TestCombineSameRowsFewerRecords runs the count job with and without the
// count combiners, chained and not, over in-process and NATS exchanges, at
// several parallelisms: the rows and the late counts are the same, and far
// fewer records cross into the window with the combiners. (Late records, and
// the combiner's passing them uncombined, are covered by the operator's
// TestCountCombinerSameCounts: here the watermark is too coarse for any.)
func TestCombineSameRowsFewerRecords(t *testing.T) {
	const n = 30_000
	for _, tc := range []struct {
		name    string
		par     int
		sliding bool
		noChain bool
		nats    bool
	}{
		{"sliding/p1", 1, true, false, false},
		{"sliding/p3", 3, true, false, false},
		{"tumbling/p2/unchained", 2, false, true, false},
		{"sliding/nats/p2", 2, true, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var results [2]*Result
			var got [2][]string
			for i, disable := range []bool{true, false} {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				var tr exchange.Transport
				if tc.nats {
					tr = natsTransport(t, 8)
				}
				var c Collector
				res, err := Run(ctx, countSpec(tc.par, tc.sliding), Options{
					Sources:         map[string]Source{"events": GeneratorSource(n, 256, func(i int64, r *record.Record) error { event(i, r); return nil })},
					Sinks:           map[string]Sink{"results": c.Sink()},
					Transport:       tr,
					DisableChaining: tc.noChain,
					DisableCombine:  disable,
					BatchSize:       128,
				})
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				results[i], got[i] = res, rows(c.Records())
			}
			off, on := results[0], results[1]
			if !slices.Equal(got[1], got[0]) || len(got[0]) == 0 {
				t.Fatalf("with the combiners: %d rows, without: %d; first %q and %q", len(got[1]), len(got[0]), got[1][:min(3, len(got[1]))], got[0][:min(3, len(got[0]))])
			}
			if on.Nodes["cnt"].Late != off.Nodes["cnt"].Late {
				t.Errorf("late records: %d with the combiners, %d without; want equal", on.Nodes["cnt"].Late, off.Nodes["cnt"].Late)
			}
			inOff, inOn := off.Nodes["cnt"].RecordsIn, on.Nodes["cnt"].RecordsIn
			if off.Combined != 0 || inOff != n || inOn > n/10 {
				t.Errorf("the window received %d records without the combiners (want %d, combined %d) and %d with them (want at most %d)", inOff, n, off.Combined, inOn, n/10)
			}
			if on.Combined != n-inOn {
				t.Errorf("Combined = %d, want the %d records the window did not receive", on.Combined, n-inOn)
			}
			t.Logf("window in %d → %d records, exchanged %d → %d bytes, %d late", inOff, inOn, off.Bytes, on.Bytes, on.Nodes["cnt"].Late)
		})
	}
}

// TestCombineCheckpointRecovery fails the count job twice after checkpoints
// completed and restores it each time: the combiners flush before every
// barrier, so they hold nothing a checkpoint should have, and the committed
// output is exactly that of a failure-free run without them.
func TestCombineCheckpointRecovery(t *testing.T) {
	const n = 30_000
	var c Collector
	if _, err := Run(context.Background(), countSpec(2, true), Options{
		Sources:        map[string]Source{"events": GeneratorSource(n, 256, func(i int64, r *record.Record) error { event(i, r); return nil })},
		Sinks:          map[string]Sink{"results": c.Sink()},
		DisableCombine: true,
	}); err != nil {
		t.Fatal(err)
	}
	want := rows(c.Records())
	var (
		out   txLog
		store persisted
	)
	res := runFailingTwice(t, countSpec(2, true), n, &out, &store, nil, Options{})
	if res.Combined == 0 {
		t.Fatal("the restored run's combiners combined nothing")
	}
	if got := rows(out.records()); !slices.Equal(got, want) {
		t.Fatalf("committed output differs from the failure-free result: %d rows, want %d", len(got), len(want))
	}
}

// TestCombinePlacement lists which edges of several jobs get a combiner:
// only a keyed edge straight into a tumbling or sliding window whose every
// aggregate counts records and which has neither allowed lateness nor a late
// side output.
func TestCombinePlacement(t *testing.T) {
	withWindow := func(w jobspec.Window, aggs ...jobspec.Aggregate) *jobspec.Spec {
		s := countSpec(1, true)
		s.Nodes[2].Params.Window, s.Nodes[2].Params.Aggregates = &w, aggs
		return s
	}
	count := jobspec.Aggregate{Fn: jobspec.AggCount, As: "n"}
	for _, tc := range []struct {
		name string
		spec *jobspec.Spec
		want bool
	}{
		{"sliding count", countSpec(1, true), true},
		{"tumbling counts", withWindow(jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 100}, count, jobspec.Aggregate{Fn: jobspec.AggCount, As: "m"}), true},
		{"with a late side output", withWindow(jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 100, LateOutput: "late"}, count), false},
		{"allowed lateness", withWindow(jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 100, AllowedLatenessMs: 10}, count), false},
		{"session windows", withWindow(jobspec.Window{Type: jobspec.WindowSession, GapMs: 100}, count), false},
		{"a count of a field", withWindow(jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 100}, jobspec.Aggregate{Fn: jobspec.AggCount, Field: "v", As: "n"}), false},
		{"a count and a sum", withWindow(jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 100}, count, jobspec.Aggregate{Fn: jobspec.AggSum, Field: "v", As: "s"}), false},
		{"windowedSpec (count and sum)", windowedSpec(1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := tc.spec.Resolve()
			if err != nil {
				t.Fatal(err)
			}
			p, err := newPlan(r, false)
			if err != nil {
				t.Fatal(err)
			}
			got := false
			for _, e := range p.edges {
				if _, ok := combineWindowing(e); ok {
					got = true
				}
			}
			if got != tc.want {
				t.Fatalf("combined: %v, want %v", got, tc.want)
			}
		})
	}
}
