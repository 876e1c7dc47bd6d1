package udf

import "encoding/binary"

// A minimal WebAssembly binary writer for the sandbox tests' hand-made
// modules (no toolchain needed).

const (
	wI32 = 0x7F
	wI64 = 0x7E
)

type wasmFunc struct {
	params, results []byte
	body            []byte // instructions, without locals and the final end
	export          string
}

type wasmImport struct {
	module, name    string
	params, results []byte
}

type wasmModule struct {
	imports  []wasmImport
	funcs    []wasmFunc
	memPages uint32 // 0: no memory
	data     []byte // written at address 1024
}

func wvec(items ...[]byte) []byte {
	out := binary.AppendUvarint(nil, uint64(len(items)))
	for _, it := range items {
		out = append(out, it...)
	}
	return out
}

func wname(s string) []byte { return append(binary.AppendUvarint(nil, uint64(len(s))), s...) }

func wsection(id byte, body []byte) []byte {
	return append(append([]byte{id}, binary.AppendUvarint(nil, uint64(len(body)))...), body...)
}

func wfunctype(params, results []byte) []byte {
	t := []byte{0x60}
	t = append(t, wvec(bytesOf(params)...)...)
	return append(t, wvec(bytesOf(results)...)...)
}

func bytesOf(b []byte) [][]byte {
	out := make([][]byte, len(b))
	for i := range b {
		out[i] = []byte{b[i]}
	}
	return out
}

// sleb128 encodes v as a signed LEB128 (for i32.const and i64.const).
func sleb128(v int64) []byte {
	var out []byte
	for {
		b := byte(v & 0x7F)
		v >>= 7
		if (v == 0 && b&0x40 == 0) || (v == -1 && b&0x40 != 0) {
			return append(out, b)
		}
		out = append(out, b|0x80)
	}
}

func (m wasmModule) bytes() []byte {
	out := []byte{0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00}
	var types, imports, funcs, exports, code [][]byte
	for _, im := range m.imports {
		types = append(types, wfunctype(im.params, im.results))
		imports = append(imports, append(append(wname(im.module), wname(im.name)...), 0x00, byte(len(types)-1)))
	}
	for i, f := range m.funcs {
		types = append(types, wfunctype(f.params, f.results))
		funcs = append(funcs, []byte{byte(len(types) - 1)})
		if f.export != "" {
			exports = append(exports, append(wname(f.export), 0x00, byte(len(m.imports)+i)))
		}
		body := append([]byte{0x00}, f.body...) // no locals
		body = append(body, 0x0B)
		code = append(code, append(binary.AppendUvarint(nil, uint64(len(body))), body...))
	}
	out = append(out, wsection(1, wvec(types...))...)
	if len(imports) > 0 {
		out = append(out, wsection(2, wvec(imports...))...)
	}
	out = append(out, wsection(3, wvec(funcs...))...)
	if m.memPages > 0 {
		out = append(out, wsection(5, wvec(append([]byte{0x00}, binary.AppendUvarint(nil, uint64(m.memPages))...)))...)
		exports = append(exports, append(wname("memory"), 0x02, 0x00))
	}
	out = append(out, wsection(7, wvec(exports...))...)
	out = append(out, wsection(10, wvec(code...))...)
	if m.data != nil {
		seg := []byte{0x00, 0x41}
		seg = append(seg, sleb128(1024)...)
		seg = append(seg, 0x0B)
		seg = append(seg, wvec(bytesOf(m.data)...)...)
		out = append(out, wsection(11, wvec(seg))...)
	}
	return out
}

// Instructions used by the test modules.
var (
	insLoopForever = []byte{0x03, 0x40, 0x0C, 0x00, 0x0B} // loop br 0 end
	// insGrowForever grows memory a page at a time and traps when growth fails.
	insGrowForever = []byte{
		0x03, 0x40, // loop
		0x41, 0x01, 0x40, 0x00, // memory.grow 1
		0x41, 0x7F, 0x46, // i32.const -1; i32.eq
		0x04, 0x40, 0x00, 0x0B, // if unreachable end
		0x0C, 0x00, 0x0B, // br 0; end
	}
)

// abiModule is a module with the ABI's exports whose function "f" answers
// requests of at most okSize bytes with an empty batch of one field, and
// runs bad on larger ones.
func abiModule(okSize int, bad []byte) []byte {
	body := []byte{0x20, 0x01, 0x41} // local.get 1; i32.const okSize
	body = append(body, sleb128(int64(okSize))...)
	body = append(body, 0x4B, 0x04, 0x40) // i32.gt_u; if
	body = append(body, bad...)
	body = append(body, 0x0B, 0x42) // end; i64.const
	body = append(body, sleb128(1024<<32|4)...)
	return wasmModule{
		funcs: []wasmFunc{
			{params: []byte{wI32}, results: []byte{wI32}, body: append([]byte{0x41}, sleb128(2048)...), export: "sealflow_alloc"},
			{params: []byte{wI32, wI32}, results: []byte{wI64}, body: body, export: "f"},
		},
		memPages: 1,
		data:     []byte{0x00, 0xB1, 0x01, 0x00}, // OK, an empty batch of one field
	}.bytes()
}

// importModule is a module with the ABI's exports that also imports
// module.name.
func importModule(module, name string) []byte {
	return wasmModule{
		imports: []wasmImport{{module: module, name: name, params: []byte{wI32}, results: []byte{wI32}}},
		funcs: []wasmFunc{
			{params: []byte{wI32}, results: []byte{wI32}, body: []byte{0x41, 0x00}, export: "sealflow_alloc"},
		},
		memPages: 1,
	}.bytes()
}
