package worker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/seal"
)

// rejectingIO is a StreamIO whose sources reject the frames it lists.
type rejectingIO struct{ rejects []rejection }

type rejection struct {
	reason string
	count  int
}

func (r *rejectingIO) Source(ctx context.Context, s Stream, keys *seal.Keyring, reject RejectFunc) (runtime.Source, error) {
	return func(ctx context.Context, sp runtime.Split, emit func(*record.Batch) error) error {
		for _, x := range r.rejects {
			reject(s.Scope, x.reason, x.count, "detail")
		}
		return nil
	}, nil
}

func (r *rejectingIO) Sink(ctx context.Context, s Stream, keys *seal.Keyring) (runtime.Sink, func(context.Context) error, error) {
	return nil, nil, nil
}

func (r *rejectingIO) CommitSink(ctx context.Context, s Stream, keys *seal.Keyring) (runtime.CommitSink, func(context.Context) error, error) {
	return nil, nil, nil
}

func value(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue series
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

func TestMetricsCountRejectedFramesByReason(t *testing.T) {
	m := NewMetrics("edge-1")
	inner := &rejectingIO{rejects: []rejection{{"seal.replay", 2}, {"seal.auth", 1}, {"seal.replay", 3}}}
	var passed []string
	src, err := m.WrapIO(inner).Source(context.Background(), Stream{Scope: "meter-a"}, nil, func(scope, reason string, count int, detail string) {
		passed = append(passed, scope+"/"+reason)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := src(context.Background(), runtime.Split{}, func(*record.Batch) error { return nil }); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		reason string
		want   float64
	}{{"seal.replay", 5}, {"seal.auth", 1}}
	for _, tt := range tests {
		if got := value(t, m.Registry(), "sealflow_worker_frames_rejected_total", map[string]string{"reason": tt.reason, "node": "edge-1"}); got != tt.want {
			t.Errorf("frames rejected{reason=%s} = %v, want %v", tt.reason, got, tt.want)
		}
	}
	if len(passed) != 3 || passed[0] != "meter-a/seal.replay" {
		t.Errorf("the task's reject function got %v, want the three rejections passed on", passed)
	}
}

func TestMetricsReadTasks(t *testing.T) {
	m := NewMetrics("edge-1")
	w := &Worker{tasks: map[string]*Task{}}
	add := func(id, state string, in, out int64) {
		task := &Task{ID: id, Job: "balance"}
		task.recordsIn.Add(in)
		task.recordsOut.Add(out)
		if state != "" {
			task.state.Store(state)
		}
		w.tasks[id] = task
	}
	add("balance/a", "running", 10, 3)
	add("balance/b", "finished", 7, 7)
	add("balance/c", "failed: source: stream not found", 0, 0)
	add("balance/d", "", 0, 0) // not started yet: counted as running
	add("balance/e", "stopped: the job was removed", 4, 0)
	m.Watch(w)
	tests := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"sealflow_worker_records_in_total", map[string]string{"task": "balance/a", "sealflow_job": "balance"}, 10},
		{"sealflow_worker_records_out_total", map[string]string{"task": "balance/a"}, 3},
		{"sealflow_worker_records_in_total", map[string]string{"task": "balance/b"}, 7},
		{"sealflow_worker_tasks", map[string]string{"state": "running"}, 2},
		{"sealflow_worker_tasks", map[string]string{"state": "finished"}, 1},
		{"sealflow_worker_tasks", map[string]string{"state": "failed"}, 1},
		{"sealflow_worker_tasks", map[string]string{"state": "stopped"}, 1},
	}
	for _, tt := range tests {
		if got := value(t, m.Registry(), tt.name, tt.labels); got != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
}

func TestMetricsServe(t *testing.T) {
	m := NewMetrics("edge-1")
	m.Watch(&Worker{tasks: map[string]*Task{}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := m.Serve(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`sealflow_worker_tasks{node="edge-1",state="running"} 0`, "go_goroutines"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if _, err := m.Serve(ctx, "127.0.0.1:-1"); err == nil || !strings.Contains(err.Error(), "127.0.0.1:-1") {
		t.Errorf("Serve on a bad address: err = %v, want one naming the address", err)
	}
}

// liveIO is a StreamIO whose sources emit, until their context ends, batches
// of records stamped lag before the time of emission (a pause between
// batches), and whose sinks take sinkWait per batch.
type liveIO struct {
	lag, pause, sinkWait time.Duration
	// desc makes each batch's values decrease instead of increase.
	desc bool
}

func (l *liveIO) Source(ctx context.Context, s Stream, keys *seal.Keyring, reject RejectFunc) (runtime.Source, error) {
	return func(ctx context.Context, sp runtime.Split, emit func(*record.Batch) error) error {
		var b record.Batch
		for i := int64(0); ctx.Err() == nil; i++ {
			b.Reset()
			ts := time.Now().Add(-l.lag).UnixMilli()
			for j := range int64(64) {
				v := i*64 + j
				if l.desc {
					v = -v
				}
				b.Records = append(b.Records, record.Record{Values: []record.Value{record.Int(ts), record.Int(v)}})
			}
			if err := emit(&b); err != nil {
				return err
			}
			time.Sleep(l.pause)
		}
		return nil
	}, nil
}

func (l *liveIO) Sink(ctx context.Context, s Stream, keys *seal.Keyring) (runtime.Sink, func(context.Context) error, error) {
	return func(runtime.Split, *record.Batch) error {
		time.Sleep(l.sinkWait)
		return nil
	}, func(context.Context) error { return nil }, nil
}

func (l *liveIO) CommitSink(ctx context.Context, s Stream, keys *seal.Keyring) (runtime.CommitSink, func(context.Context) error, error) {
	return nil, nil, errors.New("liveIO: no commit sinks")
}

// TestMetricsWatermarkLagAndBackpressure runs a task whose source (one
// subtask) feeds a sink of two subtasks over an exchange, and reads the
// watermark lag and backpressure the metrics export while it runs: a slow
// sink backpressures the source, a fast one does not.
func TestMetricsWatermarkLagAndBackpressure(t *testing.T) {
	const lag = 3 * time.Second
	for _, tt := range backpressureCases(lag) {
		t.Run(tt.name, func(t *testing.T) {
			task := laggingTask(t, tt.io)
			m := runWatched(t, task)
			for task.probe.Load() == nil || value(t, m.Registry(), "sealflow_worker_operator_records_in_total", map[string]string{"operator": "out"}) == 0 {
				if s := task.State(); strings.HasPrefix(s, "failed") {
					t.Fatal(s)
				}
				time.Sleep(10 * time.Millisecond)
			}
			labels := map[string]string{"sealflow_job": "lagging", "task": "lagging/t", "node": "edge-1"}
			with := func(k, v string) map[string]string {
				l := maps.Clone(labels)
				l[k] = v
				return l
			}
			// Two scrapes a backpressure window apart: the first measures
			// the run so far, the second the window between them.
			for scrape := range 2 {
				time.Sleep(backpressureWindow + 100*time.Millisecond)
				for _, op := range []string{"src", "out"} {
					got := value(t, m.Registry(), "sealflow_worker_watermark_lag_seconds", with("operator", op))
					// Event time trails wall time by lag; the sink's
					// watermark trails the source's by the frames queued.
					if got < lag.Seconds()-0.1 || got > lag.Seconds()+2 {
						t.Errorf("scrape %d: watermark lag of %s = %.3f s, want about %v", scrape, op, got, lag)
					}
				}
				bp := value(t, m.Registry(), "sealflow_worker_backpressure_ratio", labels)
				t.Logf("scrape %d: backpressure %.3f", scrape, bp)
				if bp < tt.minBP || bp > tt.maxBP {
					t.Errorf("scrape %d: backpressure = %.3f, want in [%.2f, %.2f]", scrape, bp, tt.minBP, tt.maxBP)
				}
			}
			if in, out := value(t, m.Registry(), "sealflow_worker_operator_records_in_total", with("operator", "out")),
				value(t, m.Registry(), "sealflow_worker_operator_records_out_total", with("operator", "src")); in == 0 || in > out {
				t.Errorf("operator records: sink in %v, source out %v; want 0 < in ≤ out", in, out)
			}
			if b := value(t, m.Registry(), "sealflow_worker_exchange_bytes_total", labels); b == 0 {
				t.Error("no exchange bytes counted")
			}
		})
	}
}

// backpressureCase is a sink speed and the backpressure range it must give.
type backpressureCase struct {
	name         string
	io           *liveIO
	minBP, maxBP float64
}

// backpressureCases are a slow sink, which backpressures the source, and a
// fast one, which does not; the source's event time trails wall time by lag.
func backpressureCases(lag time.Duration) []backpressureCase {
	return []backpressureCase{
		{"slow sink", &liveIO{lag: lag, sinkWait: 20 * time.Millisecond}, 0.5, 1},
		{"fast sink", &liveIO{lag: lag, pause: 5 * time.Millisecond}, 0, 0.1},
	}
}

// laggingTask is a task whose source (one subtask) feeds a sink of two
// subtasks over an exchange, on sealed streams in and results read and
// written through sio.
func laggingTask(t *testing.T, sio *liveIO) *Task {
	t.Helper()
	spec := &jobspec.Spec{Name: "lagging", Schemas: map[string][]jobspec.Field{"ev": {{Name: "ts", Type: record.TypeInt}, {Name: "v", Type: record.TypeInt}}},
		Nodes: []jobspec.Node{
			{ID: "src", Kind: jobspec.KindSource, Params: jobspec.Params{Stream: "in", Schema: "ev", TimeField: "ts"}},
			{ID: "out", Kind: jobspec.KindSink, Inputs: []string{"src"}, Parallelism: 2, Params: jobspec.Params{Stream: "results"}},
		}}
	keys := seal.NewKeyring()
	for _, scope := range []string{"in", "results"} {
		if _, err := keys.AddSecret(scope, 1, bytes.Repeat([]byte{7}, 32)); err != nil {
			t.Fatal(err)
		}
	}
	return &Task{ID: "lagging/t", Job: "lagging", Spec: spec, Slot: orchestrator.TaskSlot{ID: "lagging/t", Reads: []string{"in"}, Writes: []string{"results"}},
		keys: keys, io: sio, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// TestMetricsPrefilteredRecords runs a task whose source feeds, over a keyed
// exchange, a tumbling window keeping each key's highest values: the
// exchange's maxima pre-filter drops the source's falling values, and the
// metrics count what it dropped.
func TestMetricsPrefilteredRecords(t *testing.T) {
	task := laggingTask(t, &liveIO{pause: time.Millisecond, desc: true})
	task.Spec.Nodes = []jobspec.Node{
		task.Spec.Nodes[0],
		{ID: "byts", Kind: jobspec.KindKeyBy, Inputs: []string{"src"}, Parallelism: 2, Params: jobspec.Params{Keys: []string{"ts"}}},
		{ID: "top", Kind: jobspec.KindWindowAggregate, Inputs: []string{"byts"}, Parallelism: 2, Params: jobspec.Params{
			Window:     &jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 1000, StartField: "window_start", EndField: jobspec.OmitField},
			Aggregates: []jobspec.Aggregate{{Fn: jobspec.AggMaxRows, Field: "v"}}}},
		{ID: "out", Kind: jobspec.KindSink, Inputs: []string{"top"}, Parallelism: 2, Params: jobspec.Params{Stream: "results"}},
	}
	// Each batch of 64 shares one key and falls: all but its first record
	// are below what the filter already sent.
	waitMostNotSent(t, task, runWatched(t, task), "sealflow_worker_prefiltered_records_total")
}

// waitMostNotSent waits up to 10 s for task's source to have sent 20
// batches of 64 records and for counter (of the task) to count more than
// half of them, but not all, as not sent over the exchange.
func waitMostNotSent(t *testing.T, task *Task, m *Metrics, counter string) {
	t.Helper()
	labels := map[string]string{"sealflow_job": "lagging", "task": "lagging/t", "node": "edge-1"}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if s := task.State(); strings.HasPrefix(s, "failed") {
			t.Fatal(s)
		}
		if task.probe.Load() == nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		sent := value(t, m.Registry(), "sealflow_worker_operator_records_out_total", map[string]string{"operator": "src"})
		notSent := value(t, m.Registry(), counter, labels)
		if sent >= 64*20 && notSent >= sent/2 && notSent < sent {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s: source sent %v records, %s is %v; want more than half of them", sent, counter, notSent)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMetricsCombinedRecords runs a task whose source feeds a counting
// window over a keyed exchange: its count combiner sends one record per key
// and pane, and sealflow_worker_combined_records_total counts the others.
func TestMetricsCombinedRecords(t *testing.T) {
	task := laggingTask(t, &liveIO{pause: time.Millisecond, desc: true})
	task.Spec.Nodes = []jobspec.Node{
		task.Spec.Nodes[0],
		{ID: "byts", Kind: jobspec.KindKeyBy, Inputs: []string{"src"}, Parallelism: 2, Params: jobspec.Params{Keys: []string{"ts"}}},
		{ID: "cnt", Kind: jobspec.KindWindowAggregate, Inputs: []string{"byts"}, Parallelism: 2, Params: jobspec.Params{
			Window:     &jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 1000},
			Aggregates: []jobspec.Aggregate{{Fn: jobspec.AggCount, As: "n"}}}},
		{ID: "out", Kind: jobspec.KindSink, Inputs: []string{"cnt"}, Parallelism: 2, Params: jobspec.Params{Stream: "results"}},
	}
	// Each batch of 64 shares one key and time: all but its first record
	// are carried by another.
	waitMostNotSent(t, task, runWatched(t, task), "sealflow_worker_combined_records_total")
}

// runWatched runs task on a worker of its own whose metrics it returns;
// the task is stopped when the test ends.
func runWatched(t *testing.T, task *Task) *Metrics {
	t.Helper()
	m := NewMetrics("edge-1")
	m.Watch(&Worker{tasks: map[string]*Task{task.ID: task}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- task.run(ctx) }()
	t.Cleanup(func() {
		task.stop("stopped: test over")
		cancel()
		if err := <-done; err != nil {
			t.Errorf("task: %v", err)
		}
	})
	return m
}
