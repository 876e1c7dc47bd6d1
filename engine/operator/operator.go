// Package operator defines the contract between the engine's runtime and its
// operators, and holds the built-in operators. Operators do no I/O: the runtime
// feeds them batches, watermarks and end-of-input, and acts on what they emit, so
// every operator can be tested deterministically.
package operator

import (
	"math"

	"github.com/sealflow/sealflow/engine/record"
)

// Emitter receives what an operator produces.
type Emitter interface {
	// Emit passes one record downstream. The operator may reuse rec's storage
	// after Emit returns; the receiver copies what it keeps.
	Emit(rec record.Record)
	// EmitSide passes a record to a named side output (for example "late").
	EmitSide(name string, rec record.Record)
	// EmitWatermark passes the operator's output watermark downstream.
	EmitWatermark(wm int64)
}

// Operator is one stage of a task's chain. Input is the index of the input edge
// for operators with several inputs (joins, union); single-input operators see 0.
type Operator interface {
	// ProcessBatch handles a batch of records from one input.
	ProcessBatch(input int, b *record.Batch, out Emitter) error
	// ProcessWatermark handles a watermark from one input. The operator combines
	// its inputs' watermarks (the minimum) and emits its own.
	ProcessWatermark(input int, wm int64, out Emitter) error
	// Finish is called once at end of input, after the final watermark.
	Finish(out Emitter) error
}

// Snapshotter is implemented by operators with keyed state, so checkpoints and
// rescaling can move state by key-group range [from, to).
type Snapshotter interface {
	Snapshot(from, to int) ([]byte, error)
	Restore(from, to int, data []byte) error
}

// Watermark conventions. A watermark wm declares that no record with Time <= wm
// will follow (Flink's convention): a window [start, end) fires once wm >= end-1.
const (
	// FinalWatermark is the watermark of an input that has ended; it fires
	// every open window. Operators emit it from Finish if they have not already.
	FinalWatermark int64 = math.MaxInt64
	// IdleWatermark is emitted by an input that has become idle (no records for
	// its idle timeout). A multi-input operator stops waiting for an idle input
	// until it sends a real watermark again (a Watermarks generator does so
	// with its next batch). It is the smallest
	// int64, so an operator that ignores the convention never advances on it.
	IdleWatermark int64 = math.MinInt64
)

// Ticker is implemented by operators that act on the passage of processing
// time, such as a watermark generator detecting idleness. The runtime calls
// Tick with its current time in epoch milliseconds; operators never read a
// clock themselves.
type Ticker interface {
	Tick(now int64, out Emitter) error
}

// KeyFunc returns the key of a record as a 64-bit value: records with equal keys
// must get equal values, and records with different keys should get different
// ones (KeyOf uses an int field's value itself, or a 64-bit hash of several
// fields). Keyed operators group by it, exchanges route by
// state.SubtaskFor(state.KeyGroup(key, maxParallelism), parallelism,
// maxParallelism), and it must be the same function on both sides of an
// exchange.
type KeyFunc func(*record.Record) uint64
