package udf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/sealflow/sealflow/engine/operator"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/udf/sdk"
)

// The columnar batch ABI (version 2, ABI.md): the host writes the batch
// into guest memory column by column, only the input fields the function
// declared it reads, and reads back fixed-width output columns, strings as
// offsets and bytes, and for each output field it did not write the input
// field to pass.

// errSpeaksV1 is a columnar call's error when the function answered that it
// speaks version 1 (sdk.StatusVersion).
var errSpeaksV1 = errors.New("the function speaks ABI version 1")

// le is the byte order of the columnar ABI.
var le = binary.LittleEndian

// columnarState is an instance's columnar encoding state.
type columnarState struct {
	header []byte // version byte and schemas, padded to 8 bytes
	// dec.Reads flags the input fields to send (nil: all), from the
	// last response: the fields the function declares it reads.
	dec ColumnarDecoder
}

func align8(n uint64) uint64 { return (n + 7) &^ 7 }

// columnarSize returns the size of the columnar request for b, checking
// that its records match schema s: their number of values and every
// value's type (so a decoder with typed set need not check passed values).
func columnarSize(header []byte, s *record.Schema, reads []bool, b *record.Batch) (uint64, error) {
	n := uint64(len(b.Records))
	nin := len(s.Fields)
	size := align8(uint64(len(header)) + sdk.ReqDirSize + sdk.ReqFieldSize*uint64(nin))
	size += 8 * n // times
	for i := range b.Records {
		vals := b.Records[i].Values
		if len(vals) != nin {
			return 0, fmt.Errorf("record %d has %d values, the schema %d fields", i, len(vals), nin)
		}
		for j := range vals {
			if t := vals[j].T; t != s.Fields[j].Type && t != record.TypeNull {
				return 0, fmt.Errorf("record %d: field %q is %s, the schema says %s", i, s.Fields[j].Name, t, s.Fields[j].Type)
			}
		}
	}
	for j, f := range s.Fields {
		if reads != nil && !reads[j] {
			continue
		}
		switch f.Type {
		case record.TypeInt, record.TypeFloat:
			size += 8 * n
		case record.TypeBool:
			size += align8(n)
		case record.TypeString:
			total := uint64(0)
			for i := range b.Records {
				total += uint64(len(b.Records[i].Values[j].S))
			}
			size += align8(4*(n+1) + total)
		}
		size += align8(n) // null flags
	}
	return size, nil
}

// encodeColumnar writes the columnar request for b (schema s) into dst,
// which has the size columnarSize returned. It does not check b:
// columnarSize did (every record's values and their types).
func encodeColumnar(dst []byte, header []byte, s *record.Schema, reads []bool, b *record.Batch) {
	n := len(b.Records)
	copy(dst, header)
	dir := len(header)
	le.PutUint32(dst[dir:], uint32(n))
	pos := int(align8(uint64(dir + sdk.ReqDirSize + sdk.ReqFieldSize*len(s.Fields))))
	le.PutUint32(dst[dir+4:], uint32(pos))
	times := dst[pos : pos+8*n]
	for i := range b.Records {
		le.PutUint64(times[8*i:], uint64(b.Records[i].Time))
	}
	pos += 8 * n
	for j, f := range s.Fields {
		e := dir + sdk.ReqDirSize + sdk.ReqFieldSize*j
		if reads != nil && !reads[j] {
			le.PutUint64(dst[e:], 0)
			le.PutUint32(dst[e+8:], 0)
			continue
		}
		data := pos
		var nulls int
		switch f.Type {
		case record.TypeInt, record.TypeFloat:
			nulls = data + 8*n
		case record.TypeBool:
			nulls = data + int(align8(uint64(n)))
		case record.TypeString:
			base := data + 4*(n+1)
			off := 0
			le.PutUint32(dst[data:], 0)
			for i := range b.Records {
				v := &b.Records[i].Values[j]
				if v.T == record.TypeString {
					off += copy(dst[base+off:], v.S)
				}
				le.PutUint32(dst[data+4*(i+1):], uint32(off))
			}
			nulls = int(align8(uint64(base + off)))
		}
		col := dst[data:nulls]
		flags := uint32(sdk.ColFlagPresent)
		nl := dst[nulls : nulls+n]
		for i := range b.Records {
			v := &b.Records[i].Values[j]
			if v.T == record.TypeNull {
				flags |= sdk.ColFlagNulls
				nl[i] = 1
			} else {
				nl[i] = 0
			}
			switch f.Type {
			case record.TypeInt:
				le.PutUint64(col[8*i:], uint64(v.I))
			case record.TypeFloat:
				le.PutUint64(col[8*i:], math.Float64bits(v.F))
			case record.TypeBool:
				if v.I != 0 {
					col[i] = 1
				} else {
					col[i] = 0
				}
			}
		}
		le.PutUint32(dst[e:], flags)
		le.PutUint32(dst[e+4:], uint32(data))
		le.PutUint32(dst[e+8:], uint32(nulls))
		pos = nulls + int(align8(uint64(n)))
	}
}

// ColumnarDecoder decodes columnar responses (untrusted bytes, see ABI.md),
// reusing its buffers: the records it decodes are valid until its next
// Decode or DecodeEach. The zero value is ready to use.
//
// A response is checked whole before any record is built: every offset,
// length, count and flag byte against the response, every passed field
// against the input records. Building the records then cannot fail, so
// DecodeEach emits either every output record or none.
type ColumnarDecoder struct {
	// Reads flags the input fields the function declared it reads in
	// the last decoded response (nil: all).
	Reads []bool
	spare []bool // the other buffer for Reads
	// typed says the caller checked every input record against the
	// input schema (columnarSize does), so passed values need no check.
	typed bool

	vals []record.Value // the output values, kept (or a block) × fields

	// The checked response: its records, how many are kept, the keep
	// flags (nil: all) and output times (nil: the input's), written
	// columns and passed fields.
	n, kept int
	keep    []byte
	times   []byte
	cols    []outPlan
	prefix  int         // output fields 0..prefix-1 pass input fields 0..prefix-1
	pass    []passField // the other passed fields
}

// passField is an output field dst passed from input field src, of type t.
type passField struct {
	dst, src int
	t        record.Type
}

// outPlan is one written output field, a checked column of the response.
type outPlan struct {
	j     int    // the output field
	kind  int    // planInt, planFloat, planBool, planString
	col   []byte // the column's data (planString: its offsets)
	nulls []byte // null flags, or nil
	first uint32 // planString: the first offset
	str   string // planString: the column's bytes
}

const (
	planInt = iota
	planFloat
	planBool
	planString
)

// Decode decodes the response to a call on the records ins of schema inS:
// out gets the output records of schema outS, and d.Reads the input fields
// the function declares it reads. A guest error wraps ErrGuest; every
// offset and value is checked against resp.
func (d *ColumnarDecoder) Decode(resp []byte, ins []record.Record, inS, outS *record.Schema, out *record.Batch) error {
	out.Records = out.Records[:0]
	if err := d.check(resp, ins, inS, outS); err != nil {
		return err
	}
	nout, kept := len(outS.Fields), d.kept
	total := kept * nout
	if cap(d.vals) < total {
		d.vals = make([]record.Value, total)
	}
	vs := d.vals[:total]
	if cap(out.Records) < kept {
		out.Records = make([]record.Record, kept)
	}
	recs := out.Records[:kept]
	r := 0
	for i := range d.n {
		if d.keep != nil && d.keep[i] == 0 {
			continue
		}
		row := vs[r*nout : (r+1)*nout : (r+1)*nout]
		in := &ins[i]
		d.fill(row, i, in.Values)
		recs[r] = record.Record{Time: d.time(i, in), Values: row}
		r++
	}
	out.Records = recs
	return nil
}

// DecodeEach checks the response as Decode does, then passes each output
// record in order to out.Emit, building each in one reused row: a record
// (its values) is valid only until Emit returns. On an error it emits
// nothing. This is what a map operator needs (operator.Emitter's receiver
// copies what it keeps) without building the whole output batch.
func (d *ColumnarDecoder) DecodeEach(resp []byte, ins []record.Record, inS, outS *record.Schema, out operator.Emitter) error {
	if err := d.check(resp, ins, inS, outS); err != nil {
		return err
	}
	nout := len(outS.Fields)
	if cap(d.vals) < nout {
		d.vals = make([]record.Value, nout)
	}
	row := d.vals[:nout:nout]
	for i := range d.n {
		if d.keep != nil && d.keep[i] == 0 {
			continue
		}
		in := &ins[i]
		d.fill(row, i, in.Values)
		out.Emit(record.Record{Time: d.time(i, in), Values: row})
	}
	return nil
}

// time returns output record i's event time.
func (d *ColumnarDecoder) time(i int, in *record.Record) int64 {
	if d.times != nil {
		return int64(le.Uint64(d.times[8*i:]))
	}
	return in.Time
}

// fill sets row to output record i, of input values vals, from the
// checked response.
func (d *ColumnarDecoder) fill(row []record.Value, i int, vals []record.Value) {
	// Output fields 0..prefix-1 are input fields 0..prefix-1 (a map that
	// adds fields); the other passed fields are listed.
	if m := d.prefix; m > 0 {
		row, vals := row[:m], vals[:m]
		for k := range row {
			row[k] = vals[k]
		}
	}
	for _, p := range d.pass {
		row[p.dst] = vals[p.src]
	}
	for k := range d.cols {
		// The common columns (int, float, no nulls) here, the others
		// in fillCol.
		switch p := &d.cols[k]; {
		case p.nulls != nil:
			d.fillCol(row, p, i)
		case p.kind == planFloat:
			row[p.j] = record.Value{T: record.TypeFloat, F: math.Float64frombits(le.Uint64(p.col[8*i:]))}
		case p.kind == planInt:
			row[p.j] = record.Value{T: record.TypeInt, I: int64(le.Uint64(p.col[8*i:]))}
		default:
			d.fillCol(row, p, i)
		}
	}
}

// check checks the whole response to a call on ins and prepares d to build
// its records. d.Reads changes only
// when the response passes.
func (d *ColumnarDecoder) check(resp []byte, ins []record.Record, inS, outS *record.Schema) (err error) {
	d.n, d.kept, d.keep, d.times, d.cols, d.pass, d.prefix = 0, 0, nil, nil, d.cols[:0], d.pass[:0], 0
	if len(resp) == 0 {
		return fmt.Errorf("empty response (want a status byte)")
	}
	switch resp[0] {
	case sdk.StatusOK:
	case sdk.StatusError:
		msg := resp[1:]
		if len(msg) > 1024 {
			msg = msg[:1024]
		}
		return fmt.Errorf("%w: %q", ErrGuest, msg)
	case sdk.StatusVersion:
		if len(resp) == 2 && resp[1] == sdk.ABIVersion {
			return errSpeaksV1
		}
		return fmt.Errorf("function asks for ABI version %v, the host speaks %d and %d", resp[1:min(len(resp), 2)], sdk.ABIVersion, sdk.ColumnarVersion)
	default:
		return fmt.Errorf("response status byte %d (want %d or %d)", resp[0], sdk.StatusOK, sdk.StatusError)
	}
	nin, nout := len(inS.Fields), len(outS.Fields)
	dirEnd := uint64(sdk.RespDirSize + sdk.RespFieldSize*nout)
	if uint64(len(resp)) < dirEnd {
		return fmt.Errorf("response of %d bytes is shorter than its directory (%d)", len(resp), dirEnd)
	}
	n := len(ins)
	if got := le.Uint32(resp[4:]); got != uint32(n) {
		return fmt.Errorf("response has %d records, the request %d", got, n)
	}
	size := uint64(len(resp))
	// column returns resp[off:off+w] after checking it is inside resp.
	// what and field name the column in errors.
	column := func(what, field string, off uint32, w uint64) ([]byte, error) {
		if off < uint32(dirEnd) || uint64(off)+w > size {
			return nil, fmt.Errorf("%s%s at %d (%d bytes) is outside the response of %d bytes", what, field, off, w, size)
		}
		return resp[off : uint64(off)+w], nil
	}
	flags := func(what, field string, off uint32) ([]byte, error) {
		if off == 0 {
			return nil, nil
		}
		b, err := column(what, field, off, uint64(n))
		if err != nil {
			return nil, err
		}
		for i, c := range b {
			if c > 1 {
				return nil, fmt.Errorf("%s%s: byte %d of record %d (want 0 or 1)", what, field, c, i)
			}
		}
		return b, nil
	}
	var times []byte
	if off := le.Uint32(resp[8:]); off != 0 {
		if times, err = column("times", "", off, 8*uint64(n)); err != nil {
			return err
		}
	}
	keep, err := flags("keep flags", "", le.Uint32(resp[12:]))
	if err != nil {
		return err
	}
	// The fields the function reads: what the next request carries.
	// They take effect only once the whole response passed its checks: a
	// rejected response changes nothing.
	var reads []bool // nil: all
	if nr := le.Uint32(resp[16:]); nr != sdk.ReadsAll {
		if nr > uint32(nin) || dirEnd+4*uint64(nr) > size {
			return fmt.Errorf("response lists %d read fields (input has %d) past its end", nr, nin)
		}
		if cap(d.spare) < nin {
			d.spare = make([]bool, nin)
		}
		reads = d.spare[:nin]
		clear(reads)
		for k := range uint64(nr) {
			j := le.Uint32(resp[dirEnd+4*k:])
			if j >= uint32(nin) {
				return fmt.Errorf("response lists read field %d, the input has %d", j, nin)
			}
			reads[j] = true
		}
	}
	kept := n
	if keep != nil {
		kept = 0
		for _, k := range keep {
			kept += int(k)
		}
	}
	// Check every output column.
	cols, pass := d.cols, d.pass
	for j, f := range outS.Fields {
		e := sdk.RespDirSize + sdk.RespFieldSize*j
		src, dataOff, nullsOff := le.Uint32(resp[e:]), le.Uint32(resp[e+4:]), le.Uint32(resp[e+8:])
		if src != 0 { // passed from input field src-1
			k := src - 1
			if k >= uint32(nin) || inS.Fields[k].Type != f.Type || dataOff != 0 || nullsOff != 0 {
				return fmt.Errorf("output field %q: passes input field %d, which is not an input field of type %s (or has data)", f.Name, src-1, f.Type)
			}
			if int(k) == j && d.prefix == j {
				d.prefix++
			} else {
				pass = append(pass, passField{dst: j, src: int(k), t: f.Type})
			}
			continue
		}
		p := outPlan{j: j}
		if p.nulls, err = flags("null flags of output field ", f.Name, nullsOff); err != nil {
			return err
		}
		switch f.Type {
		case record.TypeInt, record.TypeFloat:
			if p.col, err = column("output field ", f.Name, dataOff, 8*uint64(n)); err != nil {
				return err
			}
			p.kind = planInt
			if f.Type == record.TypeFloat {
				p.kind = planFloat
			}
		case record.TypeBool:
			if p.col, err = flags("output field ", f.Name, dataOff); err != nil {
				return err
			}
			if p.col == nil {
				return fmt.Errorf("output field %q: no data", f.Name)
			}
			p.kind = planBool
		case record.TypeString:
			offs, err := column("string offsets of output field ", f.Name, dataOff, 4*uint64(n+1))
			if err != nil {
				return err
			}
			base := uint64(dataOff) + 4*uint64(n+1)
			prev := le.Uint32(offs)
			first := prev
			for i := 1; i <= n; i++ {
				o := le.Uint32(offs[4*i:])
				if o < prev {
					return fmt.Errorf("output field %q: string %d ends before it starts", f.Name, i-1)
				}
				prev = o
			}
			if base+uint64(prev) > size {
				return fmt.Errorf("output field %q: strings end at %d, past the response of %d bytes", f.Name, base+uint64(prev), size)
			}
			// One copy of the column's bytes; the values are substrings.
			p.kind, p.col, p.first = planString, offs, first
			p.str = string(resp[base+uint64(first) : base+uint64(prev)])
		default:
			return fmt.Errorf("output field %q has type %s", f.Name, f.Type)
		}
		cols = append(cols, p)
	}
	d.cols, d.pass = cols, pass
	// The passed values must be of their output fields' types, unless
	// the caller checked the input records.
	if !d.typed && (d.prefix > 0 || len(pass) > 0) {
		for i := range n {
			if keep != nil && keep[i] == 0 {
				continue
			}
			vals := ins[i].Values
			if len(vals) != nin {
				return fmt.Errorf("input record %d has %d values, the schema %d fields", i, len(vals), nin)
			}
			for k := range d.prefix {
				if v := vals[k].T; v != inS.Fields[k].Type && v != record.TypeNull {
					return fmt.Errorf("output field %q: input record %d has a %s value", outS.Fields[k].Name, i, v)
				}
			}
			for _, p := range pass {
				if v := vals[p.src].T; v != p.t && v != record.TypeNull {
					return fmt.Errorf("output field %q: input record %d has a %s value", outS.Fields[p.dst].Name, i, v)
				}
			}
		}
	}
	d.n, d.kept, d.keep, d.times = n, kept, keep, times
	if reads == nil {
		d.Reads = nil
	} else {
		d.Reads, d.spare = reads, d.Reads
	}
	return nil
}

// fillCol sets row's value of the written column p for record i.
func (d *ColumnarDecoder) fillCol(row []record.Value, p *outPlan, i int) {
	if p.nulls != nil && p.nulls[i] != 0 {
		row[p.j] = record.Value{}
		return
	}
	switch p.kind {
	case planFloat:
		row[p.j] = record.Value{T: record.TypeFloat, F: math.Float64frombits(le.Uint64(p.col[8*i:]))}
	case planInt:
		row[p.j] = record.Value{T: record.TypeInt, I: int64(le.Uint64(p.col[8*i:]))}
	case planBool:
		row[p.j] = record.Value{T: record.TypeBool, I: int64(p.col[i])}
	case planString:
		a, b := le.Uint32(p.col[4*i:])-p.first, le.Uint32(p.col[4*i+4:])-p.first
		row[p.j] = record.Value{T: record.TypeString, S: p.str[a:b]}
	}
}
