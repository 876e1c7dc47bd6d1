package expr

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	celast "github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/operators"
	"github.com/google/cel-go/common/types"

	"github.com/sealflow/sealflow/engine/record"
)

// node is a compiled sub-expression: exactly one of the closures, selected
// by t, is set.
type node struct {
	t record.Type
	i func(*record.Record) (int64, error)
	f func(*record.Record) (float64, error)
	s func(*record.Record) (string, error)
	b func(*record.Record) (bool, error)

	// lit holds the value of a literal node, so that `in` can build its set.
	lit *record.Value
}

// compiler translates a checked CEL AST into closures. compile returns false
// for any form it does not handle; the whole expression then runs on the CEL
// interpreter.
type compiler struct {
	names map[string]int
	types []record.Type // field types by index
}

func (c *compiler) compile(e celast.Expr) (node, bool) {
	switch e.Kind() {
	case celast.IdentKind:
		return c.ident(e.AsIdent())
	case celast.LiteralKind:
		return literal(e.AsLiteral())
	case celast.CallKind:
		return c.call(e.AsCall())
	}
	return node{}, false
}

// errNull is what a field node returns for a null value. Only ==, !=, `in`
// and the branches of ?: (and the program's result) accept a null operand, as
// in CEL; every other operator turns it into errNullOperand with nonNull.
var errNull = errors.New("null value")

// errNullOperand is the failure of an operator applied to null; CEL reports
// it as "no such overload".
var errNullOperand = errors.New("no such overload (null operand)")

// nonNull turns errNull into errNullOperand.
func nonNull(err error) error {
	if err == errNull {
		return errNullOperand
	}
	return err
}

// fieldErr reports a field whose value does not have the schema's type
// (typically null, from a missing JSON field).
func fieldErr(name string, want record.Type, got record.Type) error {
	return fmt.Errorf("field %q is %s, want %s", name, got, want)
}

func (c *compiler) ident(name string) (node, bool) {
	idx, ok := c.names[name]
	if !ok || idx >= len(c.types) {
		return node{}, false
	}
	return fieldNode(name, idx, c.types[idx])
}

// fieldNode reads field idx of the record. A value whose type is not the
// schema's (null from a missing JSON field, or a record of another schema)
// is an evaluation error, as it is for the CEL interpreter.
func fieldNode(name string, idx int, t record.Type) (node, bool) {
	bad := func(r *record.Record) error {
		if idx >= len(r.Values) {
			return fmt.Errorf("field %q missing: record has %d values", name, len(r.Values))
		}
		if r.Values[idx].T == record.TypeNull {
			return errNull
		}
		return fieldErr(name, t, r.Values[idx].T)
	}
	switch t {
	case record.TypeInt:
		return node{t: t, i: func(r *record.Record) (int64, error) {
			if idx < len(r.Values) && r.Values[idx].T == record.TypeInt {
				return r.Values[idx].I, nil
			}
			return 0, bad(r)
		}}, true
	case record.TypeFloat:
		return node{t: t, f: func(r *record.Record) (float64, error) {
			if idx < len(r.Values) && r.Values[idx].T == record.TypeFloat {
				return r.Values[idx].F, nil
			}
			return 0, bad(r)
		}}, true
	case record.TypeString:
		return node{t: t, s: func(r *record.Record) (string, error) {
			if idx < len(r.Values) && r.Values[idx].T == record.TypeString {
				return r.Values[idx].S, nil
			}
			return "", bad(r)
		}}, true
	case record.TypeBool:
		return node{t: t, b: func(r *record.Record) (bool, error) {
			if idx < len(r.Values) && r.Values[idx].T == record.TypeBool {
				return r.Values[idx].I != 0, nil
			}
			return false, bad(r)
		}}, true
	}
	return node{}, false
}

func literal(v any) (node, bool) {
	switch x := v.(type) {
	case types.Int:
		val := int64(x)
		return node{t: record.TypeInt, lit: &record.Value{T: record.TypeInt, I: val},
			i: func(*record.Record) (int64, error) { return val, nil }}, true
	case types.Double:
		val := float64(x)
		return node{t: record.TypeFloat, lit: &record.Value{T: record.TypeFloat, F: val},
			f: func(*record.Record) (float64, error) { return val, nil }}, true
	case types.String:
		val := string(x)
		return node{t: record.TypeString, lit: &record.Value{T: record.TypeString, S: val},
			s: func(*record.Record) (string, error) { return val, nil }}, true
	case types.Bool:
		val := bool(x)
		return node{t: record.TypeBool, lit: &record.Value{T: record.TypeBool, I: b2i(val)},
			b: func(*record.Record) (bool, error) { return val, nil }}, true
	}
	return node{}, false
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func (c *compiler) call(call celast.CallExpr) (node, bool) {
	args := call.Args()
	fn := call.FunctionName()
	if call.IsMemberFunction() {
		return c.member(fn, call.Target(), args)
	}
	switch fn {
	case operators.In:
		return c.in(args)
	}
	ns := make([]node, len(args))
	for i, a := range args {
		n, ok := c.compile(a)
		if !ok {
			return node{}, false
		}
		ns[i] = n
	}
	switch len(ns) {
	case 1:
		return unary(fn, ns[0])
	case 2:
		if ns[0].t != ns[1].t {
			return mixed(fn, ns[0], ns[1])
		}
		return binary(fn, ns[0], ns[1])
	case 3:
		if fn != operators.Conditional || ns[0].t != record.TypeBool || ns[1].t != ns[2].t {
			return node{}, false
		}
		return conditional(ns[0], ns[1], ns[2]), true
	}
	return node{}, false
}

func unary(fn string, a node) (node, bool) {
	switch fn {
	case operators.LogicalNot:
		if a.t != record.TypeBool {
			return node{}, false
		}
		ab := a.b
		return node{t: record.TypeBool, b: func(r *record.Record) (bool, error) {
			v, err := ab(r)
			return !v, nonNull(err)
		}}, true
	case operators.Negate:
		switch a.t {
		case record.TypeInt:
			ai := a.i
			return node{t: record.TypeInt, i: func(r *record.Record) (int64, error) {
				v, err := ai(r)
				if err != nil {
					return 0, nonNull(err)
				}
				if v == math.MinInt64 {
					return 0, errIntOverflow
				}
				return -v, nil
			}}, true
		case record.TypeFloat:
			af := a.f
			return node{t: record.TypeFloat, f: func(r *record.Record) (float64, error) {
				v, err := af(r)
				return -v, nonNull(err)
			}}, true
		}
	case "int":
		switch a.t {
		case record.TypeInt:
			ai := a.i
			return node{t: record.TypeInt, i: func(r *record.Record) (int64, error) {
				v, err := ai(r)
				return v, nonNull(err)
			}}, true
		case record.TypeFloat:
			af := a.f
			return node{t: record.TypeInt, i: func(r *record.Record) (int64, error) {
				v, err := af(r)
				if err != nil {
					return 0, nonNull(err)
				}
				if math.IsInf(v, 0) || math.IsNaN(v) || v <= float64(math.MinInt64) || v >= float64(math.MaxInt64) {
					return 0, errIntOverflow
				}
				return int64(v), nil
			}}, true
		}
	case "size":
		if a.t == record.TypeString {
			return sizeNode(a.s), true
		}
	case "double":
		switch a.t {
		case record.TypeFloat:
			af := a.f
			return node{t: record.TypeFloat, f: func(r *record.Record) (float64, error) {
				v, err := af(r)
				return v, nonNull(err)
			}}, true
		case record.TypeInt:
			ai := a.i
			return node{t: record.TypeFloat, f: func(r *record.Record) (float64, error) {
				v, err := ai(r)
				return float64(v), nonNull(err)
			}}, true
		}
	}
	return node{}, false
}

func conditional(c, a, b node) node {
	cb := c.b
	switch a.t {
	case record.TypeInt:
		ai, bi := a.i, b.i
		return node{t: a.t, i: func(r *record.Record) (int64, error) {
			ok, err := cb(r)
			if err != nil {
				return 0, nonNull(err)
			}
			if ok {
				return ai(r)
			}
			return bi(r)
		}}
	case record.TypeFloat:
		af, bf := a.f, b.f
		return node{t: a.t, f: func(r *record.Record) (float64, error) {
			ok, err := cb(r)
			if err != nil {
				return 0, nonNull(err)
			}
			if ok {
				return af(r)
			}
			return bf(r)
		}}
	case record.TypeString:
		as, bs := a.s, b.s
		return node{t: a.t, s: func(r *record.Record) (string, error) {
			ok, err := cb(r)
			if err != nil {
				return "", nonNull(err)
			}
			if ok {
				return as(r)
			}
			return bs(r)
		}}
	default:
		ab, bb := a.b, b.b
		return node{t: a.t, b: func(r *record.Record) (bool, error) {
			ok, err := cb(r)
			if err != nil {
				return false, nonNull(err)
			}
			if ok {
				return ab(r)
			}
			return bb(r)
		}}
	}
}

func binary(fn string, a, b node) (node, bool) {
	switch a.t {
	case record.TypeBool:
		return binaryBool(fn, a.b, b.b)
	case record.TypeInt:
		return binaryInt(fn, a.i, b.i)
	case record.TypeFloat:
		return binaryFloat(fn, a.f, b.f)
	case record.TypeString:
		return binaryString(fn, a.s, b.s)
	}
	return node{}, false
}

func boolNode(f func(*record.Record) (bool, error)) node { return node{t: record.TypeBool, b: f} }

// eval2 evaluates both operands of an operator that refuses null.
func eval2[T any](r *record.Record, a, b func(*record.Record) (T, error)) (x, y T, err error) {
	if x, err = a(r); err != nil {
		return x, y, nonNull(err)
	}
	if y, err = b(r); err != nil {
		return x, y, nonNull(err)
	}
	return x, y, nil
}

// cmpNode compares two operands with op.
func cmpNode[T any](a, b func(*record.Record) (T, error), op func(x, y T) bool) (node, bool) {
	return boolNode(func(r *record.Record) (bool, error) {
		x, y, err := eval2(r, a, b)
		if err != nil {
			return false, err
		}
		return op(x, y), nil
	}), true
}

// eqNode is == (or != when ne) with CEL's null handling: null equals null
// and nothing else. NaN equals nothing, as in Go.
func eqNode[T comparable](a, b func(*record.Record) (T, error), ne bool) (node, bool) {
	return boolNode(func(r *record.Record) (bool, error) {
		x, xe := a(r)
		if xe != nil && xe != errNull {
			return false, xe
		}
		y, ye := b(r)
		if ye != nil && ye != errNull {
			return false, ye
		}
		if xe != nil || ye != nil {
			return (xe == ye) != ne, nil
		}
		return (x == y) != ne, nil
	}), true
}

func binaryBool(fn string, a, b func(*record.Record) (bool, error)) (node, bool) {
	switch fn {
	case operators.LogicalAnd:
		// CEL's && is commutative over errors: false on either side wins.
		return boolNode(func(r *record.Record) (bool, error) {
			x, xe := a(r)
			if xe == nil && !x {
				return false, nil
			}
			y, ye := b(r)
			if ye == nil && !y {
				return false, nil
			}
			if xe != nil {
				return false, nonNull(xe)
			}
			if ye != nil {
				return false, nonNull(ye)
			}
			return true, nil
		}), true
	case operators.LogicalOr:
		return boolNode(func(r *record.Record) (bool, error) {
			x, xe := a(r)
			if xe == nil && x {
				return true, nil
			}
			y, ye := b(r)
			if ye == nil && y {
				return true, nil
			}
			if xe != nil {
				return false, nonNull(xe)
			}
			if ye != nil {
				return false, nonNull(ye)
			}
			return false, nil
		}), true
	case operators.Equals:
		return eqNode(a, b, false)
	case operators.NotEquals:
		return eqNode(a, b, true)
	}
	return node{}, false
}

func binaryInt(fn string, a, b func(*record.Record) (int64, error)) (node, bool) {
	arith := func(op func(x, y int64) (int64, error)) (node, bool) {
		return node{t: record.TypeInt, i: func(r *record.Record) (int64, error) {
			x, y, err := eval2(r, a, b)
			if err != nil {
				return 0, err
			}
			return op(x, y)
		}}, true
	}
	switch fn {
	case operators.Add:
		return arith(func(x, y int64) (int64, error) {
			if (y > 0 && x > math.MaxInt64-y) || (y < 0 && x < math.MinInt64-y) {
				return 0, errIntOverflow
			}
			return x + y, nil
		})
	case operators.Subtract:
		return arith(func(x, y int64) (int64, error) {
			if (y < 0 && x > math.MaxInt64+y) || (y > 0 && x < math.MinInt64+y) {
				return 0, errIntOverflow
			}
			return x - y, nil
		})
	case operators.Multiply:
		return arith(func(x, y int64) (int64, error) {
			if (x == -1 && y == math.MinInt64) || (y == -1 && x == math.MinInt64) ||
				(x > 0 && y > 0 && x > math.MaxInt64/y) ||
				(x > 0 && y < 0 && y < math.MinInt64/x) ||
				(x < 0 && y > 0 && x < math.MinInt64/y) ||
				(x < 0 && y < 0 && y < math.MaxInt64/x) {
				return 0, errIntOverflow
			}
			return x * y, nil
		})
	case operators.Divide:
		return arith(func(x, y int64) (int64, error) {
			if y == 0 {
				return 0, errDivideByZero
			}
			if x == math.MinInt64 && y == -1 {
				return 0, errIntOverflow
			}
			return x / y, nil
		})
	case operators.Modulo:
		return arith(func(x, y int64) (int64, error) {
			if y == 0 {
				return 0, errModulusByZero
			}
			if x == math.MinInt64 && y == -1 {
				return 0, errIntOverflow
			}
			return x % y, nil
		})
	case operators.Equals:
		return eqNode(a, b, false)
	case operators.NotEquals:
		return eqNode(a, b, true)
	case operators.Less:
		return cmpNode(a, b, func(x, y int64) bool { return x < y })
	case operators.LessEquals:
		return cmpNode(a, b, func(x, y int64) bool { return x <= y })
	case operators.Greater:
		return cmpNode(a, b, func(x, y int64) bool { return x > y })
	case operators.GreaterEquals:
		return cmpNode(a, b, func(x, y int64) bool { return x >= y })
	}
	return node{}, false
}

func binaryFloat(fn string, a, b func(*record.Record) (float64, error)) (node, bool) {
	arith := func(op func(x, y float64) float64) (node, bool) {
		return node{t: record.TypeFloat, f: func(r *record.Record) (float64, error) {
			x, y, err := eval2(r, a, b)
			if err != nil {
				return 0, err
			}
			return op(x, y), nil
		}}, true
	}
	// Comparisons involving NaN are false, as in the CEL interpreter and Go.
	switch fn {
	case operators.Add:
		return arith(func(x, y float64) float64 { return x + y })
	case operators.Subtract:
		return arith(func(x, y float64) float64 { return x - y })
	case operators.Multiply:
		return arith(func(x, y float64) float64 { return x * y })
	case operators.Divide:
		return arith(func(x, y float64) float64 { return x / y })
	case operators.Equals:
		return eqNode(a, b, false)
	case operators.NotEquals:
		return eqNode(a, b, true)
	case operators.Less:
		return cmpNode(a, b, func(x, y float64) bool { return x < y })
	case operators.LessEquals:
		return cmpNode(a, b, func(x, y float64) bool { return x <= y })
	case operators.Greater:
		return cmpNode(a, b, func(x, y float64) bool { return x > y })
	case operators.GreaterEquals:
		return cmpNode(a, b, func(x, y float64) bool { return x >= y })
	}
	return node{}, false
}

func binaryString(fn string, a, b func(*record.Record) (string, error)) (node, bool) {
	switch fn {
	case operators.Add:
		return node{t: record.TypeString, s: func(r *record.Record) (string, error) {
			x, y, err := eval2(r, a, b)
			if err != nil {
				return "", err
			}
			return x + y, nil
		}}, true
	case operators.Equals:
		return eqNode(a, b, false)
	case operators.NotEquals:
		return eqNode(a, b, true)
	case operators.Less:
		return cmpNode(a, b, func(x, y string) bool { return x < y })
	case operators.LessEquals:
		return cmpNode(a, b, func(x, y string) bool { return x <= y })
	case operators.Greater:
		return cmpNode(a, b, func(x, y string) bool { return x > y })
	case operators.GreaterEquals:
		return cmpNode(a, b, func(x, y string) bool { return x >= y })
	}
	return node{}, false
}

// in compiles `x in [c1, c2, ...]` where every ci is a literal of x's type.
func (c *compiler) in(args []celast.Expr) (node, bool) {
	if len(args) != 2 || args[1].Kind() != celast.ListKind {
		return node{}, false
	}
	x, ok := c.compile(args[0])
	if !ok {
		return node{}, false
	}
	list := args[1].AsList()
	if len(list.OptionalIndices()) > 0 {
		return node{}, false
	}
	var lits []record.Value
	for _, el := range list.Elements() {
		if el.Kind() != celast.LiteralKind {
			return node{}, false
		}
		n, ok := literal(el.AsLiteral())
		if !ok || n.t != x.t {
			return node{}, false
		}
		lits = append(lits, *n.lit)
	}
	switch x.t {
	case record.TypeInt:
		set := make(map[int64]struct{}, len(lits))
		for _, l := range lits {
			set[l.I] = struct{}{}
		}
		xi := x.i
		return boolNode(func(r *record.Record) (bool, error) {
			v, err := xi(r)
			if err != nil {
				return false, inErr(err)
			}
			_, ok := set[v]
			return ok, nil
		}), true
	case record.TypeString:
		set := make(map[string]struct{}, len(lits))
		for _, l := range lits {
			set[l.S] = struct{}{}
		}
		xs := x.s
		return boolNode(func(r *record.Record) (bool, error) {
			v, err := xs(r)
			if err != nil {
				return false, inErr(err)
			}
			_, ok := set[v]
			return ok, nil
		}), true
	case record.TypeFloat:
		xf := x.f
		return boolNode(func(r *record.Record) (bool, error) {
			v, err := xf(r)
			if err != nil {
				return false, inErr(err)
			}
			for _, l := range lits {
				if l.F == v {
					return true, nil
				}
			}
			return false, nil
		}), true
	case record.TypeBool:
		xb := x.b
		return boolNode(func(r *record.Record) (bool, error) {
			v, err := xb(r)
			if err != nil {
				return false, inErr(err)
			}
			for _, l := range lits {
				if (l.I != 0) == v {
					return true, nil
				}
			}
			return false, nil
		}), true
	}
	return node{}, false
}

// inErr is the result of `null in [...]`: false, as CEL's heterogeneous
// equality finds no element equal to null.
func inErr(err error) error {
	if err == errNull {
		return nil
	}
	return err
}

// sizeNode is size(s): the number of code points, as CEL counts them.
func sizeNode(a func(*record.Record) (string, error)) node {
	return node{t: record.TypeInt, i: func(r *record.Record) (int64, error) {
		v, err := a(r)
		if err != nil {
			return 0, nonNull(err)
		}
		return int64(utf8.RuneCountInString(v)), nil
	}}
}

// member compiles the string methods s.size(), s.startsWith(x),
// s.endsWith(x) and s.contains(x).
func (c *compiler) member(fn string, target celast.Expr, args []celast.Expr) (node, bool) {
	t, ok := c.compile(target)
	if !ok || t.t != record.TypeString {
		return node{}, false
	}
	if fn == "size" && len(args) == 0 {
		return sizeNode(t.s), true
	}
	if len(args) != 1 {
		return node{}, false
	}
	a, ok := c.compile(args[0])
	if !ok || a.t != record.TypeString {
		return node{}, false
	}
	var op func(s, x string) bool
	switch fn {
	case "startsWith":
		op = strings.HasPrefix
	case "endsWith":
		op = strings.HasSuffix
	case "contains":
		op = strings.Contains
	default:
		return node{}, false
	}
	return cmpNode(t.s, a.s, op)
}

// mixed compiles ordering comparisons between an int and a double, with
// CEL's numeric semantics (cross-type numeric comparisons are enabled; CEL's
// checker refuses == and != between them).
func mixed(fn string, a, b node) (node, bool) {
	var cmp func(r *record.Record) (c int, nan bool, err error, null bool)
	switch {
	case a.t == record.TypeInt && b.t == record.TypeFloat:
		ai, bf := a.i, b.f
		cmp = func(r *record.Record) (int, bool, error, bool) {
			i, ie := ai(r)
			if ie != nil && ie != errNull {
				return 0, false, ie, false
			}
			d, de := bf(r)
			if de != nil && de != errNull {
				return 0, false, de, false
			}
			if ie != nil || de != nil {
				return 0, false, nil, true
			}
			if math.IsNaN(d) {
				return 0, true, nil, false
			}
			return -compareDoubleInt(d, i), false, nil, false
		}
	case a.t == record.TypeFloat && b.t == record.TypeInt:
		af, bi := a.f, b.i
		cmp = func(r *record.Record) (int, bool, error, bool) {
			d, de := af(r)
			if de != nil && de != errNull {
				return 0, false, de, false
			}
			i, ie := bi(r)
			if ie != nil && ie != errNull {
				return 0, false, ie, false
			}
			if ie != nil || de != nil {
				return 0, false, nil, true
			}
			if math.IsNaN(d) {
				return 0, true, nil, false
			}
			return compareDoubleInt(d, i), false, nil, false
		}
	default:
		return node{}, false
	}
	var want func(c int) bool
	switch fn {
	case operators.Less:
		want = func(c int) bool { return c < 0 }
	case operators.LessEquals:
		want = func(c int) bool { return c <= 0 }
	case operators.Greater:
		want = func(c int) bool { return c > 0 }
	case operators.GreaterEquals:
		want = func(c int) bool { return c >= 0 }
	default:
		return node{}, false
	}
	return boolNode(func(r *record.Record) (bool, error) {
		c, nan, err, null := cmp(r)
		switch {
		case err != nil:
			return false, err
		case null:
			return false, errNullOperand
		case nan:
			return false, nil // NaN is unordered: every comparison is false
		}
		return want(c), nil
	}), true
}

// compareDoubleInt orders a double and an int as CEL does: doubles beyond
// the int64 range are below or above every int; otherwise the int is
// converted to a double.
func compareDoubleInt(d float64, i int64) int {
	if d < math.MinInt64 {
		return -1
	}
	if d > math.MaxInt64 {
		return 1
	}
	switch f := float64(i); {
	case d < f:
		return -1
	case d > f:
		return 1
	}
	return 0
}
