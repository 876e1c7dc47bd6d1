// Command scorer is an example stateful sealflow UDF: per meter it keeps the
// count of readings and an exponentially weighted moving average (EWMA) of
// their kWh, and scores each reading by how far it is above the average of
// the readings before it. Input (meter string, kwh float); output (meter,
// kwh, count int, ewma float, score float), where score is
// (kwh - previous ewma) / previous ewma, and 0 for a meter's first reading.
//
// State is kept inside the guest, keyed by meter, so it is NOT part of
// sealflow checkpoints: a restarted task, or an instance replaced after a
// failed batch, starts from empty state. Key the input by meter (key-by) so
// that each meter's readings reach one instance.
//
// Build it as a WebAssembly reactor (see udf/examples/generate.go).
package main

import "github.com/sealflow/sealflow/udf/sdk"

// Alpha is the EWMA smoothing factor.
const Alpha = 0.2

type meterState struct {
	count int64
	ewma  float64
}

var states = map[string]*meterState{}

// score is the UDF.
//
//go:wasmexport score
func score(ptr, size uint32) uint64 {
	return sdk.Map(ptr, size, func(in sdk.Row, out *sdk.Out) error {
		meter, kwh := in.String("meter"), in.Float("kwh")
		st := states[meter]
		if st == nil {
			st = &meterState{}
			states[meter] = st
		}
		s := 0.0
		if st.count == 0 {
			st.ewma = kwh
		} else {
			if st.ewma != 0 {
				s = (kwh - st.ewma) / st.ewma
			}
			st.ewma = Alpha*kwh + (1-Alpha)*st.ewma
		}
		st.count++
		out.String(meter)
		out.Float(kwh)
		out.Int(st.count)
		out.Float(st.ewma)
		out.Float(s)
		return nil
	})
}

func main() {}
