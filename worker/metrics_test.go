package worker

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
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
