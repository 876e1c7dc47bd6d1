package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"

	"github.com/google/cel-go/cel"
	celast "github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
	"github.com/google/cel-go/ext"
	"github.com/google/cel-go/interpreter"

	"github.com/sealflow/sealflow/attest"
)

// DefaultCostLimit is the CEL cost limit of one rule evaluation unless
// WithCostLimit says otherwise. A typical rule costs tens of units; the limit
// stops rules that iterate over large lists from running away.
const DefaultCostLimit = 100_000

// Rule names of refusals that no owner rule caused. They contain '#', which
// rule names cannot, so they never collide with an owner's rule.
const (
	// RuleUnknownStage refuses an evaluation for a stage no policy knows.
	RuleUnknownStage = "#unknown-stage"
	// RuleNoPolicy refuses an EvaluateAll without policies.
	RuleNoPolicy = "#no-policy"
)

// CompileError reports a rule that cannot become a program: it does not parse,
// does not type-check against the stage's variables, or is not of type bool.
// It is a refusal of the trust plane: RefusedBy returns "policy.compile".
type CompileError struct {
	// Stream and Rule name the policy and the rule.
	Stream, Rule string
	// Line and Column are the 1-based position of the first problem within the
	// rule's expression (0 when unknown).
	Line, Column int
	// Detail is CEL's description of the problem.
	Detail string
}

// Error implements error.
func (e *CompileError) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("policy for stream %s: rule %s does not compile: %s", e.Stream, e.Rule, e.Detail)
	}
	return fmt.Sprintf("policy for stream %s: rule %s does not compile at %d:%d: %s", e.Stream, e.Rule, e.Line, e.Column, e.Detail)
}

// RefusedBy returns the rule of the trust plane that refused: policy.compile.
func (e *CompileError) RefusedBy() string { return "policy.compile" }

// CompileOption configures Compile.
type CompileOption func(*compileConfig)

type compileConfig struct{ costLimit uint64 }

// WithCostLimit sets the CEL cost limit of one rule evaluation. A rule that
// exceeds it refuses.
func WithCostLimit(limit uint64) CompileOption {
	return func(c *compileConfig) { c.costLimit = limit }
}

// Policy is a compiled, immutable policy. It is safe for concurrent use.
type Policy struct {
	doc    Document
	digest string
	rules  map[Stage][]compiledRule
}

type compiledRule struct {
	name, expr string
	prg        cel.Program
	refs       []string // variable fields the rule reads, such as "node.region"
}

// fieldRefs returns the fields of the stage variables an expression reads
// ("node.region"), in order of first appearance, for Explain.
func fieldRefs(a *cel.Ast) []string {
	var refs []string
	seen := map[string]bool{}
	celast.PreOrderVisit(a.NativeRep().Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		if e.Kind() != celast.SelectKind {
			return
		}
		sel := e.AsSelect()
		op := sel.Operand()
		if op.Kind() != celast.IdentKind {
			return
		}
		switch op.AsIdent() {
		case "service", "node", "recipient":
			ref := op.AsIdent() + "." + sel.FieldName()
			if !seen[ref] {
				seen[ref] = true
				refs = append(refs, ref)
			}
		}
	}))
	return refs
}

// fieldValue returns the value of a reference such as "node.region" in an
// input, found through the cel struct tags.
func fieldValue(in *Input, ref string) (any, bool) {
	v, field, _ := strings.Cut(ref, ".")
	var rv reflect.Value
	switch v {
	case "service":
		rv = reflect.ValueOf(in.Service)
	case "node":
		rv = reflect.ValueOf(in.Node)
	case "recipient":
		rv = reflect.ValueOf(in.Recipient)
	default:
		return nil, false
	}
	t := rv.Type()
	for i := range t.NumField() {
		if t.Field(i).Tag.Get("cel") == field {
			return rv.Field(i).Interface(), true
		}
	}
	return nil, false
}

// tcbAtLeast declares tcbAtLeast(tcb, minimum): true when every component
// named in minimum is present in tcb with at least that value. TCB component
// names differ per backend (see attest.Claims.TCB), so a policy combines it
// with the TEE: node.tee == 'snp' && tcbAtLeast(node.tcb, {'snp': 8, 'microcode': 209}).
var tcbAtLeast = cel.Function("tcbAtLeast",
	cel.Overload("tcbAtLeast_map_map",
		[]*cel.Type{cel.MapType(cel.StringType, cel.IntType), cel.MapType(cel.StringType, cel.IntType)},
		cel.BoolType,
		cel.BinaryBinding(func(tcb, minimum ref.Val) ref.Val {
			have, ok1 := tcb.(traits.Mapper)
			want, ok2 := minimum.(traits.Mapper)
			if !ok1 || !ok2 {
				return types.NewErr("tcbAtLeast: want two maps of string to int")
			}
			for it := want.Iterator(); it.HasNext() == types.True; {
				k := it.Next()
				h, found := have.Find(k)
				if !found {
					return types.False
				}
				hv, ok1 := h.(types.Int)
				wv, ok2 := want.Get(k).(types.Int)
				if !ok1 || !ok2 {
					return types.NewErr("tcbAtLeast: component %v is not an int", k)
				}
				if hv < wv {
					return types.False
				}
			}
			return types.True
		})))

var stageEnvs = sync.OnceValues(func() (map[Stage]*cel.Env, error) {
	base, err := cel.NewEnv(
		ext.NativeTypes(reflect.TypeFor[Service](), reflect.TypeFor[Node](), reflect.TypeFor[Recipient](), ext.ParseStructTags(true)),
		cel.Variable("service", cel.ObjectType("policy.Service")),
		cel.CrossTypeNumericComparisons(true),
		cel.OptionalTypes(),
		ext.Strings(),
		ext.Sets(),
		tcbAtLeast,
		cel.ParserExpressionSizeLimit(MaxExprLength),
	)
	if err != nil {
		return nil, err
	}
	placement, err := base.Extend(cel.Variable("node", cel.ObjectType("policy.Node")))
	if err != nil {
		return nil, err
	}
	recipient, err := base.Extend(cel.Variable("recipient", cel.ObjectType("policy.Recipient")))
	if err != nil {
		return nil, err
	}
	return map[Stage]*cel.Env{StagePlacement: placement, StageRecipient: recipient, StageService: base}, nil
})

// Compile validates the document and compiles every rule against the variables
// of its stage. It returns all problems at once: a *CompileError per rule that
// does not compile or is not bool, joined with errors.Join.
func Compile(d *Document, opts ...CompileOption) (*Policy, error) {
	cfg := compileConfig{costLimit: DefaultCostLimit}
	for _, o := range opts {
		o(&cfg)
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	envs, err := stageEnvs()
	if err != nil {
		return nil, fmt.Errorf("policy: building CEL environment: %w", err)
	}
	digest, err := d.Digest()
	if err != nil {
		return nil, err
	}
	p := &Policy{doc: cloneDocument(d), digest: digest, rules: map[Stage][]compiledRule{}}
	var errs []error
	for _, r := range d.Rules {
		env := envs[r.Stage]
		ast, iss := env.Compile(r.Expr)
		if iss.Err() != nil {
			ce := &CompileError{Stream: d.Stream, Rule: r.Name, Detail: iss.Err().Error()}
			if es := iss.Errors(); len(es) > 0 {
				ce.Detail = es[0].Message
				if loc := es[0].Location; loc != nil && loc.Line() >= 1 {
					ce.Line, ce.Column = loc.Line(), loc.Column()+1
				}
			}
			errs = append(errs, ce)
			continue
		}
		if !ast.OutputType().IsExactType(types.BoolType) {
			errs = append(errs, &CompileError{Stream: d.Stream, Rule: r.Name, Line: 1, Column: 1,
				Detail: fmt.Sprintf("expression has type %s, want bool", ast.OutputType())})
			continue
		}
		prg, err := env.Program(ast, cel.CostLimit(cfg.costLimit), cel.EvalOptions(cel.OptOptimize))
		if err != nil {
			errs = append(errs, &CompileError{Stream: d.Stream, Rule: r.Name, Detail: err.Error()})
			continue
		}
		p.rules[r.Stage] = append(p.rules[r.Stage], compiledRule{name: r.Name, expr: r.Expr, prg: prg, refs: fieldRefs(ast)})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// CompileBytes decodes a YAML or JSON policy document and compiles it.
func CompileBytes(data []byte, opts ...CompileOption) (*Policy, error) {
	d, err := Decode(data)
	if err != nil {
		return nil, err
	}
	return Compile(d, opts...)
}

func cloneDocument(d *Document) Document {
	c := *d
	c.Rules = append([]Rule(nil), d.Rules...)
	return c
}

// Stream returns the name of the stream the policy governs.
func (p *Policy) Stream() string { return p.doc.Stream }

// Digest returns the hex SHA-256 of the policy's canonical JSON.
func (p *Policy) Digest() string { return p.digest }

// HasStage reports whether the policy has rules for stage.
func (p *Policy) HasStage(stage Stage) bool { return len(p.rules[stage]) > 0 }

// Document returns a copy of the policy's document.
func (p *Policy) Document() Document { return cloneDocument(&p.doc) }

// RuleResult is the outcome of one rule in a decision.
type RuleResult struct {
	// Rule is the rule's name; Expr its expression.
	Rule string `json:"rule"`
	Expr string `json:"expr"`
	// Holds is true when the expression evaluated to true.
	Holds bool `json:"holds"`
	// Error is the evaluation error, if any (a missing map key, the cost limit,
	// ...). A rule with an error does not hold.
	Error string `json:"error,omitempty"`
	// Values holds, for a rule that does not hold, the input fields it reads
	// and their values, so that Explain can say what was wrong.
	Values []Value `json:"values,omitempty"`
}

// Value is an input field a rule reads and its value, JSON encoded.
type Value struct {
	Field string `json:"field"`
	Value string `json:"value"`
}

// Decision is the outcome of evaluating one stage of a policy.
type Decision struct {
	// Stream and Stage say what was decided.
	Stream string `json:"stream"`
	Stage  Stage  `json:"stage"`
	// PolicyDigest identifies the policy version that decided.
	PolicyDigest string `json:"policy_digest"`
	// Allowed is true when every rule of the stage holds.
	Allowed bool `json:"allowed"`
	// Rule is the first rule that refused, or "" when allowed.
	Rule string `json:"rule,omitempty"`
	// Reason says why, for humans.
	Reason string `json:"reason"`
	// Trace holds the result of every rule of the stage, in document order.
	Trace []RuleResult `json:"trace"`
}

// RefusedBy returns the name of the refusing rule, "policy:<stream>/<rule>",
// or "" when the decision allows.
func (d Decision) RefusedBy() string {
	if d.Allowed {
		return ""
	}
	return "policy:" + d.Stream + "/" + d.Rule
}

// Err returns nil when the decision allows, and otherwise an *attest.Refusal
// whose rule is "policy:<stream>/<rule>".
func (d Decision) Err() error {
	if d.Allowed {
		return nil
	}
	return &attest.Refusal{Rule: d.RefusedBy(), Reason: d.Reason}
}

// activation resolves the CEL variables of a stage without building a map.
type activation struct {
	stage Stage
	in    *Input
}

func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case "service":
		return &a.in.Service, true
	case "node":
		if a.stage == StagePlacement {
			return &a.in.Node, true
		}
	case "recipient":
		if a.stage == StageRecipient {
			return &a.in.Recipient, true
		}
	}
	return nil, false
}

func (a *activation) Parent() interpreter.Activation { return nil }

// Evaluate decides a stage for an input. Every rule of the stage is evaluated,
// in document order, so that the trace is complete; the decision allows when
// every rule holds and names the first rule that did not. A stage without rules
// allows: the owner set no condition on it. Evaluate is deterministic and does
// no I/O.
func (p *Policy) Evaluate(stage Stage, in Input) Decision {
	d := Decision{Stream: p.doc.Stream, Stage: stage, PolicyDigest: p.digest, Allowed: true}
	if !stage.valid() {
		d.Allowed, d.Rule = false, RuleUnknownStage
		d.Reason = fmt.Sprintf("unknown stage %q", stage)
		return d
	}
	rules := p.rules[stage]
	if len(rules) == 0 {
		d.Reason = fmt.Sprintf("the policy sets no %s rules", stage)
		return d
	}
	act := &activation{stage: stage, in: &in}
	d.Trace = make([]RuleResult, 0, len(rules))
	for _, r := range rules {
		res := RuleResult{Rule: r.name, Expr: r.expr}
		out, _, err := r.prg.Eval(act)
		switch {
		case err != nil:
			res.Error = err.Error()
		case out.Type() != types.BoolType:
			res.Error = fmt.Sprintf("result has type %s, want bool", out.Type())
		default:
			res.Holds = out.Value().(bool)
		}
		if !res.Holds {
			for _, ref := range r.refs {
				if v, ok := fieldValue(&in, ref); ok {
					b, _ := json.Marshal(v)
					res.Values = append(res.Values, Value{Field: ref, Value: string(b)})
				}
			}
		}
		d.Trace = append(d.Trace, res)
		if !res.Holds && d.Allowed {
			d.Allowed = false
			d.Rule = r.name
			if res.Error != "" {
				d.Reason = fmt.Sprintf("%s rule %s could not be evaluated: %s", stage, r.name, res.Error)
			} else {
				d.Reason = fmt.Sprintf("%s rule %s does not hold: %s", stage, r.name, r.expr)
			}
		}
	}
	if d.Allowed {
		d.Reason = fmt.Sprintf("all %d %s rules hold", len(rules), stage)
	}
	return d
}

// EvaluateAll decides a stage under the policies of every input owner: each
// owner has a veto, so the result allows only when every policy allows, and
// otherwise is the first refusing policy's decision. With no policies it
// refuses: a stream without a policy is not readable.
func EvaluateAll(stage Stage, in Input, policies ...*Policy) Decision {
	if len(policies) == 0 {
		return Decision{Stage: stage, Rule: RuleNoPolicy, Reason: "no policies to evaluate"}
	}
	var last Decision
	for _, p := range policies {
		last = p.Evaluate(stage, in)
		if !last.Allowed {
			return last
		}
	}
	last.Reason = fmt.Sprintf("all %d policies allow %s", len(policies), stage)
	return last
}

// Explain renders a decision for humans: the verdict, then one line per rule
// with ✓ (holds), ✗ (does not hold) or ! (error).
func Explain(d Decision) string {
	var b strings.Builder
	verdict := "ALLOWED"
	if !d.Allowed {
		verdict = "REFUSED by " + d.RefusedBy()
	}
	fmt.Fprintf(&b, "%s decision for stream %s: %s\n", d.Stage, d.Stream, verdict)
	fmt.Fprintf(&b, "  policy %s\n  %s\n", d.PolicyDigest, d.Reason)
	width := 0
	for _, r := range d.Trace {
		width = max(width, len(r.Rule))
	}
	for _, r := range d.Trace {
		mark := "✓"
		switch {
		case r.Error != "":
			mark = "!"
		case !r.Holds:
			mark = "✗"
		}
		fmt.Fprintf(&b, "  %s %-*s  %s", mark, width, r.Rule, r.Expr)
		if r.Error != "" {
			fmt.Fprintf(&b, "  (error: %s)", r.Error)
		}
		b.WriteByte('\n')
		if len(r.Values) > 0 {
			fmt.Fprintf(&b, "    %*s  where", width, "")
			for i, v := range r.Values {
				sep := ","
				if i == len(r.Values)-1 {
					sep = ""
				}
				fmt.Fprintf(&b, " %s = %s%s", v.Field, v.Value, sep)
			}
			b.WriteByte('\n')
		}
	}
	return b.String()
}
