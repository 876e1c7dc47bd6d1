// Command anomaly is an example sealflow UDF whose logic is proprietary: an
// anomaly detector (a logistic regression with embedded weights, package
// model) over each meter's last model.Window readings. Input (meter string,
// kwh float); output (meter, kwh, p float, anomaly bool).
//
// The windows are kept inside the guest, keyed by meter, so they are NOT
// part of sealflow checkpoints: after a restart the first readings of each
// meter are scored on a shorter window. Key the input by meter.
//
// Build it as a WebAssembly reactor (see udf/examples/generate.go).
package main

import (
	"github.com/sealflow/sealflow/udf/examples/anomaly/model"
	"github.com/sealflow/sealflow/udf/sdk"
)

var detector = model.NewDetector()

// detect is the UDF.
//
//go:wasmexport detect
func detect(ptr, size uint32) uint64 {
	return sdk.Map(ptr, size, func(in sdk.Row, out *sdk.Out) error {
		meter, kwh := in.String("meter"), in.Float("kwh")
		p, anomalous := detector.Observe(meter, kwh)
		out.String(meter)
		out.Float(kwh)
		out.Float(p)
		out.Bool(anomalous)
		return nil
	})
}

func main() {}
