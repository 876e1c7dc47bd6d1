package record

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestJSONDecode(t *testing.T) {
	tests := []struct {
		name string
		line string
		want []Value
		time int64
	}{
		{"all fields", `{"auction":1,"price":2.5,"channel":"web","ok":true,"dateTime":99}`,
			[]Value{Int(1), Float(2.5), String("web"), Bool(true), Int(99)}, 99},
		{"order and whitespace", " { \"dateTime\" : -7 ,\t\"ok\":false, \"channel\":\"\" } ",
			[]Value{{}, {}, String(""), Bool(false), Int(-7)}, -7},
		{"int literal in float field", `{"price":3,"dateTime":1}`, []Value{{}, Float(3), {}, {}, Int(1)}, 1},
		{"exponent float", `{"price":-1.5e3,"dateTime":1}`, []Value{{}, Float(-1500), {}, {}, Int(1)}, 1},
		{"explicit null", `{"auction":null,"dateTime":1}`, []Value{{}, {}, {}, {}, Int(1)}, 1},
		{"unknown fields skipped", `{"type":"bid","nested":{"a":[1,{"b":null}],"c":"x\"y"},"arr":[],"dateTime":5,"n":-0.1e-2}`,
			[]Value{{}, {}, {}, {}, Int(5)}, 5},
		{"escapes", `{"channel":"a\"b\\c\u00e9\n","dateTime":1}`, []Value{{}, {}, String("a\"b\\cé\n"), {}, Int(1)}, 1},
		{"utf-8", `{"channel":"Zürich","dateTime":1}`, []Value{{}, {}, String("Zürich"), {}, Int(1)}, 1},
		{"extreme ints", `{"auction":-9223372036854775808,"dateTime":9223372036854775807}`,
			[]Value{Int(math.MinInt64), {}, {}, {}, Int(math.MaxInt64)}, math.MaxInt64},
		{"escaped member name", `{"d\u0061teTime":4}`, []Value{{}, {}, {}, {}, Int(4)}, 4},
	}
	d, err := NewJSONDecoder(testSchema, "dateTime")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := Record{Values: []Value{String("stale"), Int(1), Int(2), Int(3), Int(4)}}
			if err := d.Decode([]byte(tt.line), 1, &rec); err != nil {
				t.Fatal(err)
			}
			if rec.Time != tt.time {
				t.Errorf("time = %d, want %d", rec.Time, tt.time)
			}
			for i := range tt.want {
				if !sameValue(rec.Values[i], tt.want[i]) {
					t.Errorf("field %s = %+v, want %+v", testSchema.Fields[i].Name, rec.Values[i], tt.want[i])
				}
			}
		})
	}
}

func TestJSONDecodeErrors(t *testing.T) {
	tests := []struct {
		line  string
		field string
		want  string
	}{
		{`{"auction":"7","dateTime":1}`, "auction", "want int, got a string"},
		{`{"auction":1.5,"dateTime":1}`, "auction", "want int, got 1.5"},
		{`{"auction":99999999999999999999,"dateTime":1}`, "auction", "out of range"},
		{`{"price":"x","dateTime":1}`, "price", "want float, got a string"},
		{`{"channel":5,"dateTime":1}`, "channel", "want string, got a number"},
		{`{"ok":1,"dateTime":1}`, "ok", "want bool, got a number"},
		{`{"ok":[true],"dateTime":1}`, "ok", "want bool, got an array"},
		{`{"dateTime":1,"dateTime":2}`, "dateTime", "field appears twice"},
		{`{"auction":1}`, "dateTime", "time field is missing or null"},
		{`{"dateTime":null}`, "dateTime", "time field is missing or null"},
		{`[1]`, "", "want a JSON object"},
		{``, "", "want a JSON object"},
		{`{"dateTime":1`, "", "want ',' or '}'"},
		{`{"dateTime":1} x`, "", "trailing data"},
		{`{"dateTime":01}`, "dateTime", "malformed number"},
		{`{"x":tru,"dateTime":1}`, "", "want a JSON value"},
		{`{"x":"a` + "\x01" + `","dateTime":1}`, "", "control character"},
		{`{"x":"\q","dateTime":1}`, "", "bad escape"},
		{`{"x":{"a" 1},"dateTime":1}`, "", "want ':'"},
		{`{"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `,"dateTime":1}`, "", "nested more than"},
		{`{"channel":"abc`, "", "unterminated string"},
		{`{dateTime:1}`, "", "want a member name string"},
	}
	d, err := NewJSONDecoder(testSchema, "dateTime")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			var rec Record
			err := d.Decode([]byte(tt.line), 42, &rec)
			var je *JSONError
			if !errors.As(err, &je) {
				t.Fatalf("got %v, want a *JSONError", err)
			}
			if je.Line != 42 || je.Field != tt.field || !strings.Contains(je.Msg, tt.want) {
				t.Fatalf("got %q (field %q), want line 42, field %q, message containing %q", err, je.Field, tt.field, tt.want)
			}
		})
	}
}

func TestNewJSONDecoderRefusesBadTimeField(t *testing.T) {
	if _, err := NewJSONDecoder(testSchema, "nope"); err == nil || !strings.Contains(err.Error(), `"nope" is not in the schema`) {
		t.Errorf("unknown time field: got %v", err)
	}
	if _, err := NewJSONDecoder(testSchema, "channel"); err == nil || !strings.Contains(err.Error(), "want int") {
		t.Errorf("string time field: got %v", err)
	}
}

func TestJSONEncode(t *testing.T) {
	e := NewJSONEncoder(testSchema)
	got := string(e.Append(nil, &Record{Values: []Value{Int(-3), Float(0.908), String("a\"\\\n\x01\xffé"), Bool(true), {}}}))
	want := `{"auction":-3,"price":0.908,"channel":"a\"\\\n\u0001\ufffdé","ok":true,"dateTime":null}` + "\n"
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	for _, tt := range []struct {
		f    float64
		want string
	}{{math.NaN(), "null"}, {math.Inf(1), "null"}, {1e21, "1e+21"}, {1e20, "100000000000000000000"}, {1e-7, "1e-07"}, {0, "0"}, {-2.5, "-2.5"}} {
		if got := string(appendJSONFloat(nil, tt.f)); got != tt.want {
			t.Errorf("appendJSONFloat(%v) = %s, want %s", tt.f, got, tt.want)
		}
	}
}

// TestJSONRoundTrip encodes random records and decodes them back; the lines
// must also be valid JSON for encoding/json.
func TestJSONRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	e := NewJSONEncoder(testSchema)
	d, err := NewJSONDecoder(testSchema, "")
	if err != nil {
		t.Fatal(err)
	}
	batch := randomBatch(r, testSchema, 500)
	var line []byte
	for i, want := range batch.Records {
		line = e.Append(line[:0], &want)
		if !json.Valid(line) {
			t.Fatalf("record %d: invalid JSON %s", i, line)
		}
		var got Record
		if err := d.Decode(line[:len(line)-1], i, &got); err != nil {
			t.Fatalf("record %d: %v in %s", i, err, line)
		}
		for j, w := range want.Values {
			g := got.Values[j]
			switch {
			case w.T == TypeFloat && math.IsNaN(w.F):
				w = Value{} // NaN is written as null
			case w.T == TypeString:
				w.S = perByteValidUTF8(w.S)
			}
			if !sameValue(g, w) {
				t.Fatalf("record %d field %d: got %+v, want %+v (line %s)", i, j, g, w, line)
			}
		}
	}
}

// perByteValidUTF8 replaces each invalid byte with U+FFFD, as
// encoding/json (and JSONEncoder) do.
func perByteValidUTF8(s string) string {
	var b strings.Builder
	for _, r := range s {
		b.WriteRune(r) // ranging yields U+FFFD per invalid byte
	}
	return b.String()
}

func FuzzJSONDecode(f *testing.F) {
	f.Add([]byte(`{"auction":1,"price":2.5,"channel":"web","ok":true,"dateTime":99}`))
	f.Add([]byte(`{"x":{"y":[1,2,{"z":null}]},"channel":"\u00e9\"","dateTime":-1}`))
	f.Add([]byte(`{"price":1e400,"dateTime":1}`))
	f.Add([]byte(`{`))
	d, err := NewJSONDecoder(testSchema, "dateTime")
	if err != nil {
		f.Fatal(err)
	}
	e := NewJSONEncoder(testSchema)
	f.Fuzz(func(t *testing.T, line []byte) {
		var rec Record
		err := d.Decode(line, 1, &rec)
		if err != nil {
			var je *JSONError
			if !errors.As(err, &je) {
				t.Fatalf("error is not a *JSONError: %v", err)
			}
			return
		}
		if !json.Valid(line) {
			t.Fatalf("accepted invalid JSON %q", line)
		}
		// What was accepted encodes to JSON that decodes to the same record.
		out := e.Append(nil, &rec)
		var again Record
		if err := d.Decode(out, 1, &again); err != nil {
			t.Fatalf("re-decoding %s: %v", out, err)
		}
		for i := range rec.Values {
			w := rec.Values[i]
			if w.T == TypeFloat && (math.IsNaN(w.F) || math.IsInf(w.F, 0)) {
				continue
			}
			if !sameValue(w, again.Values[i]) {
				t.Fatalf("field %d: %+v became %+v via %s", i, w, again.Values[i], out)
			}
		}
	})
}

var benchLine = []byte(`{"type":"bid","auction":1007,"bidder":2001,"price":1234.5,"channel":"channel-3","url":"https://www.nexmark.com/x/y/item.htm?query=1","dateTime":1700000000123,"extra":"","ok":false}`)

func BenchmarkJSONDecode(b *testing.B) {
	d, _ := NewJSONDecoder(testSchema, "dateTime")
	var rec Record
	b.SetBytes(int64(len(benchLine)))
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Decode(benchLine, 1, &rec); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/record")
}

// BenchmarkJSONDecodeStdlib is the encoding/json baseline for the same line.
func BenchmarkJSONDecodeStdlib(b *testing.B) {
	var v struct {
		Auction  int64   `json:"auction"`
		Price    float64 `json:"price"`
		Channel  string  `json:"channel"`
		OK       bool    `json:"ok"`
		DateTime int64   `json:"dateTime"`
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := json.Unmarshal(benchLine, &v); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/record")
}

func BenchmarkJSONEncode(b *testing.B) {
	e := NewJSONEncoder(testSchema)
	rec := Record{Values: []Value{Int(1007), Float(1234.5), String("channel-3"), Bool(false), Int(1700000000123)}}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = e.Append(buf[:0], &rec)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/record")
}

var bidSchema = &Schema{Fields: []Field{
	{Name: "auction", Type: TypeInt}, {Name: "bidder", Type: TypeInt}, {Name: "price", Type: TypeInt},
	{Name: "channel", Type: TypeString}, {Name: "url", Type: TypeString}, {Name: "dateTime", Type: TypeInt},
	{Name: "extra", Type: TypeString},
}}

var bidLine = []byte(`{"type":"bid","auction":1007,"bidder":2001,"price":1234,"channel":"channel-3","url":"https://www.nexmark.com/x/y/item.htm?query=1","dateTime":1700000000123,"extra":""}`)

// BenchmarkJSONDecodeBid decodes a Nexmark bid line into the full bid schema.
func BenchmarkJSONDecodeBid(b *testing.B) {
	d, _ := NewJSONDecoder(bidSchema, "dateTime")
	var rec Record
	b.SetBytes(int64(len(bidLine)))
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Decode(bidLine, 1, &rec); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/record")
}
