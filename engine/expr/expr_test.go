package expr

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

var schema = &record.Schema{Fields: []record.Field{
	{Name: "i", Type: record.TypeInt},
	{Name: "j", Type: record.TypeInt},
	{Name: "x", Type: record.TypeFloat},
	{Name: "y", Type: record.TypeFloat},
	{Name: "s", Type: record.TypeString},
	{Name: "t", Type: record.TypeString},
	{Name: "b", Type: record.TypeBool},
}}

// exprs are evaluated on both paths; compiled says whether the fast path
// must take the expression.
var exprs = []struct {
	src      string
	compiled bool
}{
	{"i", true},
	{"42", true},
	{"i + j", true},
	{"i - j", true},
	{"i * j", true},
	{"i / j", true},
	{"i % j", true},
	{"-i", true},
	{"i % 123 == 0", true},
	{"i > j && b", true},
	{"i < j || !b", true},
	{"i <= 3 || i >= 7", true},
	{"i != j", true},
	{"x + y", true},
	{"x - y * 0.908", true},
	{"x / y", true},
	{"-x", true},
	{"x < y", true},
	{"x <= y", true},
	{"x > 1.5", true},
	{"x >= y", true},
	{"x == y", true},
	{"x != y", true},
	{"s == t", true},
	{"s != 'a'", true},
	{"s < t", true},
	{"s + t", true},
	{"s in ['OR', 'ID', 'CA']", true},
	{"i in [1, 2, 3, -1]", true},
	{"x in [0.0, 1.5]", true},
	{"b in [true]", true},
	{"int(x)", true},
	{"int(x) + i", true},
	{"double(i) * 0.908", true},
	{"double(i) / x", true},
	{"int(i)", true},
	{"double(x)", true},
	{"b == (i > 0)", true},
	{"b ? i : j", true},
	{"i > 0 ? s : t", true},
	{"x > 0.0 ? x : -x", true},
	{"b ? b : !b", true},
	{"(i / j > 1) && false", true},  // error absorbed by false on the right
	{"false || (i % j == 0)", true}, // error passed through
	{"(i / j > 1) || true", true},   // error absorbed by true
	{"i * i * i > j", true},         // overflow errors
	{"i - j + 9223372036854775807 > 0", true},
	{"int(x * 1e30) > 0", true}, // int() range errors
	{"size(s)", true},
	{"s.size() + size(t)", true},
	{"s.startsWith('a')", true},
	{"s.endsWith(t)", true},
	{"s.contains('R')", true},
	{"i < x", true}, // cross-type comparisons with CEL's numeric rules
	{"x <= i", true},
	{"x > j", true},
	{"i >= y", true},
	{"i == x", false}, // refused by CEL's checker: skipped below
	{"s.matches('^O')", false},
	{"s.lowerAscii() == 'or'", false},
	{"i in [1, j]", false},
	{"[i, j].exists(v, v > 3)", false},
	{"string(i)", false},
	{"int('5' + s) > 0", false},
}

func edgeInts() []int64 {
	return []int64{0, 1, -1, 2, 7, 123, 246, math.MinInt64, math.MaxInt64, 1 << 32}
}
func edgeFloats() []float64 {
	return []float64{0, math.Copysign(0, -1), 1.5, -2.25, math.NaN(), math.Inf(1), math.Inf(-1), 1e300, 9.3e18, -9.3e18}
}

var edgeStrings = []string{"", "a", "OR", "ID", "ab", "Zürich"}

func randomRecord(r *rand.Rand) *record.Record {
	pickI := func() int64 {
		if r.IntN(2) == 0 {
			e := edgeInts()
			return e[r.IntN(len(e))]
		}
		return r.Int64N(2001) - 1000
	}
	pickF := func() float64 {
		if r.IntN(3) == 0 {
			e := edgeFloats()
			return e[r.IntN(len(e))]
		}
		return r.NormFloat64() * 100
	}
	pickS := func() string { return edgeStrings[r.IntN(len(edgeStrings))] }
	return &record.Record{Values: []record.Value{
		record.Int(pickI()), record.Int(pickI()),
		record.Float(pickF()), record.Float(pickF()),
		record.String(pickS()), record.String(pickS()),
		record.Bool(r.IntN(2) == 0),
	}}
}

func sameValue(a, b record.Value) bool {
	if a.T == record.TypeFloat && b.T == record.TypeFloat && math.IsNaN(a.F) && math.IsNaN(b.F) {
		return true
	}
	return a.T == b.T && a.I == b.I && math.Float64bits(a.F) == math.Float64bits(b.F) && a.S == b.S
}

// TestDifferential evaluates every expression with the compiled closures and
// with the CEL interpreter over random and edge-case records: the results, and
// whether evaluation failed, must be identical.
func TestDifferential(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	recs := make([]*record.Record, 3000)
	for i := range recs {
		recs[i] = randomRecord(r)
	}
	// Null values (missing JSON fields) must fail the same way on both paths.
	recs = append(recs, &record.Record{Values: make([]record.Value, len(schema.Fields))})
	for _, e := range exprs {
		t.Run(e.src, func(t *testing.T) {
			fast, err := Compile(e.src, schema, record.TypeNull)
			if e.src == "i == x" {
				if err == nil {
					t.Fatal("CEL now accepts == between int and double: compile it on the fast path")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fast.Compiled() != e.compiled {
				t.Fatalf("Compiled() = %v, want %v", fast.Compiled(), e.compiled)
			}
			slow, err := Compile(e.src, schema, record.TypeNull, InterpretOnly())
			if err != nil {
				t.Fatal(err)
			}
			if slow.Compiled() {
				t.Fatal("InterpretOnly program is compiled")
			}
			errs := 0
			for _, rec := range recs {
				fv, ferr := fast.Eval(rec)
				sv, serr := slow.Eval(rec)
				if (ferr != nil) != (serr != nil) {
					t.Fatalf("record %v: compiled error %v, CEL error %v", rec.Values, ferr, serr)
				}
				if ferr != nil {
					errs++
					continue
				}
				if !sameValue(fv, sv) {
					t.Fatalf("record %v: compiled %+v, CEL %+v", rec.Values, fv, sv)
				}
			}
			if errs == len(recs) {
				t.Fatalf("every evaluation failed: the test compares nothing")
			}
		})
	}
}

// TestCompiledErrorsMatchCEL checks that arithmetic failures carry CEL's
// messages on the compiled path.
func TestCompiledErrorsMatchCEL(t *testing.T) {
	tests := []struct {
		src  string
		vals []record.Value
		want string
	}{
		{"i / j", []record.Value{record.Int(1), record.Int(0)}, "division by zero"},
		{"i % j", []record.Value{record.Int(1), record.Int(0)}, "modulus by zero"},
		{"i + j", []record.Value{record.Int(math.MaxInt64), record.Int(1)}, "integer overflow"},
		{"-i", []record.Value{record.Int(math.MinInt64), record.Int(0)}, "integer overflow"},
		{"int(x)", []record.Value{{}, {}, record.Float(math.NaN())}, "integer overflow"},
		{"i + 1 > 0", nil, "no such overload"},
		{"!b", nil, "no such overload"},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			vals := make([]record.Value, len(schema.Fields))
			copy(vals, tt.vals)
			rec := &record.Record{Values: vals}
			for _, opts := range [][]Option{nil, {InterpretOnly()}} {
				p, err := Compile(tt.src, schema, record.TypeNull, opts...)
				if err != nil {
					t.Fatal(err)
				}
				_, err = p.Eval(rec)
				if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.src) {
					t.Errorf("compiled=%v: got %v, want an error naming %q and containing %q", p.Compiled(), err, tt.src, tt.want)
				}
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		src  string
		want record.Type
		err  string
	}{
		{"i +", record.TypeNull, "Syntax error"},
		{"nope > 1", record.TypeBool, "undeclared reference to 'nope'"},
		{"s + 1", record.TypeNull, "found no matching overload"},
		{"i + 1", record.TypeBool, "has type int, want bool"},
		{"[i]", record.TypeNull, "is not one of int, double, string or bool"},
		{"{'a': i}", record.TypeNull, "is not one of"},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			_, err := Compile(tt.src, schema, tt.want)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("got %v, want error containing %q", err, tt.err)
			}
		})
	}
	bad := &record.Schema{Fields: []record.Field{{Name: "in", Type: record.TypeInt}}}
	if _, err := Compile("1", bad, record.TypeNull); err == nil || !strings.Contains(err.Error(), `"in" cannot be used`) {
		t.Errorf("reserved field name: got %v", err)
	}
	dup := &record.Schema{Fields: []record.Field{{Name: "a", Type: record.TypeInt}, {Name: "a", Type: record.TypeInt}}}
	if _, err := Compile("a", dup, record.TypeNull); err == nil || !strings.Contains(err.Error(), "duplicate") {
		t.Errorf("duplicate field name: got %v", err)
	}
}

func TestTypedEval(t *testing.T) {
	rec := &record.Record{Values: []record.Value{record.Int(246), record.Int(5), record.Float(2.5), record.Float(0),
		record.String("OR"), record.String("x"), record.Bool(true)}}
	for _, opts := range [][]Option{nil, {InterpretOnly()}} {
		pb, _ := Compile("i % 123 == 0", schema, record.TypeBool, opts...)
		if v, err := pb.EvalBool(rec); err != nil || !v {
			t.Errorf("EvalBool = %v, %v", v, err)
		}
		pi, _ := Compile("i / j", schema, record.TypeInt, opts...)
		if v, err := pi.EvalInt(rec); err != nil || v != 49 {
			t.Errorf("EvalInt = %v, %v", v, err)
		}
		pf, _ := Compile("x * 0.908", schema, record.TypeFloat, opts...)
		if v, err := pf.EvalFloat(rec); err != nil || v != 2.5*0.908 {
			t.Errorf("EvalFloat = %v, %v", v, err)
		}
		ps, _ := Compile("s + t", schema, record.TypeString, opts...)
		if v, err := ps.EvalString(rec); err != nil || v != "ORx" {
			t.Errorf("EvalString = %v, %v", v, err)
		}
		if _, err := pi.EvalBool(rec); !errors.Is(err, ErrType) {
			t.Errorf("EvalBool on an int program: got %v, want ErrType", err)
		}
	}
}

func TestEvalList(t *testing.T) {
	p, err := CompileList("s.split(',')", schema, record.TypeString)
	if err != nil {
		t.Fatal(err)
	}
	rec := &record.Record{Values: make([]record.Value, len(schema.Fields))}
	rec.Values[4] = record.String("a,b,c")
	got, err := p.EvalList(rec, nil)
	if err != nil || len(got) != 3 || got[2] != record.String("c") {
		t.Fatalf("EvalList = %v, %v", got, err)
	}
	if _, err := CompileList("s", schema, record.TypeNull); err == nil || !strings.Contains(err.Error(), "want a list") {
		t.Errorf("non-list: got %v", err)
	}
	if _, err := CompileList("[i, j]", schema, record.TypeString); err == nil || !strings.Contains(err.Error(), "element type int, want string") {
		t.Errorf("wrong element type: got %v", err)
	}
}

func TestFields(t *testing.T) {
	p, err := Compile("t == 'x' && i > j + 1 && i < 9", schema, record.TypeBool)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.Fields(), ","); got != "i,j,t" {
		t.Errorf("Fields() = %s, want i,j,t", got)
	}
}

// benchExprs are typical filter and projection expressions from Nexmark.
var benchExprs = []string{
	"i % 123 == 0",
	"x * 0.908",
	"s in ['OR', 'ID', 'CA'] && i == 10",
	"i > j && x >= 1.5 || s == 'ID'",
}

func BenchmarkEval(b *testing.B) {
	r := rand.New(rand.NewPCG(13, 14))
	recs := make([]*record.Record, 1024)
	for i := range recs {
		recs[i] = randomRecord(r)
		recs[i].Values[2] = record.Float(r.Float64() * 100)
	}
	for _, src := range benchExprs {
		for _, mode := range []struct {
			name string
			opts []Option
		}{{"cel", []Option{InterpretOnly()}}, {"compiled", nil}} {
			b.Run(mode.name+"/"+src, func(b *testing.B) {
				p, err := Compile(src, schema, record.TypeNull, mode.opts...)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				n := 0
				for b.Loop() {
					if _, err := p.Eval(recs[n%len(recs)]); err != nil {
						b.Fatal(err)
					}
					n++
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/record")
			})
		}
	}
}

func BenchmarkCompile(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Compile("s in ['OR', 'ID', 'CA'] && i == 10", schema, record.TypeBool); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEnvCompile(b *testing.B) {
	env, err := NewEnv(schema)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := env.Compile("s in ['OR', 'ID', 'CA'] && i == 10", record.TypeBool); err != nil {
			b.Fatal(err)
		}
	}
}

// TestConcurrentEval evaluates one Program from several goroutines (run with
// -race): Programs are documented as safe for concurrent use.
func TestConcurrentEval(t *testing.T) {
	for _, opts := range [][]Option{nil, {InterpretOnly()}} {
		p, err := Compile("i % 7 == 0 || s.startsWith('O')", schema, record.TypeBool, opts...)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error)
		for g := range 4 {
			go func() {
				r := rand.New(rand.NewPCG(uint64(g), 1))
				for range 200 {
					rec := randomRecord(r)
					want := rec.Values[0].I%7 == 0 || strings.HasPrefix(rec.Values[4].S, "O")
					got, err := p.EvalBool(rec)
					if err != nil || got != want {
						done <- fmt.Errorf("%v: got %v, %v; want %v", rec.Values, got, err, want)
						return
					}
				}
				done <- nil
			}()
		}
		for range 4 {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	}
}

// TestRecordNotFollowingSchema checks that a value of another type than the
// schema's fails on both paths with the same message.
func TestRecordNotFollowingSchema(t *testing.T) {
	rec := &record.Record{Values: make([]record.Value, len(schema.Fields))}
	rec.Values[0] = record.String("7") // i is an int field
	for _, opts := range [][]Option{nil, {InterpretOnly()}} {
		p, err := Compile("i + 1", schema, record.TypeInt, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Eval(rec); err == nil || !strings.Contains(err.Error(), `field "i" is string, want int`) {
			t.Errorf("compiled=%v: got %v", p.Compiled(), err)
		}
	}
}
