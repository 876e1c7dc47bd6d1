package sdk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

var mixed = &record.Schema{Fields: []record.Field{
	{Name: "i", Type: record.TypeInt}, {Name: "f", Type: record.TypeFloat},
	{Name: "s", Type: record.TypeString}, {Name: "b", Type: record.TypeBool}}}

func mixedBatch() *record.Batch {
	rows := [][]record.Value{
		{record.Int(0), record.Float(0), record.String(""), record.Bool(false)},
		{record.Int(-1), record.Float(-2.5), record.String("m1"), record.Bool(true)},
		{record.Int(math.MaxInt64), record.Float(math.Inf(1)), record.String("m1"), {}},
		{record.Int(math.MinInt64), record.Float(math.NaN()), record.String(strings.Repeat("x", 127)), record.Bool(true)},
		{{}, {}, {}, {}},
		{record.Int(300), record.Float(1e300), record.String("m2"), record.Bool(false)},
	}
	b := &record.Batch{}
	for i, r := range rows {
		b.Records = append(b.Records, record.Record{Time: int64(i*1000 - 2000), Values: r})
	}
	return b
}

// TestFastCodecMatchesRecord checks the guest's lean codec against
// engine/record: the same bytes out, the same records in, and a fallback
// (not a wrong answer) for what it does not handle.
func TestFastCodecMatchesRecord(t *testing.T) {
	long := &record.Batch{Records: []record.Record{{Values: []record.Value{record.Int(1), record.Float(1), record.String(strings.Repeat("y", 200)), record.Bool(true)}}}}
	wide := &record.Schema{Fields: make([]record.Field, 9)}
	wideRec := record.Record{Values: make([]record.Value, 9)}
	for i := range wide.Fields {
		wide.Fields[i] = record.Field{Name: string(rune('a' + i)), Type: record.TypeInt}
		wideRec.Values[i] = record.Int(int64(i))
	}
	cycling := &record.Batch{} // more distinct strings than the cache holds
	for i := range 40 {
		cycling.Records = append(cycling.Records, record.Record{Time: int64(i), Values: []record.Value{
			record.Int(int64(i)), record.Float(0), record.String(fmt.Sprintf("key-%d", i*7%11)), record.Bool(i%2 == 0)}})
	}
	badType := &record.Batch{Records: []record.Record{{Values: []record.Value{record.Float(1), record.Float(1), record.String(""), record.Bool(true)}}}}
	for _, tc := range []struct {
		name     string
		s        *record.Schema
		b        *record.Batch
		encFast  bool // the lean encoder handles it
		decFast  bool // the lean decoder handles it
		encodeOK bool // engine/record encodes it
	}{
		{"mixed", mixed, mixedBatch(), true, true, true},
		{"empty", mixed, &record.Batch{}, true, true, true},
		{"cycling strings", mixed, cycling, true, true, true},
		{"string over 127 bytes", mixed, long, true, false, true},
		{"nine fields", wide, &record.Batch{Records: []record.Record{wideRec}}, false, false, true},
		{"value of the wrong type", mixed, badType, false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := record.AppendBatch(nil, tc.s, tc.b)
			if (err == nil) != tc.encodeOK {
				t.Fatalf("record.AppendBatch error %v, want ok=%v", err, tc.encodeOK)
			}
			got, ok := fastEncode(nil, tc.s, tc.b)
			if ok != tc.encFast {
				t.Fatalf("fastEncode ok = %v", ok)
			}
			if ok && !bytes.Equal(got, want) {
				t.Fatalf("fastEncode = %x, record.AppendBatch = %x", got, want)
			}
			if !tc.encodeOK {
				return
			}
			var fb, rb record.Batch
			var d record.Decoder
			var strs stringCache
			_, ok = fastDecode(want, tc.s, &fb, nil, &strs)
			if ok != tc.decFast {
				t.Fatalf("fastDecode ok = %v, want %v", ok, tc.decFast)
			}
			if err := d.Decode(want, tc.s, &rb); err != nil {
				t.Fatal(err)
			}
			if ok && !sameBatch(&fb, &rb) {
				t.Fatalf("fastDecode = %v, record.Decoder = %v", fb.Records, rb.Records)
			}
		})
	}
}

func sameBatch(a, b *record.Batch) bool {
	if len(a.Records) != len(b.Records) {
		return false
	}
	for i := range a.Records {
		ra, rb := a.Records[i], b.Records[i]
		if ra.Time != rb.Time || len(ra.Values) != len(rb.Values) {
			return false
		}
		for j := range ra.Values {
			x, y := ra.Values[j], rb.Values[j]
			if x.T != y.T || x.I != y.I || x.S != y.S || math.Float64bits(x.F) != math.Float64bits(y.F) {
				return false
			}
		}
	}
	return true
}

// FuzzFastDecode checks that the lean decoder never accepts bytes
// engine/record refuses, and decodes what it accepts identically.
func FuzzFastDecode(f *testing.F) {
	enc, _ := record.AppendBatch(nil, mixed, mixedBatch())
	f.Add(enc)
	f.Add([]byte{0xB1, 4, 0})
	f.Add([]byte{0xB1, 4, 1, 0x80, 0x00, 0x0F})
	f.Fuzz(func(t *testing.T, data []byte) {
		var fb, rb record.Batch
		var d record.Decoder
		var strs stringCache
		_, ok := fastDecode(data, mixed, &fb, nil, &strs)
		err := d.Decode(data, mixed, &rb)
		if ok && err != nil {
			t.Fatalf("fastDecode accepted %x, record.Decoder refused it: %v", data, err)
		}
		if ok && !sameBatch(&fb, &rb) {
			t.Fatalf("fastDecode(%x) = %v, record.Decoder = %v", data, fb.Records, rb.Records)
		}
	})
}

func TestUvarintAt(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 300, 1 << 35, 1<<63 - 1, 1 << 63, math.MaxUint64} {
		b := append([]byte{0xFF}, binary.AppendUvarint(nil, v)...)
		if got, n := uvarintAt(b, 1); got != v || n != len(b)-1 {
			t.Errorf("uvarintAt(%x) = %d, %d; want %d, %d", b[1:], got, n, v, len(b)-1)
		}
	}
	for _, b := range [][]byte{
		{}, {0x80}, {0x80, 0x00}, {0xFF, 0x80, 0x00},
		{0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02},
		{0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x81, 0x00},
	} {
		if _, n := uvarintAt(b, 0); n != 0 {
			t.Errorf("uvarintAt(%x) accepted %d bytes; want a refusal", b, n)
		}
	}
}
