package runtime

import (
	"context"
	"slices"
	"sync"

	"github.com/sealflow/sealflow/engine/record"
)

// SliceSource returns a source that emits recs, split between subtasks by
// position (record i goes to subtask i mod parallelism), in batches of
// batchSize (512 if 0). recs must not change during the run.
func SliceSource(recs []record.Record, batchSize int) Source {
	if batchSize <= 0 {
		batchSize = 512
	}
	return func(ctx context.Context, split Split, emit func(*record.Batch) error) error {
		var b record.Batch
		for i := split.Subtask; i < len(recs); i += split.Parallelism {
			b.Records = append(b.Records, recs[i])
			if len(b.Records) == batchSize {
				if err := emit(&b); err != nil {
					return err
				}
				b.Reset()
			}
		}
		if b.Len() > 0 {
			return emit(&b)
		}
		return nil
	}
}

// GeneratorSource returns a source of n records per run, split between
// subtasks by position: gen fills record i (0 ≤ i < n) into rec, whose Values
// buffer it may reuse. Records are emitted in batches of batchSize (512 if 0)
// without allocating per record.
func GeneratorSource(n int64, batchSize int, gen func(i int64, rec *record.Record) error) Source {
	if batchSize <= 0 {
		batchSize = 512
	}
	return func(ctx context.Context, split Split, emit func(*record.Batch) error) error {
		b := record.Batch{Records: make([]record.Record, batchSize)}
		b.Records = b.Records[:0]
		for i := int64(split.Subtask); i < n; i += int64(split.Parallelism) {
			k := len(b.Records)
			b.Records = b.Records[:k+1]
			if err := gen(i, &b.Records[k]); err != nil {
				return err
			}
			if k+1 == batchSize {
				if err := emit(&b); err != nil {
					return err
				}
				b.Records = b.Records[:0]
			}
		}
		if b.Len() > 0 {
			return emit(&b)
		}
		return nil
	}
}

// Collector is a sink that keeps copies of every record it receives.
type Collector struct {
	mu   sync.Mutex
	recs []record.Record
}

// Sink returns the collector's sink function.
func (c *Collector) Sink() Sink {
	return func(_ Split, b *record.Batch) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, r := range b.Records {
			c.recs = append(c.recs, record.Record{Time: r.Time, Values: slices.Clone(r.Values)})
		}
		return nil
	}
}

// Records returns the records collected so far, in arrival order.
func (c *Collector) Records() []record.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.recs)
}
