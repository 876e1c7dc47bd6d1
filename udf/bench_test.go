package udf

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/expr"
	"github.com/sealflow/sealflow/engine/operator"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/udf/sdk"
	"github.com/tetratelabs/wazero"
)

const benchBatch = 256

// cpuTime returns the CPU time the process has used. The machine the
// benchmarks run on is shared, so CPU time per record is steadier than
// wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measure runs f b.N times and reports wall and CPU nanoseconds per record
// (per op when records is 0).
func measure(b *testing.B, records int, f func()) {
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		f()
	}
	cpu := cpuTime() - cpu0
	b.StopTimer()
	if records > 0 {
		n := float64(b.N * records)
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/record")
		b.ReportMetric(float64(cpu.Nanoseconds())/n, "cpu-ns/record")
		return
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}

type discard struct{ n int }

func (d *discard) Emit(record.Record)             { d.n++ }
func (d *discard) EmitSide(string, record.Record) {}
func (d *discard) EmitWatermark(int64)            {}

// BenchmarkMap compares the cost example as a UDF with the same logic as
// built-in map operators, on the same batches of 64, 256 and 1024 records:
// "udf" calls the WebAssembly module (a Go guest using the SDK's simple
// per-record API, sdk.Map) once per batch, with the interrupt checks the
// batch deadline needs; "udf-unbounded" without them (what they cost);
// "udf-columnar" calls the same logic written with the columnar API
// (sdk.Columnar, ABI version 2), and "udf-columnar-unbounded" without the
// checks;
// "builtin-go" is operator.Map with the tariff written in Go;
// "builtin-cel" is operator.Map with the CEL projection the runtime builds
// for a map node (meter, kwh, kwh * 0.25). The trivial map kwh * 0.25 is
// also "udf-flat" (cost_flat, columnar, the Go guest), "udf-flat-c" (the
// same function written in C against the ABI, examples/flat_c) and
// "builtin-go-flat".
func BenchmarkMap(b *testing.B) {
	builtinGo := func(b *testing.B) operator.Operator {
		op, err := operator.NewMap(operator.MapConfig{Fn: func(dst []record.Value, r *record.Record) ([]record.Value, error) {
			rate := 0.25
			if h := r.Time / 3_600_000 % 24; h >= 17 && h < 21 {
				rate = 0.40
			}
			return append(dst, r.Values[0], r.Values[1], record.Float(r.Values[1].F*rate)), nil
		}})
		if err != nil {
			b.Fatal(err)
		}
		return op
	}
	builtinGoFlat := func(b *testing.B) operator.Operator {
		op, err := operator.NewMap(operator.MapConfig{Fn: func(dst []record.Value, r *record.Record) ([]record.Value, error) {
			return append(dst, r.Values[0], r.Values[1], record.Float(r.Values[1].F*0.25)), nil
		}})
		if err != nil {
			b.Fatal(err)
		}
		return op
	}
	builtinCEL := func(b *testing.B) operator.Operator {
		prog, err := expr.Compile("kwh * 0.25", meterKWh, record.TypeNull)
		if err != nil {
			b.Fatal(err)
		}
		op, err := operator.NewMap(operator.MapConfig{Fn: func(dst []record.Value, r *record.Record) ([]record.Value, error) {
			v, err := prog.Eval(r)
			return append(dst, r.Values[0], r.Values[1], v), err
		}})
		if err != nil {
			b.Fatal(err)
		}
		return op
	}
	udfOp := func(fn string, unbounded bool) func(b *testing.B) operator.Operator {
		return moduleOp("cost", fn, unbounded)
	}
	for _, kind := range []struct {
		name string
		op   func(b *testing.B) operator.Operator
	}{
		{"udf", udfOp("cost", false)},
		{"udf-unbounded", udfOp("cost", true)},
		{"udf-columnar", udfOp("cost_columnar", false)},
		{"udf-columnar-unbounded", udfOp("cost_columnar", true)},
		{"builtin-go", builtinGo},
		{"builtin-cel", builtinCEL},
		{"udf-flat", udfOp("cost_flat", false)},
		{"udf-flat-c", moduleOp("flat_c", "cost_flat", false)},
		{"builtin-go-flat", builtinGoFlat},
	} {
		for _, n := range []int{64, benchBatch, 1024} {
			batch := record.Batch{Records: readings(n)}
			b.Run(fmt.Sprintf("%s/batch=%d", kind.name, n), func(b *testing.B) {
				op := kind.op(b)
				var d discard
				measure(b, n, func() {
					if err := op.ProcessBatch(0, &batch, &d); err != nil {
						b.Fatal(err)
					}
				})
				if d.n != b.N*n {
					b.Fatalf("emitted %d records, want %d", d.n, b.N*n)
				}
			})
		}
	}
}

// moduleOp returns a constructor of an operator calling fn of the example
// module.
func moduleOp(module, fn string, unbounded bool) func(b *testing.B) operator.Operator {
	return func(b *testing.B) operator.Operator {
		r := newRuntime(b, Config{unbounded: unbounded}) // the shared cache: compiled once
		return NewOperator(context.Background(), instance(b, r, module, Function{Name: fn, In: meterKWh, Out: costOut}))
	}
}

// BenchmarkAnomaly is the cost per record of the anomaly example (the
// proprietary model) at batch 256.
func BenchmarkAnomaly(b *testing.B) {
	r := newRuntime(b, Config{})
	op := NewOperator(context.Background(), instance(b, r, "anomaly", Function{Name: "detect", In: meterKWh, Out: anomalyOut}))
	batch := record.Batch{Records: readings(benchBatch)}
	var d discard
	measure(b, benchBatch, func() {
		if err := op.ProcessBatch(0, &batch, &d); err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkColdStart compiles the cost module from scratch (a new runtime
// and an empty compilation cache each time) and instantiates it.
func BenchmarkColdStart(b *testing.B) {
	ctx := context.Background()
	wasm := example(b, "cost")
	measure(b, 0, func() {
		cache := wazero.NewCompilationCache()
		r, err := NewRuntime(ctx, Config{Cache: cache})
		if err != nil {
			b.Fatal(err)
		}
		m, err := r.Load(ctx, Digest(wasm), wasm)
		if err != nil {
			b.Fatal(err)
		}
		in, err := m.Instantiate(ctx, Function{Name: "cost", In: meterKWh, Out: costOut})
		if err != nil {
			b.Fatal(err)
		}
		in.Close(ctx)
		r.Close(ctx)
		cache.Close(ctx)
	})
}

// BenchmarkWarmStart instantiates the already compiled cost module: what a
// new subtask of a running udf node pays (Go runtime initialisation
// included).
func BenchmarkWarmStart(b *testing.B) {
	ctx := context.Background()
	r := newRuntime(b, Config{})
	wasm := example(b, "cost")
	m, err := r.Load(ctx, Digest(wasm), wasm)
	if err != nil {
		b.Fatal(err)
	}
	measure(b, 0, func() {
		in, err := m.Instantiate(ctx, Function{Name: "cost", In: meterKWh, Out: costOut})
		if err != nil {
			b.Fatal(err)
		}
		in.Close(ctx)
	})
}

// BenchmarkUDFBatchSize shows how the per-call cost is amortized: the cost
// module's per-record and columnar functions, and the C guest's trivial map
// ("c_cost_flat": its empty call is mostly the host's per-call work),
// called on batches of 0 to 1024 records.
func BenchmarkUDFBatchSize(b *testing.B) {
	r := newRuntime(b, Config{})
	for _, f := range []struct{ module, fn, name string }{
		{"cost", "cost", "cost"}, {"cost", "cost_columnar", "cost_columnar"}, {"flat_c", "cost_flat", "c_cost_flat"},
	} {
		inst := instance(b, r, f.module, Function{Name: f.fn, In: meterKWh, Out: costOut})
		for _, n := range []int{0, 1, 16, 256, 1024} {
			batch := record.Batch{Records: readings(max(n, 1))[:n]}
			b.Run(fmt.Sprintf("%s/%d", f.name, n), func(b *testing.B) {
				var out record.Batch
				measure(b, n, func() {
					if err := inst.Call(context.Background(), &batch, &out); err != nil {
						b.Fatal(err)
					}
				})
			})
		}
	}
}

// BenchmarkABIFloor measures what the batch ABI itself costs per record:
// the host encodes 256 records, crosses into a hand-written guest that
// answers at once with an empty batch, and decodes the answer. No guest
// language runtime is involved, so this is the floor any UDF pays.
func BenchmarkABIFloor(b *testing.B) {
	for _, unbounded := range []bool{false, true} {
		name := "bounded"
		if unbounded {
			name = "unbounded"
		}
		b.Run(name, func(b *testing.B) {
			r := newRuntime(b, Config{unbounded: unbounded, Cache: wazero.NewCompilationCache()})
			wasm := abiModule(1<<30, nil) // never "bad": always answers
			m, err := r.Load(context.Background(), Digest(wasm), wasm)
			if err != nil {
				b.Fatal(err)
			}
			in := &record.Schema{Fields: []record.Field{{Name: "x", Type: record.TypeInt}, {Name: "kwh", Type: record.TypeFloat}}}
			inst, err := m.Instantiate(context.Background(), Function{Name: "f", In: in, Out: xSchema})
			if err != nil {
				b.Fatal(err)
			}
			batch := record.Batch{Records: make([]record.Record, benchBatch)}
			for i := range batch.Records {
				batch.Records[i] = record.Record{Time: int64(i), Values: []record.Value{record.Int(int64(i)), record.Float(1.5)}}
			}
			var out record.Batch
			measure(b, benchBatch, func() {
				if err := inst.Call(context.Background(), &batch, &out); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// BenchmarkColumnarHost measures the host's per-record work in a columnar
// call of the cost map at batch 256, without the guest: encoding the
// columns the function reads (times and kwh) and decoding its response
// (meter and kwh passed from the input, cost read from the response) into
// a batch ("decode", Instance.Call) or record by record to an emitter
// ("decode-each", Instance.CallEach, what Operator uses). The encoding
// checks every input value's type, so the decoders, as an Instance's, do
// not check passed values again. The response is the SDK's own
// (sdk.ServeColumnar run natively).
func BenchmarkColumnarHost(b *testing.B) {
	batch := record.Batch{Records: readings(benchBatch)}
	header := sdk.AppendColumnarHeader(nil, meterKWh, costOut)
	reads := []bool{false, true}
	size, err := columnarSize(header, meterKWh, reads, &batch)
	if err != nil {
		b.Fatal(err)
	}
	req := make([]byte, size)
	encodeColumnar(req, header, meterKWh, reads, &batch)
	resp := sdk.ServeColumnar(req, []string{"kwh"}, func(c *sdk.Columns) error {
		kwh, out := c.Float("kwh"), c.OutFloat("cost")
		for i, x := range kwh {
			out[i] = x * 0.25
		}
		return nil
	})
	b.Run("encode", func(b *testing.B) {
		measure(b, benchBatch, func() {
			if _, err := columnarSize(header, meterKWh, reads, &batch); err != nil {
				b.Fatal(err)
			}
			encodeColumnar(req, header, meterKWh, reads, &batch)
		})
	})
	b.Run("decode", func(b *testing.B) {
		dec := ColumnarDecoder{typed: true} // as an Instance's: encode checked the input
		var out record.Batch
		measure(b, benchBatch, func() {
			if err := dec.Decode(resp, batch.Records, meterKWh, costOut, &out); err != nil {
				b.Fatal(err)
			}
		})
		if len(out.Records) != benchBatch || out.Records[5].Values[2].F != batch.Records[5].Values[1].F*0.25 {
			b.Fatalf("decoded %d records, record 5 = %v", len(out.Records), out.Records[5].Values)
		}
	})
	b.Run("decode-each", func(b *testing.B) {
		dec := ColumnarDecoder{typed: true}
		var d discard
		measure(b, benchBatch, func() {
			if err := dec.DecodeEach(resp, batch.Records, meterKWh, costOut, &d); err != nil {
				b.Fatal(err)
			}
		})
		if d.n != b.N*benchBatch {
			b.Fatalf("emitted %d records, want %d", d.n, b.N*benchBatch)
		}
	})
}
