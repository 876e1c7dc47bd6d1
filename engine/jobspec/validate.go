package jobspec

import (
	"cmp"
	"container/heap"
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/sealflow/sealflow/engine/expr"
	"github.com/sealflow/sealflow/engine/record"
)

// Error is one problem found in a spec: where it is, which rule it breaks
// and why. It is the refusal the orchestrator returns for a spec that does
// not type-check.
type Error struct {
	// Path locates the problem, for example
	// `nodes[3] (id "winmax").params.expr`.
	Path string
	// Rule names the broken rule (for example "unknown-input", "cycle",
	// "expr").
	Rule string
	// Msg says what is wrong.
	Msg string
}

// Error returns "path: message".
func (e *Error) Error() string { return e.Path + ": " + e.Msg }

// RefusedBy names the rule that refused the spec, as "jobspec.<rule>".
func (e *Error) RefusedBy() string { return "jobspec." + e.Rule }

// Errors is every problem found in a spec, in spec order.
type Errors []*Error

// Error lists every error, one a line.
func (es Errors) Error() string {
	var b strings.Builder
	if len(es) == 1 {
		b.WriteString("job spec is invalid: ")
	} else {
		fmt.Fprintf(&b, "job spec has %d errors:\n  ", len(es))
	}
	for i, e := range es {
		if i > 0 {
			b.WriteString("\n  ")
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Unwrap returns the individual errors, for errors.As.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// RefusedBy names the rule of the first error.
func (es Errors) RefusedBy() string {
	if len(es) == 0 {
		return ""
	}
	return es[0].RefusedBy()
}

// NodeInfo is what Resolve infers about one node.
type NodeInfo struct {
	// Node is the node, with defaults applied.
	Node *Node
	// Index is the node's position in Spec.Nodes.
	Index int
	// In holds the schema of each input, in Inputs order.
	In []*record.Schema
	// Out is the schema of the records the node emits (for a sink, the
	// records it writes).
	Out *record.Schema
	// Keys are the fields the node's output is keyed by: set by a key-by
	// and kept by filter, flat-map and by a map that passes every key field
	// through unchanged. Window aggregates, top-n, joins and unions emit
	// unkeyed streams (key again with key-by); nil when not keyed.
	Keys []string
	// GroupBy are the fields a window-aggregate or top-n groups by: its
	// input's Keys (nil: one global group).
	GroupBy []string
	// Consumers are the IDs of the nodes that read this node's output.
	Consumers []string
}

// Resolved is a validated spec with every node's schemas inferred.
type Resolved struct {
	// Spec is the spec with defaults applied.
	Spec *Spec
	// Order lists node IDs in a topological order (inputs before readers),
	// stable with respect to the spec's node order.
	Order []string
	// Nodes maps node IDs to what was inferred about them.
	Nodes map[string]*NodeInfo
}

// Validate type-checks the spec and returns Errors listing every problem, or
// nil.
func (s *Spec) Validate() error {
	_, err := s.Resolve()
	return err
}

// Resolve type-checks the whole graph, infers each node's input and output
// schemas, and returns them. On failure the error is Errors.
func (s *Spec) Resolve() (*Resolved, error) {
	v := &validator{spec: s.WithDefaults(), info: map[string]*NodeInfo{}, goodWindow: map[*Node]bool{}}
	r := v.run()
	if len(v.errs) > 0 {
		// Report in spec order: top-level and schema errors, then by node.
		slices.SortStableFunc(v.errs, func(a, b *Error) int { return cmp.Compare(errorNode(a), errorNode(b)) })
		return nil, v.errs
	}
	return r, nil
}

// errorNode returns the node index an error's path starts with, or -1.
func errorNode(e *Error) int {
	var i int
	if _, err := fmt.Sscanf(e.Path, "nodes[%d]", &i); err != nil {
		return -1
	}
	return i
}

type validator struct {
	spec    *Spec
	errs    Errors
	info    map[string]*NodeInfo
	schemas map[string]*record.Schema
	// goodWindow records nodes whose window passed checkWindow.
	goodWindow map[*Node]bool
	// envs caches expression environments per schema.
	envs map[*record.Schema]*expr.Env
}

// env returns the expression environment of schema s.
func (v *validator) env(s *record.Schema) (*expr.Env, error) {
	if e, ok := v.envs[s]; ok {
		return e, nil
	}
	e, err := expr.NewEnv(s)
	if err != nil {
		return nil, err
	}
	if v.envs == nil {
		v.envs = map[*record.Schema]*expr.Env{}
	}
	v.envs[s] = e
	return e, nil
}

func (v *validator) errorf(path, rule, format string, args ...any) {
	v.errs = append(v.errs, &Error{Path: path, Rule: rule, Msg: fmt.Sprintf(format, args...)})
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)

// streamPattern accepts stream names made of dot-separated tokens of
// letters, digits, '_' and '-': no NATS wildcards ('*', '>'), so that a
// source names exactly one stream, whose owner's policy is checked.
var streamPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)

func (v *validator) checkStream(path, name, what string) {
	switch {
	case name == "":
		v.errorf(path, "stream", "missing %s stream name", what)
	case len(name) > 255:
		v.errorf(path, "stream", "stream name is %d bytes, more than 255", len(name))
	case !streamPattern.MatchString(name):
		v.errorf(path, "stream", "stream name %q must be dot-separated tokens of letters, digits, '_' or '-' (no wildcards)", name)
	}
}

func nodePath(i int, n *Node) string {
	if n.ID == "" {
		return fmt.Sprintf("nodes[%d]", i)
	}
	return fmt.Sprintf("nodes[%d] (id %q)", i, n.ID)
}

func (v *validator) run() *Resolved {
	s := v.spec
	if s.Name == "" {
		v.errorf("name", "name", "missing job name")
	}
	if s.MaxParallelism < 1 || s.MaxParallelism > MaxKeyGroups {
		v.errorf("maxParallelism", "parallelism", "%d is out of range: want 1 to %d", s.MaxParallelism, MaxKeyGroups)
	}
	if s.Parallelism < 1 || s.Parallelism > s.MaxParallelism {
		v.errorf("parallelism", "parallelism", "%d is out of range: want 1 to maxParallelism (%d)", s.Parallelism, s.MaxParallelism)
	}
	v.checkSchemas()
	if len(s.Nodes) > MaxNodes {
		v.errorf("nodes", "nodes", "%d nodes, more than the limit of %d", len(s.Nodes), MaxNodes)
		return &Resolved{Spec: s, Nodes: v.info}
	}

	// Structure: IDs, kinds, inputs.
	byID := map[string]int{}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		p := nodePath(i, n)
		switch {
		case n.ID == "":
			v.errorf(p+".id", "node-id", "missing node id")
		case !idPattern.MatchString(n.ID):
			v.errorf(p+".id", "node-id", "id %q must be letters, digits, '_', '-' or '.'", n.ID)
		default:
			if j, dup := byID[n.ID]; dup {
				v.errorf(p+".id", "node-id", "duplicate id: nodes[%d] has the same id", j)
			} else {
				byID[n.ID] = i
			}
		}
		// A node that inherits an out-of-range default is reported once, above.
		if n.Parallelism != s.Parallelism && (n.Parallelism < 1 || n.Parallelism > s.MaxParallelism) {
			v.errorf(p+".parallelism", "parallelism", "%d is out of range: want 1 to maxParallelism (%d)", n.Parallelism, s.MaxParallelism)
		}
	}
	consumers := map[string][]string{}
	sources, sinks := 0, 0
	for i := range s.Nodes {
		n := &s.Nodes[i]
		p := nodePath(i, n)
		min, max, ok := inputArity(n.Kind)
		if !ok {
			v.errorf(p+".kind", "unknown-kind", "unknown node kind %q (want one of %s)", n.Kind, kindList())
			continue
		}
		switch n.Kind {
		case KindSource:
			sources++
		case KindSink:
			sinks++
		}
		if len(n.Inputs) < min || len(n.Inputs) > max {
			v.errorf(p+".inputs", "inputs", "%s takes %s, got %d", n.Kind, arityText(min, max), len(n.Inputs))
		}
		for j, in := range n.Inputs {
			k, ok := byID[in]
			switch {
			case !ok:
				v.errorf(fmt.Sprintf("%s.inputs[%d]", p, j), "unknown-input", "unknown input %q: no node has this id", in)
			case s.Nodes[k].Kind == KindSink:
				v.errorf(fmt.Sprintf("%s.inputs[%d]", p, j), "inputs", "input %q is a sink, which has no output", in)
			default:
				consumers[in] = append(consumers[in], n.ID)
			}
		}
		v.checkParamsApply(p, n)
		v.staticNode(p, n)
	}
	if len(s.Nodes) > 0 {
		if sources == 0 {
			v.errorf("nodes", "missing-source", "the job has no source node")
		}
		if sinks == 0 {
			v.errorf("nodes", "missing-sink", "the job has no sink node")
		}
	} else {
		v.errorf("nodes", "missing-source", "the job has no nodes: it needs at least a source and a sink")
	}

	order, cyclic := v.topoOrder(byID)
	if len(cyclic) > 0 {
		v.errorf(nodePath(byID[cyclic[0]], &s.Nodes[byID[cyclic[0]]])+".inputs", "cycle",
			"cycle: %s", strings.Join(append(cyclic, cyclic[0]), " -> "))
	}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		if n.Kind != KindSink && len(consumers[n.ID]) == 0 && n.ID != "" && byID[n.ID] == i {
			if _, known := kindSet[n.Kind]; known {
				v.errorf(nodePath(i, n), "unused-output", "the output of %s node %q is not read by any node: end the branch with a sink", n.Kind, n.ID)
			}
		}
	}

	// Types, in topological order, so every node sees its inputs' schemas.
	for _, id := range order {
		i := byID[id]
		n := &s.Nodes[i]
		info := &NodeInfo{Node: n, Index: i, Consumers: consumers[id]}
		v.info[id] = info
		min, max, known := inputArity(n.Kind)
		ok := known && len(n.Inputs) >= min && len(n.Inputs) <= max // else already reported
		for _, in := range n.Inputs {
			up, found := v.info[in]
			if !found || up.Out == nil {
				ok = false // the upstream problem is already reported
				break
			}
			info.In = append(info.In, up.Out)
		}
		if !ok {
			continue
		}
		v.typeNode(nodePath(i, n), n, info)
	}
	return &Resolved{Spec: s, Order: order, Nodes: v.info}
}

var kindSet = func() map[Kind]bool {
	m := map[Kind]bool{}
	for _, k := range Kinds {
		m[k] = true
	}
	return m
}()

func kindList() string {
	var names []string
	for _, k := range Kinds {
		names = append(names, string(k))
	}
	return strings.Join(names, ", ")
}

func inputArity(k Kind) (min, max int, ok bool) {
	switch k {
	case KindSource:
		return 0, 0, true
	case KindUnion:
		return 2, 1 << 20, true
	case KindWindowJoin, KindIntervalJoin, KindJoin:
		return 2, 2, true
	case KindMap, KindFilter, KindFlatMap, KindKeyBy, KindWindowAggregate, KindTopN, KindUDF, KindSink:
		return 1, 1, true
	}
	return 0, 0, false
}

func arityText(min, max int) string {
	switch {
	case min == max && min == 0:
		return "no inputs"
	case min == max && min == 1:
		return "exactly one input"
	case min == max:
		return fmt.Sprintf("exactly %d inputs", min)
	default:
		return fmt.Sprintf("at least %d inputs", min)
	}
}

// allowedParams lists, per kind, the params (JSON names) that apply.
var allowedParams = map[Kind][]string{
	KindSource:          {"stream", "schema", "timeField", "watermark"},
	KindMap:             {"fields"},
	KindFilter:          {"expr"},
	KindFlatMap:         {"expr", "as"},
	KindKeyBy:           {"keys"},
	KindUnion:           {},
	KindWindowAggregate: {"window", "aggregates"},
	KindWindowJoin:      {"window", "leftKeys", "rightKeys", "leftPrefix", "rightPrefix", "expr"},
	KindIntervalJoin:    {"between", "leftKeys", "rightKeys", "leftPrefix", "rightPrefix", "expr"},
	KindJoin:            {"leftKeys", "rightKeys", "leftPrefix", "rightPrefix", "expr"},
	KindTopN:            {"n", "orderBy", "window", "rankField"},
	KindUDF:             {"udf"},
	KindSink:            {"stream"},
}

// checkParamsApply refuses parameters that the node's kind does not use, so
// that a misplaced parameter is not silently ignored.
func (v *validator) checkParamsApply(path string, n *Node) {
	allowed, ok := allowedParams[n.Kind]
	if !ok {
		return
	}
	rv := reflect.ValueOf(n.Params)
	rt := rv.Type()
	for i := 0; i < rt.NumField(); i++ {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		if rv.Field(i).IsZero() {
			continue
		}
		found := false
		for _, a := range allowed {
			if a == name {
				found = true
				break
			}
		}
		if !found {
			v.errorf(path+".params."+name, "param", "%s does not apply to %s nodes (they take %s)", name, n.Kind, paramList(allowed))
		}
	}
}

func paramList(p []string) string {
	if len(p) == 0 {
		return "no params"
	}
	return strings.Join(p, ", ")
}

// intHeap is a min-heap of node indices.
type intHeap []int

func (h intHeap) Len() int           { return len(h) }
func (h intHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h intHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *intHeap) Push(x any)        { *h = append(*h, x.(int)) }
func (h *intHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// topoOrder sorts node IDs so that inputs come first (Kahn's algorithm,
// taking the earliest node in spec order when several are ready, in
// O(n log n)). It returns one cycle if the graph has any.
func (v *validator) topoOrder(byID map[string]int) (order, cycle []string) {
	s := v.spec
	indeg := make([]int, len(s.Nodes))
	readers := make([][]int, len(s.Nodes))
	for i := range s.Nodes {
		if id := s.Nodes[i].ID; id == "" || byID[id] != i {
			indeg[i] = -1 // unnamed or duplicate: left out
			continue
		}
		for _, in := range s.Nodes[i].Inputs {
			if k, ok := byID[in]; ok {
				indeg[i]++
				readers[k] = append(readers[k], i)
			}
		}
	}
	done := make([]bool, len(s.Nodes))
	ready := &intHeap{}
	for i := range s.Nodes {
		if indeg[i] == 0 {
			heap.Push(ready, i)
		}
	}
	for ready.Len() > 0 {
		i := heap.Pop(ready).(int)
		done[i] = true
		order = append(order, s.Nodes[i].ID)
		for _, r := range readers[i] {
			if indeg[r]--; indeg[r] == 0 {
				heap.Push(ready, r)
			}
		}
	}
	// Any node left with indegree > 0 is on or behind a cycle: walk inputs
	// among the remaining nodes until one repeats.
	for i := range s.Nodes {
		if indeg[i] <= 0 || done[i] {
			continue
		}
		seen := map[int]int{}
		var path []int
		for cur := i; ; {
			if at, ok := seen[cur]; ok {
				for _, k := range path[at:] {
					cycle = append(cycle, s.Nodes[k].ID)
				}
				return order, cycle
			}
			seen[cur] = len(path)
			path = append(path, cur)
			next := -1
			for _, in := range s.Nodes[cur].Inputs {
				if k, ok := byID[in]; ok && !done[k] && indeg[k] >= 0 {
					next = k
					break
				}
			}
			if next < 0 {
				break
			}
			cur = next
		}
	}
	return order, nil
}

func (v *validator) checkSchemas() {
	v.schemas = map[string]*record.Schema{}
	for _, name := range sortedKeys(v.spec.Schemas) {
		fs := v.spec.Schemas[name]
		p := fmt.Sprintf("schemas.%s", name)
		if len(fs) == 0 {
			v.errorf(p, "schema", "schema %q has no fields", name)
			continue
		}
		ok := true
		seen := map[string]bool{}
		for i, f := range fs {
			fp := fmt.Sprintf("%s[%d]", p, i)
			if !expr.ValidIdent(f.Name) {
				v.errorf(fp+".name", "schema", "field name %q must be a letter or '_' followed by letters, digits or '_', and not a CEL reserved word", f.Name)
				ok = false
			} else if seen[f.Name] {
				v.errorf(fp+".name", "schema", "duplicate field %q", f.Name)
				ok = false
			}
			seen[f.Name] = true
			if f.Type == record.TypeNull {
				v.errorf(fp+".type", "schema", "field %q has no type (want int, float, string or bool)", f.Name)
				ok = false
			}
		}
		if ok {
			v.schemas[name] = v.spec.RecordSchema(name)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// schemaBuilder accumulates an output schema and reports duplicate names.
type schemaBuilder struct {
	v    *validator
	path string
	out  record.Schema
}

func (b *schemaBuilder) add(name string, t record.Type) {
	if b.out.Index(name) >= 0 {
		b.v.errorf(b.path, "duplicate-field", "output field %q appears twice", name)
		return
	}
	b.out.Fields = append(b.out.Fields, record.Field{Name: name, Type: t})
}

func (v *validator) fieldOf(path string, in *record.Schema, name string) (record.Type, bool) {
	if name == "" {
		v.errorf(path, "field", "missing field name")
		return record.TypeNull, false
	}
	i := in.Index(name)
	if i < 0 {
		v.errorf(path, "unknown-field", "field %q is not in the input schema (%s)", name, schemaText(in))
		return record.TypeNull, false
	}
	return in.Fields[i].Type, true
}

func schemaText(s *record.Schema) string {
	parts := make([]string, len(s.Fields))
	for i, f := range s.Fields {
		parts[i] = f.Name + " " + f.Type.String()
	}
	return strings.Join(parts, ", ")
}

func (v *validator) compile(path, src string, in *record.Schema, want record.Type) (*expr.Program, bool) {
	if strings.TrimSpace(src) == "" {
		v.errorf(path, "expr", "missing expression")
		return nil, false
	}
	env, err := v.env(in)
	if err != nil {
		v.errorf(path, "expr", "%v", err)
		return nil, false
	}
	p, err := env.Compile(src, want)
	if err != nil {
		v.errorf(path, "expr", "%v", err)
		return nil, false
	}
	return p, true
}

func (v *validator) checkOutputName(path, name string) bool {
	if !expr.ValidIdent(name) {
		v.errorf(path, "field", "output field name %q must be a letter or '_' followed by letters, digits or '_', and not a CEL reserved word", name)
		return false
	}
	return true
}

// typeNode checks a node's parameters against its input schemas and sets
// info.Out and info.Keys.
func (v *validator) typeNode(path string, n *Node, info *NodeInfo) {
	pp := path + ".params"
	prm := &n.Params
	before := len(v.errs)
	var out *record.Schema
	var keys []string
	switch n.Kind {
	case KindSource:
		out, keys = v.typeSource(pp, prm)
	case KindSink:
		out, keys = info.In[0], nil
	case KindFilter:
		v.compile(pp+".expr", prm.Expr, info.In[0], record.TypeBool)
		out, keys = info.In[0], v.inputKeys(n)
	case KindMap:
		out, keys = v.typeMap(pp, n, info.In[0])
	case KindFlatMap:
		in := info.In[0]
		b := schemaBuilder{v: v, path: pp + ".as", out: record.Schema{Fields: append([]record.Field(nil), in.Fields...)}}
		if p, ok := v.compileList(pp+".expr", prm.Expr, in); ok && v.checkOutputName(pp+".as", prm.As) {
			b.add(prm.As, p.Type())
		}
		out, keys = &b.out, v.inputKeys(n)
	case KindKeyBy:
		for j, k := range prm.Keys {
			v.fieldOf(fmt.Sprintf("%s.keys[%d]", pp, j), info.In[0], k)
		}
		out, keys = info.In[0], prm.Keys
	case KindUnion:
		for j := 1; j < len(info.In); j++ {
			if !sameSchema(info.In[0], info.In[j]) {
				v.errorf(fmt.Sprintf("%s.inputs[%d]", path, j), "schema-mismatch",
					"union input %q has schema (%s), but input %q has (%s): union inputs need the same fields and types",
					n.Inputs[j], schemaText(info.In[j]), n.Inputs[0], schemaText(info.In[0]))
			}
		}
		out = info.In[0]
	case KindWindowAggregate:
		out = v.typeWindowAggregate(pp, n, info.In[0])
		info.GroupBy = v.inputKeys(n)
	case KindWindowJoin, KindIntervalJoin, KindJoin:
		out = v.typeJoin(pp, n, info.In[0], info.In[1])
	case KindTopN:
		out = v.typeTopN(pp, n, info.In[0])
		info.GroupBy = v.inputKeys(n)
	case KindUDF:
		out = v.udfSchema(pp, prm.UDF)
	}
	if len(v.errs) == before {
		info.Out, info.Keys = out, keys
	}
}

// inputKeys returns the keys of the node's single input, if known.
func (v *validator) inputKeys(n *Node) []string {
	if up, ok := v.info[n.Inputs[0]]; ok {
		return up.Keys
	}
	return nil
}

func (v *validator) compileList(path, src string, in *record.Schema) (*expr.Program, bool) {
	if strings.TrimSpace(src) == "" {
		v.errorf(path, "expr", "missing expression")
		return nil, false
	}
	env, err := v.env(in)
	if err != nil {
		v.errorf(path, "expr", "%v", err)
		return nil, false
	}
	p, err := env.CompileList(src, record.TypeNull)
	if err != nil {
		v.errorf(path, "expr", "%v", err)
		return nil, false
	}
	return p, true
}

func sameSchema(a, b *record.Schema) bool {
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

func (v *validator) typeSource(pp string, prm *Params) (*record.Schema, []string) {
	v.checkStream(pp+".stream", prm.Stream, "input")
	if prm.Schema == "" {
		v.errorf(pp+".schema", "schema", "missing schema name")
		return nil, nil
	}
	sch, ok := v.schemas[prm.Schema]
	if !ok {
		if _, declared := v.spec.Schemas[prm.Schema]; !declared {
			v.errorf(pp+".schema", "schema", "unknown schema %q (declared: %s)", prm.Schema, strings.Join(sortedKeys(v.spec.Schemas), ", "))
		}
		return nil, nil
	}
	if prm.TimeField != "" {
		if t, ok := v.fieldOf(pp+".timeField", sch, prm.TimeField); ok && t != record.TypeInt {
			v.errorf(pp+".timeField", "type", "time field %q is %s, want int (epoch milliseconds)", prm.TimeField, t)
		}
	}
	if w := prm.Watermark; w != nil {
		if w.MaxOutOfOrdernessMs < 0 {
			v.errorf(pp+".watermark.maxOutOfOrdernessMs", "duration", "%d is negative", w.MaxOutOfOrdernessMs)
		}
		if w.IdleTimeoutMs < 0 {
			v.errorf(pp+".watermark.idleTimeoutMs", "duration", "%d is negative", w.IdleTimeoutMs)
		}
	}
	return sch, nil
}

func (v *validator) typeMap(pp string, n *Node, in *record.Schema) (*record.Schema, []string) {
	prm := &n.Params
	if len(prm.Fields) == 0 {
		v.errorf(pp+".fields", "fields", "map needs at least one output field")
	}
	b := schemaBuilder{v: v}
	identity := map[string]bool{}
	for j, f := range prm.Fields {
		fp := fmt.Sprintf("%s.fields[%d]", pp, j)
		b.path = fp + ".name"
		if !v.checkOutputName(fp+".name", f.Name) {
			continue
		}
		p, ok := v.compile(fp+".expr", f.Expr, in, record.TypeNull)
		if !ok {
			continue
		}
		b.add(f.Name, p.Type())
		if strings.TrimSpace(f.Expr) == f.Name {
			identity[f.Name] = true
		}
	}
	// The output stays keyed only if every key passes through unchanged.
	keys := v.inputKeys(n)
	for _, k := range keys {
		if !identity[k] {
			keys = nil
			break
		}
	}
	return &b.out, keys
}

func (v *validator) checkWindow(path string, w *Window, allowSession bool) bool {
	if w == nil {
		v.errorf(path, "window", "missing window")
		return false
	}
	before := len(v.errs)
	switch w.Type {
	case WindowTumbling:
		if w.SizeMs <= 0 {
			v.errorf(path+".sizeMs", "window", "tumbling window needs sizeMs > 0, got %d", w.SizeMs)
		}
		if w.SlideMs != 0 || w.GapMs != 0 {
			v.errorf(path, "window", "tumbling window takes only sizeMs (slideMs %d, gapMs %d)", w.SlideMs, w.GapMs)
		}
	case WindowSliding:
		if w.SizeMs <= 0 {
			v.errorf(path+".sizeMs", "window", "sliding window needs sizeMs > 0, got %d", w.SizeMs)
		}
		if w.SlideMs <= 0 || w.SlideMs > w.SizeMs || (w.SizeMs > 0 && w.SizeMs%w.SlideMs != 0) {
			v.errorf(path+".slideMs", "window", "sliding window needs 0 < slideMs <= sizeMs (%d) with slideMs dividing sizeMs, got %d", w.SizeMs, w.SlideMs)
		}
		if w.GapMs != 0 {
			v.errorf(path+".gapMs", "window", "sliding window takes no gapMs")
		}
	case WindowSession:
		if !allowSession {
			v.errorf(path+".type", "window", "session windows are not supported here (want tumbling or sliding)")
		}
		if w.GapMs <= 0 {
			v.errorf(path+".gapMs", "window", "session window needs gapMs > 0, got %d", w.GapMs)
		}
		if w.SizeMs != 0 || w.SlideMs != 0 {
			v.errorf(path, "window", "session window takes only gapMs (sizeMs %d, slideMs %d)", w.SizeMs, w.SlideMs)
		}
	default:
		v.errorf(path+".type", "window", "unknown window type %q (want tumbling, sliding or session)", w.Type)
	}
	if w.AllowedLatenessMs < 0 {
		v.errorf(path+".allowedLatenessMs", "duration", "%d is negative", w.AllowedLatenessMs)
	}
	for _, f := range []struct{ name, val string }{{"startField", w.StartField}, {"endField", w.EndField}} {
		if f.val != OmitField && !expr.ValidIdent(f.val) {
			v.errorf(path+"."+f.name, "field", "%q is not a valid field name (or %q to omit the field)", f.val, OmitField)
		}
	}
	if w.StartField == w.EndField && w.StartField != OmitField {
		v.errorf(path+".endField", "duplicate-field", "startField and endField are both %q", w.StartField)
	}
	return len(v.errs) == before
}

func (b *schemaBuilder) addBounds(w *Window) {
	if w.StartField != OmitField {
		b.add(w.StartField, record.TypeInt)
	}
	if w.EndField != OmitField {
		b.add(w.EndField, record.TypeInt)
	}
}

func (v *validator) typeWindowAggregate(pp string, n *Node, in *record.Schema) *record.Schema {
	prm := &n.Params
	if !v.goodWindow[n] || len(prm.Aggregates) == 0 {
		return nil
	}
	keys := v.inputKeys(n)
	b := schemaBuilder{v: v, path: pp + ".aggregates"}
	maxRows := -1
	for j, a := range prm.Aggregates {
		if a.Fn == AggMaxRows {
			maxRows = j
		}
	}
	if maxRows >= 0 {
		ap := fmt.Sprintf("%s.aggregates[%d]", pp, maxRows)
		a := prm.Aggregates[maxRows]
		if t, ok := v.fieldOf(ap+".field", in, a.Field); ok && t != record.TypeInt && t != record.TypeFloat {
			v.errorf(ap+".field", "type", "max-rows field %q is %s, want int or float", a.Field, t)
		}
		b.out.Fields = append(b.out.Fields, in.Fields...)
		b.path = pp + ".window"
		b.addBounds(prm.Window)
		return &b.out
	}
	for _, k := range keys {
		t, _ := v.fieldOf(pp, in, k)
		b.add(k, t)
	}
	b.path = pp + ".window"
	b.addBounds(prm.Window)
	for j, a := range prm.Aggregates {
		ap := fmt.Sprintf("%s.aggregates[%d]", pp, j)
		b.path = ap + ".as"
		if !v.checkOutputName(ap+".as", a.As) {
			continue
		}
		switch a.Fn {
		case AggCount:
			if a.Field != "" {
				if _, ok := v.fieldOf(ap+".field", in, a.Field); !ok {
					continue
				}
			}
			b.add(a.As, record.TypeInt)
		case AggSum, AggMin, AggMax, AggAvg:
			t, ok := v.fieldOf(ap+".field", in, a.Field)
			if !ok {
				continue
			}
			numeric := t == record.TypeInt || t == record.TypeFloat
			if !numeric && !(t == record.TypeString && (a.Fn == AggMin || a.Fn == AggMax)) {
				v.errorf(ap+".field", "type", "%s of field %q: %s is not numeric", a.Fn, a.Field, t)
				continue
			}
			if a.Fn == AggAvg {
				t = record.TypeFloat
			}
			b.add(a.As, t)
		}
	}
	return &b.out
}

func (v *validator) typeJoin(pp string, n *Node, left, right *record.Schema) *record.Schema {
	prm := &n.Params
	if len(prm.LeftKeys) == len(prm.RightKeys) {
		for j := range prm.LeftKeys {
			lt, lok := v.fieldOf(fmt.Sprintf("%s.leftKeys[%d]", pp, j), left, prm.LeftKeys[j])
			rt, rok := v.fieldOf(fmt.Sprintf("%s.rightKeys[%d]", pp, j), right, prm.RightKeys[j])
			if lok && rok && lt != rt {
				v.errorf(fmt.Sprintf("%s.rightKeys[%d]", pp, j), "type", "key %q is %s but left key %q is %s", prm.RightKeys[j], rt, prm.LeftKeys[j], lt)
			}
		}
	}
	b := schemaBuilder{v: v, path: pp}
	for _, side := range []struct {
		s      *record.Schema
		prefix string
		name   string
	}{{left, prm.LeftPrefix, "leftPrefix"}, {right, prm.RightPrefix, "rightPrefix"}} {
		for _, f := range side.s.Fields {
			name := side.prefix + f.Name
			if b.out.Index(name) >= 0 {
				v.errorf(pp, "duplicate-field", "both inputs have a field %q: set params.leftPrefix or params.rightPrefix to tell them apart", name)
				return nil
			}
			b.out.Fields = append(b.out.Fields, record.Field{Name: name, Type: f.Type})
		}
	}
	if n.Kind == KindWindowJoin && v.goodWindow[n] {
		b.path = pp + ".window"
		b.addBounds(prm.Window)
	}
	if prm.Expr != "" {
		v.compile(pp+".expr", prm.Expr, &b.out, record.TypeBool)
	}
	return &b.out
}

func (v *validator) typeTopN(pp string, n *Node, in *record.Schema) *record.Schema {
	prm := &n.Params
	for j, o := range prm.OrderBy {
		v.fieldOf(fmt.Sprintf("%s.orderBy[%d].field", pp, j), in, o.Field)
	}
	b := schemaBuilder{v: v, path: pp}
	b.out.Fields = append(b.out.Fields, in.Fields...)
	if v.goodWindow[n] {
		b.path = pp + ".window"
		b.addBounds(prm.Window)
	}
	if prm.RankField != "" && v.checkOutputName(pp+".rankField", prm.RankField) {
		b.path = pp + ".rankField"
		b.add(prm.RankField, record.TypeInt)
	}
	return &b.out
}

// staticNode checks the parameters that do not depend on input schemas, so
// that they are reported even when an upstream node is broken.
func (v *validator) staticNode(path string, n *Node) {
	pp := path + ".params"
	prm := &n.Params
	switch n.Kind {
	case KindSink:
		v.checkStream(pp+".stream", prm.Stream, "output")
	case KindKeyBy:
		if len(prm.Keys) == 0 {
			v.errorf(pp+".keys", "keys", "key-by needs at least one key field")
		}
	case KindWindowAggregate:
		v.goodWindow[n] = v.checkWindow(pp+".window", prm.Window, true)
		if len(prm.Aggregates) == 0 {
			v.errorf(pp+".aggregates", "aggregate", "window-aggregate needs at least one aggregate")
		}
		for j, a := range prm.Aggregates {
			ap := fmt.Sprintf("%s.aggregates[%d]", pp, j)
			switch a.Fn {
			case AggCount, AggSum, AggMin, AggMax, AggAvg:
			case AggMaxRows:
				if len(prm.Aggregates) > 1 {
					v.errorf(ap, "aggregate", "max-rows outputs the input rows and cannot be combined with other aggregates")
				}
				if a.As != "" {
					v.errorf(ap+".as", "aggregate", "max-rows outputs the input rows: it takes no 'as'")
				}
			default:
				v.errorf(ap+".fn", "aggregate", "unknown aggregate %q (want count, sum, min, max, avg or max-rows)", a.Fn)
			}
		}
	case KindWindowJoin, KindIntervalJoin, KindJoin:
		switch n.Kind {
		case KindWindowJoin:
			v.goodWindow[n] = v.checkWindow(pp+".window", prm.Window, false)
		case KindIntervalJoin:
			if prm.Between == nil {
				v.errorf(pp+".between", "interval", "interval join needs between: {lowerMs, upperMs}")
			} else if prm.Between.LowerMs > prm.Between.UpperMs {
				v.errorf(pp+".between", "interval", "lowerMs %d is greater than upperMs %d", prm.Between.LowerMs, prm.Between.UpperMs)
			}
		}
		if len(prm.LeftKeys) == 0 {
			v.errorf(pp+".leftKeys", "keys", "%s needs at least one key pair (leftKeys, rightKeys)", n.Kind)
		}
		if len(prm.LeftKeys) != len(prm.RightKeys) {
			v.errorf(pp+".rightKeys", "keys", "%d right keys for %d left keys: keys pair up", len(prm.RightKeys), len(prm.LeftKeys))
		}
	case KindTopN:
		v.goodWindow[n] = v.checkWindow(pp+".window", prm.Window, false)
		if prm.N < 1 {
			v.errorf(pp+".n", "top-n", "n must be at least 1, got %d", prm.N)
		}
		if len(prm.OrderBy) == 0 {
			v.errorf(pp+".orderBy", "top-n", "top-n needs at least one orderBy field")
		}
	}
}

var digestPattern = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// udfSchema checks a udf reference and returns its declared output schema.
func (v *validator) udfSchema(pp string, u *UDF) *record.Schema {
	if u == nil {
		v.errorf(pp+".udf", "udf", "missing udf reference {module, function, output}")
		return nil
	}
	up := pp + ".udf"
	if !digestPattern.MatchString(u.Module) {
		v.errorf(up+".module", "udf", "module %q is not a digest of the form sha256:<64 lowercase hex digits>", u.Module)
	}
	if !expr.ValidIdent(u.Function) {
		v.errorf(up+".function", "udf", "function name %q is not a valid export name (letters, digits, '_')", u.Function)
	}
	for i, a := range u.Allow {
		if a != AllowClock && a != AllowRandom {
			v.errorf(fmt.Sprintf("%s.allow[%d]", up, i), "udf", "capability %q cannot be granted (want %s or %s; filesystem and network never are)", a, AllowClock, AllowRandom)
		}
	}
	if len(u.Output) == 0 {
		v.errorf(up+".output", "udf", "missing output schema")
		return nil
	}
	out := &record.Schema{}
	for i, f := range u.Output {
		fp := fmt.Sprintf("%s.output[%d]", up, i)
		switch {
		case !expr.ValidIdent(f.Name):
			v.errorf(fp+".name", "field", "output field name %q must be a letter or '_' followed by letters, digits or '_', and not a CEL reserved word", f.Name)
		case out.Index(f.Name) >= 0:
			v.errorf(fp+".name", "duplicate-field", "output field %q appears twice", f.Name)
		case f.Type == record.TypeNull:
			v.errorf(fp+".type", "schema", "field %q has no type (want int, float, string or bool)", f.Name)
		}
		out.Fields = append(out.Fields, record.Field{Name: f.Name, Type: f.Type})
	}
	return out
}

// Describe returns a readable summary of the resolved graph, one node a line
// in topological order: id, kind, inputs, output fields and keys.
func (r *Resolved) Describe() string {
	var b strings.Builder
	for _, id := range r.Order {
		n := r.Nodes[id]
		fmt.Fprintf(&b, "%s (%s)", id, n.Node.Kind)
		if len(n.Node.Inputs) > 0 {
			fmt.Fprintf(&b, " <- %s", strings.Join(n.Node.Inputs, ", "))
		}
		if n.Out != nil {
			fmt.Fprintf(&b, ": %s", schemaText(n.Out))
		}
		if len(n.GroupBy) > 0 {
			fmt.Fprintf(&b, " grouped by %s", strings.Join(n.GroupBy, ", "))
		}
		if len(n.Keys) > 0 {
			fmt.Fprintf(&b, " keyed by %s", strings.Join(n.Keys, ", "))
		}
		b.WriteByte('\n')
	}
	return b.String()
}
