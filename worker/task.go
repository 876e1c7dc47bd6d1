package worker

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/seal"
)

// StreamIO opens the sealed streams a task reads and writes on the substrate.
type StreamIO interface {
	// Source returns a source reading the sealed frames of a stream of the
	// given kind, opened with keys (scope names the keys and the frames).
	// Rejected frames are passed to reject and never emitted.
	Source(ctx context.Context, s Stream, keys *seal.Keyring, reject RejectFunc) (runtime.Source, error)
	// Sink returns a sink sealing records into a stream, and a function that
	// seals the end of the stream once the task has finished.
	Sink(ctx context.Context, s Stream, keys *seal.Keyring) (runtime.Sink, func(context.Context) error, error)
	// CommitSink is Sink for checkpointed tasks: the sink publishes a
	// checkpoint's output once the checkpoint is persisted, idempotently.
	CommitSink(ctx context.Context, s Stream, keys *seal.Keyring) (runtime.CommitSink, func(context.Context) error, error)
}

// Stream names one sealed stream of a task.
type Stream struct {
	// Name is the stream's name in the JobSpec.
	Name string
	// Kind is what the frames carry: ingest (an owner's stream), exchange (an
	// intermediate stream between stages of a job) or output.
	Kind seal.Kind
	// Scope is the seal scope of the frames and the keyring scope of the key.
	Scope string
	// Schema is the schema of the stream's records.
	Schema *record.Schema
	// Partitions is the number of partitions (ingest streams).
	Partitions int
}

// RejectFunc receives frames a task refused.
type RejectFunc func(scope, reason string, count int, detail string)

// Task is one task of a job running on this worker.
type Task struct {
	ID   string
	Job  string
	Slot orchestrator.TaskSlot
	Spec *jobspec.Spec

	keys *seal.Keyring
	io   StreamIO
	// partitions holds the partition count of the owners' streams read.
	partitions map[string]int
	log        *slog.Logger
	report     RejectFunc

	// ckpt, when set, checkpoints the task and restores it after a failure.
	ckpt *taskCheckpoints
	// deployed is when the job was deployed (a later deployment of the same
	// job id is another run).
	deployed time.Time
	// gen is the task's run generation (rescalings by job.scale).
	gen uint64
	// code, when set, runs the task's udf nodes (modules.go).
	code *taskCode

	recordsIn, recordsOut atomic.Int64
	state                 atomic.Value // string
	cancel                context.CancelFunc
	stopped               atomic.Value // string: why the task was stopped

	// probe reads the live counters of the task's current run (metrics.go).
	probe atomic.Pointer[runtime.Probe]

	// ended is set, and done closed, when the task's goroutine has returned
	// (finished, failed for good, or stopped).
	ended atomic.Bool
	done  chan struct{}
}

// end marks the task's goroutine as returned.
func (t *Task) end() {
	t.ended.Store(true)
	if t.done != nil {
		close(t.done)
	}
}

// wait waits until the task's goroutine has returned.
func (t *Task) wait() {
	if t.done != nil {
		<-t.done
	}
}

// stop cancels the task and records why.
func (t *Task) stop(why string) {
	t.stopped.Store(why)
	if t.cancel != nil {
		t.cancel()
	}
}

// State is "running", "finished" or "failed: ...".
func (t *Task) State() string {
	s, _ := t.state.Load().(string)
	return s
}

// Records returns how many records the task read and wrote.
func (t *Task) Records() (in, out int64) { return t.recordsIn.Load(), t.recordsOut.Load() }

// streamOf classifies a stream of the task's spec.
func (t *Task) streamOf(name string, schema *record.Schema, sink bool) (Stream, error) {
	s := Stream{Name: name, Schema: schema, Partitions: 1}
	if p := t.partitions[name]; p > 0 {
		s.Partitions = p
	}
	switch {
	case !sink && slices.Contains(t.Slot.Reads, name):
		s.Kind, s.Scope = seal.KindIngest, name
	case sink && slices.Contains(t.Slot.Writes, name):
		s.Kind, s.Scope = seal.KindOutput, name
	default:
		// An intermediate stream between stages: sealed with the job's
		// exchange key, installed under the stream's own scope.
		epochs := t.keys.Epochs(t.Job + "/exchange")
		if len(epochs) == 0 {
			return s, fmt.Errorf("no exchange key for job %s", t.Job)
		}
		s.Kind, s.Scope = seal.KindExchange, IntermediateScope(t.Job, name)
		// Every epoch: frames sealed before the job's last move are read
		// with the old one, new frames are sealed with the newest.
		for _, e := range epochs {
			key, ok := t.keys.Key(t.Job+"/exchange", e)
			if !ok {
				continue
			}
			secret, err := key.Bytes()
			if err != nil {
				return s, err
			}
			_, err = t.keys.AddSecret(s.Scope, e, secret)
			clear(secret)
			if err != nil {
				return s, err
			}
		}
	}
	if _, ok := t.keys.Current(s.Scope); !ok {
		return s, fmt.Errorf("task %s has no key for stream %s", t.ID, name)
	}
	return s, nil
}

// intermediateStreams returns the names of the job's intermediate streams
// the task reads or writes (neither an owner's stream nor an output).
func (t *Task) intermediateStreams() []string {
	var out []string
	for _, n := range t.Spec.Nodes {
		switch {
		case n.Kind == jobspec.KindSource && !slices.Contains(t.Slot.Reads, n.Params.Stream),
			n.Kind == jobspec.KindSink && !slices.Contains(t.Slot.Writes, n.Params.Stream):
			out = append(out, n.Params.Stream)
		}
	}
	return out
}

func (t *Task) run(ctx context.Context) error {
	t.state.Store("running")
	err := t.execute(ctx)
	if why, ok := t.stopped.Load().(string); ok {
		t.state.Store(why)
		return nil
	}
	if err != nil {
		t.state.Store("failed: " + err.Error())
		return err
	}
	t.state.Store("finished")
	t.log.Info("task finished", "records_in", t.recordsIn.Load(), "records_out", t.recordsOut.Load())
	return nil
}

func (t *Task) execute(ctx context.Context) error {
	// Everything this run starts (the checkpoint trigger) ends with it.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res, err := t.Spec.Resolve()
	if err != nil {
		return err
	}
	opts := runtime.Options{Sources: map[string]runtime.Source{}, Sinks: map[string]runtime.Sink{}, CommitSinks: map[string]runtime.CommitSink{}, JobID: t.ID, Logger: t.log}
	opts.Observer = runtime.ObserverFunc(t.probe.Store)
	t.code.apply(&opts)
	if t.ckpt != nil {
		cp, err := t.ckpt.setup(ctx, t)
		if err != nil {
			return err
		}
		opts.Checkpoint = cp
	}
	var closers []func(context.Context) error
	var mu sync.Mutex
	for i := range t.Spec.Nodes {
		n := &t.Spec.Nodes[i]
		info := res.Nodes[n.ID]
		switch n.Kind {
		case jobspec.KindSource:
			s, err := t.streamOf(n.Params.Stream, info.Out, false)
			if err != nil {
				return err
			}
			src, err := t.io.Source(ctx, s, t.keys, t.report)
			if err != nil {
				return err
			}
			opts.Sources[n.Params.Stream] = counted(src, &t.recordsIn)
		case jobspec.KindSink:
			s, err := t.streamOf(n.Params.Stream, info.Out, true)
			if err != nil {
				return err
			}
			// One partition per sink subtask.
			s.Partitions = max(res.Spec.Node(n.ID).Parallelism, 1)
			if opts.Checkpoint != nil {
				commit, closeFn, err := t.io.CommitSink(ctx, s, t.keys)
				if err != nil {
					return err
				}
				opts.CommitSinks[n.Params.Stream] = func(ctx context.Context, sp runtime.Split, id uint64, batches []*record.Batch) error {
					for _, b := range batches {
						t.recordsOut.Add(int64(b.Len()))
					}
					return commit(ctx, sp, id, batches)
				}
				closers = append(closers, closeFn)
				continue
			}
			sink, closeFn, err := t.io.Sink(ctx, s, t.keys)
			if err != nil {
				return err
			}
			opts.Sinks[n.Params.Stream] = func(sp runtime.Split, b *record.Batch) error {
				t.recordsOut.Add(int64(b.Len()))
				mu.Lock()
				defer mu.Unlock()
				return sink(sp, b)
			}
			closers = append(closers, closeFn)
		}
	}
	result, err := runtime.Run(ctx, t.Spec, opts)
	if err != nil {
		return err
	}
	for id, c := range result.Nodes {
		if c.Late > 0 {
			// Records that came after their windows closed: worth knowing
			// (an upstream stage fell behind a watermark it had passed).
			t.log.Warn("records arrived too late for their windows", "operator", id, "late", c.Late)
		}
	}
	for _, c := range closers {
		if err := c(ctx); err != nil {
			return err
		}
	}
	return nil
}

func counted(src runtime.Source, n *atomic.Int64) runtime.Source {
	return func(ctx context.Context, sp runtime.Split, emit func(*record.Batch) error) error {
		return src(ctx, sp, func(b *record.Batch) error {
			n.Add(int64(b.Len()))
			return emit(b)
		})
	}
}
