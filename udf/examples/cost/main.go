// Command cost is an example sealflow map UDF: it prices metered energy.
// Each input record (meter string, kwh float) becomes (meter, kwh, cost),
// where cost is kwh times the tariff of the event's hour (UTC): a peak rate
// from 17:00 to 21:00 and an off-peak rate otherwise. It exports the same
// function twice: cost with the SDK's per-record API (sdk.Map), and
// cost_columnar with its columnar API (sdk.Columnar), the fast one; and
// cost_flat, the off-peak rate at all hours (the trivial map), columnar.
//
// Build it as a WebAssembly reactor (see udf/examples/generate.go):
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -ldflags='-s -w' -trimpath -o ../testdata/cost.wasm .
package main

import "github.com/sealflow/sealflow/udf/sdk"

// Tariffs in currency units per kWh.
const (
	PeakRate    = 0.40
	OffPeakRate = 0.25
)

// Rate returns the tariff at event time t (epoch milliseconds).
func Rate(t int64) float64 {
	hour := (t / 3_600_000) % 24
	if hour < 0 {
		hour += 24
	}
	if hour >= 17 && hour < 21 {
		return PeakRate
	}
	return OffPeakRate
}

// cost is the UDF: (meter, kwh) -> (meter, kwh, cost).
//
//go:wasmexport cost
func cost(ptr, size uint32) uint64 {
	return sdk.Map(ptr, size, func(in sdk.Row, out *sdk.Out) error {
		kwh := in.Float("kwh")
		out.String(in.String("meter"))
		out.Float(kwh)
		out.Float(kwh * Rate(in.Time()))
		return nil
	})
}

// costColumnar is the same UDF written against the columnar API: a loop
// over typed columns instead of a callback per record, about 50 times
// cheaper for a Go guest (docs/benchmarks.md). meter and kwh are not
// written, so the host passes them from the input; only kwh (and the event
// times) cross into the module.
//
//go:wasmexport cost_columnar
func costColumnar(ptr, size uint32) uint64 {
	return sdk.Columnar(ptr, size, []string{"kwh"}, func(c *sdk.Columns) error {
		kwh, times := c.Float("kwh"), c.Times()
		out := c.OutFloat("cost")
		for i, x := range kwh {
			out[i] = x * Rate(times[i])
		}
		return nil
	})
}

// costFlat is the trivial map, cost = kwh at the off-peak rate, with the
// columnar API: the same logic as the built-in CEL map `kwh * 0.25` the
// benchmarks compare it with.
//
//go:wasmexport cost_flat
func costFlat(ptr, size uint32) uint64 {
	return sdk.Columnar(ptr, size, []string{"kwh"}, func(c *sdk.Columns) error {
		kwh, out := c.Float("kwh"), c.OutFloat("cost")
		for i, x := range kwh {
			out[i] = x * OffPeakRate
		}
		return nil
	})
}

func main() {}
