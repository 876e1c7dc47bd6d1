// Package sdk lets a provider write a sealflow user-defined function (UDF) in
// plain Go. The UDF is compiled to a WebAssembly reactor module:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -ldflags='-s -w' -o f.wasm .
//
// and each function the job calls is a //go:wasmexport function of two uint32
// parameters returning a uint64, whose body hands its arguments to Map or
// Batch:
//
//	//go:wasmexport cost
//	func cost(ptr, size uint32) uint64 {
//		return sdk.Map(ptr, size, func(in sdk.Row, out *sdk.Out) error {
//			out.Float(in.Float("kwh") * 0.25)
//			return nil
//		})
//	}
//
// A per-record callback is the simplest to write but costs a Go guest about
// a microsecond per record (Go's WebAssembly code pays for every function
// call and allocation). For a map or filter that must be fast, Columnar
// gives the function the batch as typed columns viewing the request in
// place, and the function writes a loop:
//
//	//go:wasmexport cost_columnar
//	func costColumnar(ptr, size uint32) uint64 {
//		return sdk.Columnar(ptr, size, []string{"kwh"}, func(c *sdk.Columns) error {
//			kwh, out := c.Float("kwh"), c.OutFloat("cost")
//			for i, x := range kwh {
//				out[i] = x * 0.25
//			}
//			return nil // output fields not written pass from the input
//		})
//	}
//
// The package hides the batch ABI described in udf/ABI.md: it exports the
// allocator the host writes input into (sealflow_alloc), decodes the request
// (input and output schemas and a binary record batch, see engine/record),
// calls the user's function once per record or once per batch, and encodes
// the output batch or the error for the host (version 1); or lays out the
// columns and the response in place (version 2, Columnar). A module must be built with
// exactly one copy of this package, and needs no WASI capability beyond the
// deterministic ones every sealflow host provides.
package sdk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/sealflow/sealflow/engine/record"
)

// ABIVersion is the version byte that starts every request (see udf/ABI.md).
const ABIVersion = 1

// Response status bytes (see udf/ABI.md).
const (
	StatusOK    = 0 // the rest is a record batch of the output schema
	StatusError = 1 // the rest is a UTF-8 error message
)

// The request buffer the host writes into, and the response the host reads.
// Both are package variables so the garbage collector keeps them (and Go's
// collector does not move objects, so their addresses stay valid).
var (
	inBuf  []byte
	outBuf []byte
)

// alloc returns the address of a buffer of at least size bytes for requests.
// The host calls it when a request is larger than the buffer it has, and
// reuses the buffer otherwise.
//
//go:wasmexport sealflow_alloc
func alloc(size uint32) uint32 {
	if uint32(cap(inBuf)) < size {
		inBuf = make([]byte, size+size/4)
	}
	inBuf = inBuf[:size]
	if size == 0 {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(&inBuf[0])))
}

// abiVersion tells the host which ABI the module speaks: version 2, whose
// hosts send a columnar request first and, to functions that answer
// StatusVersion (Map and Batch), version 1 requests.
//
//go:wasmexport sealflow_abi_version
func abiVersion() uint32 { return ColumnarVersion }

// Call is one invocation of a batch function: the decoded input and the
// output being built.
type Call struct {
	// In and Out are the input and output schemas the host declared.
	In, Out *record.Schema
	// Input is the batch of input records; it is valid only during the call.
	Input *record.Batch
	// Output collects the output records; append to it, or use Emit.
	Output *record.Batch
}

// Emit appends an output record with the given event time and values (one
// per output field, in order). The values are copied.
func (c *Call) Emit(time int64, values ...record.Value) {
	c.Output.Records = append(c.Output.Records, record.Record{Time: time, Values: append([]record.Value(nil), values...)})
}

// Row is one input record, with accessors by field name.
type Row struct {
	rec *record.Record
	st  *rowState
}

// rowState is shared by the rows of one call: the first error, and a cache
// of field lookups. A function usually asks for the same fields in the same
// order for every record, so the k-th lookup of a record remembers the name
// (by its bytes' address) and the index it found.
type rowState struct {
	schema *record.Schema
	err    error
	k      int
	hints  [16]lookupHint
}

type lookupHint struct {
	name *byte
	n    int
	idx  int
}

// Time returns the record's event time in epoch milliseconds.
func (r Row) Time() int64 { return r.rec.Time }

// Record returns the underlying record; its values follow the input schema.
func (r Row) Record() *record.Record { return r.rec }

// Value returns the named field's value, or a null value (and a sticky error
// reported after the call) if there is no such field.
func (r Row) Value(name string) record.Value {
	st := r.st
	k := st.k
	st.k++
	if k < len(st.hints) {
		if h := &st.hints[k]; h.name == unsafe.StringData(name) && h.n == len(name) && h.name != nil {
			return r.rec.Values[h.idx]
		}
	}
	i := st.schema.Index(name)
	if i < 0 {
		if st.err == nil {
			st.err = fmt.Errorf("input has no field %q", name)
		}
		return record.Value{}
	}
	if k < len(st.hints) {
		st.hints[k] = lookupHint{name: unsafe.StringData(name), n: len(name), idx: i}
	}
	return r.rec.Values[i]
}

func (r Row) typed(name string, t record.Type) record.Value {
	v := r.Value(name)
	if v.T != t && v.T != record.TypeNull && r.st.err == nil {
		r.st.err = fmt.Errorf("input field %q is %s, not %s", name, v.T, t)
	}
	return v
}

// Int returns the named int field (0 when null).
func (r Row) Int(name string) int64 { return r.typed(name, record.TypeInt).I }

// Float returns the named float field (0 when null).
func (r Row) Float(name string) float64 { return r.typed(name, record.TypeFloat).F }

// String returns the named string field ("" when null).
func (r Row) String(name string) string { return r.typed(name, record.TypeString).S }

// Bool returns the named bool field (false when null).
func (r Row) Bool(name string) bool { return r.typed(name, record.TypeBool).I != 0 }

// IsNull reports whether the named field is null.
func (r Row) IsNull(name string) bool { return r.Value(name).T == record.TypeNull }

// Out builds one output record, field by field in output schema order.
type Out struct {
	values []record.Value
	time   int64
	skip   bool
}

// Int appends an int value.
func (o *Out) Int(i int64) { o.values = append(o.values, record.Int(i)) }

// Float appends a float value.
func (o *Out) Float(f float64) { o.values = append(o.values, record.Float(f)) }

// String appends a string value.
func (o *Out) String(s string) { o.values = append(o.values, record.String(s)) }

// Bool appends a bool value.
func (o *Out) Bool(b bool) { o.values = append(o.values, record.Bool(b)) }

// Null appends a null value.
func (o *Out) Null() { o.values = append(o.values, record.Value{}) }

// Value appends a value.
func (o *Out) Value(v record.Value) { o.values = append(o.values, v) }

// SetTime sets the output record's event time (default: the input's).
func (o *Out) SetTime(t int64) { o.time = t }

// Skip drops this output record: a Map function that skips filters.
func (o *Out) Skip() { o.skip = true }

// MapFunc computes the output record of one input record.
type MapFunc func(in Row, out *Out) error

// BatchFunc processes a whole batch.
type BatchFunc func(c *Call) error

// Map runs fn on every record of the request at (ptr, size) and returns the
// packed response for the host. Each output record has the input's event time
// unless fn sets another; fn may Skip a record.
func Map(ptr, size uint32, fn MapFunc) uint64 {
	return Batch(ptr, size, mapBatch(fn))
}

// mapBatch turns a per-record function into a batch function.
func mapBatch(fn MapFunc) BatchFunc {
	return func(c *Call) error {
		st := &rows
		if st.schema != c.In {
			*st = rowState{schema: c.In}
		}
		st.err = nil
		out := Out{values: outVals[:0]}
		vals := mapVals[:0]
		defer func() { outVals, mapVals = out.values[:0], vals[:0] }()
		for i := range c.Input.Records {
			rec := &c.Input.Records[i]
			out = Out{values: out.values[:0], time: rec.Time}
			st.k = 0
			if err := fn(Row{rec: rec, st: st}, &out); err != nil {
				return fmt.Errorf("record %d: %w", i, err)
			}
			if st.err != nil {
				return fmt.Errorf("record %d: %w", i, st.err)
			}
			if out.skip {
				continue
			}
			if len(out.values) != len(c.Out.Fields) {
				return fmt.Errorf("record %d: produced %d values, output schema has %d fields", i, len(out.values), len(c.Out.Fields))
			}
			// One backing array for the whole batch's values.
			start := len(vals)
			vals = append(vals, out.values...)
			c.Output.Records = append(c.Output.Records, record.Record{Time: out.time, Values: vals[start:len(vals):len(vals)]})
		}
		return nil
	}
}

// Per-module decoding state, reused across calls so that a call allocates
// nothing in the steady state.
var (
	mapVals   []record.Value // the values of Map's output records
	outVals   []record.Value // one output record being built
	theCall   Call
	rows      rowState
	inVals    []record.Value
	inStrs    stringCache
	dec       record.Decoder
	inBatch   record.Batch
	outBatch  record.Batch
	lastHdr   []byte
	lastIn    *record.Schema
	lastOut   *record.Schema
	errNoCall = errors.New("request is empty")
)

// Batch decodes the request at (ptr, size), runs fn once on the whole batch
// and returns the packed response for the host.
func Batch(ptr, size uint32, fn BatchFunc) uint64 {
	if size == 0 || uint32(len(inBuf)) < size || uintptr(unsafe.Pointer(&inBuf[0])) != uintptr(ptr) {
		return pack(errorResponse(fmt.Errorf("request at %d (%d bytes) is not in the buffer sealflow_alloc returned", ptr, size)))
	}
	if inBuf[0] == ColumnarVersion {
		// A per-record or batch function speaks version 1: tell the
		// host, which resends the batch in that version.
		outBuf = append(outBuf[:0], StatusVersion, ABIVersion)
		return pack(outBuf)
	}
	return pack(serve(inBuf[:size], fn))
}

// serve answers one request: it decodes it, runs fn and returns the
// response (in a buffer reused by the next call).
func serve(req []byte, fn BatchFunc) []byte {
	c, err := decodeRequest(req)
	if err != nil {
		return errorResponse(err)
	}
	// Goroutines other than the caller of an exported function run only
	// while it blocks or yields: yield once per call so the garbage
	// collector's workers finish their cycles and the heap stays bounded.
	defer runtime.Gosched()
	if err := fn(c); err != nil {
		return errorResponse(err)
	}
	outBuf = append(outBuf[:0], StatusOK)
	var ok bool
	if outBuf, ok = fastEncode(outBuf, c.Out, c.Output); !ok {
		outBuf, err = record.AppendBatch(outBuf[:1], c.Out, c.Output)
	}
	if err != nil {
		return errorResponse(fmt.Errorf("output does not match the output schema: %w", err))
	}
	return outBuf
}

// decodeRequest parses a request (see DecodeRequest) into the package's
// reusable batches.
func decodeRequest(req []byte) (*Call, error) {
	var body []byte
	if lastIn != nil && len(req) >= len(lastHdr) && bytes.Equal(req[:len(lastHdr)], lastHdr) {
		body = req[len(lastHdr):] // the schemas of the last call
	} else {
		in, out, rest, err := DecodeRequestHeader(req)
		if err != nil {
			return nil, err
		}
		body = rest
		lastHdr = append(lastHdr[:0], req[:len(req)-len(rest)]...)
		lastIn, lastOut = in, out
	}
	var ok bool
	if inVals, ok = fastDecode(body, lastIn, &inBatch, inVals, &inStrs); !ok {
		if err := dec.Decode(body, lastIn, &inBatch); err != nil {
			return nil, fmt.Errorf("input batch: %w", err)
		}
	}
	outBatch.Records = outBatch.Records[:0]
	theCall = Call{In: lastIn, Out: lastOut, Input: &inBatch, Output: &outBatch}
	return &theCall, nil
}

func errorResponse(err error) []byte {
	outBuf = append(outBuf[:0], StatusError)
	outBuf = append(outBuf, err.Error()...)
	return outBuf
}

func pack(b []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(&b[0])))<<32 | uint64(len(b))
}

// AppendRequestHeader appends the request header for the given input and
// output schemas (see udf/ABI.md): the version byte and the two schemas.
// The host writes the header and then a record batch of schema in.
func AppendRequestHeader(dst []byte, in, out *record.Schema) []byte {
	dst = append(dst, ABIVersion)
	dst = appendSchema(dst, in)
	return appendSchema(dst, out)
}

func appendSchema(dst []byte, s *record.Schema) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s.Fields)))
	for _, f := range s.Fields {
		dst = binary.AppendUvarint(dst, uint64(len(f.Name)))
		dst = append(dst, f.Name...)
		dst = append(dst, byte(f.Type))
	}
	return dst
}

// Limits on decoded schemas, so a malformed header cannot allocate much.
const (
	maxFields    = 1024
	maxFieldName = 256
)

// DecodeRequestHeader parses the header of a request and returns the input
// and output schemas and the rest of the request (the input batch).
func DecodeRequestHeader(req []byte) (in, out *record.Schema, body []byte, err error) {
	if len(req) == 0 {
		return nil, nil, nil, errNoCall
	}
	return decodeHeader(req, ABIVersion)
}

// decodeHeader parses the header of a request of the given version.
func decodeHeader(req []byte, version byte) (in, out *record.Schema, body []byte, err error) {
	if len(req) == 0 {
		return nil, nil, nil, errNoCall
	}
	if req[0] != version {
		return nil, nil, nil, fmt.Errorf("request ABI version %d, this function speaks %d", req[0], version)
	}
	rest := req[1:]
	if in, rest, err = decodeSchema(rest); err != nil {
		return nil, nil, nil, fmt.Errorf("input schema: %w", err)
	}
	if out, rest, err = decodeSchema(rest); err != nil {
		return nil, nil, nil, fmt.Errorf("output schema: %w", err)
	}
	return in, out, rest, nil
}

// uvarint reads a minimally encoded uvarint (so a header has one encoding),
// returning its length, or 0 when it is truncated, overlong or not minimal.
func uvarint(b []byte) (uint64, int) {
	v, k := binary.Uvarint(b)
	if k <= 0 || (k > 1 && b[k-1] == 0) {
		return 0, 0
	}
	return v, k
}

func decodeSchema(b []byte) (*record.Schema, []byte, error) {
	n, k := uvarint(b)
	if k <= 0 {
		return nil, nil, errors.New("truncated or non-minimal field count")
	}
	if n > maxFields {
		return nil, nil, fmt.Errorf("%d fields, at most %d allowed", n, maxFields)
	}
	b = b[k:]
	s := &record.Schema{Fields: make([]record.Field, n)}
	for i := range s.Fields {
		l, k := uvarint(b)
		if k <= 0 {
			return nil, nil, fmt.Errorf("field %d: truncated or non-minimal name length", i)
		}
		if l > maxFieldName || l+1 > uint64(len(b)-k) {
			return nil, nil, fmt.Errorf("field %d: name of %d bytes overruns the header or exceeds %d", i, l, maxFieldName)
		}
		b = b[k:]
		s.Fields[i].Name = string(b[:l])
		t := record.Type(b[l])
		if t < record.TypeInt || t > record.TypeBool {
			return nil, nil, fmt.Errorf("field %q: unknown type %d", s.Fields[i].Name, b[l])
		}
		s.Fields[i].Type = t
		b = b[l+1:]
	}
	return s, b, nil
}
