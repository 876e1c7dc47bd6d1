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

// The columnar batch ABI (version 2, udf/ABI.md): the host lays the batch
// out column by column and the function works on typed slices that view
// the request in place. Go compiled to WebAssembly pays a high price per
// function call and per allocation, so a per-record callback (Map) costs
// about a microsecond a record; a loop over a []float64 costs a few
// nanoseconds.

// ColumnarVersion is the version byte of columnar requests, and what
// sealflow_abi_version returns for a module built with this SDK (which
// answers both versions).
const ColumnarVersion = 2

// StatusVersion is the response status of a function asked in a request
// version it does not speak; the next byte is the version it speaks.
const StatusVersion = 2

// Layout of a columnar request and response (all integers little-endian
// uint32; offsets are from the start of the request or response).
const (
	// ColFlagPresent marks an input column whose data the request carries.
	ColFlagPresent = 1
	// ColFlagNulls marks an input column with null flags (one byte per
	// record, 1 for null).
	ColFlagNulls = 2
	// ReqDirSize is the size of the request directory before its
	// per-field entries: n, timesOff.
	ReqDirSize = 8
	// ReqFieldSize is the size of one input field's entry: flags,
	// dataOff, nullsOff.
	ReqFieldSize = 12
	// RespDirSize is the size of the response directory before its
	// per-field entries: status (1 byte and 3 zero bytes), n, timesOff,
	// keepOff, nreads.
	RespDirSize = 20
	// RespFieldSize is the size of one output field's entry: src,
	// dataOff, nullsOff.
	RespFieldSize = 12
	// ReadsAll in a response's nreads says the function reads every
	// input field.
	ReadsAll = 0xFFFFFFFF
)

// AppendColumnarHeader appends the header of a columnar request for the
// given schemas: the version byte, the two schemas, and zero bytes up to a
// multiple of 8. The directory follows it.
func AppendColumnarHeader(dst []byte, in, out *record.Schema) []byte {
	start := len(dst)
	dst = append(dst, ColumnarVersion)
	dst = appendSchema(dst, in)
	dst = appendSchema(dst, out)
	for (len(dst)-start)%8 != 0 {
		dst = append(dst, 0)
	}
	return dst
}

// ColumnarFunc processes one batch column by column.
type ColumnarFunc func(c *Columns) error

// Columns is one call of a columnar function: views of the input columns
// the function declared it reads, and the output columns it writes.
//
// Input slices view the request in the module's memory: they (and the
// strings of String) are valid only during the call; copy what you keep
// (strings.Clone). An output field the function does not write is passed
// from the input field of the same name and type. Every method reports a
// wrong name or type as an error of the call (after the function returns)
// and returns a zeroed slice of Len elements meanwhile.
type Columns struct {
	in, out *record.Schema
	req     []byte
	n       int
	times   []int64
	fields  []inCol  // by input field
	outs    []outCol // by output field
	reads   []bool   // by input field: declared
	outTime []int64
	keep    []bool
	err     error
}

type inCol struct {
	flags    uint32
	data     uint32
	nulls    uint32
	strs     []string
	strsDone bool
}

type outCol struct {
	set   bool
	data  uint32 // offset in outBuf of the fixed-width column
	nulls uint32 // offset in outBuf of its null flags
	usedN bool   // null flags handed out
	strs  []string
	// strsReady: strs was cleared for this call
	strsReady bool
}

// Len returns the number of records in the batch.
func (c *Columns) Len() int { return c.n }

// Times returns the records' event times (epoch milliseconds).
func (c *Columns) Times() []int64 { return c.times }

func (c *Columns) fail(format string, args ...any) {
	if c.err == nil {
		c.err = fmt.Errorf(format, args...)
	}
}

// input returns the index of the named input field of type t, checking the
// declaration, or -1 after recording an error.
func (c *Columns) input(name string, t record.Type) int {
	j := c.in.Index(name)
	switch {
	case j < 0:
		c.fail("input has no field %q", name)
	case c.in.Fields[j].Type != t:
		c.fail("input field %q is %s, not %s", name, c.in.Fields[j].Type, t)
	case !c.reads[j]:
		c.fail("input field %q is not among the fields the function declares it reads", name)
	case c.fields[j].flags&ColFlagPresent == 0:
		c.fail("the host did not send input field %q (a function's declared fields must not change between calls)", name)
	default:
		return j
	}
	return -1
}

func view[T any](c *Columns, off uint32) []T {
	if c.n == 0 {
		return nil
	}
	return unsafe.Slice((*T)(unsafe.Pointer(&c.req[off])), c.n)
}

// Int returns the named int field's column (0 where null).
func (c *Columns) Int(name string) []int64 {
	if j := c.input(name, record.TypeInt); j >= 0 {
		return view[int64](c, c.fields[j].data)
	}
	return make([]int64, c.n)
}

// Float returns the named float field's column (0 where null).
func (c *Columns) Float(name string) []float64 {
	if j := c.input(name, record.TypeFloat); j >= 0 {
		return view[float64](c, c.fields[j].data)
	}
	return make([]float64, c.n)
}

// Bool returns the named bool field's column (false where null).
func (c *Columns) Bool(name string) []bool {
	if j := c.input(name, record.TypeBool); j >= 0 {
		return view[bool](c, c.fields[j].data)
	}
	return make([]bool, c.n)
}

// String returns the named string field's column ("" where null). The
// strings view the request: clone those you keep past the call.
func (c *Columns) String(name string) []string {
	j := c.input(name, record.TypeString)
	if j < 0 {
		return make([]string, c.n)
	}
	f := &c.fields[j]
	if !f.strsDone {
		f.strsDone = true
		if cap(f.strs) < c.n {
			f.strs = make([]string, c.n)
		}
		f.strs = f.strs[:c.n]
		offs := unsafe.Slice((*uint32)(unsafe.Pointer(&c.req[f.data])), c.n+1)
		base := int(f.data) + 4*(c.n+1)
		for i := range f.strs {
			a, b := int(offs[i]), int(offs[i+1])
			switch {
			case a == b:
				f.strs[i] = ""
			case a > b || base+b > len(c.req):
				c.fail("input field %q: string %d overruns the request", name, i)
				clear(f.strs)
				return f.strs
			default:
				f.strs[i] = unsafe.String(&c.req[base+a], b-a)
			}
		}
	}
	return f.strs
}

// Nulls returns the named input field's null flags (true for null), or nil
// when no record's value is null.
func (c *Columns) Nulls(name string) []bool {
	j := c.in.Index(name)
	if j < 0 {
		c.fail("input has no field %q", name)
		return nil
	}
	if j = c.input(name, c.in.Fields[j].Type); j < 0 || c.fields[j].flags&ColFlagNulls == 0 {
		return nil
	}
	return view[bool](c, c.fields[j].nulls)
}

// output returns the named output field of type t, marking it written, or
// nil after recording an error.
func (c *Columns) output(name string, t record.Type) *outCol {
	j := c.out.Index(name)
	switch {
	case j < 0:
		c.fail("output has no field %q", name)
	case c.out.Fields[j].Type != t:
		c.fail("output field %q is %s, not %s", name, c.out.Fields[j].Type, t)
	default:
		o := &c.outs[j]
		if !o.set {
			o.set = true
			if t != record.TypeString {
				w := 8
				if t == record.TypeBool {
					w = 1
				}
				clear(outBuf[o.data : int(o.data)+w*c.n])
			}
		}
		return o
	}
	return nil
}

func outView[T any](c *Columns, off uint32) []T {
	if c.n == 0 {
		return nil
	}
	return unsafe.Slice((*T)(unsafe.Pointer(&outBuf[off])), c.n)
}

// OutInt returns the named int output field's column, zeroed, to fill in.
func (c *Columns) OutInt(name string) []int64 {
	if o := c.output(name, record.TypeInt); o != nil {
		return outView[int64](c, o.data)
	}
	return make([]int64, c.n)
}

// OutFloat returns the named float output field's column, zeroed, to fill
// in.
func (c *Columns) OutFloat(name string) []float64 {
	if o := c.output(name, record.TypeFloat); o != nil {
		return outView[float64](c, o.data)
	}
	return make([]float64, c.n)
}

// OutBool returns the named bool output field's column, all false, to fill
// in.
func (c *Columns) OutBool(name string) []bool {
	if o := c.output(name, record.TypeBool); o != nil {
		return outView[bool](c, o.data)
	}
	return make([]bool, c.n)
}

// OutString returns the named string output field's column, all "", to
// fill in. The strings are copied to the host after the function returns.
func (c *Columns) OutString(name string) []string {
	o := c.output(name, record.TypeString)
	if o == nil {
		return make([]string, c.n)
	}
	if !o.strsReady {
		o.strsReady = true
		if cap(o.strs) < c.n {
			o.strs = make([]string, c.n)
		}
		o.strs = o.strs[:c.n]
		clear(o.strs)
	}
	return o.strs
}

// OutNulls returns the named output field's null flags, all false, to set
// true for records whose value is null. It counts as writing the field.
func (c *Columns) OutNulls(name string) []bool {
	j := c.out.Index(name)
	if j < 0 {
		c.fail("output has no field %q", name)
		return make([]bool, c.n)
	}
	o := c.output(name, c.out.Fields[j].Type)
	if o == nil {
		return make([]bool, c.n)
	}
	if !o.usedN {
		o.usedN = true
		clear(outBuf[o.nulls : int(o.nulls)+c.n])
	}
	return outView[bool](c, o.nulls)
}

// OutTimes returns the output records' event times, initialised to the
// input's, to change.
func (c *Columns) OutTimes() []int64 {
	if c.outTime == nil {
		c.outTime = outView[int64](c, colTimesOff)
		copy(c.outTime, c.times)
		if c.outTime == nil {
			c.outTime = []int64{}
		}
	}
	return c.outTime
}

// Keep returns one flag per record, initially all true: records whose flag
// the function clears are dropped (a filter).
func (c *Columns) Keep() []bool {
	if c.keep == nil {
		c.keep = outView[bool](c, colKeepOff)
		for i := range c.keep {
			c.keep[i] = true
		}
		if c.keep == nil {
			c.keep = []bool{}
		}
	}
	return c.keep
}

// Per-module columnar state, reused across calls.
var (
	cols       Columns
	colHdr     []byte // the last request's header (schemas)
	colIn      *record.Schema
	colOut     *record.Schema
	colReadsOf []string // the reads the cached reads flags were computed from
	colReadsIx []uint32 // their input indices
	colAll     bool     // reads is nil: every field
	// Offsets in outBuf of the times and keep columns of this call.
	colTimesOff, colKeepOff uint32
)

// Columnar runs fn once on the columnar request at (ptr, size) and returns
// the packed response for the host. reads names the input fields fn reads
// (nil: all of them); the host sends only those, so they must be the same
// on every call. A module whose functions use Columnar speaks the columnar
// ABI (udf/ABI.md, version 2); the host falls back to version 1 for
// functions using Map and Batch.
func Columnar(ptr, size uint32, reads []string, fn ColumnarFunc) uint64 {
	if size == 0 || uint32(len(inBuf)) < size || uintptr(unsafe.Pointer(&inBuf[0])) != uintptr(ptr) {
		return pack(errorResponse(fmt.Errorf("request at %d (%d bytes) is not in the buffer sealflow_alloc returned", ptr, size)))
	}
	// Yield every few calls so the garbage collector's workers run (see
	// serve). A yield costs about as much as the rest of the guest's
	// per-call work, and a call that allocates enough to need the
	// collector parks in its allocation assist and lets the workers run
	// anyway (TestGuestMemoryStaysBounded/churn stays bounded with no
	// yields at all), so once per call is more than needed.
	colCalls++
	if colCalls%yieldEvery == 0 {
		defer runtime.Gosched()
	}
	return pack(ServeColumnar(inBuf[:size], reads, fn))
}

// yieldEvery is how often (in calls) Columnar yields.
const yieldEvery = 8

// colCalls counts Columnar's calls.
var colCalls uint32

// ServeColumnar answers one columnar request: it runs fn on req and
// returns the response, in a buffer the next call reuses. Columnar calls
// it on the request the host wrote; tests call it directly. It is not safe
// for concurrent use (a module's calls are sequential).
func ServeColumnar(req []byte, reads []string, fn ColumnarFunc) []byte {
	if len(req) == 0 || req[0] != ColumnarVersion {
		return errorResponse(fmt.Errorf("request is not of the columnar ABI version %d", ColumnarVersion))
	}
	c, err := beginColumnar(req, reads)
	if err != nil {
		return errorResponse(err)
	}
	if err := fn(c); err != nil {
		return errorResponse(err)
	}
	if c.err != nil {
		return errorResponse(c.err)
	}
	resp, err := finishColumnar(c)
	if err != nil {
		return errorResponse(err)
	}
	return resp
}

var errShortRequest = errors.New("columnar request: directory overruns the request")

// beginColumnar parses the request and lays out the response buffer.
func beginColumnar(req []byte, reads []string) (*Columns, error) {
	var body int
	if colIn != nil && len(req) >= len(colHdr) && bytes.Equal(req[:len(colHdr)], colHdr) {
		body = len(colHdr)
	} else {
		in, out, rest, err := decodeHeader(req, ColumnarVersion)
		if err != nil {
			return nil, err
		}
		body = (len(req) - len(rest) + 7) &^ 7
		if body > len(req) {
			return nil, errShortRequest
		}
		colHdr = append(colHdr[:0], req[:body]...)
		colIn, colOut = in, out
		colReadsOf = nil
		cols = Columns{}
	}
	in, out := colIn, colOut
	nin, nout := len(in.Fields), len(out.Fields)
	if len(req)-body < ReqDirSize+ReqFieldSize*nin {
		return nil, errShortRequest
	}
	le := binary.LittleEndian
	n := int(le.Uint32(req[body:]))
	timesOff := le.Uint32(req[body+4:])
	if n > len(req)/8 || uint64(timesOff)+8*uint64(n) > uint64(len(req)) {
		return nil, errShortRequest
	}
	// The reads declaration, resolved once per schema and list.
	if colReadsOf == nil || !equalStrings(colReadsOf, reads) || (reads == nil) != colAll {
		r := make([]bool, nin)
		colReadsIx = colReadsIx[:0]
		colAll = reads == nil
		if colAll {
			for j := range r {
				r[j] = true
			}
		}
		for _, name := range reads {
			j := in.Index(name)
			if j < 0 {
				colReadsOf = nil
				return nil, fmt.Errorf("the function declares it reads field %q, which the input does not have", name)
			}
			if !r[j] {
				r[j] = true
				colReadsIx = append(colReadsIx, uint32(j))
			}
		}
		colReadsOf = append(make([]string, 0, len(reads)), reads...)
		if colReadsOf == nil {
			colReadsOf = []string{}
		}
		cols.reads = r
	}
	// Reset the per-call state in place, field by field: assigning whole
	// Columns, inCol and outCol values rewrites every slice they hold, and
	// in Go's wasm code each pointer written costs a write-barrier check
	// and the struct copies calls; that made up most of an empty call.
	c := &cols
	c.in, c.out, c.req, c.n = in, out, req, n
	if c.err != nil {
		c.err = nil
	}
	if c.outTime != nil {
		c.outTime = nil
	}
	if c.keep != nil {
		c.keep = nil
	}
	if n > 0 {
		c.times = unsafe.Slice((*int64)(unsafe.Pointer(&req[timesOff])), n)
	} else {
		c.times = []int64{}
	}
	if len(c.fields) != nin {
		c.fields = make([]inCol, nin)
	}
	for j := range c.fields {
		e := body + ReqDirSize + ReqFieldSize*j
		f := &c.fields[j]
		f.flags, f.data, f.nulls = le.Uint32(req[e:]), le.Uint32(req[e+4:]), le.Uint32(req[e+8:])
		f.strsDone = false
		if f.flags&ColFlagPresent != 0 {
			w := uint64(8)
			switch in.Fields[j].Type {
			case record.TypeBool:
				w = 1
			case record.TypeString:
				w = 4 // the offsets; the bytes are checked as they are read
			}
			end := uint64(f.data) + w*uint64(n)
			if in.Fields[j].Type == record.TypeString {
				end += 4
			}
			if end > uint64(len(req)) || (f.flags&ColFlagNulls != 0 && uint64(f.nulls)+uint64(n) > uint64(len(req))) {
				return nil, errShortRequest
			}
		}
	}
	// Lay out the response: directory, then per output field its data
	// and null flags, then times and keep, all 8-aligned.
	size := RespDirSize + RespFieldSize*nout + 4*len(colReadsIx)
	size = (size + 7) &^ 7
	if len(c.outs) != nout {
		c.outs = make([]outCol, nout)
	}
	for j := range c.outs {
		o := &c.outs[j]
		o.set, o.usedN, o.strsReady = false, false, false
		w := 8
		if out.Fields[j].Type == record.TypeBool {
			w = 1
		}
		o.data = uint32(size)
		if out.Fields[j].Type != record.TypeString {
			size += (w*n + 7) &^ 7
		}
		o.nulls = uint32(size)
		size += (n + 7) &^ 7
	}
	colTimesOff = uint32(size)
	size += 8 * n
	colKeepOff = uint32(size)
	size += (n + 7) &^ 7
	if cap(outBuf) < size {
		outBuf = make([]byte, size, size+size/4)
	}
	outBuf = outBuf[:size]
	return c, nil
}

// finishColumnar writes the response directory (and string columns) into
// outBuf and returns the response.
func finishColumnar(c *Columns) ([]byte, error) {
	le := binary.LittleEndian
	nout := len(c.out.Fields)
	d := outBuf
	clear(d[:RespDirSize+RespFieldSize*nout])
	d[0] = StatusOK
	le.PutUint32(d[4:], uint32(c.n))
	if c.outTime != nil {
		le.PutUint32(d[8:], colTimesOff)
	}
	if c.keep != nil {
		le.PutUint32(d[12:], colKeepOff)
	}
	if colAll {
		le.PutUint32(d[16:], ReadsAll)
	} else {
		le.PutUint32(d[16:], uint32(len(colReadsIx)))
		for k, j := range colReadsIx {
			le.PutUint32(d[RespDirSize+RespFieldSize*nout+4*k:], j)
		}
	}
	for j := range c.outs {
		o := &c.outs[j]
		e := RespDirSize + RespFieldSize*j
		if o.set && c.out.Fields[j].Type == record.TypeString && !o.strsReady {
			o.strs = o.strs[:0] // only OutNulls was called: all ""
			for range c.n {
				o.strs = append(o.strs, "")
			}
		}
		if !o.set {
			f := c.out.Fields[j]
			k := c.in.Index(f.Name)
			if k < 0 || c.in.Fields[k].Type != f.Type {
				return nil, fmt.Errorf("output field %q is not written and has no input field of that name and type to pass", f.Name)
			}
			le.PutUint32(outBuf[e:], uint32(k)+1)
			continue
		}
		if c.out.Fields[j].Type == record.TypeString {
			// Offsets, then bytes, appended at the end.
			for len(outBuf)%8 != 0 {
				outBuf = append(outBuf, 0)
			}
			le.PutUint32(outBuf[e+4:], uint32(len(outBuf)))
			total := 0
			outBuf = le.AppendUint32(outBuf, 0)
			for _, s := range o.strs {
				total += len(s)
				outBuf = le.AppendUint32(outBuf, uint32(total))
			}
			for _, s := range o.strs {
				outBuf = append(outBuf, s...)
			}
		} else {
			le.PutUint32(outBuf[e+4:], o.data)
		}
		if o.usedN {
			le.PutUint32(outBuf[e+8:], o.nulls)
		}
	}
	return outBuf, nil
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
