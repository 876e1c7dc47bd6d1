package udf

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/udf/sdk"
)

// The columnar ABI end to end without WebAssembly: the host's encoder, the
// SDK's request handling (sdk.ServeColumnar, which a module's export calls)
// and the host's decoder.

var (
	colIn = &record.Schema{Fields: []record.Field{
		{Name: "i", Type: record.TypeInt}, {Name: "f", Type: record.TypeFloat},
		{Name: "s", Type: record.TypeString}, {Name: "b", Type: record.TypeBool}}}
	colOut = &record.Schema{Fields: []record.Field{
		{Name: "up", Type: record.TypeString}, {Name: "f", Type: record.TypeFloat},
		{Name: "i2", Type: record.TypeInt}, {Name: "nb", Type: record.TypeBool}, {Name: "s", Type: record.TypeString}}}
)

// colRecords returns n records of colIn with some nulls.
func colRecords(n int) []record.Record {
	out := make([]record.Record, n)
	for k := range out {
		v := []record.Value{record.Int(int64(k - 3)), record.Float(float64(k) / 4), record.String(strings.Repeat("ab", k%4)), record.Bool(k%2 == 0)}
		if k%5 == 4 {
			v[k%4] = record.Value{}
		}
		out[k] = record.Record{Time: int64(1000 * k), Values: v}
	}
	return out
}

// colFunc is a columnar function using every part of the API: it reads i,
// s and b (and their nulls), writes up = upper(s), i2 = 2i (null where i
// is), nb = !b, passes f and s, adds 1 ms to the time and drops records
// whose i is a multiple of 3.
func colFunc(c *sdk.Columns) error {
	is, ss, bs := c.Int("i"), c.String("s"), c.Bool("b")
	inulls := c.Nulls("i")
	up, i2, nb := c.OutString("up"), c.OutInt("i2"), c.OutBool("nb")
	i2nulls := c.OutNulls("i2")
	times, keep := c.OutTimes(), c.Keep()
	for k := range c.Len() {
		up[k] = strings.ToUpper(ss[k])
		i2[k] = 2 * is[k]
		i2nulls[k] = inulls != nil && inulls[k]
		nb[k] = !bs[k]
		times[k]++
		keep[k] = is[k]%3 != 0 || (inulls != nil && inulls[k])
	}
	return nil
}

var colReads = []string{"i", "s", "b"}

// colWant is what colFunc computes, row by row.
func colWant(in []record.Record) []record.Record {
	var out []record.Record
	for _, r := range in {
		i, f, s, b := r.Values[0], r.Values[1], r.Values[2], r.Values[3]
		if i.T != record.TypeNull && i.I%3 == 0 {
			continue
		}
		i2 := record.Value{}
		if i.T != record.TypeNull {
			i2 = record.Int(2 * i.I)
		}
		out = append(out, record.Record{Time: r.Time + 1, Values: []record.Value{
			record.String(strings.ToUpper(s.S)), f, i2, record.Bool(b.I == 0), s}})
	}
	return out
}

// collect is an operator.Emitter keeping copies of the records emitted
// (the emitter reuses their storage).
type collect struct{ recs []record.Record }

func (c *collect) Emit(r record.Record) {
	c.recs = append(c.recs, record.Record{Time: r.Time, Values: slices.Clone(r.Values)})
}
func (c *collect) EmitSide(string, record.Record) {}
func (c *collect) EmitWatermark(int64)            {}

// sameRecords reports whether a and b hold equal records.
func sameRecords(a, b []record.Record) bool {
	return slices.EqualFunc(a, b, func(x, y record.Record) bool { return x.Time == y.Time && equalValues(x.Values, y.Values) })
}

// colCall encodes b as the host does, serves it with fn and decodes the
// answer.
func colCall(t *testing.T, dec *ColumnarDecoder, b *record.Batch, reads []string, fn sdk.ColumnarFunc, out *record.Batch) (req []byte, err error) {
	t.Helper()
	header := sdk.AppendColumnarHeader(nil, colIn, colOut)
	size, err := columnarSize(header, colIn, dec.Reads, b)
	if err != nil {
		return nil, err
	}
	req = make([]byte, size)
	encodeColumnar(req, header, colIn, dec.Reads, b)
	resp := sdk.ServeColumnar(req, reads, fn)
	return req, dec.Decode(resp, b.Records, colIn, colOut, out)
}

func TestColumnarRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 7, 64} {
		b := record.Batch{Records: colRecords(n)}
		want := colWant(b.Records)
		var dec ColumnarDecoder
		// The first call sends every field; the response declares the
		// ones read, and the second call sends only those.
		for call := range 2 {
			var out record.Batch
			req, err := colCall(t, &dec, &b, colReads, colFunc, &out)
			if err != nil {
				t.Fatalf("n=%d call %d: %v", n, call, err)
			}
			if len(out.Records) != len(want) {
				t.Fatalf("n=%d call %d: %d records, want %d", n, call, len(out.Records), len(want))
			}
			for k := range want {
				if out.Records[k].Time != want[k].Time || !equalValues(out.Records[k].Values, want[k].Values) {
					t.Fatalf("n=%d call %d: record %d = %v at %d, want %v at %d", n, call, k,
						out.Records[k].Values, out.Records[k].Time, want[k].Values, want[k].Time)
				}
			}
			if len(dec.Reads) != 4 || !dec.Reads[0] || dec.Reads[1] || !dec.Reads[2] || !dec.Reads[3] {
				t.Fatalf("n=%d: declared reads %v, want i, s, b", n, dec.Reads)
			}
			// Field f (index 1) is sent only in the first call.
			dir := len(sdk.AppendColumnarHeader(nil, colIn, colOut)) + sdk.ReqDirSize + sdk.ReqFieldSize
			if sent := le.Uint32(req[dir:])&sdk.ColFlagPresent != 0; sent != (call == 0) {
				t.Fatalf("n=%d call %d: field f sent = %v", n, call, sent)
			}
		}
	}
}

// TestColumnarFunctionErrors checks what a function that misuses the API
// gets: an error of the call naming the mistake.
func TestColumnarFunctionErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reads []string
		fn    sdk.ColumnarFunc
		want  string
	}{
		{"undeclared read", []string{"i"}, func(c *sdk.Columns) error { c.Float("f"); return nil }, `input field "f" is not among the fields the function declares`},
		{"unknown input", nil, func(c *sdk.Columns) error { c.Int("nope"); return nil }, `input has no field "nope"`},
		{"wrong input type", nil, func(c *sdk.Columns) error { c.Int("f"); return nil }, `input field "f" is float, not int`},
		{"unknown output", nil, func(c *sdk.Columns) error { c.OutInt("nope"); return nil }, `output has no field "nope"`},
		{"wrong output type", nil, func(c *sdk.Columns) error { c.OutFloat("i2"); return nil }, `output field "i2" is int, not float`},
		{"output not written", nil, func(c *sdk.Columns) error { return nil }, `output field "up" is not written`},
		{"unknown declared read", []string{"zz"}, func(c *sdk.Columns) error { return nil }, `declares it reads field "zz"`},
		{"function error", nil, func(c *sdk.Columns) error { return errors.New("model missing") }, "model missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var dec ColumnarDecoder
			b := record.Batch{Records: colRecords(5)}
			_, err := colCall(t, &dec, &b, tc.reads, tc.fn, &record.Batch{})
			// The host quotes the guest's message.
			if !errors.Is(err, ErrGuest) || !strings.Contains(strings.ReplaceAll(err.Error(), `\"`, `"`), tc.want) {
				t.Fatalf("err = %v, want a guest error containing %q", err, tc.want)
			}
		})
	}
}

// goodColumnarResponse returns a valid response of colFunc to colRecords(n)
// (a copy: the SDK reuses its buffer).
func goodColumnarResponse(t testing.TB, n int) ([]byte, []record.Record) {
	return servedResponse(t, n, colOut, colReads, colFunc)
}

// servedResponse returns fn's response (a copy) to colRecords(n) for
// output schema out.
func servedResponse(t testing.TB, n int, out *record.Schema, reads []string, fn sdk.ColumnarFunc) ([]byte, []record.Record) {
	recs := colRecords(n)
	b := record.Batch{Records: recs}
	header := sdk.AppendColumnarHeader(nil, colIn, out)
	size, err := columnarSize(header, colIn, nil, &b)
	if err != nil {
		t.Fatal(err)
	}
	req := make([]byte, size)
	encodeColumnar(req, header, colIn, nil, &b)
	return append([]byte(nil), sdk.ServeColumnar(req, reads, fn)...), recs
}

// colOutAdd is a map adding a field to its input (the input fields are
// passed in place, the decoder's prefix case); colAdd computes it: up =
// upper(s), dropping every third record.
var colOutAdd = &record.Schema{Fields: append(slices.Clone(colIn.Fields), record.Field{Name: "up", Type: record.TypeString})}

func colAdd(c *sdk.Columns) error {
	ss, up, keep := c.String("s"), c.OutString("up"), c.Keep()
	for k := range c.Len() {
		up[k] = strings.ToUpper(ss[k])
		keep[k] = k%3 != 2
	}
	return nil
}

// TestColumnarAddField decodes a map that adds a field, with Decode and
// DecodeEach, with and without the caller's type check.
func TestColumnarAddField(t *testing.T) {
	resp, recs := servedResponse(t, 9, colOutAdd, []string{"s"}, colAdd)
	var want []record.Record
	for k, r := range recs {
		if k%3 != 2 {
			want = append(want, record.Record{Time: r.Time, Values: append(slices.Clone(r.Values), record.String(strings.ToUpper(r.Values[2].S)))})
		}
	}
	for _, typed := range []bool{false, true} {
		dec := ColumnarDecoder{typed: typed}
		var out record.Batch
		if err := dec.Decode(resp, recs, colIn, colOutAdd, &out); err != nil || !sameRecords(out.Records, want) {
			t.Fatalf("typed=%v: Decode = %v, %v, want %v", typed, err, out.Records, want)
		}
		if dec.prefix != len(colIn.Fields) {
			t.Fatalf("typed=%v: passed prefix %d, want %d", typed, dec.prefix, len(colIn.Fields))
		}
		var d collect
		if err := dec.DecodeEach(resp, recs, colIn, colOutAdd, &d); err != nil || !sameRecords(d.recs, want) {
			t.Fatalf("typed=%v: DecodeEach = %v, %v, want %v", typed, err, d.recs, want)
		}
	}
	bad := slices.Clone(recs)
	bad[3].Values = []record.Value{record.Int(1), record.Bool(true), record.String(""), record.Bool(false)}
	var dec ColumnarDecoder
	var d collect
	if err := dec.DecodeEach(resp, bad, colIn, colOutAdd, &d); err == nil || !strings.Contains(err.Error(), `output field "f": input record 3 has a bool value`) || len(d.recs) != 0 {
		t.Fatalf("a mistyped passed value: %v after %d records, want it named and none emitted", err, len(d.recs))
	}
}

// TestDecodeColumnarRejects corrupts a valid response in ways a hostile or
// broken guest could: every one is an error, none a panic.
func TestDecodeColumnarRejects(t *testing.T) {
	good, recs := goodColumnarResponse(t, 8)
	field := func(j, word int) int { return sdk.RespDirSize + sdk.RespFieldSize*j + 4*word }
	put := func(off int, v uint32) func([]byte) []byte {
		return func(b []byte) []byte { le.PutUint32(b[off:], v); return b }
	}
	upData := le.Uint32(good[field(0, 1):])
	for _, tc := range []struct {
		name   string
		mutate func([]byte) []byte
		want   string
	}{
		{"empty", func([]byte) []byte { return nil }, "empty response"},
		{"short directory", func(b []byte) []byte { return b[:sdk.RespDirSize] }, "shorter than its directory"},
		{"record count", put(4, 9), "9 records, the request 8"},
		{"times outside", put(8, 1<<30), "times at"},
		{"keep inside directory", put(12, 4), "keep flags at 4"},
		{"too many reads", put(16, 5), "lists 5 read fields"},
		{"reads past end", func(b []byte) []byte {
			le.PutUint32(b[16:], 4)
			le.PutUint64(b[8:], 0) // no times or keep columns
			return b[:sdk.RespDirSize+sdk.RespFieldSize*len(colOut.Fields)+4]
		}, "lists 4 read fields"},
		{"read index", func(b []byte) []byte {
			le.PutUint32(b[sdk.RespDirSize+sdk.RespFieldSize*len(colOut.Fields):], 7)
			return b
		}, "read field 7"},
		{"pass bad index", put(field(1, 0), 9), "passes input field 8"},
		{"pass wrong type", put(field(1, 0), 1), "passes input field 0"},
		{"pass with data", put(field(1, 1), 64), "passes input field 1"},
		{"int outside", put(field(2, 1), uint32(len(good)-8)), "output field i2 at"},
		{"nulls bad byte", func(b []byte) []byte { b[le.Uint32(b[field(2, 2):])] = 7; return b }, "byte 7 of record 0"},
		{"bool bad byte", func(b []byte) []byte { b[le.Uint32(b[field(3, 1):])+2] = 2; return b }, "byte 2 of record 2"},
		{"strings decrease", func(b []byte) []byte { le.PutUint32(b[upData+8:], 0); le.PutUint32(b[upData+4:], 5); return b }, "ends before it starts"},
		{"strings past end", func(b []byte) []byte { le.PutUint32(b[upData+4*8:], 1<<20); return b }, "past the response"},
		{"guest error", func([]byte) []byte { return append([]byte{sdk.StatusError}, "boom"...) }, `"boom"`},
		{"other version", func([]byte) []byte { return []byte{sdk.StatusVersion, 3} }, "asks for ABI version"},
		{"bad status", func(b []byte) []byte { b[0] = 9; return b }, "status byte 9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := tc.mutate(append([]byte(nil), good...))
			// A rejected response leaves the declared reads as they were.
			before := []bool{true, true, false, true}
			dec := ColumnarDecoder{Reads: slices.Clone(before)}
			err := dec.Decode(resp, recs, colIn, colOut, &record.Batch{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode = %v, want an error containing %q", err, tc.want)
			}
			if !slices.Equal(dec.Reads, before) {
				t.Fatalf("a rejected response changed the declared reads to %v", dec.Reads)
			}
			var d collect
			if err := dec.DecodeEach(resp, recs, colIn, colOut, &d); err == nil || err.Error() != dec.Decode(resp, recs, colIn, colOut, &record.Batch{}).Error() || len(d.recs) != 0 {
				t.Fatalf("DecodeEach = %v after emitting %d records, want Decode's error and none", err, len(d.recs))
			}
		})
	}
	var dec ColumnarDecoder
	if err := dec.Decode(good, recs, colIn, colOut, &record.Batch{}); err != nil {
		t.Fatalf("the uncorrupted response: %v", err)
	}
	if err := dec.Decode([]byte{sdk.StatusVersion, sdk.ABIVersion}, recs, colIn, colOut, &record.Batch{}); !errors.Is(err, errSpeaksV1) {
		t.Fatalf("a version 1 answer: %v, want errSpeaksV1", err)
	}
}

// FuzzDecodeColumnar feeds the decoder arbitrary responses: it must never
// panic, and what it accepts must be records of the output schema, no more
// than the input's.
func FuzzDecodeColumnar(f *testing.F) {
	for _, n := range []int{0, 1, 8} {
		good, _ := goodColumnarResponse(f, n)
		f.Add(good, uint8(n))
		add, _ := servedResponse(f, n, colOutAdd, []string{"s"}, colAdd)
		f.Add(add, uint8(n)|0x80)
	}
	f.Add([]byte{sdk.StatusError, 'x'}, uint8(1))
	f.Add([]byte{sdk.StatusVersion, 1}, uint8(1))
	f.Fuzz(func(t *testing.T, resp []byte, n uint8) {
		// n's top bit picks the output schema: colOut passes fields
		// to other places, colOutAdd in place.
		colOut := colOut
		if n&0x80 != 0 {
			colOut = colOutAdd
		}
		recs := colRecords(int(n % 16))
		var dec, each ColumnarDecoder
		var out record.Batch
		var d collect
		err := dec.Decode(resp, recs, colIn, colOut, &out)
		// DecodeEach accepts what Decode accepts and emits the same
		// records, or nothing.
		if errEach := each.DecodeEach(resp, recs, colIn, colOut, &d); (err == nil) != (errEach == nil) {
			t.Fatalf("Decode: %v, DecodeEach: %v", err, errEach)
		}
		if err != nil {
			if len(d.recs) != 0 {
				t.Fatalf("DecodeEach emitted %d records of a rejected response", len(d.recs))
			}
			return
		}
		if !sameRecords(d.recs, out.Records) || !slices.Equal(dec.Reads, each.Reads) {
			t.Fatalf("DecodeEach emitted %v, Decode decoded %v", d.recs, out.Records)
		}
		if len(out.Records) > len(recs) {
			t.Fatalf("%d output records from %d inputs", len(out.Records), len(recs))
		}
		if dec.Reads != nil && len(dec.Reads) != len(colIn.Fields) {
			t.Fatalf("reads %v for %d input fields", dec.Reads, len(colIn.Fields))
		}
		for k, r := range out.Records {
			if len(r.Values) != len(colOut.Fields) {
				t.Fatalf("record %d has %d values", k, len(r.Values))
			}
			for j, v := range r.Values {
				if v.T != record.TypeNull && v.T != colOut.Fields[j].Type {
					t.Fatalf("record %d field %d: a %s value for a %s field", k, j, v.T, colOut.Fields[j].Type)
				}
				if v.T == record.TypeBool && v.I != 0 && v.I != 1 {
					t.Fatalf("record %d field %d: bool %d", k, j, v.I)
				}
			}
		}
	})
}

// TestColumnarPassChecksType checks that a passed field the request did not
// carry (so its encoding did not write it) is still checked against the
// output schema: by the encoder's size pass, which checks every input
// value (what an Instance relies on), and by a decoder whose caller did
// not check the input records.
func TestColumnarPassChecksType(t *testing.T) {
	recs := colRecords(3)
	recs[1].Values[1] = record.String("not a float") // f, passed, not read
	dec := ColumnarDecoder{Reads: []bool{true, false, true, true}}
	_, err := colCall(t, &dec, &record.Batch{Records: recs}, colReads, colFunc, &record.Batch{})
	if err == nil || !strings.Contains(err.Error(), `record 1: field "f" is string, the schema says float`) {
		t.Fatalf("encoding: err = %v, want the mistyped value named", err)
	}
	good, _ := goodColumnarResponse(t, 3)
	for _, typed := range []bool{false, true} {
		dec := ColumnarDecoder{typed: typed}
		err := dec.Decode(good, recs, colIn, colOut, &record.Batch{})
		if typed {
			if err != nil {
				t.Fatalf("a decoder told the input is checked: %v", err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), `output field "f": input record 1 has a string value`) {
			t.Fatalf("decoding: err = %v, want the mistyped passed value named", err)
		}
		var d collect
		if err := dec.DecodeEach(good, recs, colIn, colOut, &d); err == nil || len(d.recs) != 0 {
			t.Fatalf("DecodeEach: err = %v after emitting %d records, want an error and none", err, len(d.recs))
		}
	}
}
