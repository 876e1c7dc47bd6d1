package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/confidential"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/seal"
)

// JetStreamIO is the StreamIO of a worker: sealed streams in NATS JetStream
// (package confidential). Owners' streams and intermediate streams between
// stages are read as sealed ingest streams; outputs are written as sealed
// output streams; intermediate streams are written the way a gateway writes
// an owner's stream, sealed with the job's exchange key under their own scope.
type JetStreamIO struct {
	JS jetstream.JetStream
	// IntermediateTimeout is how long a task waits for the next frame of an
	// intermediate stream before it reports the stream truncated; 10 minutes
	// when zero.
	IntermediateTimeout time.Duration
	// Plaintext turns sealing off; only for measuring its cost on benchmark
	// data, never for registered owners' streams.
	Plaintext bool
}

// Source implements StreamIO.
func (j *JetStreamIO) Source(ctx context.Context, s Stream, keys *seal.Keyring, reject RejectFunc) (runtime.Source, error) {
	opts := []confidential.Option{confidential.WithRejectHandler(func(scope, reason string, err error) {
		if reject != nil {
			reject(scope, reason, 1, err.Error())
		}
	})}
	if j.Plaintext {
		opts = append(opts, confidential.WithPlaintext())
	}
	if s.Kind == seal.KindExchange {
		// An intermediate stream: its writer, an upstream stage, may start
		// later and take longer than a gateway.
		if err := confidential.EnsureIngestStream(ctx, j.JS, s.Scope); err != nil {
			return nil, err
		}
		opts = append(opts, confidential.WithEndTimeout(j.intermediateTimeout()))
	}
	src, err := confidential.NewIngestSource(j.JS, s.Scope, max(s.Partitions, 1), keys, opts...)
	if err != nil {
		return nil, err
	}
	return src.Source(), nil
}

func (j *JetStreamIO) intermediateTimeout() time.Duration {
	if j.IntermediateTimeout > 0 {
		return j.IntermediateTimeout
	}
	return 10 * time.Minute
}

// Sink implements StreamIO.
func (j *JetStreamIO) Sink(ctx context.Context, s Stream, keys *seal.Keyring) (runtime.Sink, func(context.Context) error, error) {
	var opts []confidential.Option
	if j.Plaintext {
		opts = append(opts, confidential.WithPlaintext())
	}
	parts := max(s.Partitions, 1)
	if s.Kind == seal.KindOutput {
		o, err := confidential.NewOutputSink(ctx, j.JS, s.Scope, s.Schema, keys, parts, opts...)
		if err != nil {
			return nil, nil, err
		}
		return o.Sink(), o.Close, nil
	}
	p, err := confidential.NewPublisher(ctx, j.JS, s.Scope, s.Schema, keys, parts, opts...)
	if err != nil {
		return nil, nil, err
	}
	sink := func(sp runtime.Split, b *record.Batch) error {
		return p.Publish(ctx, uint32(sp.Subtask), b)
	}
	return sink, p.Close, nil
}

// CommitSink implements StreamIO.
func (j *JetStreamIO) CommitSink(ctx context.Context, s Stream, keys *seal.Keyring) (runtime.CommitSink, func(context.Context) error, error) {
	var opts []confidential.Option
	if j.Plaintext {
		opts = append(opts, confidential.WithPlaintext())
	}
	parts := max(s.Partitions, 1)
	if s.Kind == seal.KindOutput {
		o, err := confidential.NewOutputSink(ctx, j.JS, s.Scope, s.Schema, keys, parts, opts...)
		if err != nil {
			return nil, nil, err
		}
		return o.CommitSink(), o.Close, nil
	}
	p, err := confidential.NewPublisher(ctx, j.JS, s.Scope, s.Schema, keys, parts, opts...)
	if err != nil {
		return nil, nil, err
	}
	return p.CommitSink(), p.Close, nil
}

// IntermediateScope is the stream id and seal scope of an intermediate stream
// of a job, sealed with the job's exchange key: "x-<job>-<stream>", made of
// the characters a sealed stream id allows (hashed when too long).
func IntermediateScope(job, stream string) string {
	id := "x-" + sanitize(job) + "-" + sanitize(stream)
	if len(id) > 64 {
		h := sha256.Sum256([]byte(job + "\x00" + stream))
		id = "x-" + hex.EncodeToString(h[:16])
	}
	return id
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, s)
}
