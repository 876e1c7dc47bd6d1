// Package worker is sealflow's node agent. It runs inside a TEE: it generates
// its keys there, attests to the orchestrator over NATS with the operator's
// signed location claims, receives the keys released to the tasks placed on
// it (wrapped to its attested HPKE key, held in memory only), and runs those
// tasks on the stream engine with every frame it reads or writes sealed. It
// renews its admission by re-attesting before its identity expires and
// reports rejected frames to the orchestrator, which logs them.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/checkpoint"
	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/udf"
)

// Config configures a worker.
type Config struct {
	// Name names the node (its location claims carry the same name).
	Name string
	// NATS is the connection to the substrate; the worker only dials out.
	NATS *nats.Conn
	// Orchestrator is the verified, pinned orchestrator.
	Orchestrator *client.Trust
	// Issuer produces the worker's evidence (its TEE).
	Issuer attest.Issuer
	// Claims is the operator's signed node.claims statement for this node.
	Claims []byte
	// IO opens the sealed streams tasks read and write.
	IO StreamIO
	// Logger receives operational logs; slog.Default() when nil.
	Logger *slog.Logger
	// StatusInterval is how often the worker reports its tasks' progress;
	// 2 s when zero.
	StatusInterval time.Duration
	// Checkpoints, if set, is where tasks store their sealed snapshots: the
	// worker then checkpoints every task every CheckpointInterval, commits
	// output only once a checkpoint covering it is accepted by the
	// orchestrator, and restarts a failed task from its restore point.
	Checkpoints *checkpoint.Store
	// CheckpointInterval is the time between checkpoints;
	// DefaultCheckpointInterval when zero.
	CheckpointInterval time.Duration
	// RestartBackoff is the first wait before a failed checkpointed task is
	// restarted (doubling up to 10 s); 500 ms when zero.
	RestartBackoff time.Duration
	// UDF limits the WebAssembly functions of udf nodes (memory pages and
	// CPU time per batch); zero fields take package udf's defaults.
	UDF udf.Config
}

// Worker is a running node agent.
type Worker struct {
	cfg  Config
	log  *slog.Logger
	kf   *party.KeyFile
	ctl  *api.ControlClient
	http *client.Client

	mu        sync.Mutex
	admission *orchestrator.Admission
	keys      map[string]*seal.Keyring // job → keys of that job's tasks here
	tasks     map[string]*Task         // task id → task
	wg        sync.WaitGroup
	metrics   *Metrics
	// statusBP measures backpressure between status reports (metrics.go).
	statusBP bpTracker

	// udfMu guards udfs, the worker's UDF runtime (modules.go).
	udfMu sync.Mutex
	udfs  *udf.Runtime
}

// New creates a worker with fresh keys. Nothing leaves the process until Run.
func New(cfg Config) (*Worker, error) {
	if cfg.NATS == nil || cfg.Orchestrator == nil || cfg.Issuer == nil || cfg.IO == nil {
		return nil, errors.New("worker: NATS, Orchestrator, Issuer and IO are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	kf, err := party.Generate(party.RoleWorker, cfg.Name, nil)
	if err != nil {
		return nil, err
	}
	return &Worker{cfg: cfg, log: cfg.Logger.With("node", cfg.Name), kf: kf,
		ctl: api.NewControlClient(cfg.NATS, cfg.Orchestrator.Identity), http: client.New(cfg.Orchestrator),
		keys: map[string]*seal.Keyring{}, tasks: map[string]*Task{}}, nil
}

// ID returns the node's identity id (its admission id).
func (w *Worker) ID() party.ID { return w.kf.ID() }

// Admit attests to the orchestrator and returns the admission.
func (w *Worker) Admit(ctx context.Context) (*orchestrator.Admission, error) {
	a, err := w.ctl.Admit(ctx, w.kf, w.cfg.Issuer, w.cfg.Claims)
	if err != nil {
		return nil, fmt.Errorf("worker %s: admission: %w", w.cfg.Name, err)
	}
	w.mu.Lock()
	w.admission = a
	w.mu.Unlock()
	w.log.Info("admitted", "id", a.Node.Short(), "tee", a.Claims.TEE, "tier", a.Where.Tier, "region", a.Where.Region, "expires", a.Expires)
	return a, nil
}

// Run admits the worker, then runs the tasks placed on it until ctx ends. It
// re-attests before the admission expires. It returns an error when the
// worker cannot be admitted, and nil when ctx ends; a task that fails is
// logged and reported in the status reports, and the node keeps running.
func (w *Worker) Run(ctx context.Context) error {
	a, err := w.Admit(ctx)
	if err != nil {
		return err
	}
	defer w.closeUDFs()
	sub, err := w.ctl.SubscribeReleases(w.ID(), func(rs []orchestrator.Release) { w.onReleases(ctx, rs) },
		func(err error) { w.log.Warn("refused a key-release batch", "err", err) })
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	// The orchestrator's hint that jobs changed (a rescale, a move away, a
	// stop): look at the job list now rather than at the next status tick.
	// Hints coalesce; the list itself comes over the pinned TLS connection.
	hint := make(chan struct{}, 1)
	hsub, err := w.cfg.NATS.Subscribe(api.SubjectJobsChanged, func(*nats.Msg) {
		select {
		case hint <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return fmt.Errorf("worker: subscribing to %s: %w", api.SubjectJobsChanged, err)
	}
	defer hsub.Unsubscribe()
	// Keys released before the subscription started.
	if rs, err := w.ctl.FetchReleases(ctx, w.ID()); err == nil && len(rs) > 0 {
		w.onReleases(ctx, rs)
	}
	renew := time.NewTimer(time.Until(a.Expires) * 3 / 4)
	defer renew.Stop()
	status := time.NewTicker(w.statusInterval())
	defer status.Stop()
	for {
		select {
		case <-status.C:
			w.publishStatus()
			w.stopRemovedJobs(ctx)
		case <-hint:
			w.stopRemovedJobs(ctx)
		case <-ctx.Done():
			w.wg.Wait()
			return nil
		case <-renew.C:
			a, err := w.Admit(ctx)
			if err != nil {
				w.log.Error("re-attestation failed", "err", err)
				renew.Reset(10 * time.Second)
				continue
			}
			renew.Reset(time.Until(a.Expires) * 3 / 4)
		}
	}
}

func (w *Worker) statusInterval() time.Duration {
	if w.cfg.StatusInterval > 0 {
		return w.cfg.StatusInterval
	}
	return 2 * time.Second
}

// publishStatus publishes a signed report of this worker's tasks, with each
// task's per-operator counters, watermarks and backpressure read from its
// run's probe; the orchestrator serves their progress and rates (sealflow
// service status, the console).
func (w *Worker) publishStatus() {
	var rep api.StatusReport
	for _, t := range w.Tasks() {
		in, out := t.Records()
		tr := api.TaskReport{Job: t.Job, Task: t.ID, State: t.State(), RecordsIn: in, RecordsOut: out}
		tr.Backpressure, tr.Operators = liveReport(t, &w.statusBP)
		rep.Tasks = append(rep.Tasks, tr)
	}
	w.statusBP.forgetGone(w)
	if len(rep.Tasks) == 0 {
		return
	}
	signed, err := party.Sign(w.kf, api.TypeTaskStatus, rep, time.Minute, time.Now())
	if err != nil {
		return
	}
	if err := w.cfg.NATS.Publish(api.StatusSubject(w.ID()), signed); err != nil {
		w.log.Debug("status report not sent", "err", err)
	}
}

// stopRemovedJobs stops the tasks of jobs the orchestrator no longer runs
// (an owner revoked the service, or the job was removed) and drops their
// keys. The job list comes over the TLS connection pinned to the verified
// orchestrator, so the infrastructure cannot fake a job's removal or hide it.
func (w *Worker) stopRemovedJobs(ctx context.Context) {
	w.mu.Lock()
	running := len(w.keys) > 0
	w.mu.Unlock()
	if !running {
		return
	}
	var jobs []api.JobView
	if err := w.http.Get(ctx, "/v1/jobs", &jobs); err != nil {
		w.log.Warn("could not list jobs", "err", err)
		return
	}
	live := map[string]api.JobView{}
	for _, j := range jobs {
		live[j.ID] = j
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, t := range w.tasks {
		if t.ended.Load() || t.stopped.Load() != nil {
			continue
		}
		j, ok := live[t.Job]
		var why string
		switch {
		case !ok:
			why = "stopped: the job was removed (stopped by its provider or revoked by an owner)"
		case !t.deployed.IsZero() && !j.Deployed.Equal(t.deployed):
			why = "stopped: the job was deployed again"
		case j.Tasks[id] != w.ID():
			why = "stopped: the task moved to node " + j.Tasks[id].Short()
		case j.Generations[id] != t.gen:
			// Rescaled: this run stops and a run at the new parallelism
			// restores the task's last checkpoint.
			t.stop("stopped: rescaled")
			w.log.Info("task rescaled: restarting it from its last checkpoint", "task", id, "generation", j.Generations[id])
			// Counted in w.wg, so Run does not return (and close the
			// UDF runtime) while the new run is being started.
			w.wg.Go(func() {
				t.wait()
				if err := w.start(ctx, t.Job, id); err != nil {
					w.log.Error("rescaled task did not start", "task", id, "err", err)
				}
			})
			continue
		default:
			continue
		}
		// The orchestrator refuses this run's acknowledgements already,
		// so nothing it produced since its last accepted checkpoint is
		// committed; stopping it frees the slot.
		t.stop(why)
		w.log.Info("task stopped by the orchestrator's job list", "task", id, "why", why)
	}
	for job, ring := range w.keys {
		if _, ok := live[job]; ok {
			continue
		}
		ring.Zero()
		delete(w.keys, job)
		w.log.Info("job removed by the orchestrator: keys dropped", "job", job)
	}
}

// Wait waits for every task started so far to end.
func (w *Worker) Wait() { w.wg.Wait() }

// Tasks returns the tasks of this worker.
func (w *Worker) Tasks() []*Task {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]*Task, 0, len(w.tasks))
	for _, t := range w.tasks {
		out = append(out, t)
	}
	return out
}

// onReleases installs released keys and starts the tasks they complete.
func (w *Worker) onReleases(ctx context.Context, rs []orchestrator.Release) {
	byTask := map[string][]orchestrator.Release{}
	for _, r := range rs {
		if r.To != w.ID() {
			continue
		}
		byTask[r.Job+"\x00"+r.Task] = append(byTask[r.Job+"\x00"+r.Task], r)
	}
	for _, group := range byTask {
		job, taskID := group[0].Job, group[0].Task
		w.dropStaleDeployment(ctx, job)
		if err := w.install(group); err != nil {
			w.log.Error("refused released keys", "job", job, "task", taskID, "err", err)
			continue
		}
		w.mu.Lock()
		t, known := w.tasks[taskID]
		w.mu.Unlock()
		if known && !t.ended.Load() && t.stopped.Load() == nil {
			continue // running (or restarting) already
		}
		if known && !t.ended.Load() {
			// Stopped, not yet ended: the new run starts once it has.
			t.wait()
		}
		if err := w.start(ctx, job, taskID); err != nil {
			w.log.Error("task did not start", "job", job, "task", taskID, "err", err)
		}
	}
}

// dropStaleDeployment stops the tasks this worker runs for an earlier
// deployment of job (stopped, then deployed again under the same id) and
// drops that deployment's keys, before the new deployment's keys and tasks
// arrive.
func (w *Worker) dropStaleDeployment(ctx context.Context, job string) {
	w.mu.Lock()
	var mine []*Task
	for _, t := range w.tasks {
		if t.Job == job && !t.deployed.IsZero() {
			mine = append(mine, t)
		}
	}
	w.mu.Unlock()
	if len(mine) == 0 {
		return
	}
	_, jv, err := w.http.JobService(ctx, job)
	if err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	stale := false
	for _, t := range mine {
		if !jv.Deployed.Equal(t.deployed) {
			t.stop("stopped: the job was deployed again")
			stale = true
		}
	}
	if stale {
		if ring := w.keys[job]; ring != nil {
			ring.Zero()
			delete(w.keys, job)
		}
		w.log.Info("job deployed again: the earlier deployment's tasks stopped and keys dropped", "job", job)
	}
}

// install unwraps released keys into the job's keyring.
func (w *Worker) install(rs []orchestrator.Release) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range rs {
		info := orchestrator.WrapInfoFor(r.Purpose, r.Scope, r.Epoch, w.ID())
		key, err := w.kf.Unwrap(info.Bytes(), r.Wrapped)
		if err != nil {
			return fmt.Errorf("%s key %s: %w", r.Purpose, r.KeyID(), err)
		}
		ring := w.keys[r.Job]
		if ring == nil {
			ring = seal.NewKeyring()
			w.keys[r.Job] = ring
		}
		scope := r.Scope
		if r.Purpose == "exchange" || r.Purpose == "checkpoint" || r.Purpose == orchestrator.PurposeCode {
			scope = r.Job + "/" + r.Purpose
		}
		if _, err := ring.AddSecret(scope, r.Epoch, key); err != nil {
			return err
		}
		if r.Purpose == "exchange" {
			// A new exchange epoch (a task of the job moved): the job's
			// intermediate streams written here switch to it at their next
			// frame, and readers here open both.
			for _, t := range w.tasks {
				if t.Job != r.Job {
					continue
				}
				for _, name := range t.intermediateStreams() {
					if _, err := ring.AddSecret(IntermediateScope(r.Job, name), r.Epoch, key); err != nil {
						return err
					}
				}
			}
		}
		clear(key)
	}
	return nil
}

// start fetches the job's manifest and runs one task.
func (w *Worker) start(ctx context.Context, jobID, taskID string) error {
	svc, jv, err := w.http.JobService(ctx, jobID)
	if err != nil {
		return err
	}
	var slot *orchestrator.TaskSlot
	for i := range svc.Manifest.Tasks {
		if svc.Manifest.Tasks[i].ID == taskID {
			slot = &svc.Manifest.Tasks[i]
		}
	}
	if slot == nil {
		return fmt.Errorf("service %s has no task %s", svc.Manifest.ID, taskID)
	}
	var streams []api.StreamView
	if err := w.http.Get(ctx, "/v1/streams", &streams); err != nil {
		return fmt.Errorf("fetching streams: %w", err)
	}
	parts := map[string]int{}
	for _, s := range streams {
		parts[s.Name] = s.Partitions
	}
	raw := svc.Manifest.StageSpec(slot)
	spec, err := jobspec.Parse(raw)
	if err != nil {
		return fmt.Errorf("task %s: %w", taskID, err)
	}
	// The provider's rescalings of this task's operators (job.scale).
	for node, p := range jv.Scale[taskID] {
		if n := spec.Node(node); n != nil {
			n.Parallelism = p
		}
	}
	code, err := w.codeFor(ctx, svc, jobID, spec)
	if err != nil {
		return fmt.Errorf("task %s: %w", taskID, err)
	}
	w.mu.Lock()
	ring := w.keys[jobID]
	t := &Task{ID: taskID, Job: jobID, Slot: *slot, Spec: spec, keys: ring, io: w.cfg.IO, partitions: parts, log: w.log.With("task", taskID), report: w.reportRejected, deployed: jv.Deployed, gen: jv.Generations[taskID], done: make(chan struct{})}
	if w.cfg.Checkpoints != nil {
		interval := w.cfg.CheckpointInterval
		if interval <= 0 {
			interval = DefaultCheckpointInterval
		}
		t.ckpt = &taskCheckpoints{store: w.cfg.Checkpoints, ctl: w.ctl, kf: w.kf, interval: interval, version: svc.Manifest.Version, log: t.log, metrics: w.metrics}
	}
	t.code = code
	if old := w.tasks[taskID]; old != nil && !old.ended.Load() && old.stopped.Load() == nil {
		// Another path (a release batch, a rescale) started the task while
		// this one prepared it: one run per task and node, or two runs
		// would commit different output under the same checkpoint ids.
		w.mu.Unlock()
		return nil
	}
	w.tasks[taskID] = t
	w.mu.Unlock()
	tctx, cancel := context.WithCancel(ctx)
	t.cancel = cancel
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer t.end()
		defer cancel()
		defer w.publishStatus()
		backoff := w.cfg.RestartBackoff
		if backoff <= 0 {
			backoff = 500 * time.Millisecond
		}
		for {
			// A failed task does not stop the node: its state ("failed:
			// ...") reaches the orchestrator in the status reports. A
			// checkpointed task is restarted from its restore point.
			err := t.run(tctx)
			if err == nil || tctx.Err() != nil {
				return
			}
			if t.ckpt == nil {
				w.log.Error("task failed", "task", taskID, "err", err)
				return
			}
			w.log.Error("task failed; restarting it from its last checkpoint", "task", taskID, "in", backoff, "err", err)
			w.publishStatus()
			select {
			case <-tctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
			w.metrics.taskRestarted()
		}
	}()
	return nil
}

// reportRejected tells the orchestrator about frames this worker refused.
func (w *Worker) reportRejected(scope, reason string, count int, detail string) {
	signed, err := party.Sign(w.kf, orchestrator.TypeFrameRejected, orchestrator.FrameRejected{Scope: scope, Reason: reason, Count: count, Detail: detail}, time.Minute, time.Now())
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := w.ctl.Submit(ctx, signed); err != nil {
		w.log.Warn("could not report rejected frames", "err", err)
	}
}
