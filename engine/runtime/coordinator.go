package runtime

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/operator"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/state"
)

// defaultAlignmentLimit is Checkpointing.AlignmentLimit when zero.
const defaultAlignmentLimit = 64 << 20

// coordinator runs the checkpoints of one run: it starts them when an id
// arrives on the trigger, collects every subtask's part, persists the whole
// and then commits the sinks' output.
type coordinator struct {
	cfg  *Checkpointing
	log  *slog.Logger
	fail func(error)

	// requested is the id of the checkpoint sources inject barriers for.
	requested atomic.Uint64

	mu       sync.Mutex
	subs     []*subtask
	inflight uint64 // 0 when no checkpoint is in flight
	started  time.Time
	parts    map[*subtask]*SubtaskSnapshot
	declined error
	last     uint64 // the highest id started (or restored)
	finished map[*subtask]bool
	idle     *sync.Cond // signalled when inflight becomes 0
}

func newCoordinator(cfg *Checkpointing, log *slog.Logger, fail func(error)) *coordinator {
	c := &coordinator{cfg: cfg, log: log, fail: fail, finished: map[*subtask]bool{}}
	c.idle = sync.NewCond(&c.mu)
	return c
}

// watch starts a checkpoint for every id the trigger delivers, until ctx ends.
func (c *coordinator) watch(ctx context.Context) {
	if c.cfg.Trigger == nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case id, ok := <-c.cfg.Trigger:
			if !ok {
				return
			}
			c.start(ctx, id)
		}
	}
}

func (c *coordinator) start(ctx context.Context, id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inflight != 0 || id <= c.last || len(c.finished) == len(c.subs) {
		return
	}
	c.inflight, c.last, c.started = id, id, time.Now()
	c.parts, c.declined = map[*subtask]*SubtaskSnapshot{}, nil
	c.requested.Store(id)
	// Finished subtasks are quiescent: take their parts now.
	for st := range c.finished {
		c.snapshotLocked(ctx, st, id)
	}
}

// contribute records st's part of checkpoint id (or why it declined).
func (c *coordinator) contribute(ctx context.Context, st *subtask, id uint64, part *SubtaskSnapshot, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.contributeLocked(ctx, st, id, part, err)
}

func (c *coordinator) contributeLocked(ctx context.Context, st *subtask, id uint64, part *SubtaskSnapshot, err error) {
	if id != c.inflight || c.parts[st] != nil {
		return
	}
	if err != nil && c.declined == nil {
		c.declined = err
	}
	if part == nil {
		part = &SubtaskSnapshot{}
	}
	c.parts[st] = part
	if len(c.parts) < len(c.subs) {
		return
	}
	if c.declined != nil {
		c.endLocked(id, c.declined)
		return
	}
	snap := &Snapshot{ID: id}
	for _, s := range c.subs {
		snap.Parts = append(snap.Parts, *c.parts[s])
	}
	c.parts = nil
	started := c.started
	go c.persist(ctx, snap, started)
}

// snapshotLocked takes the part of a quiescent (finished) subtask.
func (c *coordinator) snapshotLocked(ctx context.Context, st *subtask, id uint64) {
	part, err := st.snapshot(id)
	c.contributeLocked(ctx, st, id, part, err)
}

// finish marks st finished; if a checkpoint is in flight that st has not
// taken part in, st's part is taken now.
func (c *coordinator) finish(ctx context.Context, st *subtask) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.finished[st] = true
	if c.inflight != 0 && c.parts != nil && c.parts[st] == nil {
		c.snapshotLocked(ctx, st, c.inflight)
	}
}

// endLocked ends the checkpoint in flight.
func (c *coordinator) endLocked(id uint64, declined error) {
	if declined != nil {
		c.log.Warn("checkpoint declined", "checkpoint", id, "err", declined)
		if c.cfg.OnDecline != nil {
			c.cfg.OnDecline(id, declined)
		}
	}
	c.inflight, c.parts = 0, nil
	c.idle.Broadcast()
}

func (c *coordinator) persist(ctx context.Context, snap *Snapshot, started time.Time) {
	size, err := c.persistAndCommit(ctx, snap)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil && c.cfg.OnComplete != nil {
		c.cfg.OnComplete(snap.ID, size, time.Since(started))
	}
	var commitErr *commitError
	if errors.As(err, &commitErr) {
		c.fail(err)
		err = nil
	}
	c.endLocked(snap.ID, err)
}

// commitError marks a failed commit: the run fails, since output that a
// persisted checkpoint covers must reach the sinks.
type commitError struct{ err error }

func (e *commitError) Error() string { return e.err.Error() }
func (e *commitError) Unwrap() error { return e.err }

func (c *coordinator) persistAndCommit(ctx context.Context, snap *Snapshot) (int, error) {
	data, err := snap.MarshalBinary()
	if err != nil {
		return 0, err
	}
	if err := c.cfg.Persist(ctx, snap.ID, data); err != nil {
		return len(data), fmt.Errorf("persisting checkpoint %d: %w", snap.ID, err)
	}
	if err := c.commit(ctx, snap.ID); err != nil {
		return len(data), &commitError{err}
	}
	return len(data), nil
}

// commit commits the output of every sink subtask up to checkpoint id.
func (c *coordinator) commit(ctx context.Context, id uint64) error {
	for _, st := range c.subs {
		for _, op := range st.ops {
			if tx, ok := op.(*txSinkOp); ok {
				if err := tx.commitUpTo(ctx, id); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// waitIdle waits until no checkpoint is in flight.
func (c *coordinator) waitIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.inflight != 0 {
		c.idle.Wait()
	}
}

// final takes, persists and commits the final checkpoint of a run whose
// subtasks have all finished.
func (c *coordinator) final(ctx context.Context) error {
	c.waitIdle()
	c.mu.Lock()
	id := c.last + 1
	c.last, c.inflight = id, id
	snap := &Snapshot{ID: id, Finished: true}
	var err error
	for _, st := range c.subs {
		part, perr := st.snapshot(id)
		if perr != nil {
			err = perr
			break
		}
		snap.Parts = append(snap.Parts, *part)
	}
	c.mu.Unlock()
	if err == nil {
		started := time.Now()
		var size int
		size, err = c.persistAndCommit(ctx, snap)
		if err == nil && c.cfg.OnComplete != nil {
			c.cfg.OnComplete(id, size, time.Since(started))
		}
	}
	c.mu.Lock()
	c.inflight = 0
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("final checkpoint %d: %w", id, err)
	}
	return nil
}

// snapshot takes the subtask's part of checkpoint id. The subtask must be
// between two batches (at a barrier) or finished.
func (st *subtask) snapshot(id uint64) (*SubtaskSnapshot, error) {
	// Records still batched between chained operators belong before the
	// barrier: push them through first, in chain order.
	for _, ce := range st.chain {
		ce.flush()
	}
	if st.err != nil {
		return nil, st.err
	}
	part := &SubtaskSnapshot{Node: st.t.nodes[0].Node.ID, Subtask: st.idx, Parallelism: st.t.parallelism, Done: st.done}
	if st.t.nodes[0].Node.Kind == jobspec.KindSource && !st.done {
		if st.srcSnap == nil {
			return part, fmt.Errorf("source %q subtask %d cannot be rewound (it registered no snapshotter)", part.Node, st.idx)
		}
		pos, err := st.srcSnap()
		if err != nil {
			return part, fmt.Errorf("source %q subtask %d: position: %w", part.Node, st.idx, err)
		}
		part.Source = pos
	} else if st.t.nodes[0].Node.Kind == jobspec.KindSource {
		part.Source = st.srcPos
	}
	kg := state.RangeFor(st.idx, st.t.parallelism, st.p.spec.MaxParallelism)
	for i, op := range st.ops {
		node := st.t.nodes[i].Node.ID
		if tx, ok := op.(*txSinkOp); ok {
			part.Sinks = append(part.Sinks, tx.cut(node, id))
			continue
		}
		s := snapshotterOf(op)
		if s == nil {
			continue
		}
		data, err := s.Snapshot(kg.From, kg.To)
		if err != nil {
			return part, fmt.Errorf("node %q: snapshot: %w", node, err)
		}
		part.Ops = append(part.Ops, OperatorSnapshot{Node: node, KeyGroups: kg, Data: data})
	}
	return part, nil
}

// snapshotterOf returns op's Snapshotter, looking through wrappers.
func snapshotterOf(op operator.Operator) operator.Snapshotter {
	for {
		if s, ok := op.(operator.Snapshotter); ok {
			return s
		}
		u, ok := op.(interface{ Unwrap() operator.Operator })
		if !ok {
			return nil
		}
		op = u.Unwrap()
	}
}

// restore gives the subtask its part of a restored snapshot.
func (st *subtask) restore(snap *Snapshot) error {
	head := st.t.nodes[0].Node
	part := snap.part(head.ID, st.idx)
	if part != nil && part.Parallelism != st.t.parallelism {
		part = nil
	}
	if part == nil {
		// The task's parallelism or chaining changed since the checkpoint
		// (a rescaled operator): keyed state is restored by key group from
		// every old subtask's snapshot; what is tied to one subtask (a
		// source's position, a sink's pending output) must be found at the
		// same subtask and parallelism.
		if head.Kind == jobspec.KindSource {
			return fmt.Errorf("checkpoint %d has no state for source %q subtask %d of %d (a source keeps its parallelism across a restore)", snap.ID, head.ID, st.idx, st.t.parallelism)
		}
		part = &SubtaskSnapshot{Node: head.ID, Subtask: st.idx, Parallelism: st.t.parallelism, Done: snap.Finished}
	}
	st.done = part.Done || snap.Finished
	st.srcPos = part.Source
	kg := state.RangeFor(st.idx, st.t.parallelism, st.p.spec.MaxParallelism)
	for i, op := range st.ops {
		node := st.t.nodes[i].Node.ID
		if tx, ok := op.(*txSinkOp); ok {
			sp, err := sinkPending(snap, node, st.idx, st.t.parallelism)
			if err != nil {
				return err
			}
			tx.pending = append(tx.pending, sp...)
			continue
		}
		s := snapshotterOf(op)
		for _, os := range snapAllOps(snap, node) {
			if s == nil {
				return fmt.Errorf("checkpoint %d holds state for node %q, which keeps none", snap.ID, node)
			}
			if os.KeyGroups.Intersect(kg).Len() == 0 {
				continue
			}
			if err := s.Restore(kg.From, kg.To, os.Data); err != nil {
				return fmt.Errorf("node %q: restoring key groups %s from checkpoint %d: %w", node, os.KeyGroups, snap.ID, err)
			}
		}
	}
	return nil
}

// sinkPending returns the pending output of sink node's subtask idx of
// parallelism p in snap, from whichever task it ran in. A sink that ran at
// another parallelism cannot take it (its output partitions changed).
func sinkPending(snap *Snapshot, node string, idx, p int) ([]Epoch, error) {
	var out []Epoch
	for _, part := range snap.Parts {
		for _, sp := range part.Sinks {
			if sp.Node != node {
				continue
			}
			if part.Parallelism != p {
				return nil, fmt.Errorf("checkpoint %d: sink %q ran at parallelism %d, not %d (a sink keeps its parallelism across a restore: it is its output's partition count)", snap.ID, node, part.Parallelism, p)
			}
			if part.Subtask == idx {
				out = append(out, sp.Epochs...)
			}
		}
	}
	return out, nil
}

// snapAllOps returns every operator snapshot of node in snap, over all
// subtasks (a subtask restores the key groups it owns from each).
func snapAllOps(snap *Snapshot, node string) []OperatorSnapshot {
	var out []OperatorSnapshot
	for _, p := range snap.Parts {
		for _, op := range p.Ops {
			if op.Node == node {
				out = append(out, op)
			}
		}
	}
	return out
}

// txSinkOp holds what a sink subtask receives until a checkpoint covering it
// is persisted, then commits it through the CommitSink.
type txSinkOp struct {
	commit  CommitSink
	split   Split
	schema  *record.Schema
	scratch []byte

	mu      sync.Mutex
	open    []byte // encoded batches since the last barrier
	openN   int
	pending []Epoch // cut at barriers, not yet committed, by increasing id
	// commitMu orders commits.
	commitMu sync.Mutex
}

func (s *txSinkOp) ProcessBatch(_ int, b *record.Batch, _ operator.Emitter) error {
	if b.Len() == 0 {
		return nil
	}
	enc, err := record.AppendBatch(s.scratch[:0], s.schema, b)
	if err != nil {
		return fmt.Errorf("sink %q: encoding a batch: %w", s.split.Node, err)
	}
	s.scratch = enc
	s.mu.Lock()
	s.open = appendBytes(s.open, enc)
	s.openN++
	s.mu.Unlock()
	return nil
}

func (s *txSinkOp) ProcessWatermark(int, int64, operator.Emitter) error { return nil }

func (s *txSinkOp) Finish(operator.Emitter) error { return nil }

// cut closes the current epoch as checkpoint id's and returns everything
// not yet committed.
func (s *txSinkOp) cut(node string, id uint64) SinkPending {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.openN > 0 {
		s.pending = append(s.pending, Epoch{ID: id, Batches: s.openN, Data: s.open})
		s.open, s.openN = nil, 0
	}
	return SinkPending{Node: node, Epochs: append([]Epoch(nil), s.pending...)}
}

// commitUpTo commits the pending epochs of checkpoints up to id, in order.
func (s *txSinkOp) commitUpTo(ctx context.Context, id uint64) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	s.mu.Lock()
	k := 0
	for k < len(s.pending) && s.pending[k].ID <= id {
		k++
	}
	eps := append([]Epoch(nil), s.pending[:k]...)
	s.mu.Unlock()
	for _, e := range eps {
		batches, err := decodeEpoch(e, s.schema)
		if err != nil {
			return fmt.Errorf("sink %q subtask %d: checkpoint %d: %w", s.split.Node, s.split.Subtask, e.ID, err)
		}
		if err := s.commit(ctx, s.split, e.ID, batches); err != nil {
			return fmt.Errorf("sink %q subtask %d: committing checkpoint %d: %w", s.split.Node, s.split.Subtask, e.ID, err)
		}
	}
	s.mu.Lock()
	s.pending = s.pending[k:]
	s.mu.Unlock()
	return nil
}

// decodeEpoch decodes the batches of an epoch, each with its own decoder so
// that all stay valid together.
func decodeEpoch(e Epoch, schema *record.Schema) ([]*record.Batch, error) {
	out := make([]*record.Batch, 0, e.Batches)
	data := e.Data
	for len(data) > 0 {
		n, k := binary.Uvarint(data)
		if k <= 0 || n > uint64(len(data)-k) {
			return nil, fmt.Errorf("%w: epoch %d: bad batch length", errBadSnapshot, e.ID)
		}
		var d record.Decoder
		b := new(record.Batch)
		if err := d.Decode(data[k:k+int(n)], schema, b); err != nil {
			return nil, fmt.Errorf("%w: epoch %d: %w", errBadSnapshot, e.ID, err)
		}
		out = append(out, b)
		data = data[k+int(n):]
	}
	if len(out) != e.Batches {
		return nil, fmt.Errorf("%w: epoch %d holds %d batches, its header says %d", errBadSnapshot, e.ID, len(out), e.Batches)
	}
	return out, nil
}
