package udf

import (
	"context"
	"fmt"
	"strings"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/operator"
	"github.com/sealflow/sealflow/engine/record"
)

// Operator runs a UDF instance as an engine operator: each input batch is
// one call, and every output record is emitted. Watermarks pass through
// (output records should not be earlier than their inputs). A failed call
// fails the batch, and so the task; the instance restarts at the next call.
type Operator struct {
	ctx  context.Context
	inst *Instance
}

// NewOperator returns an operator calling inst. ctx bounds every call (the
// task's context); each batch also has the runtime's batch deadline.
func NewOperator(ctx context.Context, inst *Instance) *Operator {
	return &Operator{ctx: ctx, inst: inst}
}

// ProcessBatch calls the function on b and emits its output.
func (o *Operator) ProcessBatch(_ int, b *record.Batch, out operator.Emitter) error {
	if b.Len() == 0 {
		return nil
	}
	return o.inst.CallEach(o.ctx, b, out)
}

// ProcessWatermark passes wm downstream.
func (o *Operator) ProcessWatermark(_ int, wm int64, out operator.Emitter) error {
	out.EmitWatermark(wm)
	return nil
}

// Finish does nothing: a UDF's guest-side state is not flushed.
func (o *Operator) Finish(operator.Emitter) error { return nil }

// Close frees the operator's instance.
func (o *Operator) Close(ctx context.Context) error { return o.inst.Close(ctx) }

// ModuleSource returns the plaintext bytes of the module with the given
// digest (for example, decrypted from the job's object store). The Runtime
// checks the bytes against the digest.
type ModuleSource func(ctx context.Context, digest string) ([]byte, error)

// SpecFunction converts a JobSpec udf node's parameters and its input schema
// into the Function to instantiate.
func SpecFunction(u *jobspec.UDF, in *record.Schema) (Function, error) {
	if u == nil {
		return Function{}, fmt.Errorf("udf node has no udf parameters")
	}
	out := &record.Schema{Fields: make([]record.Field, len(u.Output))}
	for i, f := range u.Output {
		if f.Type < record.TypeInt || f.Type > record.TypeBool {
			return Function{}, fmt.Errorf("udf %q: output field %q has no valid type (%s)", u.Function, f.Name, f.Type)
		}
		out.Fields[i] = record.Field{Name: f.Name, Type: f.Type}
	}
	return Function{Name: u.Function, In: in, Out: out, Allow: u.Allow}, nil
}

// NodeOperator loads (or reuses) the module a JobSpec udf node names, fetched
// from src, and returns an operator over a fresh instance for input schema
// in: what the engine runtime builds for one subtask of a udf node.
func (r *Runtime) NodeOperator(ctx context.Context, u *jobspec.UDF, in *record.Schema, src ModuleSource) (*Operator, error) {
	fn, err := SpecFunction(u, in)
	if err != nil {
		return nil, err
	}
	m := r.loaded(u.Module)
	if m == nil {
		wasm, err := src(ctx, u.Module)
		if err != nil {
			return nil, fmt.Errorf("udf %q: fetch module %s: %w", u.Function, u.Module, err)
		}
		if m, err = r.Load(ctx, u.Module, wasm); err != nil {
			return nil, err
		}
	}
	inst, err := m.Instantiate(ctx, fn)
	if err != nil {
		return nil, err
	}
	return NewOperator(ctx, inst), nil
}

// loaded returns the module already loaded under digest, if any.
func (r *Runtime) loaded(digest string) *Module {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.modules[strings.ToLower(digest)]
}
