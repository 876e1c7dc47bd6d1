package worker_test

// Benchmark of rescaling for issue #6, on BenchmarkMigration's in-process
// deployment (migrate_bench_test.go): the provider signs job.scale for the
// task's join, alternately to 4 subtasks and back to 1; the worker running
// the task restarts it at the new parallelism, restoring every key group
// from the task's last accepted checkpoint. Results and the command are in
// docs/benchmarks.md, "Rescale time":
//
//	go test -run '^$' -bench 'Rescale$' -timeout 60m ./worker/

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/orchestrator"
)

// migJoin returns the JobSpec node id of the job's join: the operator the
// benchmark rescales.
func migJoin(tb testing.TB) string {
	tb.Helper()
	for _, n := range migSpec().Nodes {
		if n.Kind == jobspec.KindJoin {
			return n.ID
		}
	}
	tb.Fatal("the job has no join")
	return ""
}

// rescaling is the timeline of one rescale, all on one clock.
type rescaling struct {
	node      string
	from, to  int
	restoreCp uint64 // the checkpoint the new run restored
	snapBytes int64

	lastOld    time.Time // JetStream time of the last output of a checkpoint ≤ restoreCp
	submit     time.Time // job.scale sent
	accepted   time.Time // the orchestrator's signed receipt back
	started    time.Time // the worker created the new run's task
	getStart   time.Time // it began reading the snapshot
	getEnd     time.Time // the snapshot was read, checked and opened
	sourcesRun time.Time // the engine restored the state and called the sources: the rescaled task runs
	firstNew   time.Time // JetStream time of the first output of a checkpoint > restoreCp
}

func (r *rescaling) String() string {
	f := func(t time.Time) string { return fmt.Sprintf("%.0f", ms(t.Sub(r.submit))) }
	return fmt.Sprintf("%s %d→%d restore cp %d (%.1f MB); ms from submit: last old output %s, accepted %s, task started %s, get %s–%s, running %s, first new output %s",
		r.node, r.from, r.to, r.restoreCp, float64(r.snapBytes)/(1<<20), f(r.lastOld), f(r.accepted), f(r.started), f(r.getStart), f(r.getEnd), f(r.sourcesRun), f(r.firstNew))
}

// rescale sets the join's parallelism from from to to, right after the
// task committed a checkpoint's output, and returns the rescale's timeline
// once the new run's first output is in the output stream.
func (e *migEnv) rescale(tb testing.TB, op string, from, to int) *rescaling {
	tb.Helper()
	r := &rescaling{node: e.runningOn(tb), from: from, to: to}
	old := e.task(r.node).Task
	e.waitCommits(tb, r.node, time.Now(), 1)
	r.submit = time.Now()
	if _, err := e.c.Submit(e.ctx, e.prov, orchestrator.TypeJobScale, orchestrator.ScaleRequest{Job: migJob, Task: migTask, Operator: op, Parallelism: to}); err != nil {
		tb.Fatal(err)
	}
	r.accepted = time.Now()
	// The worker stops the old run and starts the new one.
	rs := e.awaitRestart(tb, r.node, old, r.submit)
	r.started, r.restoreCp, r.snapBytes, r.getStart, r.getEnd, r.firstNew = rs.started, rs.restoreCp, rs.snapBytes, rs.getStart, rs.getEnd, rs.first
	e.ev.mu.Lock()
	for _, msg := range e.ev.msgs {
		if msg.cp <= r.restoreCp && msg.ts.After(r.lastOld) {
			r.lastOld = msg.ts
		}
	}
	for _, s := range e.ev.sources {
		if s.node == r.node && s.at.After(r.getEnd) && (r.sourcesRun.IsZero() || s.at.Before(r.sourcesRun)) {
			r.sourcesRun = s.at
		}
	}
	e.ev.mu.Unlock()
	if r.lastOld.IsZero() || r.sourcesRun.IsZero() {
		tb.Fatalf("incomplete timeline: %s", r)
	}
	return r
}

// BenchmarkRescale rescales the join of a task with about 1, 10 and 100 MB
// of keyed state, checkpoints every 100 ms: max(b.N, 4) rescales per
// deployment, 1 → 4 → 1 → 4 → 1 subtasks, each submitted right after the
// task committed a checkpoint's output. ns/op is the median time from
// job.scale sent to the JetStream timestamp of the first output message of
// the rescaled run (a checkpoint after its restore point). Other metrics are
// medians in ms: running-ms, sent until the engine restored every key group
// and called the new run's sources; start-ms, sent until the worker created
// the new run (it notices the new generation at its next status tick);
// get-ms, the snapshot's checkpoint.Store.Get; down-ms, the old run's last
// output until the new run's first; snapshot-MB, the restored snapshot.
// up-first-ms and down-first-ms split first-output times by direction.
func BenchmarkRescale(b *testing.B) {
	const interval = 100 * time.Millisecond
	for _, mb := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("interval=%v/state=%dMB", interval, mb), func(b *testing.B) {
			e := newMigEnv(b, max(1, (mb<<20)/(migPad+16)), interval)
			op := migJoin(b)
			var first, running, start, get, down, snap, up, dn []float64
			p := 1
			// The timer runs: this call takes far more than -benchtime, so
			// the framework does not call it again with a larger b.N.
			for i := range max(b.N, 4) {
				to := 4
				if i%2 == 1 {
					to = 1
				}
				r := e.rescale(b, op, p, to)
				p = to
				b.Logf("%s", r)
				f := ms(r.firstNew.Sub(r.submit))
				first = append(first, f)
				if to > r.from {
					up = append(up, f)
				} else {
					dn = append(dn, f)
				}
				running = append(running, ms(r.sourcesRun.Sub(r.submit)))
				start = append(start, ms(r.started.Sub(r.submit)))
				get = append(get, ms(r.getEnd.Sub(r.getStart)))
				down = append(down, ms(r.firstNew.Sub(r.lastOld)))
				snap = append(snap, float64(r.snapBytes)/(1<<20))
				// Steady state before the next rescale.
				e.waitCommits(b, r.node, time.Now(), 2)
			}
			b.ReportMetric(median(first)*1e6, "ns/op")
			for _, x := range []struct {
				name string
				v    []float64
			}{{"running-ms", running}, {"start-ms", start}, {"get-ms", get}, {"down-ms", down}, {"snapshot-MB", snap},
				{"up-first-ms", up}, {"down-first-ms", dn}} {
				b.ReportMetric(median(x.v), x.name)
			}
		})
	}
}

// TestRescaleHarness checks the benchmark's rescale on small state: the
// join goes to 4 subtasks and back to 1 on the same worker, each timeline is
// in order, and the new run restored its state rather than reading the
// build rows again.
func TestRescaleHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("starts NATS, the orchestrator and two workers")
	}
	const rows = 300
	e := newMigEnv(t, rows, 200*time.Millisecond)
	op := migJoin(t)
	p := 1
	for _, to := range []int{4, 1} {
		r := e.rescale(t, op, p, to)
		p = to
		t.Logf("%s", r)
		steps := []time.Time{r.submit, r.started, r.getStart, r.getEnd, r.sourcesRun, r.firstNew}
		for i := 1; i < len(steps); i++ {
			if steps[i].Before(steps[i-1].Add(-20 * time.Millisecond)) {
				t.Errorf("step %d of the timeline precedes step %d: %s", i, i-1, r)
			}
		}
		if r.lastOld.After(r.firstNew) || r.restoreCp == 0 || r.snapBytes < rows*migPad {
			t.Errorf("implausible rescale: %s", r)
		}
		if in, _ := e.task(r.node).recordsIfAny(); in >= rows {
			t.Errorf("the new run read %d records: it read the %d build rows again", in, rows)
		}
		// The worker runs the new run at the new parallelism.
		nt := e.task(r.node).Task
		if st := nt.State(); !strings.HasPrefix(st, "running") {
			t.Errorf("the new run is %q", st)
		}
		if n := nt.Spec.Node(op); n == nil || n.Parallelism != to {
			t.Errorf("the new run's join %s runs at another parallelism than %d", op, to)
		}
		e.waitCommits(t, r.node, time.Now(), 2)
	}
}
