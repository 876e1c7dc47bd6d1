// Package operator defines the contract between the engine's runtime and its
// operators, and holds the built-in operators. Operators do no I/O: the runtime
// feeds them batches, watermarks and end-of-input, and acts on what they emit, so
// every operator can be tested deterministically.
package operator

import "github.com/sealflow/sealflow/engine/record"

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
