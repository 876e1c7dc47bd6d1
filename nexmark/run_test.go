package nexmark

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/exchange"
	"github.com/sealflow/sealflow/substrate"
)

// runCollect runs a query on the engine and collects its rows.
func runCollect(t *testing.T, ctx context.Context, o RunOptions) Result {
	t.Helper()
	res := Result{Columns: Columns(o.Query)}
	o.Row = func(_ int64, vals []record.Value) error {
		res.Rows = append(res.Rows, slices.Clone(vals))
		return nil
	}
	if _, err := Run(ctx, o); err != nil {
		t.Fatalf("%s: %v", o.Query, err)
	}
	return res
}

// TestQueriesMatchReference runs every query on the engine (local exchanges)
// over generated events, at parallelism 1 and 3 and for a second seed at 2,
// and compares the output multiset with the reference computation over the
// same events.
func TestQueriesMatchReference(t *testing.T) {
	runs := []struct {
		seed         int64
		events       int
		parallelisms []int
	}{{1, 100_000, []int{1, 3}}, {2, 40_000, []int{2}}}
	if testing.Short() {
		runs = []struct {
			seed         int64
			events       int
			parallelisms []int
		}{{1, 20_000, []int{1, 3}}}
	}
	for _, run := range runs {
		cfg := DefaultConfig(run.seed)
		events := mustGenerate(t, cfg, run.events)
		for _, q := range Queries {
			want, err := Reference(q, events)
			if err != nil {
				t.Fatal(err)
			}
			if len(want.Rows) == 0 {
				t.Fatalf("%s seed %d: the reference has no rows; the test would prove nothing", q, run.seed)
			}
			for _, p := range run.parallelisms {
				t.Run(fmt.Sprintf("%s/seed%d/p%d", q, run.seed, p), func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
					defer cancel()
					got := runCollect(t, ctx, RunOptions{Query: q, QueryOptions: QueryOptions{Parallelism: p},
						Input: Input{Events: int64(run.events), Config: cfg}})
					if d := Diff(want, got, 5); d != "" {
						t.Error(d)
					}
				})
			}
		}
	}
}

// TestQueriesOutOfOrder generates 1,000 events per second of event time,
// shuffled within groups of 777 (0.777 s, more than a batch, straddling window
// bounds) and runs the windowed queries with a
// watermark that trails by 2 s: no record is late, so the results must equal
// the reference. (With no allowance, records would be dropped as late.)
func TestQueriesOutOfOrder(t *testing.T) {
	cfg := Config{Seed: 8, EventsPerSecond: 1000, OutOfOrderGroupSize: 777}
	events := mustGenerate(t, cfg, 50_000)
	sorted := true
	for i := 1; i < len(events); i++ {
		sorted = sorted && events[i].Time() >= events[i-1].Time()
	}
	if sorted {
		t.Fatal("events are in order; the test would prove nothing")
	}
	for _, q := range []string{"q5", "q7", "q8", "q11"} {
		want, _ := Reference(q, events)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		got := runCollect(t, ctx, RunOptions{Query: q, QueryOptions: QueryOptions{Parallelism: 2, MaxOutOfOrderness: 2 * time.Second},
			Input: Input{Events: int64(len(events)), Config: cfg}})
		cancel()
		if d := Diff(want, got, 5); d != "" {
			t.Errorf("%s: %s", q, d)
		}
	}
}

// TestQueriesOverGivenEventsAndNATS runs the queries over events given as a
// slice (as read from a file) through NATS exchanges on an embedded server.
func TestQueriesOverGivenEventsAndNATS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv, err := substrate.Start(ctx, substrate.Options{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := substrate.Connect(ctx, srv.ClientURL(), "nexmark-test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	tr, err := exchange.NewNATS(nc, exchange.NATSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	events := mustGenerate(t, DefaultConfig(5), 30_000)
	for _, q := range Queries {
		want, _ := Reference(q, events)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		got := runCollect(t, ctx, RunOptions{Query: q, QueryOptions: QueryOptions{Parallelism: 2},
			Input: Input{Given: events}, Engine: runtime.Options{Transport: tr}})
		cancel()
		if d := Diff(want, got, 5); d != "" {
			t.Errorf("%s over NATS: %s", q, d)
		}
	}
}

// TestPacedRun paces 3,000 events at 20,000 events/s (0.15 s) and checks that
// the run takes at least that long, that results are unchanged, and that rows
// come out soon after their events were due.
func TestPacedRun(t *testing.T) {
	cfg := Config{Seed: 3, EventsPerSecond: 20_000}
	events := mustGenerate(t, cfg, 3000)
	want, _ := Reference("q2", events)
	in := Input{Events: 3000, Config: cfg, Pace: 20_000, Start: time.Now()}
	got := Result{Columns: Columns("q2")}
	var late time.Duration
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	begin := in.Start
	_, err := Run(ctx, RunOptions{Query: "q2", Input: in, Row: func(ts int64, vals []record.Value) error {
		got.Rows = append(got.Rows, slices.Clone(vals))
		if d := time.Since(in.DueTime(ts)); d < 0 {
			t.Errorf("row at event time %d came out %s before it was due", ts, -d)
		} else {
			late = max(late, d)
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took < 140*time.Millisecond {
		t.Errorf("paced run of 0.15 s took only %s", took)
	}
	if d := Diff(want, got, 5); d != "" {
		t.Error(d)
	}
	t.Logf("max latency %s", late)
}
