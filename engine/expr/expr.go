// Package expr compiles CEL expressions over the fields of a record and
// evaluates them per record.
//
// An expression is compiled once against a record.Schema: every field of the
// schema is a CEL variable of the matching CEL type (int, double, string,
// bool). Compile type-checks the expression and its result type. Evaluation
// takes a *record.Record whose values follow the schema.
//
// CEL's interpreter costs a few hundred nanoseconds and two or three
// allocations per record for small expressions (see BenchmarkEval). For the
// hot forms that JobSpecs use in filters and projections (field references,
// literals, arithmetic, comparisons including int-double ones, boolean logic,
// string equality and concatenation, `in` over a constant list,
// int()/double() casts, the conditional operator, size() and the string
// methods startsWith, endsWith and contains), Compile translates the checked
// CEL AST into Go closures with CEL's exact semantics: overflow and division
// errors, NaN comparisons, null fields (equal only to null, an error
// elsewhere) and error absorption by && and ||. The closures are several
// times faster and do not allocate. Anything else falls back to the CEL
// interpreter, so every valid CEL expression still works; Program.Compiled
// reports which path was taken. Differential tests and a fuzz target check
// that both paths agree.
//
// The CEL environment includes the strings extension (split, lowerAscii, ...)
// and cross-type numeric comparisons.
package expr

import (
	"errors"
	"fmt"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/ext"
	"github.com/google/cel-go/interpreter"

	"github.com/sealflow/sealflow/engine/record"
)

// Program is a compiled expression. It is safe for concurrent use.
type Program struct {
	src     string
	typ     record.Type // result type (element type for list programs)
	list    bool
	names   map[string]int
	types   []record.Type
	prg     cel.Program
	fast    *node // nil when the expression runs on the CEL interpreter
	checked *cel.Ast
}

// Option changes how Compile builds a Program.
type Option func(*options)

type options struct {
	interpretOnly bool
}

// InterpretOnly makes Compile skip the Go closure compiler and always evaluate
// with the CEL interpreter. It exists for differential tests and benchmarks.
func InterpretOnly() Option { return func(o *options) { o.interpretOnly = true } }

// Env is a compilation environment for one schema. Creating the CEL
// environment is the expensive part of compiling (milliseconds); compile many
// expressions over one schema with one Env. An Env is safe for concurrent use.
type Env struct {
	env   *cel.Env
	names map[string]int
	types []record.Type
}

// NewEnv returns an environment whose variables are the fields of schema.
// Field names must be CEL identifiers (see ValidIdent).
func NewEnv(schema *record.Schema) (*Env, error) {
	env, names, err := newEnv(schema)
	if err != nil {
		return nil, err
	}
	e := &Env{env: env, names: names}
	if schema != nil {
		for _, f := range schema.Fields {
			e.types = append(e.types, f.Type)
		}
	}
	return e, nil
}

// Compile parses and type-checks src over the fields of schema and returns a
// Program whose result has type want. want record.TypeNull accepts any scalar
// result type (see Program.Type). It is NewEnv followed by Env.Compile.
func Compile(src string, schema *record.Schema, want record.Type, opts ...Option) (*Program, error) {
	e, err := NewEnv(schema)
	if err != nil {
		return nil, err
	}
	return e.compile(src, want, false, opts)
}

// CompileList compiles src, which must evaluate to a list whose elements have
// type elem (record.TypeNull accepts any scalar element type). Use
// Program.EvalList to evaluate it; flat-map operators use list programs.
func CompileList(src string, schema *record.Schema, elem record.Type, opts ...Option) (*Program, error) {
	e, err := NewEnv(schema)
	if err != nil {
		return nil, err
	}
	return e.compile(src, elem, true, opts)
}

// Compile is like the package-level Compile, over the Env's schema.
func (e *Env) Compile(src string, want record.Type, opts ...Option) (*Program, error) {
	return e.compile(src, want, false, opts)
}

// CompileList is like the package-level CompileList, over the Env's schema.
func (e *Env) CompileList(src string, elem record.Type, opts ...Option) (*Program, error) {
	return e.compile(src, elem, true, opts)
}

func (e *Env) compile(src string, want record.Type, list bool, opts []Option) (*Program, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	env, names := e.env, e.names
	var err error
	checked, iss := env.Compile(src)
	if iss != nil && iss.Err() != nil {
		return nil, fmt.Errorf("expression %q: %w", src, iss.Err())
	}
	out := checked.OutputType()
	var got record.Type
	if list {
		if out.Kind() != types.ListKind || len(out.Parameters()) != 1 {
			return nil, fmt.Errorf("expression %q has type %s, want a list", src, out)
		}
		got, err = fromCELType(out.Parameters()[0])
		if err != nil {
			return nil, fmt.Errorf("expression %q: list elements: %w", src, err)
		}
	} else {
		got, err = fromCELType(out)
		if err != nil {
			return nil, fmt.Errorf("expression %q: %w", src, err)
		}
	}
	if want != record.TypeNull && got != want {
		what := "type"
		if list {
			what = "element type"
		}
		return nil, fmt.Errorf("expression %q has %s %s, want %s", src, what, got, want)
	}
	prg, err := env.Program(checked, cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, fmt.Errorf("expression %q: plan: %w", src, err)
	}
	p := &Program{src: src, typ: got, list: list, names: names, types: e.types, prg: prg, checked: checked}
	if !o.interpretOnly && !list {
		c := compiler{names: names, types: e.types}
		if n, ok := c.compile(checked.NativeRep().Expr()); ok && n.t == got {
			p.fast = &n
		}
	}
	return p, nil
}

// reserved lists the CEL words that cannot name a variable.
var reserved = map[string]bool{
	"true": true, "false": true, "null": true, "in": true, "as": true, "break": true,
	"const": true, "continue": true, "else": true, "for": true, "function": true,
	"if": true, "import": true, "let": true, "loop": true, "package": true,
	"namespace": true, "return": true, "var": true, "void": true, "while": true,
}

// ValidIdent reports whether name can be used as a field name in expressions:
// a letter or underscore followed by letters, digits or underscores, and not a
// CEL reserved word.
func ValidIdent(name string) bool {
	if name == "" || reserved[name] {
		return false
	}
	for i, c := range name {
		switch {
		case c == '_', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

func newEnv(schema *record.Schema) (*cel.Env, map[string]int, error) {
	if schema == nil {
		schema = &record.Schema{}
	}
	envOpts := []cel.EnvOption{ext.Strings(), cel.CrossTypeNumericComparisons(true)}
	names := make(map[string]int, len(schema.Fields))
	for i, f := range schema.Fields {
		if !ValidIdent(f.Name) {
			return nil, nil, fmt.Errorf("field %d: name %q cannot be used in expressions (want a letter or _ followed by letters, digits or _, not a CEL reserved word)", i, f.Name)
		}
		if _, dup := names[f.Name]; dup {
			return nil, nil, fmt.Errorf("field %d: duplicate field name %q", i, f.Name)
		}
		t, err := toCELType(f.Type)
		if err != nil {
			return nil, nil, fmt.Errorf("field %q: %w", f.Name, err)
		}
		names[f.Name] = i
		envOpts = append(envOpts, cel.Variable(f.Name, t))
	}
	env, err := cel.NewEnv(envOpts...)
	if err != nil {
		return nil, nil, fmt.Errorf("expression environment: %w", err)
	}
	return env, names, nil
}

func toCELType(t record.Type) (*cel.Type, error) {
	switch t {
	case record.TypeInt:
		return cel.IntType, nil
	case record.TypeFloat:
		return cel.DoubleType, nil
	case record.TypeString:
		return cel.StringType, nil
	case record.TypeBool:
		return cel.BoolType, nil
	}
	return nil, fmt.Errorf("type %s has no CEL equivalent", t)
}

func fromCELType(t *cel.Type) (record.Type, error) {
	switch t.Kind() {
	case types.IntKind:
		return record.TypeInt, nil
	case types.DoubleKind:
		return record.TypeFloat, nil
	case types.StringKind:
		return record.TypeString, nil
	case types.BoolKind:
		return record.TypeBool, nil
	}
	return record.TypeNull, fmt.Errorf("result type %s is not one of int, double, string or bool", t)
}

// Source returns the expression text.
func (p *Program) Source() string { return p.src }

// Type returns the result type, or the element type of a list program.
func (p *Program) Type() record.Type { return p.typ }

// Compiled reports whether the program runs as specialised Go code rather
// than on the CEL interpreter.
func (p *Program) Compiled() bool { return p.fast != nil }

// Fields returns the names of the schema fields the expression refers to, in
// schema order.
func (p *Program) Fields() []string {
	refs := p.checked.NativeRep().ReferenceMap()
	seen := make(map[int]string)
	for _, r := range refs {
		if r == nil || r.Name == "" {
			continue
		}
		if i, ok := p.names[r.Name]; ok {
			seen[i] = r.Name
		}
	}
	out := make([]string, 0, len(seen))
	for i := 0; i < len(p.names); i++ {
		if n, ok := seen[i]; ok {
			out = append(out, n)
		}
	}
	return out
}

// activation resolves CEL variables to the values of one record.
type activation struct {
	names map[string]int
	types []record.Type
	rec   *record.Record
}

// ResolveName implements interpreter.Activation over the record's values.
func (a *activation) ResolveName(name string) (any, bool) {
	i, ok := a.names[name]
	if !ok || i >= len(a.rec.Values) {
		return nil, false
	}
	v := a.rec.Values[i]
	if v.T != a.types[i] && v.T != record.TypeNull {
		// A record that does not follow the schema fails as on the
		// compiled path, instead of reaching CEL with another type.
		return types.WrapErr(fieldErr(name, a.types[i], v.T)), true
	}
	return toRef(v), true
}

// Parent implements interpreter.Activation: there is none.
func (a *activation) Parent() interpreter.Activation { return nil }

func toRef(v record.Value) ref.Val {
	switch v.T {
	case record.TypeInt:
		return types.Int(v.I)
	case record.TypeFloat:
		return types.Double(v.F)
	case record.TypeString:
		return types.String(v.S)
	case record.TypeBool:
		return types.Bool(v.I != 0)
	}
	return types.NullValue
}

func fromRef(v ref.Val) (record.Value, error) {
	switch x := v.(type) {
	case types.Int:
		return record.Int(int64(x)), nil
	case types.Double:
		return record.Float(float64(x)), nil
	case types.String:
		return record.String(string(x)), nil
	case types.Bool:
		return record.Bool(bool(x)), nil
	case types.Null:
		return record.Value{}, nil
	}
	return record.Value{}, fmt.Errorf("unsupported result value of type %s", v.Type())
}

func (p *Program) interpret(rec *record.Record) (ref.Val, error) {
	out, _, err := p.prg.Eval(&activation{names: p.names, types: p.types, rec: rec})
	if err != nil {
		return nil, fmt.Errorf("evaluate %q: %w", p.src, err)
	}
	return out, nil
}

// ErrType is returned by the typed Eval variants when the program's result
// type does not match the variant.
var ErrType = errors.New("expression result type does not match the evaluation method")

// Eval evaluates the program over rec and returns its result.
func (p *Program) Eval(rec *record.Record) (record.Value, error) {
	if p.list {
		return record.Value{}, fmt.Errorf("expression %q returns a list: use EvalList: %w", p.src, ErrType)
	}
	if f := p.fast; f != nil {
		var err error
		var v record.Value
		switch f.t {
		case record.TypeBool:
			var b bool
			b, err = f.b(rec)
			v = record.Bool(b)
		case record.TypeInt:
			v.T = record.TypeInt
			v.I, err = f.i(rec)
		case record.TypeFloat:
			v.T = record.TypeFloat
			v.F, err = f.f(rec)
		case record.TypeString:
			v.T = record.TypeString
			v.S, err = f.s(rec)
		}
		if err == errNull {
			return record.Value{}, nil // the result is a null field, as in CEL
		}
		if err != nil {
			return record.Value{}, fmt.Errorf("evaluate %q: %w", p.src, err)
		}
		return v, nil
	}
	out, err := p.interpret(rec)
	if err != nil {
		return record.Value{}, err
	}
	return fromRef(out)
}

// EvalBool evaluates a program of type bool.
func (p *Program) EvalBool(rec *record.Record) (bool, error) {
	if p.typ != record.TypeBool || p.list {
		return false, fmt.Errorf("expression %q has type %s, not bool: %w", p.src, p.typ, ErrType)
	}
	if p.fast != nil {
		b, err := p.fast.b(rec)
		if err != nil {
			return false, fmt.Errorf("evaluate %q: %w", p.src, err)
		}
		return b, nil
	}
	out, err := p.interpret(rec)
	if err != nil {
		return false, err
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, fmt.Errorf("expression %q returned %s, want bool: %w", p.src, out.Type(), ErrType)
	}
	return bool(b), nil
}

// EvalInt evaluates a program of type int.
func (p *Program) EvalInt(rec *record.Record) (int64, error) {
	if p.typ != record.TypeInt || p.list {
		return 0, fmt.Errorf("expression %q has type %s, not int: %w", p.src, p.typ, ErrType)
	}
	if p.fast != nil {
		i, err := p.fast.i(rec)
		if err != nil {
			return 0, fmt.Errorf("evaluate %q: %w", p.src, err)
		}
		return i, nil
	}
	out, err := p.interpret(rec)
	if err != nil {
		return 0, err
	}
	i, ok := out.(types.Int)
	if !ok {
		return 0, fmt.Errorf("expression %q returned %s, want int: %w", p.src, out.Type(), ErrType)
	}
	return int64(i), nil
}

// EvalFloat evaluates a program of type float (CEL double).
func (p *Program) EvalFloat(rec *record.Record) (float64, error) {
	if p.typ != record.TypeFloat || p.list {
		return 0, fmt.Errorf("expression %q has type %s, not float: %w", p.src, p.typ, ErrType)
	}
	if p.fast != nil {
		f, err := p.fast.f(rec)
		if err != nil {
			return 0, fmt.Errorf("evaluate %q: %w", p.src, err)
		}
		return f, nil
	}
	out, err := p.interpret(rec)
	if err != nil {
		return 0, err
	}
	f, ok := out.(types.Double)
	if !ok {
		return 0, fmt.Errorf("expression %q returned %s, want double: %w", p.src, out.Type(), ErrType)
	}
	return float64(f), nil
}

// EvalString evaluates a program of type string.
func (p *Program) EvalString(rec *record.Record) (string, error) {
	if p.typ != record.TypeString || p.list {
		return "", fmt.Errorf("expression %q has type %s, not string: %w", p.src, p.typ, ErrType)
	}
	if p.fast != nil {
		s, err := p.fast.s(rec)
		if err != nil {
			return "", fmt.Errorf("evaluate %q: %w", p.src, err)
		}
		return s, nil
	}
	out, err := p.interpret(rec)
	if err != nil {
		return "", err
	}
	s, ok := out.(types.String)
	if !ok {
		return "", fmt.Errorf("expression %q returned %s, want string: %w", p.src, out.Type(), ErrType)
	}
	return string(s), nil
}

// EvalList evaluates a list program and appends the elements to dst.
func (p *Program) EvalList(rec *record.Record, dst []record.Value) ([]record.Value, error) {
	if !p.list {
		return dst, fmt.Errorf("expression %q does not return a list: %w", p.src, ErrType)
	}
	out, err := p.interpret(rec)
	if err != nil {
		return dst, err
	}
	l, ok := out.(interface {
		Size() ref.Val
		Get(ref.Val) ref.Val
	})
	if !ok {
		return dst, fmt.Errorf("expression %q returned %s, want a list: %w", p.src, out.Type(), ErrType)
	}
	n, _ := l.Size().(types.Int)
	for i := types.Int(0); i < n; i++ {
		v, err := fromRef(l.Get(i))
		if err != nil {
			return dst, fmt.Errorf("expression %q: element %d: %w", p.src, i, err)
		}
		dst = append(dst, v)
	}
	return dst, nil
}

// errIntOverflow, errDivideByZero and errModulusByZero carry CEL's messages
// so that both evaluation paths report the same failures.
var (
	errIntOverflow   = errors.New("integer overflow")
	errDivideByZero  = errors.New("division by zero")
	errModulusByZero = errors.New("modulus by zero")
)
