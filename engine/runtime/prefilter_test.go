package runtime

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/exchange"
)

// q7Window is the window of q7Spec: about 1000 test events, 140 per key.
const q7Window = 1000

// q7Spec is shaped like Nexmark q7 over the test events: a projection that
// reorders the fields (v, k, id, ts), then the rows of highest v per key and
// window, then per window the highest of those.
func q7Spec(par int) *jobspec.Spec {
	return &jobspec.Spec{
		Name: "q7-shaped", Parallelism: par, MaxParallelism: 32,
		Schemas: map[string][]jobspec.Field{"ev": eventsSchema},
		Nodes: []jobspec.Node{
			{ID: "src", Kind: jobspec.KindSource, Params: jobspec.Params{Stream: "events", Schema: "ev", TimeField: "ts", Watermark: &jobspec.Watermark{MaxOutOfOrdernessMs: 10}}},
			{ID: "proj", Kind: jobspec.KindMap, Inputs: []string{"src"}, Params: jobspec.Params{Fields: []jobspec.Projection{{Name: "v"}, {Name: "k"}, {Name: "id"}, {Name: "ts"}}}},
			{ID: "byk", Kind: jobspec.KindKeyBy, Inputs: []string{"proj"}, Params: jobspec.Params{Keys: []string{"k"}}},
			{ID: "top1", Kind: jobspec.KindWindowAggregate, Inputs: []string{"byk"}, Params: jobspec.Params{
				Window:     &jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: q7Window, StartField: "window_start", EndField: jobspec.OmitField},
				Aggregates: []jobspec.Aggregate{{Fn: jobspec.AggMaxRows, Field: "v"}}}},
			{ID: "byw", Kind: jobspec.KindKeyBy, Inputs: []string{"top1"}, Params: jobspec.Params{Keys: []string{"window_start"}}},
			{ID: "top2", Kind: jobspec.KindWindowAggregate, Inputs: []string{"byw"}, Params: jobspec.Params{
				Window:     &jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: q7Window, StartField: jobspec.OmitField, EndField: jobspec.OmitField},
				Aggregates: []jobspec.Aggregate{{Fn: jobspec.AggMaxRows, Field: "v"}}}},
			{ID: "out", Kind: jobspec.KindSink, Inputs: []string{"top2"}, Params: jobspec.Params{Stream: "results"}},
		},
	}
}

// q7Event is test event i with v made to depend on the key: v is event's v
// modulo a bound per key (90, 75, 60, 80, 65, 85, 70 for keys 0..6), so each
// key's window maximum differs and the second stage's filter (keyed by
// window start) has rows below a maximum it already sent to drop.
func q7Event(i int64, rec *record.Record) {
	event(i, rec)
	q7Value(rec)
}

// q7Value rewrites a test event's v as q7Event does.
func q7Value(rec *record.Record) {
	k := rec.Values[1].I
	rec.Values[2] = record.Int(rec.Values[2].I % (90 - k*3%7*5))
}

// expectQ7 computes q7Spec's result directly: per window, every event whose
// v is the window's highest, as "v k id ts window_start", sorted.
func expectQ7(n int64) []string {
	best := map[int64]int64{}
	var rec record.Record
	for i := range n {
		q7Event(i, &rec)
		start := rec.Values[3].I - rec.Values[3].I%q7Window
		if v, ok := best[start]; !ok || rec.Values[2].I > v {
			best[start] = rec.Values[2].I
		}
	}
	var out []string
	for i := range n {
		q7Event(i, &rec)
		ts := rec.Values[3].I
		start := ts - ts%q7Window
		if rec.Values[2].I == best[start] {
			out = append(out, fmt.Sprintf("%d %d %d %d %d", rec.Values[2].I, rec.Values[1].I, i, ts, start))
		}
	}
	sort.Strings(out)
	return out
}

// TestPrefilterSameRowsFewerBytes runs the q7-shaped job with and without
// the maxima pre-filters, chained and not, at several parallelisms: the
// rows are the same (and the direct computation's), and far fewer records
// and bytes cross the exchanges with the pre-filters.
func TestPrefilterSameRowsFewerBytes(t *testing.T) {
	const n = 30_000
	want := expectQ7(n)
	for _, tc := range []struct {
		name    string
		par     int
		noChain bool
		nats    bool
	}{
		{"chained/p1", 1, false, false},
		{"chained/p3", 3, false, false},
		{"unchained/p2", 2, true, false},
		{"nats/p2", 2, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var results [2]*Result
			for i, disable := range []bool{true, false} {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				var tr exchange.Transport
				if tc.nats {
					tr = natsTransport(t, 8)
				}
				var c Collector
				res, err := Run(ctx, q7Spec(tc.par), Options{
					Sources:          map[string]Source{"events": GeneratorSource(n, 256, func(i int64, r *record.Record) error { q7Event(i, r); return nil })},
					Sinks:            map[string]Sink{"results": c.Sink()},
					Transport:        tr,
					DisableChaining:  tc.noChain,
					DisablePrefilter: disable,
					BatchSize:        128,
				})
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				if got := rows(c.Records()); !slices.Equal(got, want) {
					t.Fatalf("pre-filter disabled %v: %d rows, want %d; first got %q, first want %q", disable, len(got), len(want), got[:min(3, len(got))], want[:3])
				}
				results[i] = res
			}
			off, on := results[0], results[1]
			if off.Prefiltered != 0 {
				t.Errorf("disabled pre-filters dropped %d records", off.Prefiltered)
			}
			// Every event crosses into top1 without the pre-filter; with
			// it, per source subtask, key and window, the first record and
			// each one at or above the maximum so far.
			inOff, inOn := off.Nodes["top1"].RecordsIn, on.Nodes["top1"].RecordsIn
			if inOff != n || inOn > n/3 {
				t.Errorf("top1 received %d records without the pre-filter (want %d) and %d with it (want at most %d)", inOff, n, inOn, n/3)
			}
			if tc.noChain {
				// The pre-filter sits on the source's edge already: the
				// projection and the key-by copy the fields it compares.
				if in := on.Nodes["proj"].RecordsIn; in > n/3 || off.Nodes["proj"].RecordsIn != n {
					t.Errorf("proj received %d records with the pre-filter, %d without; want at most %d and %d", in, off.Nodes["proj"].RecordsIn, n/3, n)
				}
			}
			// The second stage's filter (on byw→top2, or on top1→byw when
			// every edge is an exchange) drops top1's rows below another
			// key's maximum that it sent before them in the same window.
			if top2Off, top2On := off.Nodes["top2"].RecordsIn, on.Nodes["top2"].RecordsIn; top2Off != off.Nodes["top1"].RecordsOut || top2On >= top2Off {
				t.Errorf("top2 received %d records without the pre-filter (want top1's %d) and %d with it (want fewer)", top2Off, off.Nodes["top1"].RecordsOut, top2On)
			}
			if on.Prefiltered < n-inOn {
				t.Errorf("Prefiltered = %d, want at least the %d records top1 did not receive", on.Prefiltered, n-inOn)
			}
			// A test event takes at least 8 bytes in a frame (time and
			// four ints), so each dropped record saves at least that.
			if saved := off.Bytes - on.Bytes; saved < 8*on.Prefiltered {
				t.Errorf("exchanged %d bytes with the pre-filter, %d without: saved %d, want at least 8 per dropped record (%d)", on.Bytes, off.Bytes, saved, on.Prefiltered)
			}
			t.Logf("exchanged %d → %d bytes, %d → %d frames; top1 in %d → %d, top2 in %d → %d; %d dropped", off.Bytes, on.Bytes, off.Frames, on.Frames, inOff, inOn, off.Nodes["top2"].RecordsIn, on.Nodes["top2"].RecordsIn, on.Prefiltered)
		})
	}
}

// TestPrefilterOnlyForMaxRows leaves keyed exchanges into other windows
// alone: windowedSpec's count and sum see every record.
func TestPrefilterOnlyForMaxRows(t *testing.T) {
	const n = 5000
	var c Collector
	res, err := Run(context.Background(), windowedSpec(2), Options{
		Sources: map[string]Source{"events": GeneratorSource(n, 256, func(i int64, r *record.Record) error { event(i, r); return nil })},
		Sinks:   map[string]Sink{"results": c.Sink()},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Prefiltered != 0 {
		t.Fatalf("a pre-filter dropped %d records before a count and sum", res.Prefiltered)
	}
	if got, want := rows(c.Records()), expectWindowed(n); !slices.Equal(got, want) {
		t.Fatalf("%d rows, want %d", len(got), len(want))
	}
}

// TestPrefilterCheckpointRecovery fails the q7-shaped job twice after
// checkpoints completed and restores it each time: the restored senders'
// pre-filters start empty (they are not checkpointed), and the committed
// output is still exactly the direct computation's.
func TestPrefilterCheckpointRecovery(t *testing.T) {
	const n = 30_000
	want := expectQ7(n)
	for _, tc := range []struct {
		name    string
		par     int
		noChain bool
	}{
		{"chained/p2", 2, false},
		{"unchained/p2", 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				out   txLog
				store persisted
			)
			res := runFailingTwice(t, q7Spec(tc.par), n, &out, &store, q7Values, Options{DisableChaining: tc.noChain})
			prefiltered := res.Prefiltered
			if prefiltered == 0 {
				t.Fatal("the restored run's pre-filters dropped nothing")
			}
			if got := rows(out.records()); !slices.Equal(got, want) {
				t.Fatalf("committed output differs from the failure-free result: %d rows, want %d", len(got), len(want))
			}
		})
	}
}

// TestPrefilterPlacement lists the edges of q7Spec's plans, and of variants
// that must not be pre-filtered, that get a pre-filter: on a forward path
// into a window only the first edge.
func TestPrefilterPlacement(t *testing.T) {
	node := func(s *jobspec.Spec, id string) *jobspec.Node {
		for i := range s.Nodes {
			if s.Nodes[i].ID == id {
				return &s.Nodes[i]
			}
		}
		t.Fatalf("no node %q", id)
		return nil
	}
	for _, tc := range []struct {
		name    string
		noChain bool
		disable bool
		change  func(s *jobspec.Spec)
		want    []string // edges as "last node of the producing task→consumer head"
	}{
		{name: "chained", want: []string{"byk→top1", "byw→top2"}},
		{name: "every edge", noChain: true, want: []string{"src→proj", "top1→byw"}},
		{name: "disabled", noChain: true, disable: true},
		{name: "computed field", noChain: true, want: []string{"proj→byk", "top1→byw"}, change: func(s *jobspec.Spec) {
			node(s, "proj").Params.Fields[0].Expr = "v + 0"
		}},
		{name: "filter on the path", noChain: true, want: []string{"keep→byk", "top1→byw"}, change: func(s *jobspec.Spec) {
			s.Nodes = append(s.Nodes, jobspec.Node{ID: "keep", Kind: jobspec.KindFilter, Inputs: []string{"proj"}, Params: jobspec.Params{Expr: "k != 3"}})
			node(s, "byk").Inputs = []string{"keep"}
		}},
		// proj's other consumer gets its records by an edge of its own.
		{name: "second consumer", noChain: true, want: []string{"proj→byk", "top1→byw"}, change: func(s *jobspec.Spec) {
			s.Nodes = append(s.Nodes, jobspec.Node{ID: "raw", Kind: jobspec.KindSink, Inputs: []string{"proj"}, Params: jobspec.Params{Stream: "raw"}})
		}},
		{name: "allowed lateness", want: []string{"byw→top2"}, change: func(s *jobspec.Spec) {
			node(s, "top1").Params.Window.AllowedLatenessMs = 5
		}},
		// The window's watermark can be ahead of the sender's, so a filter
		// could drop records the late side output must get.
		{name: "late side output", want: []string{"byw→top2"}, change: func(s *jobspec.Spec) {
			node(s, "top1").Params.Window.LateOutput = "late"
		}},
		{name: "float field", want: []string{"byk→top1"}, change: func(s *jobspec.Spec) {
			// top2 maximizes the float window start; top1 stays on v.
			node(s, "top2").Params.Aggregates[0].Field = "f"
			node(s, "byw").Inputs = []string{"tofloat"}
			s.Nodes = append(s.Nodes, jobspec.Node{ID: "tofloat", Kind: jobspec.KindMap, Inputs: []string{"top1"}, Params: jobspec.Params{Fields: []jobspec.Projection{
				{Name: "v"}, {Name: "window_start"}, {Name: "f", Expr: "double(v)"}}}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := q7Spec(1)
			if tc.change != nil {
				tc.change(s)
			}
			r, err := s.Resolve()
			if err != nil {
				t.Fatal(err)
			}
			p, err := newPlan(r, tc.noChain)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range p.edges {
				f, key, err := newPrefilter(e, &Options{DisablePrefilter: tc.disable})
				if err != nil {
					t.Fatal(err)
				}
				if (f == nil) != (key == nil) {
					t.Fatalf("edge %d: pre-filter %v with key function %v", e.id, f != nil, key != nil)
				}
				if f != nil {
					got = append(got, e.from.nodes[len(e.from.nodes)-1].Node.ID+"→"+e.to.nodes[0].Node.ID)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("pre-filtered edges %q, want %q", got, tc.want)
			}
		})
	}
}

// q7Values wraps src so its events carry q7Event's values.
func q7Values(src Source) Source {
	return func(ctx context.Context, split Split, emit func(*record.Batch) error) error {
		return src(ctx, split, func(b *record.Batch) error {
			for i := range b.Records {
				q7Value(&b.Records[i])
			}
			return emit(b)
		})
	}
}

// TestPrefilterLateSideOutput sends, from an input that went idle, a record
// below one it sent before for the same key and window, after the window
// fired on the other input's watermark: it is late at the window and must
// reach the window's late side output. The sender's own watermark never
// passed the window, so a pre-filter on its edge would have dropped it;
// windows with a late side output get none.
func TestPrefilterLateSideOutput(t *testing.T) {
	spec := &jobspec.Spec{
		Name: "late-max", Parallelism: 2, MaxParallelism: 32,
		Schemas: map[string][]jobspec.Field{"ev": eventsSchema},
		Nodes: []jobspec.Node{
			{ID: "src", Kind: jobspec.KindSource, Params: jobspec.Params{Stream: "events", Schema: "ev", TimeField: "ts",
				Watermark: &jobspec.Watermark{MaxOutOfOrdernessMs: 10, IdleTimeoutMs: 20}}},
			{ID: "byk", Kind: jobspec.KindKeyBy, Inputs: []string{"src"}, Params: jobspec.Params{Keys: []string{"k"}}},
			{ID: "top", Kind: jobspec.KindWindowAggregate, Inputs: []string{"byk"}, Params: jobspec.Params{
				Window:     &jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: q7Window, StartField: "window_start", EndField: jobspec.OmitField, LateOutput: "late"},
				Aggregates: []jobspec.Aggregate{{Fn: jobspec.AggMaxRows, Field: "v"}}}},
			{ID: "out", Kind: jobspec.KindSink, Inputs: []string{"top"}, Params: jobspec.Params{Stream: "results"}},
		},
	}
	const t0 = 1_000_000 // a window start
	mk := func(id, k, v, ts int64) record.Record {
		return record.Record{Values: []record.Value{record.Int(id), record.Int(k), record.Int(v), record.Int(ts)}}
	}
	fired := make(chan struct{})
	var once sync.Once
	src := func(ctx context.Context, split Split, emit func(*record.Batch) error) error {
		if split.Subtask == 1 {
			// Key 2, far past the first window: its watermark alone
			// fires the window once subtask 0 is idle.
			b := record.Batch{Records: []record.Record{mk(0, 2, 1, t0), mk(1, 2, 1, t0+3*q7Window)}}
			return emit(&b)
		}
		b := record.Batch{Records: []record.Record{mk(2, 1, 50, t0)}}
		if err := emit(&b); err != nil {
			return err
		}
		// Tick with empty batches until idle and the window fired.
		for wait := true; wait; {
			select {
			case <-fired:
				wait = false
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(2 * time.Millisecond):
			}
			b.Records = b.Records[:0]
			if err := emit(&b); err != nil {
				return err
			}
		}
		b.Records = append(b.Records[:0], mk(3, 1, 10, t0+5)) // late, below 50
		return emit(&b)
	}
	var late []string
	var mu sync.Mutex
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := Run(ctx, spec, Options{
		Sources: map[string]Source{"events": src},
		Sinks: map[string]Sink{"results": func(_ Split, b *record.Batch) error {
			for _, r := range b.Records {
				if r.Values[3].I == t0 && r.Values[1].I == 1 {
					once.Do(func() { close(fired) })
				}
			}
			return nil
		}},
		Side: func(node, name string, r record.Record) {
			mu.Lock()
			defer mu.Unlock()
			late = append(late, fmt.Sprintf("%s %s %v", node, name, r.Values))
		},
		WatermarkInterval: -1,
		TickInterval:      time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Prefiltered != 0 || res.Nodes["top"].Late != 1 || len(late) != 1 || !strings.HasPrefix(late[0], "top late ") {
		t.Fatalf("pre-filter dropped %d, top counted %d late, late side output got %q; want 0, 1 and the record of v 10", res.Prefiltered, res.Nodes["top"].Late, late)
	}
}
