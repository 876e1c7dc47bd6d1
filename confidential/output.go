package confidential

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/seal"
)

// OutputSink seals a job's result batches as seal.KindOutput frames with the
// output stream's current key: sink subtask i writes partition i, subject
// sealflow.out.<stream>.<i> of the JetStream stream SEALFLOW_OUT_<stream>.
// Close seals every partition's last frame, so a recipient can tell a
// finished output from a truncated one. It is safe for concurrent use by the
// subtasks of one run.
type OutputSink struct {
	w   *writer
	ctx context.Context
}

// NewOutputSink creates (or updates) the JetStream stream of output stream
// id and returns a sink for a sink node of the given parallelism, sealing
// with the current key of scope id in keys. Publishing uses ctx. Options:
// WithPadding, WithPlaintext, WithLogger.
func NewOutputSink(ctx context.Context, js jetstream.JetStream, id string, schema *record.Schema, keys *seal.Keyring, parallelism int, opts ...Option) (*OutputSink, error) {
	w, err := newWriter(ctx, js, outputPlace, id, schema, keys, parallelism, opts)
	if err != nil {
		return nil, err
	}
	return &OutputSink{w: w, ctx: ctx}, nil
}

// Sink returns the runtime.Sink writing the stream.
func (o *OutputSink) Sink() runtime.Sink {
	return func(split runtime.Split, b *record.Batch) error {
		if split.Parallelism != o.w.partitions {
			return fmt.Errorf("confidential: output stream %q was set up for %d partitions, the sink node runs %d subtasks", o.w.id, o.w.partitions, split.Parallelism)
		}
		if b.Len() == 0 {
			return nil
		}
		return o.w.write(o.ctx, uint32(split.Subtask), b, false)
	}
}

// CommitSink returns the runtime.CommitSink writing the stream exactly once
// per checkpoint: sink subtask i publishes the batches of a checkpoint to
// partition i, one frame each, with the checkpoint id and the batch's index
// in headers (HeaderCheckpoint, HeaderBatch). The first call for a partition
// looks up the partition's last message: the sealed sequence continues after
// it, and batches the partition already holds (of an earlier checkpoint, or
// up to the recorded index of the same one) are not published again, so a
// task restored from a checkpoint may commit it again. One writer (one
// OutputSink at a time) per partition.
func (o *OutputSink) CommitSink() runtime.CommitSink {
	return func(ctx context.Context, split runtime.Split, checkpoint uint64, batches []*record.Batch) error {
		if split.Parallelism != o.w.partitions {
			return fmt.Errorf("confidential: output stream %q was set up for %d partitions, the sink node runs %d subtasks", o.w.id, o.w.partitions, split.Parallelism)
		}
		return o.w.commit(ctx, uint32(split.Subtask), checkpoint, batches)
	}
}

// Close seals and publishes the last-of-stream frame of every partition. It
// is idempotent across writers: a partition whose last message already is a
// last frame is left alone, and a partition this sink has not written yet
// continues the sealed sequence of what it holds.
func (o *OutputSink) Close(ctx context.Context) error { return o.w.close(ctx) }

// ReadOutput returns the records of a finished output stream id, reading
// every partition in JetStream order and opening the frames with the keys of
// scope id in keys. Rejected frames are counted and reported (WithRejectHandler,
// WithRejectionCounter) and never returned. It fails if a partition has a gap
// or if not every partition (as the authenticated last frames count them)
// delivered its last frame. Options: WithPlaintext and the rejection options.
func ReadOutput(ctx context.Context, js jetstream.JetStream, id string, schema *record.Schema, keys *seal.Keyring, opts ...Option) ([]record.Record, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	r, err := newFrameReader(outputPlace, id, schema, keys, cfg, nil)
	if err != nil {
		return nil, err
	}
	stream, err := js.Stream(ctx, outputPlace.streamName(id))
	if err != nil {
		return nil, fmt.Errorf("confidential: output stream %q: %w", id, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("confidential: output stream %q: %w", id, err)
	}
	if info.State.Msgs == 0 {
		return nil, r.truncated("the stream holds no messages")
	}
	var out []record.Record
	err = readStream(ctx, stream, info.State.LastSeq, func(m jetstream.Msg) (bool, error) {
		b, _, err := r.handle(m.Subject(), m.Data())
		if err != nil {
			return false, err
		}
		if b != nil {
			for _, rec := range b.Records {
				out = append(out, record.Record{Time: rec.Time, Values: slices.Clone(rec.Values)})
			}
		}
		return r.done(), nil
	})
	if err != nil {
		return nil, err
	}
	if !r.done() {
		return nil, r.truncated(fmt.Sprintf("read to the stream's last message, sequence %d", info.State.LastSeq))
	}
	return out, nil
}

// readStream calls fn with every message of stream up to sequence last, in
// order, until fn reports it is done or fails.
func readStream(ctx context.Context, stream jetstream.Stream, last uint64, fn func(jetstream.Msg) (bool, error)) error {
	if last == 0 {
		return nil
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return fmt.Errorf("confidential: reading stream %q: %w", stream.CachedInfo().Config.Name, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("confidential: reading stream %q: %w", stream.CachedInfo().Config.Name, err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextMaxWait(pollInterval))
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if errors.Is(err, nats.ErrTimeout) {
			continue
		}
		if err != nil {
			return fmt.Errorf("confidential: reading stream %q: %w", stream.CachedInfo().Config.Name, err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return err
		}
		done, err := fn(msg)
		// NumPending counts the messages after this one; the last sequence
		// may be a deleted message, so it alone does not end the read.
		if err != nil || done || md.NumPending == 0 || md.Sequence.Stream >= last {
			return err
		}
	}
}
