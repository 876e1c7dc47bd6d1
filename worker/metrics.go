package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/seal"
)

// Task states as exported by Metrics (Task.State without its detail).
const (
	StateRunning  = "running"
	StateFinished = "finished"
	StateFailed   = "failed"
	StateStopped  = "stopped"
)

// Metrics exports a worker's counters to Prometheus, read from its tasks at
// scrape time: records read and written per task
// (sealflow_worker_records_in_total, sealflow_worker_records_out_total),
// tasks by state (sealflow_worker_tasks) and frames rejected by reason
// (sealflow_worker_frames_rejected_total, counted by the StreamIO that
// WrapIO returns). Every series carries the node's name as the label "node";
// a task's job is the label "sealflow_job" (Prometheus reserves "job" for the
// scrape job).
// Use it as
//
//	m := worker.NewMetrics(name)
//	w, err := worker.New(worker.Config{..., IO: m.WrapIO(io)})
//	m.Watch(w)
//	addr, err := m.Serve(ctx, ":9464")
type Metrics struct {
	reg      *prometheus.Registry
	rejected *prometheus.CounterVec

	mu sync.Mutex
	w  *Worker

	recordsIn, recordsOut, tasks *prometheus.Desc

	checkpoints     *prometheus.CounterVec
	checkpointTime  prometheus.Histogram
	checkpointBytes prometheus.Gauge
	taskRestarts    prometheus.Counter
}

// NewMetrics returns the metrics of the node named node, registered in a
// registry of their own with the Go runtime and process collectors.
func NewMetrics(node string) *Metrics {
	labels := prometheus.Labels{"node": node}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sealflow_worker_frames_rejected_total", ConstLabels: labels,
			Help: "Sealed frames this worker refused (tampered, replayed, reordered, foreign, ...), by the refusing rule.",
		}, []string{"reason"}),
		recordsIn: prometheus.NewDesc("sealflow_worker_records_in_total",
			"Records a task read from its sealed input streams.", []string{"sealflow_job", "task"}, labels),
		recordsOut: prometheus.NewDesc("sealflow_worker_records_out_total",
			"Records a task wrote to its sealed output streams.", []string{"sealflow_job", "task"}, labels),
		tasks: prometheus.NewDesc("sealflow_worker_tasks",
			"Tasks on this worker by state (running, finished, failed, stopped).", []string{"state"}, labels),
	}
	m.checkpoints = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sealflow_worker_checkpoints_total", ConstLabels: labels,
		Help: "Checkpoints of this worker's tasks, by outcome (complete: persisted, acknowledged and committed; declined).",
	}, []string{"outcome"})
	m.checkpointTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "sealflow_worker_checkpoint_duration_seconds", ConstLabels: labels,
		Help:    "Time from a checkpoint's trigger to the commit of its output.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
	})
	m.checkpointBytes = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "sealflow_worker_checkpoint_size_bytes", ConstLabels: labels,
		Help: "Size of the last completed snapshot (before sealing).",
	})
	m.taskRestarts = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sealflow_worker_task_restarts_total", ConstLabels: labels,
		Help: "Tasks restarted from their last checkpoint after a failure.",
	})
	m.reg.MustRegister(m.rejected, m.checkpoints, m.checkpointTime, m.checkpointBytes, m.taskRestarts, m, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Watch makes the metrics read the tasks of w, and w count its checkpoints
// and restarts in them.
func (m *Metrics) Watch(w *Worker) {
	m.mu.Lock()
	m.w = w
	m.mu.Unlock()
	w.mu.Lock()
	w.metrics = m
	w.mu.Unlock()
}

func (m *Metrics) checkpointComplete(size int, took time.Duration) {
	if m == nil {
		return
	}
	m.checkpoints.WithLabelValues("complete").Inc()
	m.checkpointTime.Observe(took.Seconds())
	m.checkpointBytes.Set(float64(size))
}

func (m *Metrics) checkpointDeclined() {
	if m == nil {
		return
	}
	m.checkpoints.WithLabelValues("declined").Inc()
}

func (m *Metrics) taskRestarted() {
	if m == nil {
		return
	}
	m.taskRestarts.Inc()
}

// Registry returns the registry the metrics are registered in, for adding
// collectors or gathering in tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.recordsIn
	ch <- m.recordsOut
	ch <- m.tasks
}

// Collect implements prometheus.Collector: it reads the watched worker's
// tasks.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	w := m.w
	m.mu.Unlock()
	states := map[string]int{StateRunning: 0, StateFinished: 0, StateFailed: 0, StateStopped: 0}
	if w != nil {
		for _, t := range w.Tasks() {
			in, out := t.Records()
			ch <- prometheus.MustNewConstMetric(m.recordsIn, prometheus.CounterValue, float64(in), t.Job, t.ID)
			ch <- prometheus.MustNewConstMetric(m.recordsOut, prometheus.CounterValue, float64(out), t.Job, t.ID)
			states[stateName(t.State())]++
		}
	}
	for s, n := range states {
		ch <- prometheus.MustNewConstMetric(m.tasks, prometheus.GaugeValue, float64(n), s)
	}
}

// stateName maps Task.State to one of the exported states; a task not yet
// running counts as running.
func stateName(s string) string {
	switch {
	case s == StateFinished:
		return StateFinished
	case strings.HasPrefix(s, StateFailed):
		return StateFailed
	case strings.HasPrefix(s, StateStopped):
		return StateStopped
	}
	return StateRunning
}

// WrapIO returns io with every rejected frame counted by reason before it is
// passed on to the task's reject function.
func (m *Metrics) WrapIO(io StreamIO) StreamIO { return &countingIO{StreamIO: io, m: m} }

type countingIO struct {
	StreamIO
	m *Metrics
}

func (c *countingIO) Source(ctx context.Context, s Stream, keys *seal.Keyring, reject RejectFunc) (runtime.Source, error) {
	return c.StreamIO.Source(ctx, s, keys, func(scope, reason string, count int, detail string) {
		if count > 0 {
			c.m.rejected.WithLabelValues(reason).Add(float64(count))
		}
		if reject != nil {
			reject(scope, reason, count, detail)
		}
	})
}

// Handler returns the /metrics handler.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Serve listens on addr (host:port; port 0 picks one) and serves GET
// /metrics until ctx ends. It returns the address it listens on, or the
// error listening.
func (m *Metrics) Serve(ctx context.Context, addr string) (net.Addr, error) {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("worker metrics: listening on %q: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Warn("worker metrics: serving stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	return ln.Addr(), nil
}
