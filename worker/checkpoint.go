package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/sealflow/sealflow/checkpoint"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
)

// DefaultCheckpointInterval is Config.CheckpointInterval when zero.
const DefaultCheckpointInterval = time.Second

// taskCheckpoints checkpoints one task: it seals each snapshot of the task's
// run into the checkpoint store, has the orchestrator accept the signed
// acknowledgement (only then does the run commit the checkpoint's output), and
// restores a restarted task from the restore point the orchestrator signs.
type taskCheckpoints struct {
	store    *checkpoint.Store
	ctl      *api.ControlClient
	kf       *party.KeyFile
	interval time.Duration
	version  int64
	log      *slog.Logger
	metrics  *Metrics

	mu sync.Mutex
	// base is the index of the last snapshot accepted (or restored): the
	// next snapshot is written incrementally on it, and it is released
	// (its objects that the next one does not reference are deleted) when
	// the next one is accepted, unless a savepoint pins it.
	base *checkpoint.Index
	// fresh is set from the restore to the first checkpoint accepted after
	// it: that checkpoint, which the restored run's output waits for, does
	// not rewrite sparse packs (see checkpoint.Store.PutIncremental).
	fresh bool
	// pinned holds the indexes of pinned snapshots this run knows, by
	// checkpoint: their packs are spared when other snapshots are released.
	pinned map[uint64]*checkpoint.Index
}

// setup returns the run's checkpoint options: the restore point's snapshot,
// read back and checked against the digest the orchestrator recorded, and a
// wall-clock aligned trigger (so the tasks of a job checkpoint with the same
// ids).
func (c *taskCheckpoints) setup(ctx context.Context, t *Task) (*runtime.Checkpointing, error) {
	rp, err := c.ctl.RestorePoint(ctx, c.kf, t.Job, t.ID)
	if err != nil {
		return nil, fmt.Errorf("asking the orchestrator for the restore point: %w", err)
	}
	cp := &runtime.Checkpointing{
		Persist: func(ctx context.Context, id uint64, snap []byte) error { return c.persist(ctx, t, id, snap) },
		OnDecline: func(id uint64, err error) {
			c.log.Warn("checkpoint declined", "checkpoint", id, "err", err)
			c.metrics.checkpointDeclined()
		},
		OnComplete: func(id uint64, size int, took time.Duration) {
			c.log.Debug("checkpoint complete", "checkpoint", id, "bytes", size, "took", took)
			c.metrics.checkpointComplete(size, took)
		},
	}
	last := uint64(0)
	if rp != nil {
		id := checkpoint.SnapshotID{Job: t.Job, Version: rp.Version, Task: t.ID, KeyGroups: rp.KeyGroups, Checkpoint: rp.Checkpoint, Writer: string(rp.Node)}
		digest, err := checkpoint.ParseDigest(rp.Digest)
		if err != nil {
			return nil, fmt.Errorf("restore point of task %s: %w", t.ID, err)
		}
		start := time.Now()
		data, x, err := c.store.GetSnapshot(ctx, id, digest, t.keys)
		if checkpoint.RuleOf(err) == checkpoint.RuleMissing && id.Writer != "" {
			// A snapshot stored before object names carried their writer.
			legacy := id
			legacy.Writer = ""
			if d, lx, lerr := c.store.GetSnapshot(ctx, legacy, digest, t.keys); lerr == nil {
				data, x, err = d, lx, nil
			}
		}
		if err != nil {
			// Refused (missing, substituted, stale, foreign or tampered):
			// nothing of it is applied, and the task does not start.
			return nil, fmt.Errorf("restoring task %s from checkpoint %d: %w", t.ID, rp.Checkpoint, err)
		}
		cp.Restore = data
		last = rp.Checkpoint
		c.mu.Lock()
		c.base, c.fresh = x, true
		c.mu.Unlock()
		c.log.Info("restoring from checkpoint", "checkpoint", rp.Checkpoint, "bytes", len(data), "packs", len(x.Packs), "read", time.Since(start))
	}
	trigger := make(chan uint64)
	cp.Trigger = trigger
	go c.trigger(ctx, trigger, last, rp != nil)
	return cp, nil
}

// trigger sends a checkpoint id, the trigger time truncated to the interval
// in Unix milliseconds, at every interval boundary until ctx ends; a
// restored run gets one at once first (its output waits for it).
func (c *taskCheckpoints) trigger(ctx context.Context, out chan<- uint64, last uint64, restored bool) {
	if restored {
		// A restored run (a restart, a move, a rescale) commits no new
		// output before its first checkpoint: take it at once instead of at
		// the next interval boundary.
		id := max(uint64(time.Now().UnixMilli()), last+1)
		select {
		case out <- id:
			last = id
		case <-ctx.Done():
			return
		}
	}
	for {
		now := time.Now()
		next := now.Truncate(c.interval).Add(c.interval)
		select {
		case <-ctx.Done():
			return
		case <-time.After(next.Sub(now)):
		}
		id := uint64(next.UnixMilli())
		if id <= last {
			continue
		}
		last = id
		select {
		case out <- id:
		case <-ctx.Done():
			return
		}
	}
}

// persist seals the snapshot into the store, incrementally on the last
// snapshot accepted or restored (only the chunks that changed since are
// written), and has the orchestrator accept the task's acknowledgement; a
// refused acknowledgement (a task moved to another node, a stale id) fails
// the checkpoint, so its output is never committed from here, and deletes
// what this checkpoint wrote (never what the base holds). Once accepted, the
// previous snapshot is released: its objects that the new one and the
// pinned ones (savepoints) do not reference are deleted.
func (c *taskCheckpoints) persist(ctx context.Context, t *Task, id uint64, snap []byte) error {
	kg := state.Range{From: 0, To: t.Spec.MaxParallelism}
	if kg.To == 0 {
		kg.To = state.DefaultMaxParallelism
	}
	sid := checkpoint.SnapshotID{Job: t.Job, Version: c.version, Task: t.ID, KeyGroups: kg, Checkpoint: id, Writer: string(c.kf.ID())}
	c.mu.Lock()
	base, fresh := c.base, c.fresh
	c.mu.Unlock()
	start := time.Now()
	digest, x, err := c.store.PutIncremental(ctx, sid, snap, t.keys, base, !fresh)
	if err != nil {
		return err
	}
	if fresh {
		// Rare (once per restore) and what a move waits for.
		c.log.Info("first checkpoint after restore stored", "checkpoint", id, "bytes", len(snap), "written", x.Written(), "packs", len(x.Packs), "took", time.Since(start))
	} else {
		c.log.Debug("checkpoint stored", "checkpoint", id, "bytes", len(snap), "written", x.Written(), "packs", len(x.Packs), "took", time.Since(start))
	}
	ack := orchestrator.CheckpointAck{Job: t.Job, Checkpoint: id, Task: t.ID, Version: c.version, KeyGroups: kg, Digest: digest.String(), Deployed: t.deployed, Generation: t.gen}
	res, err := c.ctl.AckCheckpoint(ctx, c.kf, ack)
	if err != nil {
		var refused *api.RefusedError
		if errors.As(err, &refused) {
			_, _ = c.store.Release(context.WithoutCancel(ctx), x, 0, base)
		}
		return fmt.Errorf("acknowledging checkpoint %d: %w", id, err)
	}
	c.mu.Lock()
	prev := c.base
	c.base, c.fresh = x, false
	keep := []*checkpoint.Index{x}
	var unknown uint64 // the latest pinned checkpoint whose index this run does not know
	if prev != nil && prev.ID != sid && slices.Contains(res.Pinned, prev.ID.Checkpoint) {
		if c.pinned == nil {
			c.pinned = map[uint64]*checkpoint.Index{}
		}
		c.pinned[prev.ID.Checkpoint] = prev
		prev = nil
	}
	for cp := range c.pinned {
		if !slices.Contains(res.Pinned, cp) {
			delete(c.pinned, cp) // the savepoint is gone; its objects leak (see docs)
		}
	}
	for _, cp := range res.Pinned {
		if px, ok := c.pinned[cp]; ok {
			keep = append(keep, px)
		} else if cp != id {
			unknown = max(unknown, cp)
		}
	}
	c.mu.Unlock()
	if prev != nil && prev.ID != sid {
		if _, err := c.store.Release(ctx, prev, unknown, keep...); err != nil {
			c.log.Debug("could not delete a superseded snapshot", "snapshot", prev.ID.String(), "err", err)
		}
	}
	return nil
}
