package record

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

var testSchema = &Schema{Fields: []Field{
	{Name: "auction", Type: TypeInt},
	{Name: "price", Type: TypeFloat},
	{Name: "channel", Type: TypeString},
	{Name: "ok", Type: TypeBool},
	{Name: "dateTime", Type: TypeInt},
}}

func randomValue(r *rand.Rand, t Type) Value {
	if r.IntN(10) == 0 {
		return Value{}
	}
	switch t {
	case TypeInt:
		switch r.IntN(4) {
		case 0:
			return Int(math.MinInt64)
		case 1:
			return Int(math.MaxInt64)
		}
		return Int(r.Int64N(1<<40) - 1<<39)
	case TypeFloat:
		if r.IntN(8) == 0 {
			return Float(math.NaN())
		}
		return Float(r.NormFloat64() * 1e6)
	case TypeString:
		b := make([]byte, r.IntN(20))
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		return String(string(b))
	case TypeBool:
		return Bool(r.IntN(2) == 1)
	}
	return Value{}
}

func randomBatch(r *rand.Rand, s *Schema, n int) *Batch {
	b := &Batch{}
	for range n {
		rec := Record{Time: r.Int64() - math.MaxInt64/2}
		for _, f := range s.Fields {
			rec.Values = append(rec.Values, randomValue(r, f.Type))
		}
		b.Records = append(b.Records, rec)
	}
	return b
}

// sameValue compares values bit for bit (NaN equals NaN of the same bits).
func sameValue(a, b Value) bool {
	return a.T == b.T && a.I == b.I && math.Float64bits(a.F) == math.Float64bits(b.F) && a.S == b.S
}

func sameBatch(t *testing.T, want, got *Batch) {
	t.Helper()
	if len(want.Records) != len(got.Records) {
		t.Fatalf("got %d records, want %d", len(got.Records), len(want.Records))
	}
	for i := range want.Records {
		w, g := want.Records[i], got.Records[i]
		if w.Time != g.Time || len(w.Values) != len(g.Values) {
			t.Fatalf("record %d: got %+v, want %+v", i, g, w)
		}
		for j := range w.Values {
			if !sameValue(w.Values[j], g.Values[j]) {
				t.Fatalf("record %d value %d: got %+v, want %+v", i, j, g.Values[j], w.Values[j])
			}
		}
	}
}

func TestBatchRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	schemas := []*Schema{
		testSchema,
		{},
		{Fields: make([]Field, 17)}, // 17 fields: a 3-byte null map
	}
	for i := range schemas[2].Fields {
		schemas[2].Fields[i] = Field{Name: "f", Type: Type(1 + i%4)}
	}
	var d Decoder
	var got Batch
	var buf []byte
	for _, s := range schemas {
		for _, n := range []int{0, 1, 7, 300} {
			want := randomBatch(r, s, n)
			var err error
			buf, err = AppendBatch(buf[:0], s, want)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Decode(buf, s, &got); err != nil {
				t.Fatalf("%d fields, %d records: %v", len(s.Fields), n, err)
			}
			sameBatch(t, want, &got)
			again, err := AppendBatch(nil, s, &got)
			if err != nil || !bytes.Equal(again, buf) {
				t.Fatalf("re-encoding differs (err %v)", err)
			}
		}
	}
}

func TestAppendBatchRefusesBadRecords(t *testing.T) {
	tests := []struct {
		name string
		rec  Record
		want string
	}{
		{"too few values", Record{Values: []Value{Int(1)}}, "record has 1 values, schema has 5 fields"},
		{"wrong type", Record{Values: []Value{Int(1), Int(2), String(""), Bool(true), Int(3)}}, `field "price": value is int, schema says float`},
		{"unknown type", Record{Values: []Value{Int(1), Float(2), String(""), {T: 9}, Int(3)}}, `field "ok": value is type(9), schema says bool`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := AppendBatch(nil, testSchema, &Batch{Records: []Record{tt.rec}})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want error containing %q", err, tt.want)
			}
		})
	}
}

func TestDecodeRefusesMalformed(t *testing.T) {
	s := &Schema{Fields: []Field{{Name: "i", Type: TypeInt}, {Name: "s", Type: TypeString}, {Name: "b", Type: TypeBool}}}
	good, err := AppendBatch(nil, s, &Batch{Records: []Record{{Time: 5, Values: []Value{Int(3), String("ab"), Bool(true)}}}})
	if err != nil {
		t.Fatal(err)
	}
	// good = B1 03 01 | 0A 00 | 06 | 02 'a' 'b' | 01
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "missing batch magic"},
		{"bad magic", mod(func(b []byte) []byte { b[0] = 0xB2; return b }), "missing batch magic"},
		{"field count", mod(func(b []byte) []byte { b[1] = 4; return b }), "batch has 4 fields per record, schema has 3"},
		{"record count too big", mod(func(b []byte) []byte { b[2] = 100; return b }), "record count 100"},
		{"truncated", good[:len(good)-1], "truncated bool"},
		{"trailing", append(append([]byte(nil), good...), 0), "1 trailing bytes"},
		{"bool byte", mod(func(b []byte) []byte { b[len(b)-1] = 2; return b }), "bool byte is 2"},
		{"null map padding", mod(func(b []byte) []byte { b[4] = 0x80; return b }), "null map has bits set"},
		{"string overrun", mod(func(b []byte) []byte { b[6] = 50; return b }), "string of 50 bytes overruns"},
		{"non-minimal varint", []byte{0xB1, 0x83, 0x00, 0x00}, "field count is not minimally encoded"},
		{"varint overflow", []byte{0xB1, 0x03, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F}, "record count overflows"},
	}
	var d Decoder
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b Batch
			err := d.Decode(tt.data, s, &b)
			if err == nil || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want ErrMalformed containing %q", err, tt.want)
			}
		})
	}
	var b Batch
	if err := d.Decode(good, s, &b); err != nil {
		t.Fatalf("good batch refused: %v", err)
	}
}

func TestDecoderReusesStorage(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	buf, err := AppendBatch(nil, testSchema, randomBatch(r, testSchema, 100))
	if err != nil {
		t.Fatal(err)
	}
	var d Decoder
	var b Batch
	if err := d.Decode(buf, testSchema, &b); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(20, func() {
		if err := d.Decode(buf, testSchema, &b); err != nil {
			t.Fatal(err)
		}
	})
	// Records and values are reused, and strings seen before (all of them,
	// short ones here) come from the intern table.
	if allocs > 0 {
		t.Fatalf("Decode allocates %.0f times per batch with warm storage, want 0", allocs)
	}
}

// TestDecodedStringsDoNotAlias checks that strings are copies: changing or
// reusing the input bytes does not change decoded values, and a long string
// is not shared with the batch.
func TestDecodedStringsDoNotAlias(t *testing.T) {
	s := &Schema{Fields: []Field{{Name: "s", Type: TypeString}}}
	long := strings.Repeat("x", maxInternLen+1)
	buf, err := AppendBatch(nil, s, &Batch{Records: []Record{{Values: []Value{String("short")}}, {Values: []Value{String(long)}}}})
	if err != nil {
		t.Fatal(err)
	}
	var d Decoder
	var b Batch
	if err := d.Decode(buf, s, &b); err != nil {
		t.Fatal(err)
	}
	for i := range buf {
		buf[i] = 'Z'
	}
	if b.Records[0].Values[0].S != "short" || b.Records[1].Values[0].S != long {
		t.Fatalf("decoded strings changed with the input: %q", b.Records[0].Values[0].S)
	}
}

func TestInternTableIsBounded(t *testing.T) {
	var d Decoder
	for i := range 3 * maxInterned {
		got := d.str([]byte(strconv.Itoa(i)))
		if got != strconv.Itoa(i) {
			t.Fatalf("str(%d) = %q", i, got)
		}
		if len(d.intern) > maxInterned {
			t.Fatalf("intern table grew to %d entries", len(d.intern))
		}
	}
}

func FuzzDecodeBatch(f *testing.F) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{0, 1, 3} {
		b, _ := AppendBatch(nil, testSchema, randomBatch(r, testSchema, n))
		f.Add(b)
	}
	f.Add([]byte{0xB1, 0x05, 0x01})
	f.Add([]byte{})
	var d Decoder
	f.Fuzz(func(t *testing.T, data []byte) {
		var b Batch
		if err := d.Decode(data, testSchema, &b); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		// A batch that decodes has exactly one encoding: its own bytes.
		again, err := AppendBatch(nil, testSchema, &b)
		if err != nil {
			t.Fatalf("decoded batch does not re-encode: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, data)
		}
	})
}

func TestTypeText(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Type
		err  bool
	}{{"int", TypeInt, false}, {"long", TypeInt, false}, {"double", TypeFloat, false}, {"string", TypeString, false}, {"boolean", TypeBool, false}, {"null", TypeNull, false}, {"map", 0, true}} {
		var got Type
		err := got.UnmarshalText([]byte(tt.in))
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.err)
		}
		if err == nil {
			b, _ := got.MarshalText()
			var back Type
			if back.UnmarshalText(b); !reflect.DeepEqual(back, got) {
				t.Errorf("%q does not round-trip: %s", tt.in, b)
			}
		}
	}
}

func BenchmarkBatchEncode(b *testing.B) {
	r := rand.New(rand.NewPCG(7, 8))
	batch := randomBatch(r, testSchema, 1024)
	buf, _ := AppendBatch(nil, testSchema, batch)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = AppendBatch(buf[:0], testSchema, batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch.Records)), "ns/record")
}

// bidBatch is a batch of Nexmark-like bids: a low-cardinality channel, a
// unique URL longer than the intern limit, an empty extra.
func bidBatch(n int) *Batch {
	b := &Batch{}
	for i := range n {
		b.Records = append(b.Records, Record{Time: 1700000000000 + int64(i), Values: []Value{
			Int(int64(1000 + i%97)), Int(int64(2000 + i%1013)), Int(int64(100 + i*7%5000)),
			String(fmt.Sprintf("channel-%d", i%4)), String(fmt.Sprintf("https://www.nexmark.com/item.htm?query=%d", i)),
			Int(1700000000000 + int64(i)), String(""),
		}})
	}
	return b
}

func BenchmarkBatchDecodeBids(b *testing.B) {
	buf, _ := AppendBatch(nil, bidSchema, bidBatch(1024))
	var d Decoder
	var batch Batch
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Decode(buf, bidSchema, &batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1024), "ns/record")
}

func BenchmarkBatchEncodeBids(b *testing.B) {
	batch := bidBatch(1024)
	buf, _ := AppendBatch(nil, bidSchema, batch)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = AppendBatch(buf[:0], bidSchema, batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1024), "ns/record")
}

func BenchmarkBatchDecode(b *testing.B) {
	r := rand.New(rand.NewPCG(7, 8))
	buf, _ := AppendBatch(nil, testSchema, randomBatch(r, testSchema, 1024))
	var d Decoder
	var batch Batch
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Decode(buf, testSchema, &batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1024), "ns/record")
}
