package runtime

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/engine/record"
)

// JetStreamSourceConfig configures a source that reads a JetStream stream.
type JetStreamSourceConfig struct {
	// Stream is the JetStream stream to read.
	Stream string
	// Subjects returns the subjects subtask split.Subtask reads (its
	// partitions); nil or an empty result reads the whole stream, which is
	// right only for parallelism 1.
	Subjects func(split Split) []string
	// NewDecode returns, for one subtask, the function that appends the
	// records of one message to b. A message it fails on is counted as
	// malformed (Split.Malformed) and skipped; it must then leave b as it was.
	NewDecode func(split Split) (func(msg []byte, b *record.Batch) error, error)
	// Follow keeps reading new messages until ctx ends. Without it the
	// source is bounded: it reads what the stream holds when it starts.
	Follow bool
	// FetchSize is the number of messages fetched at once; 512 if zero.
	FetchSize int
	// FetchWait bounds one fetch; 500 ms if zero. A following source emits
	// an empty batch after each empty fetch, so idleness is detected.
	FetchWait time.Duration
}

// JetStreamSource returns a source reading a JetStream stream with an ordered
// consumer per subtask (in stream order, starting at the beginning).
func JetStreamSource(js jetstream.JetStream, cfg JetStreamSourceConfig) Source {
	if cfg.FetchSize <= 0 {
		cfg.FetchSize = 512
	}
	if cfg.FetchWait <= 0 {
		cfg.FetchWait = 500 * time.Millisecond
	}
	return func(ctx context.Context, split Split, emit func(*record.Batch) error) error {
		if cfg.NewDecode == nil {
			return errors.New("JetStreamSourceConfig.NewDecode is nil")
		}
		decode, err := cfg.NewDecode(split)
		if err != nil {
			return err
		}
		st, err := js.Stream(ctx, cfg.Stream)
		if err != nil {
			return fmt.Errorf("opening stream %q: %w", cfg.Stream, err)
		}
		var subjects []string
		if cfg.Subjects != nil {
			subjects = cfg.Subjects(split)
		}
		cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: subjects})
		if err != nil {
			return fmt.Errorf("creating a consumer on stream %q subjects %v: %w", cfg.Stream, subjects, err)
		}
		if !cfg.Follow {
			info, err := cons.Info(ctx)
			if err != nil {
				return fmt.Errorf("reading consumer info of stream %q: %w", cfg.Stream, err)
			}
			if info.NumPending == 0 {
				return nil
			}
		}
		var b record.Batch
		for {
			msgs, err := cons.Fetch(cfg.FetchSize, jetstream.FetchMaxWait(cfg.FetchWait))
			if err != nil {
				return fmt.Errorf("fetching from stream %q: %w", cfg.Stream, err)
			}
			b.Reset()
			done := false
			for m := range msgs.Messages() {
				if err := decode(m.Data(), &b); err != nil {
					md, _ := m.Metadata()
					seq := uint64(0)
					if md != nil {
						seq = md.Sequence.Stream
					}
					err = fmt.Errorf("stream %q message %d on %s: %w", cfg.Stream, seq, m.Subject(), err)
					if split.Malformed == nil {
						return err
					}
					split.Malformed(err)
				}
				if !cfg.Follow {
					if md, err := m.Metadata(); err == nil && md.NumPending == 0 {
						done = true
					}
				}
			}
			if err := msgs.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("fetching from stream %q: %w", cfg.Stream, err)
			}
			if b.Len() > 0 || cfg.Follow {
				if err := emit(&b); err != nil {
					return err
				}
			}
			if done {
				return nil
			}
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	}
}

// JSONDecode returns a NewDecode for messages holding one JSON record each,
// decoded with record.JSONDecoder; timeField as in record.NewJSONDecoder.
func JSONDecode(timeField string) func(Split) (func([]byte, *record.Batch) error, error) {
	return func(split Split) (func([]byte, *record.Batch) error, error) {
		d, err := record.NewJSONDecoder(split.Schema, timeField)
		if err != nil {
			return nil, err
		}
		n := 0
		return func(msg []byte, b *record.Batch) error {
			n++
			k := len(b.Records)
			if k < cap(b.Records) {
				b.Records = b.Records[:k+1]
			} else {
				b.Records = append(b.Records, record.Record{})
			}
			if err := d.Decode(msg, n, &b.Records[k]); err != nil {
				b.Records = b.Records[:k]
				return err
			}
			return nil
		}, nil
	}
}

// BatchDecode returns a NewDecode for messages holding binary record batches
// (record.AppendBatch).
func BatchDecode() func(Split) (func([]byte, *record.Batch) error, error) {
	return func(split Split) (func([]byte, *record.Batch) error, error) {
		var d record.Decoder
		var tmp record.Batch
		return func(msg []byte, b *record.Batch) error {
			if err := d.Decode(msg, split.Schema, &tmp); err != nil {
				return err
			}
			for _, r := range tmp.Records {
				// Values of tmp are reused by the next Decode: copy.
				b.Records = append(b.Records, record.Record{Time: r.Time, Values: append([]record.Value(nil), r.Values...)})
			}
			return nil
		}, nil
	}
}

// JetStreamSinkConfig configures a sink that writes to a JetStream stream.
type JetStreamSinkConfig struct {
	// Subject returns the subject a subtask publishes to (its partition).
	Subject func(split Split) string
	// Encode appends the encoding of a batch to dst: one message per batch.
	// BatchEncode or JSONLinesEncode.
	Encode func(dst []byte, split Split, b *record.Batch) ([]byte, error)
	// Timeout bounds each publish, including the server's acknowledgement;
	// 10 s if zero.
	Timeout time.Duration
}

// JetStreamSink returns a sink publishing each batch as one message and
// waiting for JetStream's acknowledgement before it returns, so a batch the
// sink accepted is stored (durably, if the server syncs every write).
func JetStreamSink(js jetstream.JetStream, cfg JetStreamSinkConfig) Sink {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	return func(split Split, b *record.Batch) error {
		msg, err := cfg.Encode(nil, split, b)
		if err != nil {
			return fmt.Errorf("encoding %d records for stream %q: %w", b.Len(), split.Stream, err)
		}
		subject := cfg.Subject(split)
		ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
		defer cancel()
		if _, err := js.Publish(ctx, subject, msg); err != nil {
			return fmt.Errorf("publishing %d records to %s: %w", b.Len(), subject, err)
		}
		return nil
	}
}

// BatchEncode encodes a batch with record.AppendBatch (read back with
// BatchDecode).
func BatchEncode(dst []byte, split Split, b *record.Batch) ([]byte, error) {
	return record.AppendBatch(dst, split.Schema, b)
}

// JSONLinesEncode encodes a batch as JSON lines, one object per record.
func JSONLinesEncode(dst []byte, split Split, b *record.Batch) ([]byte, error) {
	enc := record.NewJSONEncoder(split.Schema)
	for i := range b.Records {
		dst = append(enc.Append(dst, &b.Records[i]), '\n')
	}
	return dst, nil
}
