// Package runtime executes JobSpecs. It turns a validated spec into tasks and
// runs their parallel subtasks on goroutines of one process:
//
//   - Chaining: a node with one input, fed by a node with one consumer at the
//     same parallelism over a forward edge, runs in its producer's task; records
//     pass between chained operators in batches, never serialized.
//   - Exchanges: every other edge is an exchange (package exchange), local
//     channels or NATS subjects with credit-based flow control. Records cross it
//     in frames of up to BatchSize records, encoded with record.AppendBatch and
//     passed through a FrameCodec (sealing, for confidential pipelines). Edges
//     into keyed nodes (window aggregates, top-n, joins) are partitioned: key →
//     key group → subtask (package state); edges between different parallelisms
//     rebalance; the rest are forward.
//   - Event time: sources generate watermarks (bounded out-of-orderness,
//     idleness); an exchange carries watermarks as frames and a consumer's input
//     watermark is the minimum over its producer channels. End of input is the
//     final watermark, after which every operator's Finish runs, in chain order.
//
// Run blocks until the job has consumed all its (bounded) input, fails, or ctx
// ends.
package runtime

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/operator"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/exchange"
	"github.com/sealflow/sealflow/udf"
)

// Split is what a source or sink function learns about the subtask calling it.
type Split struct {
	// Node is the source or sink node's ID, Stream its stream.
	Node, Stream string
	// Subtask is the calling subtask's index in [0, Parallelism).
	Subtask, Parallelism int
	// Schema is the schema of the records produced or written.
	Schema *record.Schema
	// Malformed, given to sources, counts input the source could not decode
	// as a record on the source node's "error" side output, so a bad record
	// never fails the job. It must be called from the source's goroutine.
	Malformed func(err error)
	// Restored, given to sources of a run restored from a checkpoint, is
	// the position the subtask's SourceSnapshotter returned at that
	// checkpoint; nil otherwise (start from the beginning).
	Restored []byte
	// SetSnapshotter, given to sources of a checkpointed run, registers the
	// function returning the subtask's position. A source that registers
	// none cannot be rewound: every checkpoint of the run is declined.
	SetSnapshotter func(SourceSnapshotter)
}

// Source produces the records of one source subtask: it calls emit with
// batches of records of split.Schema, in order, and returns nil at the end of
// its (bounded) input. emit processes the batch before returning, so the
// source may reuse the batch; an emit error must be returned. Each subtask
// reads its own share of the stream. A source that may block for long
// without records should emit empty batches now and then, so idleness is
// detected.
type Source func(ctx context.Context, split Split, emit func(*record.Batch) error) error

// Sink receives the records of one sink subtask. It is called from the
// subtask's goroutine, concurrently with other subtasks of the same sink; the
// batch and its values are valid only during the call.
type Sink func(split Split, b *record.Batch) error

// Options configure a run.
type Options struct {
	// Sources maps the stream of each source node to the function producing it.
	Sources map[string]Source
	// Sinks maps the stream of each sink node to the function receiving it.
	Sinks map[string]Sink
	// Transport carries exchanges; nil uses in-process channels.
	Transport exchange.Transport
	// Codec transforms every exchanged frame; IdentityCodec if nil.
	Codec FrameCodec
	// JobID names this run's exchange channels; random if empty.
	JobID string
	// BatchSize is the number of records per batch and frame; 512 if zero.
	BatchSize int
	// LocalCapacity is the number of frames a local channel buffers; 16 if zero.
	LocalCapacity int
	// DisableChaining runs every node in its own task, so every edge is an
	// exchange (for tests and measurements).
	DisableChaining bool
	// DisablePrefilter turns off the maxima pre-filters on the sending side
	// of keyed exchanges into max-rows windows (see newPrefilter), so every
	// record crosses the exchange (for tests and measurements).
	DisablePrefilter bool
	// DisableCombine turns off the count combiners on the sending side of
	// keyed exchanges into windows that only count (see combineWindowing),
	// so every record crosses the exchange (for tests and measurements).
	// Producers and consumers of an edge must agree on it: it changes what
	// the edge carries.
	DisableCombine bool
	// TickInterval is how often sources tick their watermark generators for
	// idleness detection; 100 ms if zero.
	TickInterval time.Duration
	// WatermarkInterval is the least time between two watermarks a task
	// sends over an exchange; 20 ms if zero, every watermark if negative.
	// Sending a watermark flushes the partly filled frames to every consumer,
	// so a watermark per source batch would shrink frames by the consumer
	// parallelism; watermarks in between are coalesced into the next one.
	// The final watermark and idleness are always sent at once.
	WatermarkInterval time.Duration
	// WatermarkSpan, in event-time milliseconds, sends a coalesced watermark
	// at once when it is this far past the last one sent, before
	// WatermarkInterval has passed. When event time runs far ahead of wall
	// time (a replay, a catch-up, a benchmark's generator) a wall-clock
	// interval alone lets a window's state outlive the window's end by
	// however much event time a source reads in that interval, which varies
	// with the machine's load, so the state held at once would grow with the
	// worst pause seen. 0: a quarter of the job's shortest window size or
	// session gap (windowSpan), none if the job has no windows; negative:
	// none. Each watermark sent also flushes partly filled frames to every
	// consumer, so small windows replayed fast mean more, smaller frames.
	WatermarkSpan int64
	// Side, if set, receives every record sent to a side output (late
	// records, records an expression failed on). It is called concurrently
	// from subtasks. Side records are counted either way.
	Side func(node, name string, rec record.Record)
	// Logger receives the run's log lines; slog.Default() if nil.
	Logger *slog.Logger
	// UDFs runs the WebAssembly functions of udf nodes; a job with udf nodes
	// needs it and Modules.
	UDFs *udf.Runtime
	// Modules returns the plaintext of a udf node's module by digest (for
	// example decrypted with the job's code key).
	Modules udf.ModuleSource
	// Checkpoint, if not nil, takes aligned checkpoints (see Checkpointing).
	Checkpoint *Checkpointing
	// CommitSinks maps the stream of sink nodes to functions committing
	// their output per checkpoint, for exactly-once output; used instead of
	// Sinks when Checkpoint is set.
	CommitSinks map[string]CommitSink
	// Observer, if set, gets a Probe reading the run's live counters
	// (records, watermarks, backpressure; see metrics.go).
	Observer Observer
}

// NodeCounters count what one node did over all its subtasks.
type NodeCounters struct {
	// RecordsIn and RecordsOut count records received and emitted. A window
	// fed by a combined edge (see Options.DisableCombine) receives combined
	// records, each standing for several, so its RecordsIn is lower than
	// with the combiners off.
	RecordsIn, RecordsOut int64
	// Side counts records sent to each side output.
	Side map[string]int64
	// Late counts records that arrived too late for every window (or join
	// interval) they belonged to, whether or not a side output got them.
	Late int64
}

// Result reports a finished run.
type Result struct {
	// Nodes holds each node's counters, by node ID.
	Nodes map[string]*NodeCounters
	// Tasks is the number of tasks (chains), Subtasks the number of goroutines
	// that ran them.
	Tasks, Subtasks int
	// Frames and Bytes count the frames sent over exchanges and their sealed
	// size.
	Frames, Bytes int64
	// Prefiltered counts the records the maxima pre-filters of keyed
	// exchanges dropped before sending them (see Options.DisablePrefilter).
	Prefiltered int64
	// Combined counts the records the count combiners of keyed exchanges
	// did not send because another record carried them (see
	// Options.DisableCombine).
	Combined int64
	// Wall is how long the run took.
	Wall time.Duration
}

// partitioning is how an exchange edge routes records.
type partitioning int

const (
	forward   partitioning = iota // producer subtask i → consumer subtask i
	hashed                        // by key group
	rebalance                     // round-robin, batch by batch
)

// edge is an exchange between two tasks.
type edge struct {
	id       int
	from, to *task
	input    int // input index of the consuming task's head node
	part     partitioning
	key      operator.KeyFunc
	schema   *record.Schema // of the records on the edge
	// combine is set when the producers combine the records of e by key
	// and pane (operator.CountCombiner) for the window aggregate that
	// consumes them: the edge's schema then ends with a weight field (see
	// weightField), the number of records each one stands for.
	combine *operator.Windowing
}

// weightField returns the index of e's weight field, or -1 if e is not
// combined.
func (e *edge) weightField() int {
	if e.combine == nil {
		return -1
	}
	return len(e.schema.Fields) - 1
}

// task is a chain of nodes run by Parallelism subtasks.
type task struct {
	id          int
	nodes       []*jobspec.NodeInfo
	parallelism int
	in          []*edge // by head input index
	out         []*edge
}

// windowSpan returns the default Options.WatermarkSpan of spec: a quarter of
// its shortest window (a tumbling or sliding window's size, a session's
// gap), at least 1 ms, or -1 (none) if spec has no windows. A window's state
// then outlives its end by at most a quarter of its length in event time.
// The price is more firing: a window aggregate fires each key once per
// watermark that passes one of its window ends, so a coarse watermark fires a
// sliding window's keys once for several slides. Nexmark q5 (10 s windows
// sliding by 2 s) used 5-10% more CPU with this span than with the
// wall-clock interval alone (at 3-4 M events/s, 20 ms is about 7 s of its
// event time); q7 and q8, tumbling, used no more.
func windowSpan(spec *jobspec.Spec) int64 {
	least := int64(math.MaxInt64)
	for i := range spec.Nodes {
		w := spec.Nodes[i].Params.Window
		if w == nil {
			continue
		}
		g := w.SizeMs
		if w.Type == jobspec.WindowSession {
			g = w.GapMs
		}
		if g > 0 {
			least = min(least, g)
		}
	}
	if least == math.MaxInt64 {
		return -1
	}
	return max(least/4, 1)
}

// plan is a spec cut into tasks and edges.
type plan struct {
	spec  *jobspec.Spec
	tasks []*task
	edges []*edge
}

func newPlan(r *jobspec.Resolved, noChain bool) (*plan, error) {
	p := &plan{spec: r.Spec}
	taskOf := map[string]*task{}
	for _, id := range r.Order {
		info := r.Nodes[id]
		n := info.Node
		if len(n.Inputs) == 1 && !noChain {
			up := r.Nodes[n.Inputs[0]]
			_, keyed, err := keyFor(info, 0)
			if err != nil {
				return nil, err
			}
			if ut := taskOf[up.Node.ID]; len(up.Consumers) == 1 && !keyed && up.Node.Parallelism == n.Parallelism && ut.nodes[len(ut.nodes)-1] == up {
				ut.nodes = append(ut.nodes, info)
				taskOf[id] = ut
				continue
			}
		}
		t := &task{id: len(p.tasks), nodes: []*jobspec.NodeInfo{info}, parallelism: n.Parallelism}
		p.tasks = append(p.tasks, t)
		taskOf[id] = t
		for i, in := range n.Inputs {
			from := taskOf[in]
			e := &edge{id: len(p.edges), from: from, to: t, input: i, schema: info.In[i]}
			key, keyed, err := keyFor(info, i)
			if err != nil {
				return nil, err
			}
			switch {
			case keyed:
				e.part, e.key = hashed, key
			case from.parallelism == t.parallelism:
				e.part = forward
			default:
				e.part = rebalance
			}
			p.edges = append(p.edges, e)
			t.in = append(t.in, e)
			from.out = append(from.out, e)
		}
	}
	return p, nil
}

// Run executes spec until its sources are exhausted and every operator has
// finished, and reports what it did.
func Run(ctx context.Context, spec *jobspec.Spec, o Options) (*Result, error) {
	start := time.Now()
	resolved, err := spec.Resolve()
	if err != nil {
		return nil, err
	}
	if o.Transport == nil {
		if o.LocalCapacity <= 0 {
			o.LocalCapacity = 16
		}
		o.Transport = exchange.NewLocal(o.LocalCapacity, 0, nil)
	}
	if o.Codec == nil {
		o.Codec = IdentityCodec{}
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 512
	}
	if o.WatermarkInterval == 0 {
		o.WatermarkInterval = 20 * time.Millisecond
	}
	if o.WatermarkSpan == 0 {
		o.WatermarkSpan = windowSpan(resolved.Spec)
	}
	if o.TickInterval <= 0 {
		o.TickInterval = 100 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.JobID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		o.JobID = "run-" + hex.EncodeToString(b[:])
	}
	p, err := newPlan(resolved, o.DisableChaining)
	if err != nil {
		return nil, fmt.Errorf("job %q: planning: %w", spec.Name, err)
	}
	if !o.DisableCombine {
		for _, e := range p.edges {
			if w, ok := combineWindowing(e); ok {
				e.combine = &w
				e.schema = &record.Schema{Fields: append(slices.Clip(e.schema.Fields), record.Field{Name: weightFieldName, Type: record.TypeInt})}
			}
		}
	}
	for _, t := range p.tasks {
		for _, info := range t.nodes {
			n := info.Node
			switch n.Kind {
			case jobspec.KindSource:
				if o.Sources[n.Params.Stream] == nil {
					return nil, fmt.Errorf("job %q: source node %q reads stream %q, but Options.Sources has no source for it", spec.Name, n.ID, n.Params.Stream)
				}
			case jobspec.KindSink:
				if o.Checkpoint != nil && o.CommitSinks[n.Params.Stream] != nil {
					continue
				}
				if o.Sinks[n.Params.Stream] == nil {
					return nil, fmt.Errorf("job %q: sink node %q writes stream %q, but Options.Sinks has no sink for it", spec.Name, n.ID, n.Params.Stream)
				}
			}
		}
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		subs  []*subtask
		coord *coordinator
		snap  *Snapshot
	)
	if cp := o.Checkpoint; cp != nil {
		if cp.Persist == nil {
			return nil, fmt.Errorf("job %q: Options.Checkpoint has no Persist function", spec.Name)
		}
		coord = newCoordinator(cp, o.Logger, func(err error) { cancel(err) })
		if cp.Restore != nil {
			if snap, err = DecodeSnapshot(cp.Restore); err != nil {
				return nil, fmt.Errorf("job %q: restoring: %w", spec.Name, err)
			}
			coord.last = snap.ID
		}
	}
	for _, t := range p.tasks {
		for i := range t.parallelism {
			st, err := newSubtask(ctx, p, t, i, &o)
			if err == nil && coord != nil {
				st.coord = coord
				if snap != nil {
					err = st.restore(snap)
				}
			}
			if err != nil {
				cancel(err)
				if st != nil {
					subs = append(subs, st)
				}
				for _, st := range subs {
					st.closeOps()
				}
				return nil, fmt.Errorf("job %q: task %d (%s) subtask %d: %w", spec.Name, t.id, t.name(), i, err)
			}
			subs = append(subs, st)
		}
	}
	if coord != nil {
		coord.subs = subs
		if snap != nil {
			// The restored checkpoint was persisted: its pending output
			// may be committed (again; the sinks drop what they have).
			if err := coord.commit(ctx, snap.ID); err != nil {
				for _, st := range subs {
					st.closeOps()
				}
				return nil, fmt.Errorf("job %q: committing the output of restored checkpoint %d: %w", spec.Name, snap.ID, err)
			}
			if snap.Finished {
				for _, st := range subs {
					st.closeOps()
				}
				o.Logger.Info("restored a finished run; its output is committed", "job", spec.Name, "checkpoint", snap.ID)
				return &Result{Nodes: map[string]*NodeCounters{}, Tasks: len(p.tasks), Subtasks: len(subs), Wall: time.Since(start)}, nil
			}
		}
		go coord.watch(ctx)
	}
	if o.Observer != nil {
		o.Observer.RunStarted(newProbe(p, subs, start))
	}
	for _, st := range subs {
		wg.Go(func() {
			if err := st.run(ctx); err != nil {
				err = fmt.Errorf("task %d (%s) subtask %d: %w", st.t.id, st.t.name(), st.idx, err)
				mu.Lock()
				cancel(err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, fmt.Errorf("job %q: %w", spec.Name, err)
	}
	if coord != nil {
		if err := coord.final(ctx); err != nil {
			return nil, fmt.Errorf("job %q: %w", spec.Name, err)
		}
	}
	res := &Result{Nodes: map[string]*NodeCounters{}, Tasks: len(p.tasks), Subtasks: len(subs)}
	for _, st := range subs {
		for i, info := range st.t.nodes {
			c := res.Nodes[info.Node.ID]
			if c == nil {
				c = &NodeCounters{Side: map[string]int64{}}
				res.Nodes[info.Node.ID] = c
			}
			s := &st.stats[i]
			c.RecordsIn += s.in
			c.RecordsOut += s.out
			for k, v := range s.side {
				c.Side[k] += v
			}
			c.Late += lateOf(st.ops[i])
		}
		res.Frames += st.frames
		res.Bytes += st.bytes
		pre, comb := st.tail.notSent()
		res.Prefiltered += pre
		res.Combined += comb
	}
	res.Wall = time.Since(start)
	return res, nil
}

func (t *task) name() string {
	s := ""
	for i, n := range t.nodes {
		if i > 0 {
			s += "→"
		}
		s += n.Node.ID
	}
	return s
}

// lateOf returns the late-record count of op, looking through wrappers.
func lateOf(op operator.Operator) int64 {
	for {
		if l, ok := op.(interface{ Late() int64 }); ok {
			return l.Late()
		}
		u, ok := op.(interface{ Unwrap() operator.Operator })
		if !ok {
			return 0
		}
		op = u.Unwrap()
	}
}
