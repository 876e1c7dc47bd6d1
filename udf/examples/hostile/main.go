// Command hostile is a misbehaving UDF for the sandbox tests: on a record
// with negative kWh, spin loops forever and hog allocates until memory runs
// out; on other records both pass (meter, kwh) through. It shows what a Go
// guest that runs away looks like to the host. probe reads the clock and the
// random source, to show what the sandbox gives a guest without the clock
// and random capabilities. churn allocates on every call, columnar.
//
// Build it as a WebAssembly reactor (see udf/examples/generate.go).
package main

import (
	"crypto/rand"
	"encoding/binary"
	"strings"
	"time"

	"github.com/sealflow/sealflow/udf/sdk"
)

var sink int64

//go:wasmexport spin
func spin(ptr, size uint32) uint64 {
	return sdk.Map(ptr, size, func(in sdk.Row, out *sdk.Out) error {
		kwh := in.Float("kwh")
		for kwh < 0 {
			sink++
		}
		out.String(in.String("meter"))
		out.Float(kwh)
		return nil
	})
}

var hoard [][]byte

//go:wasmexport hog
func hog(ptr, size uint32) uint64 {
	return sdk.Map(ptr, size, func(in sdk.Row, out *sdk.Out) error {
		kwh := in.Float("kwh")
		for kwh < 0 {
			b := make([]byte, 1<<20)
			b[len(b)-1] = 1
			hoard = append(hoard, b)
		}
		out.String(in.String("meter"))
		out.Float(kwh)
		return nil
	})
}

// probe emits, for each input record, (now int, random int): the wall
// clock in Unix milliseconds and 8 random bytes.
//
//go:wasmexport probe
func probe(ptr, size uint32) uint64 {
	return sdk.Map(ptr, size, func(in sdk.Row, out *sdk.Out) error {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		out.Int(time.Now().UnixMilli())
		out.Int(int64(binary.LittleEndian.Uint64(b[:])))
		return nil
	})
}

var garbage []byte

// churn is a columnar function that allocates on every call: a copy of
// each meter string and 64 KiB of garbage. Its memory must stay bounded
// (the SDK lets the collector run once per call).
//
//go:wasmexport churn
func churn(ptr, size uint32) uint64 {
	return sdk.Columnar(ptr, size, []string{"meter"}, func(c *sdk.Columns) error {
		meters, out := c.String("meter"), c.OutString("meter")
		for i, m := range meters {
			out[i] = strings.Clone(m) + "!"
		}
		garbage = make([]byte, 64<<10)
		return nil
	})
}

func main() {}
