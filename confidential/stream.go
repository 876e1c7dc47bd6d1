package confidential

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"

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

// writer seals batches of records into the partitions of a sealed stream.
type writer struct {
	js         jetstream.JetStream
	pl         place
	id         string
	schema     *record.Schema
	partitions int
	cfg        *config
	parts      []partWriter
}

type partWriter struct {
	mu     sync.Mutex
	sealer *seal.Sealer
	body   []byte
	frame  []byte
	ended  bool
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
	w := &writer{js: js, pl: pl, id: id, schema: schema, partitions: partitions, cfg: cfg, parts: make([]partWriter, partitions)}
	for i := range w.parts {
		if w.parts[i].sealer, err = seal.NewSealer(keys, pl.kind, id, uint32(i), so...); err != nil {
			return nil, err
		}
	}
	if err := pl.ensure(ctx, js, id); err != nil {
		return nil, err
	}
	return w, nil
}

// write seals b as the next frame of partition part and publishes it,
// waiting for JetStream's acknowledgement.
func (w *writer) write(ctx context.Context, part uint32, b *record.Batch, last bool) error {
	if int64(part) >= int64(w.partitions) {
		return fmt.Errorf("confidential: %s stream %q has %d partitions, not partition %d", w.pl.kind, w.id, w.partitions, part)
	}
	p := &w.parts[part]
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended {
		if last {
			return nil
		}
		return fmt.Errorf("confidential: %s stream %q partition %d is closed", w.pl.kind, w.id, part)
	}
	var err error
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
	if last {
		p.ended = true
	}
	msgID := w.id + "." + strconv.FormatUint(uint64(part), 10) + "." + strconv.FormatUint(seq, 10)
	if _, err := w.js.Publish(ctx, w.pl.subject(w.id, part), p.frame, jetstream.WithMsgID(msgID)); err != nil {
		return fmt.Errorf("confidential: publishing frame %d of %s stream %q partition %d: %w", seq, w.pl.kind, w.id, part, err)
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
