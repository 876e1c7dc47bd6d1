package sdk

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

var (
	in  = &record.Schema{Fields: []record.Field{{Name: "meter", Type: record.TypeString}, {Name: "kwh", Type: record.TypeFloat}}}
	out = &record.Schema{Fields: []record.Field{{Name: "ok", Type: record.TypeBool}}}
)

func TestRequestHeaderRoundTrip(t *testing.T) {
	hdr := AppendRequestHeader(nil, in, out)
	req := append(hdr, 0xB1, 2, 0)
	gi, gout, body, err := DecodeRequestHeader(req)
	if err != nil {
		t.Fatal(err)
	}
	if !equalSchema(gi, in) || !equalSchema(gout, out) || !bytes.Equal(body, []byte{0xB1, 2, 0}) {
		t.Fatalf("decoded %v %v %x", gi, gout, body)
	}
}

func TestDecodeRequestHeaderErrors(t *testing.T) {
	good := AppendRequestHeader(nil, in, out)
	for _, tc := range []struct {
		name string
		req  []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"version", append([]byte{2}, good[1:]...), "ABI version 2"},
		{"truncated count", []byte{1}, "input schema: truncated or non-minimal field count"},
		{"too many fields", []byte{1, 0x80, 0x10}, "2048 fields"},
		{"name overrun", []byte{1, 1, 9, 'a'}, "overruns"},
		{"bad type", []byte{1, 1, 1, 'a', 9}, "unknown type 9"},
		{"null type", []byte{1, 1, 1, 'a', 0}, "unknown type 0"},
		{"output truncated", good[:len(good)-1], "output schema"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := DecodeRequestHeader(tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("DecodeRequestHeader(%x) = %v, want an error containing %q", tc.req, err, tc.want)
			}
		})
	}
}

func FuzzDecodeRequestHeader(f *testing.F) {
	f.Add(AppendRequestHeader(nil, in, out))
	f.Add(append(AppendRequestHeader(nil, out, out), 0xB1, 1, 0))
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, req []byte) {
		i, o, body, err := DecodeRequestHeader(req)
		if err != nil {
			return
		}
		// An accepted header re-encodes to the bytes it was read from.
		if re := AppendRequestHeader(nil, i, o); !bytes.Equal(append(re, body...), req) {
			t.Fatalf("header %x re-encodes to %x", req[:len(req)-len(body)], re)
		}
	})
}

func equalSchema(a, b *record.Schema) bool {
	if len(a.Fields) != len(b.Fields) {
		return false
	}
	for i := range a.Fields {
		if a.Fields[i] != b.Fields[i] {
			return false
		}
	}
	return true
}

// request builds a request for a batch of records of schema in.
func request(t *testing.T, in, out *record.Schema, recs ...record.Record) []byte {
	t.Helper()
	req, err := record.AppendBatch(AppendRequestHeader(nil, in, out), in, &record.Batch{Records: recs})
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestMap runs Map's batch function natively on requests and checks the
// responses: field access by name in any order, skips, event times, and
// the errors a UDF author sees.
func TestMap(t *testing.T) {
	meterOut := &record.Schema{Fields: []record.Field{{Name: "meter", Type: record.TypeString}, {Name: "double", Type: record.TypeFloat}}}
	recs := []record.Record{
		{Time: 1, Values: []record.Value{record.String("a"), record.Float(1)}},
		{Time: 2, Values: []record.Value{record.String("b"), record.Float(-2)}},
		{Time: 3, Values: []record.Value{record.String("c"), {}}},
	}
	for _, tc := range []struct {
		name string
		fn   MapFunc
		want []record.Record // nil: want an error containing err
		err  string
	}{
		{"fields in varying order", func(in Row, out *Out) error {
			if in.Time()%2 == 0 { // a different lookup order on even records
				k := in.Float("kwh")
				out.String(in.String("meter"))
				out.Float(2 * k)
				return nil
			}
			out.String(in.String("meter"))
			out.Float(2 * in.Float("kwh"))
			return nil
		}, []record.Record{
			{Time: 1, Values: []record.Value{record.String("a"), record.Float(2)}},
			{Time: 2, Values: []record.Value{record.String("b"), record.Float(-4)}},
			{Time: 3, Values: []record.Value{record.String("c"), record.Float(0)}},
		}, ""},
		{"skip and set time", func(in Row, out *Out) error {
			if in.IsNull("kwh") {
				out.Skip()
				return nil
			}
			out.SetTime(in.Time() * 10)
			out.Value(in.Value("meter"))
			out.Null()
			return nil
		}, []record.Record{
			{Time: 10, Values: []record.Value{record.String("a"), {}}},
			{Time: 20, Values: []record.Value{record.String("b"), {}}},
		}, ""},
		{"missing field", func(in Row, out *Out) error {
			out.String(in.String("meter"))
			out.Float(in.Float("kw"))
			return nil
		}, nil, `record 0: input has no field "kw"`},
		{"wrong type", func(in Row, out *Out) error {
			out.String(in.String("meter"))
			out.Int(in.Int("kwh"))
			return nil
		}, nil, `record 0: input field "kwh" is float, not int`},
		{"too few values", func(in Row, out *Out) error {
			out.String(in.String("meter"))
			return nil
		}, nil, "record 0: produced 1 values, output schema has 2 fields"},
		{"wrong output type", func(in Row, out *Out) error {
			out.String(in.String("meter"))
			out.Int(1)
			return nil
		}, nil, "output does not match the output schema"},
		{"user error", func(in Row, out *Out) error {
			if in.Time() == 2 {
				return errors.New("meter b is broken")
			}
			out.String("x")
			out.Float(0)
			return nil
		}, nil, "record 1: meter b is broken"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for round := range 2 { // the second round runs with warm lookup hints
				resp := serve(request(t, meterKWhSchema, meterOut, recs...), mapBatch(tc.fn))
				if tc.want == nil {
					if resp[0] != StatusError || !strings.Contains(string(resp[1:]), tc.err) {
						t.Fatalf("round %d: response %q, want an error containing %q", round, resp, tc.err)
					}
					continue
				}
				if resp[0] != StatusOK {
					t.Fatalf("round %d: error response %q", round, resp[1:])
				}
				want, _ := record.AppendBatch([]byte{StatusOK}, meterOut, &record.Batch{Records: tc.want})
				if !bytes.Equal(resp, want) {
					t.Fatalf("round %d: response %x, want %x", round, resp, want)
				}
			}
		})
	}
}

var meterKWhSchema = &record.Schema{Fields: []record.Field{{Name: "meter", Type: record.TypeString}, {Name: "kwh", Type: record.TypeFloat}}}
