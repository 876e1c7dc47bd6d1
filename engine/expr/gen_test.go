package expr

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

// exprGen generates random well-typed expressions built only from the forms
// the closure compiler handles.
type exprGen struct{ r *rand.Rand }

func (g *exprGen) pick(opts ...string) string { return opts[g.r.IntN(len(opts))] }

func (g *exprGen) gen(t record.Type, depth int) string {
	leaf := depth <= 0 || g.r.IntN(4) == 0
	switch t {
	case record.TypeInt:
		if leaf {
			return g.pick("i", "j", "0", "1", "-1", "7", "123", "9223372036854775807", "-9223372036854775807")
		}
		switch g.r.IntN(6) {
		case 5:
			return fmt.Sprintf("size(%s)", g.gen(record.TypeString, depth-1))
		case 0:
			return fmt.Sprintf("(%s %s %s)", g.gen(t, depth-1), g.pick("+", "-", "*", "/", "%"), g.gen(t, depth-1))
		case 1:
			return fmt.Sprintf("-(%s)", g.gen(t, depth-1))
		case 2:
			return fmt.Sprintf("int(%s)", g.gen(record.TypeFloat, depth-1))
		case 3:
			return fmt.Sprintf("(%s ? %s : %s)", g.gen(record.TypeBool, depth-1), g.gen(t, depth-1), g.gen(t, depth-1))
		default:
			return fmt.Sprintf("int(%s)", g.gen(t, depth-1))
		}
	case record.TypeFloat:
		if leaf {
			return g.pick("x", "y", "0.0", "1.5", "-2.25", "0.908", "1e300", "9223372036854775807.0", "-9.3e18")
		}
		switch g.r.IntN(4) {
		case 0:
			return fmt.Sprintf("(%s %s %s)", g.gen(t, depth-1), g.pick("+", "-", "*", "/"), g.gen(t, depth-1))
		case 1:
			return fmt.Sprintf("-(%s)", g.gen(t, depth-1))
		case 2:
			return fmt.Sprintf("double(%s)", g.gen(record.TypeInt, depth-1))
		default:
			return fmt.Sprintf("(%s ? %s : %s)", g.gen(record.TypeBool, depth-1), g.gen(t, depth-1), g.gen(t, depth-1))
		}
	case record.TypeString:
		if leaf {
			return g.pick("s", "t", "''", "'a'", "'OR'")
		}
		if g.r.IntN(2) == 0 {
			return fmt.Sprintf("(%s + %s)", g.gen(t, depth-1), g.gen(t, depth-1))
		}
		return fmt.Sprintf("(%s ? %s : %s)", g.gen(record.TypeBool, depth-1), g.gen(t, depth-1), g.gen(t, depth-1))
	default:
		if leaf {
			return g.pick("b", "true", "false")
		}
		switch g.r.IntN(9) {
		case 7:
			num := []record.Type{record.TypeInt, record.TypeFloat}
			return fmt.Sprintf("(%s %s %s)", g.gen(num[g.r.IntN(2)], depth-1), g.pick("<", "<=", ">", ">="), g.gen(num[g.r.IntN(2)], depth-1))
		case 8:
			return fmt.Sprintf("%s.%s(%s)", g.gen(record.TypeString, 0), g.pick("startsWith", "endsWith", "contains"), g.gen(record.TypeString, depth-1))
		case 0:
			ct := []record.Type{record.TypeInt, record.TypeFloat, record.TypeString}[g.r.IntN(3)]
			return fmt.Sprintf("(%s %s %s)", g.gen(ct, depth-1), g.pick("<", "<=", ">", ">=", "==", "!="), g.gen(ct, depth-1))
		case 1:
			return fmt.Sprintf("(%s %s %s)", g.gen(t, depth-1), g.pick("&&", "||", "==", "!="), g.gen(t, depth-1))
		case 2:
			return fmt.Sprintf("!(%s)", g.gen(t, depth-1))
		case 3:
			return fmt.Sprintf("(%s in [1, 7, -1, 123])", g.gen(record.TypeInt, depth-1))
		case 4:
			return fmt.Sprintf("(%s in ['a', 'OR', ''])", g.gen(record.TypeString, depth-1))
		case 5:
			return fmt.Sprintf("(%s in [1.5, 0.0])", g.gen(record.TypeFloat, depth-1))
		default:
			return fmt.Sprintf("(%s ? %s : %s)", g.gen(t, depth-1), g.gen(t, depth-1), g.gen(t, depth-1))
		}
	}
}

// TestDifferentialRandom generates random expressions from the compiled
// forms and checks that they compile to closures and agree with the CEL
// interpreter on random records (values, and whether evaluation fails).
func TestDifferentialRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	g := &exprGen{r: r}
	env, err := NewEnv(schema)
	if err != nil {
		t.Fatal(err)
	}
	recs := make([]*record.Record, 100)
	for i := range recs {
		recs[i] = randomRecord(r)
		if i%10 == 0 {
			recs[i].Values[r.IntN(len(schema.Fields))] = record.Value{} // a null field
		}
	}
	types := []record.Type{record.TypeBool, record.TypeInt, record.TypeFloat, record.TypeString}
	n := 300
	if testing.Short() {
		n = 50
	}
	for k := range n {
		src := g.gen(types[k%len(types)], 4)
		fast, err := env.Compile(src, record.TypeNull)
		if err != nil {
			// CEL folds constant subexpressions when planning: one that
			// always fails (int(1e300)) fails to compile, on both paths.
			if strings.Contains(err.Error(), "plan:") {
				continue
			}
			t.Fatalf("%s: %v", src, err)
		}
		if !fast.Compiled() {
			t.Fatalf("%s: not compiled to closures", src)
		}
		slow, err := env.Compile(src, record.TypeNull, InterpretOnly())
		if err != nil {
			t.Fatal(err)
		}
		for _, rec := range recs {
			fv, ferr := fast.Eval(rec)
			sv, serr := slow.Eval(rec)
			if (ferr != nil) != (serr != nil) || (ferr == nil && !sameValue(fv, sv)) {
				t.Fatalf("%s over %v:\ncompiled %+v, %v\nCEL      %+v, %v", src, rec.Values, fv, ferr, sv, serr)
			}
		}
	}
}

// FuzzCompile compiles arbitrary expression text (specs carry it from
// untrusted authors): it must never panic, and whenever the closure compiler
// takes an expression, both paths must agree on every test record.
func FuzzCompile(f *testing.F) {
	for _, e := range exprs {
		f.Add(e.src)
	}
	f.Add("(i / j > 1) && false || s.contains(t)")
	f.Add("int(x) % 0")
	f.Add(")(")
	env, err := NewEnv(schema)
	if err != nil {
		f.Fatal(err)
	}
	r := rand.New(rand.NewPCG(17, 18))
	recs := make([]*record.Record, 40)
	for i := range recs {
		recs[i] = randomRecord(r)
	}
	recs = append(recs, &record.Record{Values: make([]record.Value, len(schema.Fields))})
	f.Fuzz(func(t *testing.T, src string) {
		if len(src) > 512 {
			return
		}
		fast, err := env.Compile(src, record.TypeNull)
		if err != nil || !fast.Compiled() {
			return
		}
		slow, err := env.Compile(src, record.TypeNull, InterpretOnly())
		if err != nil {
			t.Fatalf("%q compiles only on the fast path: %v", src, err)
		}
		for _, rec := range recs {
			fv, ferr := fast.Eval(rec)
			sv, serr := slow.Eval(rec)
			if (ferr != nil) != (serr != nil) || (ferr == nil && !sameValue(fv, sv)) {
				t.Fatalf("%s over %v:\ncompiled %+v, %v\nCEL      %+v, %v", src, rec.Values, fv, ferr, sv, serr)
			}
		}
	})
}
