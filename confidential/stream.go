package confidential

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/substrate"
)

// Subject prefixes and stream name prefixes of sealed streams.
const (
	IngestSubjectPrefix = "sealflow.ingest"
	IngestStreamPrefix  = "SEALFLOW_INGEST_"
	OutputSubjectPrefix = "sealflow.out"
	OutputStreamPrefix  = "SEALFLOW_OUT_"
)

// MaxPartitions is the most partitions a sealed ingest or output stream has.
const MaxPartitions = 1 << 16

// CheckStreamID reports whether id can name a sealed stream: 1 to 64 bytes
// of ASCII letters, digits, '-' and '_', so that it is one NATS subject token
// and part of a JetStream stream name.
func CheckStreamID(id string) error {
	if len(id) == 0 || len(id) > 64 {
		return fmt.Errorf("confidential: stream id %q must have 1 to 64 characters", id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("confidential: stream id %q has %q at offset %d; use letters, digits, '-' and '_'", id, c, i)
		}
	}
	return nil
}

// IngestSubject returns the subject of a partition of an ingest stream:
// sealflow.ingest.<stream>.<partition>.
func IngestSubject(stream string, partition uint32) string {
	return IngestSubjectPrefix + "." + stream + "." + strconv.FormatUint(uint64(partition), 10)
}

// OutputSubject returns the subject of a partition of an output stream:
// sealflow.out.<stream>.<partition>.
func OutputSubject(stream string, partition uint32) string {
	return OutputSubjectPrefix + "." + stream + "." + strconv.FormatUint(uint64(partition), 10)
}

// place says where frames of one kind live in JetStream.
type place struct {
	kind          seal.Kind
	subjectPrefix string
	streamPrefix  string
}

var (
	ingestPlace = place{seal.KindIngest, IngestSubjectPrefix, IngestStreamPrefix}
	outputPlace = place{seal.KindOutput, OutputSubjectPrefix, OutputStreamPrefix}
)

func (p place) streamName(id string) string { return p.streamPrefix + id }

func (p place) subject(id string, part uint32) string {
	return p.subjectPrefix + "." + id + "." + strconv.FormatUint(uint64(part), 10)
}

func (p place) ensure(ctx context.Context, js jetstream.JetStream, id string) error {
	_, err := substrate.EnsureStream(ctx, js, jetstream.StreamConfig{
		Name:        p.streamName(id),
		Description: fmt.Sprintf("sealflow sealed %s frames of stream %s", p.kind, id),
		Subjects:    []string{p.subjectPrefix + "." + id + ".*"},
		Storage:     jetstream.FileStorage,
	})
	return err
}

// appendBody appends a frame body: for a last frame the partition count,
// then the batch.
func appendBody(dst []byte, s *record.Schema, b *record.Batch, last bool, partitions int) ([]byte, error) {
	if last {
		dst = binary.AppendUvarint(dst, uint64(partitions))
	}
	return record.AppendBatch(dst, s, b)
}

// decodeBody decodes a frame body into b and returns the partition count a
// last frame carries.
func decodeBody(body []byte, last bool, s *record.Schema, d *record.Decoder, b *record.Batch) (partitions int, err error) {
	if last {
		n, k := binary.Uvarint(body)
		if k <= 0 || n == 0 || n > MaxPartitions || k != len(binary.AppendUvarint(nil, n)) {
			return 0, fmt.Errorf("last-of-stream frame does not start with a minimal uvarint partition count in [1, %d]", MaxPartitions)
		}
		partitions, body = int(n), body[k:]
	}
	if err := d.Decode(body, s, b); err != nil {
		return 0, err
	}
	return partitions, nil
}

func timeRange(b *record.Batch) (lo, hi int64) {
	for i, r := range b.Records {
		if i == 0 || r.Time < lo {
			lo = r.Time
		}
		if i == 0 || r.Time > hi {
			hi = r.Time
		}
	}
	return lo, hi
}

// Message headers of the frames a writer publishes once a partition received
// output committed per checkpoint (OutputSink.CommitSink, Publisher.CommitSink).
// They say how far the committed output in the partition goes, up to and
// including the message: HeaderCheckpoint the id of the last checkpoint whose
// batches were published, HeaderBatch "i/n", batches 1 to i of its n. A
// restarted writer reads them from the partition's last message to publish
// what is missing and nothing twice. They are routing metadata, not sealed.
const (
	HeaderCheckpoint = "Sealflow-Checkpoint"
	HeaderBatch      = "Sealflow-Batch"
)

// writer seals batches of records into the partitions of a sealed stream.
type writer struct {
	js         jetstream.JetStream
	pl         place
	id         string
	schema     *record.Schema
	partitions int
	cfg        *config
	keys       *seal.Keyring
	so         []seal.SealerOption
	parts      []partWriter

	streamMu sync.Mutex
	stream   jetstream.Stream
}

// partWriter is the state of one partition. Until known, the writer has not
// looked at what the partition already holds; the first write, commit or
// close looks up its last message (sync), and a failed publish makes the
// writer look again, since the frame may or may not have been stored.
type partWriter struct {
	mu     sync.Mutex
	known  bool
	sealer *seal.Sealer
	body   []byte
	frame  []byte
	ended  bool
	// The committed output the partition holds: batches 1 to batch of the
	// batches of checkpoint cp (0: none).
	cp             uint64
	batch, batches int
	// tail is the stream sequence of the partition's last message (any
	// message, authentic or not; 0 when none): every publish expects it, so
	// a write by anyone else in between fails instead of interleaving.
	tail uint64
}

func newWriter(ctx context.Context, js jetstream.JetStream, pl place, id string, schema *record.Schema, keys *seal.Keyring, partitions int, opts []Option) (*writer, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	if err := CheckStreamID(id); err != nil {
		return nil, err
	}
	if js == nil {
		return nil, fmt.Errorf("confidential: %s stream %q: no JetStream context", pl.kind, id)
	}
	if schema == nil {
		return nil, fmt.Errorf("confidential: %s stream %q: no schema", pl.kind, id)
	}
	if partitions < 1 || partitions > MaxPartitions {
		return nil, fmt.Errorf("confidential: %s stream %q: %d partitions, want 1 to %d", pl.kind, id, partitions, MaxPartitions)
	}
	if !cfg.plaintext {
		if keys == nil {
			return nil, fmt.Errorf("confidential: %s stream %q: %w", pl.kind, id, errNoKeys)
		}
		if _, ok := keys.Current(id); !ok {
			return nil, fmt.Errorf("confidential: the keyring holds no key for %s stream %q; generate or receive its key epoch first", pl.kind, id)
		}
	}
	var so []seal.SealerOption
	if cfg.padding > 0 {
		so = append(so, seal.WithPadding(cfg.padding))
	}
	if cfg.plaintext {
		so = append(so, seal.WithPlaintext())
	}
	// A sealer made here checks the options and keys before anything is
	// published; sync replaces it.
	if _, err := seal.NewSealer(keys, pl.kind, id, 0, so...); err != nil {
		return nil, err
	}
	w := &writer{js: js, pl: pl, id: id, schema: schema, partitions: partitions, cfg: cfg, keys: keys, so: so, parts: make([]partWriter, partitions)}
	if err := pl.ensure(ctx, js, id); err != nil {
		return nil, err
	}
	return w, nil
}

// part returns partition part's state, locked, after making sure the writer
// knows what the partition holds.
func (w *writer) part(ctx context.Context, part uint32) (*partWriter, error) {
	if int64(part) >= int64(w.partitions) {
		return nil, fmt.Errorf("confidential: %s stream %q has %d partitions, not partition %d", w.pl.kind, w.id, w.partitions, part)
	}
	p := &w.parts[part]
	p.mu.Lock()
	if !p.known {
		if err := w.sync(ctx, part, p); err != nil {
			p.mu.Unlock()
			return nil, err
		}
	}
	return p, nil
}

func (w *writer) jsStream(ctx context.Context) (jetstream.Stream, error) {
	w.streamMu.Lock()
	defer w.streamMu.Unlock()
	if w.stream == nil {
		s, err := w.js.Stream(ctx, w.pl.streamName(w.id))
		if err != nil {
			return nil, err
		}
		w.stream = s
	}
	return w.stream, nil
}

// sync looks up the last message of partition part and sets the partition's
// state after it: the sealer continues at the next sealed sequence, the
// partition has ended if the message is a last frame, and the committed
// output goes as far as the message's headers say. The message must be an
// authentic frame of the partition: a writer continues no sequence the
// storage made up.
func (w *writer) sync(ctx context.Context, part uint32, p *partWriter) error {
	fail := func(err error) error {
		return fmt.Errorf("confidential: %s stream %q partition %d: looking up the last frame: %w", w.pl.kind, w.id, part, err)
	}
	stream, err := w.jsStream(ctx)
	if err != nil {
		return fail(err)
	}
	next, ended := uint64(0), false
	cp, batch, batches := uint64(0), 0, 0
	msg, err := stream.GetLastMsgForSubject(ctx, w.pl.subject(w.id, part))
	tail := uint64(0)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return fail(err)
	default:
		tail = msg.Sequence
		h, err := w.checkTail(part, msg.Data)
		if err != nil {
			// Whoever runs the storage can append frames of its own; readers
			// refuse them, and the writer continues after the last authentic
			// frame of the partition instead.
			if msg, h, err = w.lastAuthentic(ctx, stream, part, msg, err); err != nil {
				return fail(err)
			}
		}
		if msg == nil {
			break
		}
		if cp, batch, batches, err = parseCommitHeaders(msg.Header); err != nil {
			return fail(fmt.Errorf("message %d: %w", msg.Sequence, err))
		}
		next, ended = h.Seq+1, h.Flags&seal.FlagLast != 0
	}
	so := w.so
	if next > 0 {
		so = append(slices.Clip(so), seal.WithStartSeq(next))
	}
	sealer, err := seal.NewSealer(w.keys, w.pl.kind, w.id, part, so...)
	if err != nil {
		return fail(err)
	}
	p.sealer, p.ended, p.cp, p.batch, p.batches, p.tail, p.known = sealer, ended, cp, batch, batches, tail, true
	return nil
}

// maxForgedTail bounds how many messages lastAuthentic steps back over.
const maxForgedTail = 4096

// lastAuthentic walks back from msg, which is not an authentic frame of the
// partition (why), to the last message of the partition that is. It returns
// a nil message when the partition holds no authentic frame at all.
func (w *writer) lastAuthentic(ctx context.Context, stream jetstream.Stream, part uint32, msg *jetstream.RawStreamMsg, why error) (*jetstream.RawStreamMsg, seal.Header, error) {
	subject := w.pl.subject(w.id, part)
	w.cfg.logger.Warn("the last message of the partition is not an authentic frame; continuing after the last one that is",
		"stream", w.id, "partition", part, "message", msg.Sequence, "err", why)
	steps := 0
	for seq := msg.Sequence - 1; seq > 0; seq-- {
		if steps++; steps > maxForgedTail {
			return nil, seal.Header{}, fmt.Errorf("no authentic frame among the %d messages before message %d (the last one: %w)", maxForgedTail, msg.Sequence, why)
		}
		m, err := stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, seal.Header{}, fmt.Errorf("message %d: %w", seq, err)
		}
		if m.Subject != subject {
			continue
		}
		if h, err := w.checkTail(part, m.Data); err == nil {
			return m, h, nil
		}
	}
	return nil, seal.Header{}, nil
}

// checkTail opens frame as partition part's frame at its own sequence
// number, to authenticate it, and returns its header.
func (w *writer) checkTail(part uint32, frame []byte) (seal.Header, error) {
	h, err := seal.ParseHeader(frame)
	if err != nil {
		return h, err
	}
	var oo []seal.OpenerOption
	if w.cfg.plaintext {
		oo = append(oo, seal.AcceptPlaintext())
	}
	op, err := seal.NewOpener(w.keys, w.pl.kind, []string{w.id}, oo...)
	if err != nil {
		return h, err
	}
	if h.Partition != part {
		return h, fmt.Errorf("the frame says it belongs to partition %d", h.Partition)
	}
	if err := op.Resume(w.id, part, h.Seq); err != nil {
		return h, err
	}
	if h, _, err = op.Open(nil, frame); err != nil {
		return h, fmt.Errorf("not an authentic frame of the partition: %w", err)
	}
	return h, nil
}

// parseCommitHeaders returns the committed output a message's headers
// record (all zero without them).
func parseCommitHeaders(h nats.Header) (cp uint64, batch, batches int, err error) {
	cs, bs := h.Get(HeaderCheckpoint), h.Get(HeaderBatch)
	if cs == "" && bs == "" {
		return 0, 0, 0, nil
	}
	bad := func() (uint64, int, int, error) {
		return 0, 0, 0, fmt.Errorf("headers %s %q and %s %q, want a checkpoint id ≥ 1 and \"i/n\" with 1 ≤ i ≤ n", HeaderCheckpoint, cs, HeaderBatch, bs)
	}
	cp, err = strconv.ParseUint(cs, 10, 64)
	is, ns, ok := strings.Cut(bs, "/")
	if err != nil || cp == 0 || !ok {
		return bad()
	}
	i, erri := strconv.Atoi(is)
	n, errn := strconv.Atoi(ns)
	if erri != nil || errn != nil || i < 1 || i > n || strconv.Itoa(i) != is || strconv.Itoa(n) != ns || strconv.FormatUint(cp, 10) != cs {
		return bad()
	}
	return cp, i, n, nil
}

// publish seals b as the next frame of partition part (a last frame when
// last) and publishes it with the partition's commit headers, waiting for
// JetStream's acknowledgement. A failure leaves the partition unknown, so
// the next call looks up what was stored.
func (w *writer) publish(ctx context.Context, part uint32, p *partWriter, b *record.Batch, last bool) (err error) {
	defer func() {
		if err != nil {
			p.known = false
		}
	}()
	if p.body, err = appendBody(p.body[:0], w.schema, b, last, w.partitions); err != nil {
		return fmt.Errorf("confidential: %s stream %q partition %d: %w", w.pl.kind, w.id, part, err)
	}
	lo, hi := timeRange(b)
	seq := p.sealer.Next()
	if last {
		p.frame, err = p.sealer.SealLast(p.frame[:0], p.body, lo, hi)
	} else {
		p.frame, err = p.sealer.Seal(p.frame[:0], p.body, lo, hi)
	}
	if err != nil {
		return fmt.Errorf("confidential: %s stream %q partition %d: %w", w.pl.kind, w.id, part, err)
	}
	msg := &nats.Msg{Subject: w.pl.subject(w.id, part), Data: p.frame}
	if p.cp > 0 {
		msg.Header = nats.Header{}
		msg.Header.Set(HeaderCheckpoint, strconv.FormatUint(p.cp, 10))
		msg.Header.Set(HeaderBatch, strconv.Itoa(p.batch)+"/"+strconv.Itoa(p.batches))
	}
	msgID := w.id + "." + strconv.FormatUint(uint64(part), 10) + "." + strconv.FormatUint(seq, 10)
	ack, err := w.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID), jetstream.WithExpectLastSequencePerSubject(p.tail))
	if err != nil {
		if wrongLast(err) {
			err = fmt.Errorf("%w: %w", errInterleaved, err)
		}
		return fmt.Errorf("confidential: publishing frame %d of %s stream %q partition %d: %w", seq, w.pl.kind, w.id, part, err)
	}
	if ack.Duplicate {
		// The frame was stored before (a retry after a lost
		// acknowledgement): look the partition up again before the next.
		p.known = false
	}
	p.tail = ack.Sequence
	if last {
		p.ended = true
	}
	return nil
}

// errInterleaved marks a publish refused because something else wrote to
// the partition since the writer last looked.
var errInterleaved = errors.New("another message was written to the partition in between")

func wrongLast(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// maxResyncs bounds how often one write looks the partition up again after
// an interleaved write before it gives up.
const maxResyncs = 3

// write seals b as the next frame of partition part and publishes it,
// waiting for JetStream's acknowledgement; with last, it ends the partition
// (nothing to do if it already ended).
func (w *writer) write(ctx context.Context, part uint32, b *record.Batch, last bool) error {
	for attempt := 0; ; attempt++ {
		p, err := w.part(ctx, part)
		if err != nil {
			return err
		}
		if p.ended {
			p.mu.Unlock()
			if last {
				return nil
			}
			return fmt.Errorf("confidential: %s stream %q partition %d is closed", w.pl.kind, w.id, part)
		}
		err = w.publish(ctx, part, p, b, last)
		p.mu.Unlock()
		// Something else wrote to the partition (frames the storage made
		// up, say): look it up again and continue after the last
		// authentic frame.
		if !errors.Is(err, errInterleaved) || attempt == maxResyncs {
			return err
		}
	}
}

// commit publishes the batches of checkpoint cp to partition part, one frame
// each, skipping what the partition already holds: every batch of an
// earlier checkpoint than the last one published, and batches 1 to i of the
// last one.
func (w *writer) commit(ctx context.Context, part uint32, cp uint64, batches []*record.Batch) error {
	if cp == 0 {
		return fmt.Errorf("confidential: %s stream %q partition %d: commit of checkpoint 0; checkpoint ids start at 1", w.pl.kind, w.id, part)
	}
	for attempt := 0; ; attempt++ {
		// After an interleaved write the partition is looked up again and
		// the commit skips what is there now.
		err := w.commitOnce(ctx, part, cp, batches)
		if !errors.Is(err, errInterleaved) || attempt == maxResyncs {
			return err
		}
	}
}

func (w *writer) commitOnce(ctx context.Context, part uint32, cp uint64, batches []*record.Batch) error {
	p, err := w.part(ctx, part)
	if err != nil {
		return err
	}
	defer p.mu.Unlock()
	n, from := len(batches), 0
	switch {
	case cp < p.cp:
		return nil
	case cp == p.cp && n != p.batches:
		return fmt.Errorf("confidential: %s stream %q partition %d holds %d of %d batches of checkpoint %d, but its commit now has %d batches",
			w.pl.kind, w.id, part, p.batch, p.batches, cp, n)
	case cp == p.cp:
		from = p.batch
	}
	if from >= n {
		return nil
	}
	if p.ended {
		return fmt.Errorf("confidential: %s stream %q partition %d is closed, but batches %d to %d of checkpoint %d were not published",
			w.pl.kind, w.id, part, from+1, n, cp)
	}
	for i := from; i < n; i++ {
		pcp, pb, pn := p.cp, p.batch, p.batches
		p.cp, p.batch, p.batches = cp, i+1, n
		if err := w.publish(ctx, part, p, batches[i], false); err != nil {
			p.cp, p.batch, p.batches = pcp, pb, pn
			return err
		}
	}
	return nil
}

// close seals the last-of-stream frame of every partition not yet closed.
func (w *writer) close(ctx context.Context) error {
	var errs []error
	var empty record.Batch
	for i := range w.parts {
		errs = append(errs, w.write(ctx, uint32(i), &empty, true))
	}
	return errors.Join(errs...)
}
