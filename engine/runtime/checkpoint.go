package runtime

import (
	"context"
	"time"

	"github.com/sealflow/sealflow/engine/record"
)

// Checkpointing configures aligned checkpoints of a run (Options.Checkpoint).
//
// A checkpoint starts at the sources: when an id arrives on Trigger, every
// source subtask, between two batches, records its position (the function it
// registered with Split.SetSnapshotter), snapshots the state of the operators
// chained to it and sends a barrier on each of its out channels. A subtask
// with several input channels aligns: the frames of a channel that already
// delivered the barrier are held back until every open channel has delivered
// it; then the subtask snapshots its operators' keyed state (by key group),
// forwards the barrier and goes on with the held frames. Sinks cut their
// output there: what a sink subtask received before the barrier is the
// checkpoint's pending output, part of the snapshot.
//
// When every subtask has taken its part, the run hands the whole snapshot to
// Persist on a separate goroutine, so processing goes on during the write (the
// snapshot is taken in memory between two batches; writing it is the slow
// part). Only after Persist returns nil does the run commit the checkpoint's
// pending output through the CommitSinks, so a recipient sees output only
// once a checkpoint covering it is recoverable: after a failure, the run
// restored from that checkpoint commits the same pending output again and the
// CommitSink drops what it already published.
//
// Checkpoints of one run never overlap: an id that arrives while one is in
// flight is skipped. A checkpoint is declined (OnDecline; its output stays
// pending and is committed with the next one) when a subtask buffers more
// than AlignmentLimit bytes while aligning under backpressure, or when
// Persist fails.
//
// At the end of bounded input, after every operator has finished, the run
// takes a final checkpoint (id: one more than the last id seen, or 1) with
// nothing in flight, persists it and commits the rest of the output; a run
// restored from a final checkpoint only commits its pending output again and
// ends.
type Checkpointing struct {
	// Trigger delivers the ids of the checkpoints to take, increasing.
	Trigger <-chan uint64
	// Persist makes the snapshot of checkpoint id recoverable (for a worker:
	// seal it into the object store and have the orchestrator accept the
	// acknowledgement). It is called on its own goroutine.
	Persist func(ctx context.Context, id uint64, snapshot []byte) error
	// Restore, if not nil, is a snapshot Persist received in an earlier run
	// of the same job: the run restores its operators' state and its sources'
	// positions from it, and commits its pending output, before it processes
	// anything.
	Restore []byte
	// AlignmentLimit bounds the bytes a subtask holds back while it aligns a
	// barrier; 64 MiB if zero.
	AlignmentLimit int
	// OnDecline, if not nil, is called when a checkpoint is declined.
	OnDecline func(id uint64, err error)
	// OnComplete, if not nil, is called after a checkpoint was persisted and
	// its output committed, with its size and how long it took from the
	// trigger to the commit.
	OnComplete func(id uint64, size int, took time.Duration)
}

// CommitSink publishes the output one sink subtask received before the
// barrier of a checkpoint, once that checkpoint is persisted: batches, in
// order, all at once. It must be idempotent per (split, checkpoint): a run
// restored from a checkpoint calls it again with the same split, checkpoint
// and batches, and what was already published must not be published twice
// (for example, record the checkpoint and the batch index with each message
// and look up the last one before publishing). The batches are valid only
// during the call.
type CommitSink func(ctx context.Context, split Split, checkpoint uint64, batches []*record.Batch) error

// SourceSnapshotter returns the position of a source subtask: what the run
// passes back in Split.Restored when it restores the checkpoint. It is called
// on the source's goroutine, inside emit, after the batch emitted last was
// processed: the position must already include that batch.
type SourceSnapshotter func() ([]byte, error)
