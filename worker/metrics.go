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

	"github.com/sealflow/sealflow/engine/operator"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/orchestrator/api"
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
// WrapIO returns), checkpoints and restarts, and, read from the probe of each
// task's run (runtime.Observer), per operator records
// (sealflow_worker_operator_records_in_total, _out_total), watermark lag
// (sealflow_worker_watermark_lag_seconds), backpressure
// (sealflow_worker_backpressure_ratio) and exchanged bytes
// (sealflow_worker_exchange_bytes_total). Every series carries the node's
// name as the label "node"; a task's job is the label "sealflow_job"
// (Prometheus reserves "job" for the scrape job) and an operator's node ID
// in the JobSpec the label "operator".
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

	opIn, opOut, wmLag, backpressure, exchangeBytes, prefiltered, combined *prometheus.Desc
	// bp measures each task's backpressure between scrapes.
	bp bpTracker

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
		opIn: prometheus.NewDesc("sealflow_worker_operator_records_in_total",
			"Records an operator (a node of the task's JobSpec) received, over its subtasks.", []string{"sealflow_job", "task", "operator"}, labels),
		opOut: prometheus.NewDesc("sealflow_worker_operator_records_out_total",
			"Records an operator emitted, over its subtasks.", []string{"sealflow_job", "task", "operator"}, labels),
		wmLag: prometheus.NewDesc("sealflow_worker_watermark_lag_seconds",
			"Wall-clock time minus an operator's watermark (event time), for running tasks' operators that have a watermark and have not reached the end of their input.", []string{"sealflow_job", "task", "operator"}, labels),
		backpressure: prometheus.NewDesc("sealflow_worker_backpressure_ratio",
			"Share of wall time the most backpressured stage of a running task spent blocked sending to the next stage, over the last second or more.", []string{"sealflow_job", "task"}, labels),
		exchangeBytes: prometheus.NewDesc("sealflow_worker_exchange_bytes_total",
			"Bytes of sealed frames a task sent between its stages.", []string{"sealflow_job", "task"}, labels),
		prefiltered: prometheus.NewDesc("sealflow_worker_prefiltered_records_total",
			"Records a task's maxima pre-filters dropped before an exchange because they were below what the filter had already sent for their key and window.", []string{"sealflow_job", "task"}, labels),
		combined: prometheus.NewDesc("sealflow_worker_combined_records_total",
			"Records a task's count combiners did not send over an exchange because one record of the same key and pane carried their number.", []string{"sealflow_job", "task"}, labels),
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
	// Outcomes exist from the start, so rates and dashboards see zeros.
	m.checkpoints.WithLabelValues("complete")
	m.checkpoints.WithLabelValues("declined")
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
	ch <- m.opIn
	ch <- m.opOut
	ch <- m.wmLag
	ch <- m.backpressure
	ch <- m.exchangeBytes
	ch <- m.prefiltered
	ch <- m.combined
}

// Collect implements prometheus.Collector: it reads the watched worker's
// tasks.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	w := m.w
	m.mu.Unlock()
	now := time.Now()
	states := map[string]int{StateRunning: 0, StateFinished: 0, StateFailed: 0, StateStopped: 0}
	if w != nil {
		for _, t := range w.Tasks() {
			in, out := t.Records()
			ch <- prometheus.MustNewConstMetric(m.recordsIn, prometheus.CounterValue, float64(in), t.Job, t.ID)
			ch <- prometheus.MustNewConstMetric(m.recordsOut, prometheus.CounterValue, float64(out), t.Job, t.ID)
			states[stateName(t.State())]++
			m.collectLive(ch, t, now)
		}
	}
	m.bp.forgetGone(w)
	for s, n := range states {
		ch <- prometheus.MustNewConstMetric(m.tasks, prometheus.GaugeValue, float64(n), s)
	}
}

// backpressureWindow is the least time over which a task's backpressure
// ratio is measured: scrapes closer together report the last ratio.
const backpressureWindow = time.Second

// bpWindow is a task's last backpressure measurement.
type bpWindow struct {
	probe *runtime.Probe // the run measured; a restarted task has a new one
	last  runtime.Live
	ratio float64
	// chains holds the ratio of each engine chain (Live.Tasks index).
	chains []float64
}

// bpTracker measures tasks' backpressure over windows of at least
// backpressureWindow. The zero value is ready to use; it is safe for
// concurrent use. The Prometheus scrapes and the status reports each have
// their own, so neither shortens the other's window.
type bpTracker struct {
	mu sync.Mutex
	m  map[string]*bpWindow // by task id
}

// collectLive sends the series read from the probe of t's run, if it has
// one.
func (m *Metrics) collectLive(ch chan<- prometheus.Metric, t *Task, now time.Time) {
	p := t.probe.Load()
	if p == nil {
		return
	}
	l := p.Read()
	running := stateName(t.State()) == StateRunning
	for _, n := range l.Nodes {
		ch <- prometheus.MustNewConstMetric(m.opIn, prometheus.CounterValue, float64(n.RecordsIn), t.Job, t.ID, n.ID)
		ch <- prometheus.MustNewConstMetric(m.opOut, prometheus.CounterValue, float64(n.RecordsOut), t.Job, t.ID, n.ID)
		if lag, ok := n.Lag(now); ok && running {
			ch <- prometheus.MustNewConstMetric(m.wmLag, prometheus.GaugeValue, lag.Seconds(), t.Job, t.ID, n.ID)
		}
	}
	var bytes, dropped, combined int64
	for _, lt := range l.Tasks {
		bytes += lt.Bytes
		dropped += lt.Prefiltered
		combined += lt.Combined
	}
	ch <- prometheus.MustNewConstMetric(m.exchangeBytes, prometheus.CounterValue, float64(bytes), t.Job, t.ID)
	ch <- prometheus.MustNewConstMetric(m.prefiltered, prometheus.CounterValue, float64(dropped), t.Job, t.ID)
	ch <- prometheus.MustNewConstMetric(m.combined, prometheus.CounterValue, float64(combined), t.Job, t.ID)
	if running {
		ratio, _ := m.bp.measure(t.ID, p, l)
		ch <- prometheus.MustNewConstMetric(m.backpressure, prometheus.GaugeValue, ratio, t.Job, t.ID)
	}
}

// measure returns task's backpressure ratio and that of each of its engine
// chains: over the time since the last measurement if that is at least
// backpressureWindow ago, else the last ratios; the first measurement of a
// run covers the run so far.
func (b *bpTracker) measure(task string, p *runtime.Probe, l runtime.Live) (float64, []float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[string]*bpWindow{}
	}
	w := b.m[task]
	switch {
	case w == nil || w.probe != p:
		w = &bpWindow{probe: p, last: l, ratio: l.Backpressure(runtime.Live{}), chains: chainBackpressure(l, runtime.Live{})}
		b.m[task] = w
	case l.At.Sub(w.last.At) >= backpressureWindow:
		w.ratio, w.chains, w.last = l.Backpressure(w.last), chainBackpressure(l, w.last), l
	}
	return w.ratio, w.chains
}

// chainBackpressure returns, for each engine chain of l (Live.Tasks), the
// share of wall time since the snapshot since (the run's start if zero) its
// subtasks spent blocked in exchange sends, in [0, 1]: what
// runtime.Live.Backpressure takes the worst of.
func chainBackpressure(l, since runtime.Live) []float64 {
	from := l.Started
	if !since.At.IsZero() {
		from = since.At
	}
	wall := l.At.Sub(from)
	out := make([]float64, len(l.Tasks))
	if wall <= 0 {
		return out
	}
	for i, t := range l.Tasks {
		if !t.Producing || t.Subtasks == 0 {
			continue
		}
		blocked := t.Blocked
		if i < len(since.Tasks) {
			blocked -= since.Tasks[i].Blocked
		}
		out[i] = min(max(float64(blocked)/float64(wall)/float64(t.Subtasks), 0), 1)
	}
	return out
}

// forgetGone drops the backpressure windows of tasks w no longer has.
func (b *bpTracker) forgetGone(w *Worker) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.m) == 0 {
		return
	}
	have := map[string]bool{}
	if w != nil {
		for _, t := range w.Tasks() {
			have[t.ID] = true
		}
	}
	for id := range b.m {
		if !have[id] {
			delete(b.m, id)
		}
	}
}

// liveReport reads the probe of t's current run for a status report: the
// task's backpressure ratio (running tasks only) and each JobSpec node's
// counters and watermark. It returns nothing before the run started.
func liveReport(t *Task, bp *bpTracker) (float64, []api.OperatorReport) {
	p := t.probe.Load()
	if p == nil {
		return 0, nil
	}
	l := p.Read()
	ratio, chains := bp.measure(t.ID, p, l)
	if stateName(t.State()) != StateRunning {
		ratio, chains = 0, nil
	}
	ops := make([]api.OperatorReport, 0, len(l.Nodes))
	for _, n := range l.Nodes {
		o := api.OperatorReport{ID: n.ID, RecordsIn: n.RecordsIn, RecordsOut: n.RecordsOut}
		switch {
		case !n.HasWatermark:
		case n.Watermark == operator.FinalWatermark:
			o.Ended = true
		default:
			wm := n.Watermark
			o.Watermark = &wm
		}
		if n.Task < len(chains) {
			o.Backpressure = chains[n.Task]
		}
		ops = append(ops, o)
	}
	return ratio, ops
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
