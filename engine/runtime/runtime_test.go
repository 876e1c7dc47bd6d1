package runtime

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/operator"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/exchange"
	"github.com/sealflow/sealflow/substrate"
)

// eventsSchema is the schema of the test events: id, k (key), v, ts.
var eventsSchema = []jobspec.Field{{Name: "id", Type: record.TypeInt}, {Name: "k", Type: record.TypeInt}, {Name: "v", Type: record.TypeInt}, {Name: "ts", Type: record.TypeInt}}

// event returns test event i: 7 keys, values 0..99, time advancing 1 ms per
// event with a little disorder (within 5 ms).
func event(i int64, rec *record.Record) {
	rec.Time = 0
	rec.Values = append(rec.Values[:0], record.Int(i), record.Int(i*7919%7), record.Int(i*31%100), record.Int(1_000_000+i-(i*13%5)))
}

// windowedSpec keeps even values, scales them, keys by k and sums per 10 ms
// tumbling window.
func windowedSpec(par int) *jobspec.Spec {
	return &jobspec.Spec{
		Name: "windowed", Parallelism: par, MaxParallelism: 32,
		Schemas: map[string][]jobspec.Field{"ev": eventsSchema},
		Nodes: []jobspec.Node{
			{ID: "src", Kind: jobspec.KindSource, Params: jobspec.Params{Stream: "events", Schema: "ev", TimeField: "ts", Watermark: &jobspec.Watermark{MaxOutOfOrdernessMs: 10}}},
			{ID: "even", Kind: jobspec.KindFilter, Inputs: []string{"src"}, Params: jobspec.Params{Expr: "v % 2 == 0"}},
			{ID: "scale", Kind: jobspec.KindMap, Inputs: []string{"even"}, Params: jobspec.Params{Fields: []jobspec.Projection{{Name: "k"}, {Name: "w", Expr: "v * 10"}}}},
			{ID: "byk", Kind: jobspec.KindKeyBy, Inputs: []string{"scale"}, Params: jobspec.Params{Keys: []string{"k"}}},
			{ID: "agg", Kind: jobspec.KindWindowAggregate, Inputs: []string{"byk"}, Params: jobspec.Params{
				Window:     &jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 10},
				Aggregates: []jobspec.Aggregate{{Fn: jobspec.AggCount, As: "n"}, {Fn: jobspec.AggSum, Field: "w", As: "total"}}}},
			{ID: "out", Kind: jobspec.KindSink, Inputs: []string{"agg"}, Params: jobspec.Params{Stream: "results"}},
		},
	}
}

// expectWindowed computes windowedSpec's result directly: rows
// "k start end n total", sorted.
func expectWindowed(n int64) []string {
	type key struct{ k, start int64 }
	type acc struct{ n, total int64 }
	m := map[key]*acc{}
	var rec record.Record
	for i := range n {
		event(i, &rec)
		v := rec.Values[2].I
		if v%2 != 0 {
			continue
		}
		ts := rec.Values[3].I
		kk := key{rec.Values[1].I, ts - ts%10}
		if m[kk] == nil {
			m[kk] = &acc{}
		}
		m[kk].n++
		m[kk].total += v * 10
	}
	var out []string
	for k, a := range m {
		out = append(out, fmt.Sprintf("%d %d %d %d %d", k.k, k.start, k.start+10, a.n, a.total))
	}
	sort.Strings(out)
	return out
}

func rows(recs []record.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		s := ""
		for j, v := range r.Values {
			if j > 0 {
				s += " "
			}
			switch v.T {
			case record.TypeInt, record.TypeBool:
				s += fmt.Sprint(v.I)
			case record.TypeFloat:
				s += fmt.Sprint(v.F)
			default:
				s += v.S
			}
		}
		out[i] = s
	}
	sort.Strings(out)
	return out
}

func natsTransport(t testing.TB, window int) exchange.Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := substrate.Start(ctx, substrate.Options{StoreDir: t.TempDir(), Sync: substrate.SyncRelaxed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	nc, err := substrate.Connect(ctx, s.ClientURL(), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	tr, err := exchange.NewNATS(nc, exchange.NATSOptions{Window: window})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestWindowedJobAllWays runs one keyed, windowed job over local channels and
// NATS, with parallelism 1 and 4, with and without chaining, and checks each
// run against the direct computation.
func TestWindowedJobAllWays(t *testing.T) {
	const n = 20_000
	want := expectWindowed(n)
	for _, tc := range []struct {
		name    string
		nats    bool
		par     int
		noChain bool
	}{
		{"local/p1", false, 1, false},
		{"local/p4", false, 4, false},
		{"local/p3/unchained", false, 3, true},
		{"nats/p1", true, 1, false},
		{"nats/p4", true, 4, false},
		{"nats/p2/unchained", true, 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var tr exchange.Transport
			if tc.nats {
				tr = natsTransport(t, 8)
			}
			var c Collector
			res, err := Run(ctx, windowedSpec(tc.par), Options{
				Sources:         map[string]Source{"events": GeneratorSource(n, 256, func(i int64, r *record.Record) error { event(i, r); return nil })},
				Sinks:           map[string]Sink{"results": c.Sink()},
				Transport:       tr,
				DisableChaining: tc.noChain,
				BatchSize:       128,
			})
			if err != nil {
				t.Fatal(err)
			}
			got := rows(c.Records())
			if !slices.Equal(got, want) {
				t.Fatalf("got %d rows, want %d; first got %q, first want %q", len(got), len(want), got[:min(3, len(got))], want[:3])
			}
			if res.Nodes["src"].RecordsIn != n {
				t.Errorf("source counted %d records in, want %d", res.Nodes["src"].RecordsIn, n)
			}
			if res.Nodes["out"].RecordsIn != int64(len(want)) {
				t.Errorf("sink counted %d records in, want %d", res.Nodes["out"].RecordsIn, len(want))
			}
			wantTasks := 2 // src→even→scale→byk | agg→out
			if tc.noChain {
				wantTasks = 6
			}
			if res.Tasks != wantTasks || res.Frames == 0 {
				t.Errorf("ran %d tasks and %d frames; want %d tasks and some frames", res.Tasks, res.Frames, wantTasks)
			}
		})
	}
}

// TestSlowSinkBackpressure runs a sink that takes one batch per 200 µs behind
// exchanges with tiny buffers, and checks the source is held back: it is
// never further ahead of the sink than what the exchanges can hold.
func TestSlowSinkBackpressure(t *testing.T) {
	for _, useNATS := range []bool{false, true} {
		t.Run(fmt.Sprintf("nats=%v", useNATS), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			const n, batch, window = 30_000, 64, 2
			var tr exchange.Transport = exchange.NewLocal(window, 0, nil)
			if useNATS {
				tr = natsTransport(t, window)
			}
			spec := &jobspec.Spec{
				Name: "slow", Schemas: map[string][]jobspec.Field{"ev": eventsSchema},
				Nodes: []jobspec.Node{
					{ID: "src", Kind: jobspec.KindSource, Params: jobspec.Params{Stream: "events", Schema: "ev"}},
					{ID: "proj", Kind: jobspec.KindMap, Inputs: []string{"src"}, Params: jobspec.Params{Fields: []jobspec.Projection{{Name: "id"}}}},
					{ID: "out", Kind: jobspec.KindSink, Inputs: []string{"proj"}, Params: jobspec.Params{Stream: "results"}},
				},
			}
			var produced, consumed, maxAhead atomic.Int64
			gen := GeneratorSource(n, batch, func(i int64, r *record.Record) error {
				event(i, r)
				produced.Add(1)
				return nil
			})
			pace := time.NewTicker(200 * time.Microsecond)
			defer pace.Stop()
			next := int64(0)
			var order error
			sink := func(_ Split, b *record.Batch) error {
				<-pace.C
				for _, r := range b.Records {
					if r.Values[0].I != next && order == nil {
						order = fmt.Errorf("sink got id %d, want %d", r.Values[0].I, next)
					}
					next++
				}
				c := consumed.Add(int64(b.Len()))
				if ahead := produced.Load() - c; ahead > maxAhead.Load() {
					maxAhead.Store(ahead)
				}
				return nil
			}
			_, err := Run(ctx, spec, Options{
				Sources: map[string]Source{"events": gen}, Sinks: map[string]Sink{"results": sink},
				Transport: tr, DisableChaining: true, BatchSize: batch,
			})
			if err != nil {
				t.Fatal(err)
			}
			if order != nil {
				t.Fatal(order)
			}
			if consumed.Load() != n {
				t.Fatalf("sink got %d records, want %d", consumed.Load(), n)
			}
			// Per exchange edge: the channel's window, one frame in the merge
			// goroutine, one in the merge queue, one being processed, plus one
			// batch buffered in each operator and the source's batch.
			const edges = 2
			bound := int64(edges*(window+3)*batch + 4*batch)
			if maxAhead.Load() > bound {
				t.Fatalf("source ran %d records ahead of the sink; bound %d", maxAhead.Load(), bound)
			}
			t.Logf("max %d records ahead of the sink (bound %d, input %d)", maxAhead.Load(), bound, n)
		})
	}
}

// TestKeyedOperatorsStayReachable checks the wrappers the runtime puts around
// keyed operators expose them, so checkpoints can reach their state.
func TestKeyedOperatorsStayReachable(t *testing.T) {
	r, err := windowedSpec(1).Resolve()
	if err != nil {
		t.Fatal(err)
	}
	info := r.Nodes["agg"]
	op, err := buildOperator(info, r.Spec, 0, 1, nil, Split{}, -1)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, ok := op.(operator.Snapshotter); ok {
			return
		}
		u, ok := op.(interface{ Unwrap() operator.Operator })
		if !ok {
			t.Fatalf("window aggregate built as %T: no Snapshotter reachable through Unwrap", op)
		}
		op = u.Unwrap()
	}
}
