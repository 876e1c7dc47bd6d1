package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/confidential"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/topology"
)

// JetStreamIO is the StreamIO of a worker: sealed streams in NATS JetStream
// (package confidential). Owners' streams and intermediate streams between
// stages are read as sealed ingest streams; outputs are written as sealed
// output streams; intermediate streams are written the way a gateway writes
// an owner's stream, sealed with the job's exchange key under their own scope.
//
// At a leafnode site of a topology (Local set), streams are placed by
// domain: an owner's stream the site's domain holds (its gateway publishes
// at the site) is read there; an intermediate stream the task writes is
// written to the site's domain, in a bounded buffer stream that the hub's
// domain sources ([topology.OpenCrossSite]), so the site keeps writing
// through a WAN outage and the hub catches up afterwards; every other stream
// (outputs, intermediate streams read, owners' streams the site does not
// hold) is in JS's domain, the hub's.
type JetStreamIO struct {
	// JS is the JetStream holding outputs and the readable copies of
	// intermediate streams: the hub's domain in a topology.
	JS jetstream.JetStream
	// Local, when set, is the JetStream of the worker's own site, whose
	// domain LocalDomain differs from JS's.
	Local jetstream.JetStream
	// LocalDomain names Local's JetStream domain; required with Local.
	LocalDomain string
	// SiteBuffer bounds, in bytes, the site's buffer of each intermediate
	// stream written at the site (the data not yet trimmed once the hub
	// holds it); DefaultSiteBuffer when zero. A full buffer refuses writes:
	// the sink then trims what the hub already holds and waits for room, so
	// a long outage slows the task instead of dropping records.
	SiteBuffer int64
	// Logger receives the cross-site exchanges' log lines; slog.Default()
	// when nil.
	Logger *slog.Logger
	// IntermediateTimeout is how long a task waits for the next frame of an
	// intermediate stream before it reports the stream truncated; 10 minutes
	// when zero.
	IntermediateTimeout time.Duration
	// Plaintext turns sealing off; only for measuring its cost on benchmark
	// data, never for registered owners' streams.
	Plaintext bool
}

// DefaultSiteBuffer is JetStreamIO.SiteBuffer when zero: 1 GiB per
// intermediate stream written at a leafnode site.
const DefaultSiteBuffer = 1 << 30

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
	js := j.JS
	switch s.Kind {
	case seal.KindExchange:
		// An intermediate stream: its writer, an upstream stage, may start
		// later and take longer than a gateway.
		if err := j.ensureReadable(ctx, s.Scope); err != nil {
			return nil, err
		}
		opts = append(opts, confidential.WithEndTimeout(j.intermediateTimeout()))
	case seal.KindIngest:
		var err error
		if js, err = j.ingestDomain(ctx, s.Scope); err != nil {
			return nil, err
		}
	}
	src, err := confidential.NewIngestSource(js, s.Scope, max(s.Partitions, 1), keys, opts...)
	if err != nil {
		return nil, err
	}
	return src.Source(), nil
}

// ensureReadable creates the stream of an intermediate stream in JS's domain
// if it does not exist yet, so the reader may start before the writer. It
// creates it with no subjects of its own and never updates an existing one:
// its writer makes it either a stream capturing the exchange's subjects (a
// writer in the same domain) or a copy sourcing a site's buffer (a writer at
// a leafnode site), and a reader must not undo either.
func (j *JetStreamIO) ensureReadable(ctx context.Context, scope string) error {
	if err := confidential.CheckStreamID(scope); err != nil {
		return err
	}
	name := confidential.IngestStreamPrefix + scope
	_, err := j.JS.Stream(ctx, name)
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return err
	}
	_, err = j.JS.CreateStream(ctx, jetstream.StreamConfig{Name: name, Description: "sealflow sealed exchange frames of stream " + scope + " (created by a reader)",
		Storage: jetstream.FileStorage})
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return nil
	}
	return err
}

// ingestDomain returns the JetStream holding the owner's stream id: the
// site's when the worker runs at a leafnode site whose domain holds it,
// otherwise JS. It waits (until ctx ends) for the stream to appear, since
// the owner's gateway may start after the task.
func (j *JetStreamIO) ingestDomain(ctx context.Context, id string) (jetstream.JetStream, error) {
	name := confidential.IngestStreamPrefix + id
	logged := false
	for {
		if j.Local != nil {
			_, err := j.Local.Stream(ctx, name)
			if err == nil {
				return j.Local, nil
			}
			if !errors.Is(err, jetstream.ErrStreamNotFound) {
				return nil, fmt.Errorf("looking up ingest stream %q in site domain %q: %w", id, j.LocalDomain, err)
			}
		}
		_, err := j.JS.Stream(ctx, name)
		if err == nil {
			return j.JS, nil
		}
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("looking up ingest stream %q: %w", id, err)
		}
		if !logged {
			j.logger().Info("waiting for the owner's stream to appear at the site or the hub", "stream", id, "site_domain", j.LocalDomain)
			logged = true
		}
		tm := time.NewTimer(250 * time.Millisecond)
		select {
		case <-ctx.Done():
			tm.Stop()
			return nil, fmt.Errorf("waiting for ingest stream %q: %w", id, ctx.Err())
		case <-tm.C:
		}
	}
}

func (j *JetStreamIO) logger() *slog.Logger {
	if j.Logger != nil {
		return j.Logger
	}
	return slog.Default()
}

// writerJS returns the JetStream an intermediate stream of scope is written
// to: JS, or at a leafnode site the site's buffer of a cross-site exchange,
// whose hub side is set up and watched in the background until ctx ends.
func (j *JetStreamIO) writerJS(ctx context.Context, s Stream) (jetstream.JetStream, error) {
	if j.Local == nil || s.Kind != seal.KindExchange {
		return j.JS, nil
	}
	if err := confidential.CheckStreamID(s.Scope); err != nil {
		return nil, err
	}
	name := confidential.IngestStreamPrefix + s.Scope
	buf := j.SiteBuffer
	if buf <= 0 {
		buf = DefaultSiteBuffer
	}
	x, err := topology.OpenCrossSite(ctx, j.Local, j.JS, topology.CrossSite{
		Stream:   name,
		Subjects: []string{confidential.IngestSubjectPrefix + "." + s.Scope + ".*"},
		Domain:   j.LocalDomain,
		MaxBytes: buf,
		Storage:  jetstream.FileStorage,
		KeepLast: true,
	})
	if err != nil {
		return nil, err
	}
	log := j.logger().With("stream", s.Scope, "site_domain", j.LocalDomain)
	go func() {
		if err := x.Run(ctx, time.Second); err != nil && ctx.Err() == nil {
			log.Warn("cross-site exchange stopped", "err", err)
		}
	}()
	return &siteBufferJS{JetStream: j.Local, x: x, name: name}, nil
}

// siteBufferJS is the site's JetStream as a sealed stream's writer sees it
// for one cross-site exchange: writes wait for room in a full buffer (trimming
// what the hub holds), and the writer's stream set-up leaves the buffer's
// limits alone.
type siteBufferJS struct {
	jetstream.JetStream
	x    *topology.Exchange
	name string
}

// CreateOrUpdateStream returns the exchange's site stream as it is for the
// exchange's name, and passes every other stream on.
func (b *siteBufferJS) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if cfg.Name == b.name {
		return b.x.SiteStream(), nil
	}
	return b.JetStream.CreateOrUpdateStream(ctx, cfg)
}

// PublishMsg publishes to the site's buffer, waiting for room when it is full.
func (b *siteBufferJS) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return b.x.Publish(ctx, m, opts...)
}

func (j *JetStreamIO) intermediateTimeout() time.Duration {
	if j.IntermediateTimeout > 0 {
		return j.IntermediateTimeout
	}
	return 10 * time.Minute
}

// Sink implements StreamIO.
func (j *JetStreamIO) Sink(ctx context.Context, s Stream, keys *seal.Keyring) (runtime.Sink, func(context.Context) error, error) {
	w, err := j.writer(ctx, s, keys)
	if err != nil {
		return nil, nil, err
	}
	if w.out != nil {
		return w.out.Sink(), w.out.Close, nil
	}
	sink := func(sp runtime.Split, b *record.Batch) error {
		return w.pub.Publish(ctx, uint32(sp.Subtask), b)
	}
	return sink, w.pub.Close, nil
}

// CommitSink implements StreamIO.
func (j *JetStreamIO) CommitSink(ctx context.Context, s Stream, keys *seal.Keyring) (runtime.CommitSink, func(context.Context) error, error) {
	w, err := j.writer(ctx, s, keys)
	if err != nil {
		return nil, nil, err
	}
	if w.out != nil {
		return w.out.CommitSink(), w.out.Close, nil
	}
	return w.pub.CommitSink(), w.pub.Close, nil
}

// sealedWriter is the writer of one stream a task writes: an output sink
// for an output, a publisher for an intermediate stream.
type sealedWriter struct {
	out *confidential.OutputSink
	pub *confidential.Publisher
}

func (j *JetStreamIO) writer(ctx context.Context, s Stream, keys *seal.Keyring) (sealedWriter, error) {
	var opts []confidential.Option
	if j.Plaintext {
		opts = append(opts, confidential.WithPlaintext())
	}
	parts := max(s.Partitions, 1)
	if s.Kind == seal.KindOutput {
		o, err := confidential.NewOutputSink(ctx, j.JS, s.Scope, s.Schema, keys, parts, opts...)
		return sealedWriter{out: o}, err
	}
	js, err := j.writerJS(ctx, s)
	if err != nil {
		return sealedWriter{}, err
	}
	p, err := confidential.NewPublisher(ctx, js, s.Scope, s.Schema, keys, parts, opts...)
	return sealedWriter{pub: p}, err
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
