package udf

import (
	"errors"
	"testing"
)

// FuzzInstrument feeds the loop instrumenter (which parses a provider's
// module bytes before wazero sees them) arbitrary modules: it never panics,
// every refusal wraps errNoInstrument, and what it returns it parses again
// without panicking. It is not a validator: a malformed section it does not
// need to read passes through to wazero, which refuses the module (the
// sandbox tests); that instrumented valid modules still validate and carry
// one check per loop is TestInstrumentExamples' part.
func FuzzInstrument(f *testing.F) {
	f.Add(abiModule(1024, insLoopForever))
	f.Add(abiModule(64, insGrowForever))
	f.Add(importModule("wasi_snapshot_preview1", "fd_write"))
	f.Add([]byte("\x00asm\x01\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, wasm []byte) {
		out, err := instrument(wasm)
		if err != nil {
			if out != nil || !errors.Is(err, errNoInstrument) {
				t.Fatalf("refusal %v (output %d bytes) does not wrap errNoInstrument", err, len(out))
			}
			return
		}
		if len(out) < 8 {
			t.Fatalf("an instrumented module of %d bytes", len(out))
		}
		if _, err := instrument(out); err != nil && !errors.Is(err, errNoInstrument) {
			t.Fatalf("re-parsing the output: %v does not wrap errNoInstrument", err)
		}
	})
}
