package confidential

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/sealflow/sealflow/seal"
)

// RejectFunc receives every frame a reader rejects: the scope (job or stream)
// it was read for, the seal.Reason and the *seal.Rejection. It may be called
// concurrently.
type RejectFunc func(scope, reason string, err error)

// Option configures an ExchangeCodec, Publisher, IngestSource, OutputSink or
// ReadOutput. Options that do not apply to a constructor are ignored by it.
type Option func(*config) error

type config struct {
	padding    int
	counter    *seal.RejectionCounter
	onReject   RejectFunc
	plaintext  bool
	logger     *slog.Logger
	endTimeout time.Duration
	resume     map[uint32]Position
	asyncMax   int
}

func newConfig(opts []Option) (*config, error) {
	c := &config{endTimeout: 5 * time.Second, asyncMax: 64}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	if c.logger == nil {
		c.logger = slog.Default()
	}
	return c, nil
}

// WithPadding pads every sealed plaintext to a multiple of bucket bytes
// (16 ≤ bucket ≤ seal.MaxBody), so frame sizes reveal only a bucket count.
func WithPadding(bucket int) Option {
	return func(c *config) error {
		if bucket < 16 || bucket > seal.MaxBody {
			return fmt.Errorf("confidential: padding bucket %d out of range [16, %d]", bucket, seal.MaxBody)
		}
		c.padding = bucket
		return nil
	}
}

// WithRejectionCounter counts rejected frames in c (register its Collector).
func WithRejectionCounter(rc *seal.RejectionCounter) Option {
	return func(c *config) error {
		if rc == nil {
			return errors.New("confidential: WithRejectionCounter(nil)")
		}
		c.counter = rc
		return nil
	}
}

// WithRejectHandler reports every rejected frame to f.
func WithRejectHandler(f RejectFunc) Option {
	return func(c *config) error { c.onReject = f; return nil }
}

// WithPlaintext writes (or accepts) unencrypted frames. It exists only to
// measure the cost of sealing and to show that ScanForPlaintext can fail;
// never use it for an owner's stream.
func WithPlaintext() Option {
	return func(c *config) error { c.plaintext = true; return nil }
}

// WithLogger sets the logger; slog.Default() otherwise.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error { c.logger = l; return nil }
}

// WithEndTimeout sets how long a reader waits for a new frame before it
// declares a stream that lacks last-of-stream frames truncated; 5 s by
// default. Zero waits forever (for unbounded streams).
func WithEndTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("confidential: negative end timeout %v", d)
		}
		c.endTimeout = d
		return nil
	}
}

// WithResume makes an IngestSource continue from positions it reported
// earlier (IngestSource.Positions, stored in a checkpoint); partitions whose
// position is Ended are not read again. In a run restored from a checkpoint,
// runtime.Split.Restored takes precedence for the subtask's partitions.
func WithResume(pos map[uint32]Position) Option {
	return func(c *config) error { c.resume = pos; return nil }
}

// reject counts and reports a rejection.
func (c *config) reject(scope string, err error) {
	if c.counter != nil {
		c.counter.Observe(err)
	}
	reason := string(seal.ReasonOf(err))
	c.logger.Warn("sealed frame rejected", "scope", scope, "reason", reason, "err", err)
	if c.onReject != nil {
		c.onReject(scope, reason, err)
	}
}
