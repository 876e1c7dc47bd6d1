package confidential

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/seal"
)

// Publisher seals batches of an owner's records as seal.KindIngest frames
// with the stream's current key epoch and publishes them to JetStream (the
// device or gateway role): partition p of stream S goes to subject
// sealflow.ingest.S.p of the JetStream stream SEALFLOW_INGEST_S, with a
// message id per (stream, partition, sequence) so that JetStream drops a
// retried publish. A Publisher is safe for concurrent use.
type Publisher struct{ w *writer }

// NewPublisher creates (or updates) the JetStream stream of the ingest stream
// id and returns a Publisher of its partitions, sealing with the current key
// of scope id in keys. Options: WithPadding, WithPlaintext, WithLogger.
func NewPublisher(ctx context.Context, js jetstream.JetStream, id string, schema *record.Schema, keys *seal.Keyring, partitions int, opts ...Option) (*Publisher, error) {
	w, err := newWriter(ctx, js, ingestPlace, id, schema, keys, partitions, opts)
	if err != nil {
		return nil, err
	}
	return &Publisher{w: w}, nil
}

// Publish seals b as the next frame of partition and publishes it, returning
// once JetStream has stored it. The first frame of a partition continues the
// sealed sequence of what the partition already holds.
func (p *Publisher) Publish(ctx context.Context, partition uint32, b *record.Batch) error {
	return p.w.write(ctx, partition, b, false)
}

// CommitSink returns the runtime.CommitSink publishing a sink node's output
// to the stream exactly once per checkpoint (for an intermediate stream
// between the stages of a job): sink subtask i publishes to partition i, as
// OutputSink.CommitSink does.
func (p *Publisher) CommitSink() runtime.CommitSink {
	return func(ctx context.Context, split runtime.Split, checkpoint uint64, batches []*record.Batch) error {
		if split.Subtask < 0 || split.Subtask >= p.w.partitions {
			return fmt.Errorf("confidential: ingest stream %q has %d partitions, sink subtask %d has none to write", p.w.id, p.w.partitions, split.Subtask)
		}
		return p.w.commit(ctx, uint32(split.Subtask), checkpoint, batches)
	}
}

// Close seals and publishes the last-of-stream frame of every partition;
// readers report a stream without them as truncated. As OutputSink.Close,
// it leaves partitions that already ended alone.
func (p *Publisher) Close(ctx context.Context) error { return p.w.close(ctx) }

// Position is where a partition of an ingest stream was read up to, for a
// checkpoint: the JetStream stream sequence of the last frame taken from it,
// the sealed sequence number expected next, and whether that frame was the
// partition's last (a reader resuming from an ended partition reads nothing
// more from it).
type Position struct {
	StreamSeq uint64 `json:"stream_seq"`
	Next      uint64 `json:"next"`
	Ended     bool   `json:"ended,omitempty"`
}

// IngestSource reads a sealed ingest stream back from JetStream as a
// runtime.Source: subtask i of p reads the partitions ≡ i mod p with an
// ordered consumer, opens every frame (seal.KindIngest, scope the stream id,
// only with the stream's keys), and emits the batches of authentic frames in
// order. Replayed, tampered, foreign and unkeyed frames are counted, reported
// and skipped; a gap in a partition, or no new frame within the end timeout
// before every partition delivered its last frame, fails the run. The source
// remembers how far it read each partition (Positions). In a checkpointed
// run each subtask registers a runtime.SourceSnapshotter returning the
// positions of its partitions (MarshalPositions), and a subtask restored from
// a checkpoint (runtime.Split.Restored) resumes from them; a partition whose
// last frame was read before the checkpoint counts as ended. It is safe for
// concurrent use by the subtasks of one run.
type IngestSource struct {
	js         jetstream.JetStream
	id         string
	partitions int
	keys       *seal.Keyring
	cfg        *config

	mu  sync.Mutex
	pos map[uint32]Position
}

// NewIngestSource returns a source of the ingest stream id of the given
// number of partitions, opening with the keys of scope id in keys. Options:
// WithPlaintext, WithRejectionCounter, WithRejectHandler, WithEndTimeout,
// WithResume, WithLogger.
func NewIngestSource(js jetstream.JetStream, id string, partitions int, keys *seal.Keyring, opts ...Option) (*IngestSource, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	if err := CheckStreamID(id); err != nil {
		return nil, err
	}
	if js == nil {
		return nil, fmt.Errorf("confidential: ingest source %q: no JetStream context", id)
	}
	if partitions < 1 || partitions > MaxPartitions {
		return nil, fmt.Errorf("confidential: ingest source %q: %d partitions, want 1 to %d", id, partitions, MaxPartitions)
	}
	if keys == nil && !cfg.plaintext {
		return nil, fmt.Errorf("confidential: ingest source %q: %w", id, errNoKeys)
	}
	s := &IngestSource{js: js, id: id, partitions: partitions, keys: keys, cfg: cfg, pos: map[uint32]Position{}}
	for p, pos := range cfg.resume {
		if int64(p) >= int64(partitions) {
			return nil, fmt.Errorf("confidential: ingest source %q: resume position for partition %d, but the stream has %d", id, p, partitions)
		}
		s.pos[p] = pos
	}
	return s, nil
}

// Positions returns how far each partition was read.
func (s *IngestSource) Positions() map[uint32]Position {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.pos)
}

// pollInterval is how long one wait for a message lasts; the source emits an
// empty batch after each wait without frames, so idleness is detected.
const pollInterval = 200 * time.Millisecond

// Source returns the runtime.Source reading the stream.
func (s *IngestSource) Source() runtime.Source {
	return func(ctx context.Context, split runtime.Split, emit func(*record.Batch) error) error {
		return s.run(ctx, split, emit)
	}
}

func (s *IngestSource) run(ctx context.Context, split runtime.Split, emit func(*record.Batch) error) error {
	// cur is this subtask's position in each of its partitions, as the
	// snapshotter reports it; only this goroutine touches it.
	cur := map[uint32]Position{}
	var parts []uint32
	for p := split.Subtask; p < s.partitions; p += split.Parallelism {
		parts = append(parts, uint32(p))
	}
	if split.Restored != nil {
		restored, err := UnmarshalPositions(split.Restored)
		if err != nil {
			return fmt.Errorf("confidential: ingest stream %q subtask %d: restoring: %w", s.id, split.Subtask, err)
		}
		for p, pos := range restored {
			if int(p)%split.Parallelism != split.Subtask || int64(p) >= int64(s.partitions) {
				return fmt.Errorf("confidential: ingest stream %q: subtask %d of %d restored a position of partition %d, which it does not read (of %d partitions)",
					s.id, split.Subtask, split.Parallelism, p, s.partitions)
			}
			cur[p] = pos
		}
	} else {
		s.mu.Lock()
		for _, p := range parts {
			if pos, ok := s.pos[p]; ok {
				cur[p] = pos
			}
		}
		s.mu.Unlock()
	}
	s.mu.Lock()
	for _, p := range parts {
		if pos, ok := cur[p]; ok {
			s.pos[p] = pos
		} else {
			delete(s.pos, p)
		}
	}
	s.mu.Unlock()
	if split.SetSnapshotter != nil {
		split.SetSnapshotter(func() ([]byte, error) { return MarshalPositions(cur) })
	}

	// Partitions that ended before the checkpoint are not read again.
	live := map[uint32]bool{}
	var subjects []string
	start := uint64(0)
	for _, p := range parts {
		pos, ok := cur[p]
		switch {
		case ok && pos.Ended:
			continue
		case !ok:
			start = 1
		case start == 0 || pos.StreamSeq+1 < start:
			start = pos.StreamSeq + 1
		}
		live[p] = true
		subjects = append(subjects, IngestSubject(s.id, p))
	}
	if len(live) == 0 {
		return nil
	}
	r, err := newFrameReader(ingestPlace, s.id, split.Schema, s.keys, s.cfg, live)
	if err != nil {
		return err
	}
	for p := range live {
		if pos, ok := cur[p]; ok {
			if err := r.opener.Resume(s.id, p, pos.Next); err != nil {
				return err
			}
		}
	}
	cc := jetstream.OrderedConsumerConfig{FilterSubjects: subjects, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: max(start, 1)}
	cons, err := s.js.OrderedConsumer(ctx, ingestPlace.streamName(s.id), cc)
	if err != nil {
		return fmt.Errorf("confidential: reading ingest stream %q: %w", s.id, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("confidential: reading ingest stream %q: %w", s.id, err)
	}
	defer it.Stop()
	lastFrame := time.Now()
	var empty record.Batch
	for !r.done() {
		msg, err := it.Next(jetstream.NextMaxWait(pollInterval))
		if err := ctx.Err(); err != nil {
			return err
		}
		if errors.Is(err, nats.ErrTimeout) {
			if s.cfg.endTimeout > 0 && time.Since(lastFrame) > s.cfg.endTimeout {
				return r.truncated(fmt.Sprintf("no frame for %v", s.cfg.endTimeout))
			}
			if err := emit(&empty); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("confidential: reading ingest stream %q: %w", s.id, err)
		}
		lastFrame = time.Now()
		md, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("confidential: reading ingest stream %q: %w", s.id, err)
		}
		if sp, ok := r.subjectPartition(msg.Subject()); ok && md.Sequence.Stream <= cur[sp].StreamSeq {
			continue // read before the checkpoint this run resumes from
		}
		b, h, err := r.handle(msg.Subject(), msg.Data())
		if err != nil {
			return err
		}
		if b == nil {
			continue
		}
		// The position moves before emit: a checkpoint taken inside emit
		// must count this frame as read.
		pos := Position{StreamSeq: md.Sequence.Stream, Next: h.Seq + 1, Ended: h.Flags&seal.FlagLast != 0}
		cur[h.Partition] = pos
		s.mu.Lock()
		s.pos[h.Partition] = pos
		s.mu.Unlock()
		if b.Len() > 0 {
			if err := emit(b); err != nil {
				return err
			}
		}
	}
	return nil
}
