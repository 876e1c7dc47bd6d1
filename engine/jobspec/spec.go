// Package jobspec defines JobSpecs: stream processing jobs as data. A Spec is
// a graph of built-in operator nodes parameterised by CEL expressions, field
// lists and durations, plus the record schemas of its sources. Its file form is
// YAML or JSON (decoded strictly: unknown fields are refused), and its
// identity is a digest over a canonical JSON encoding: data owners approve that
// digest, so the same job written twice, with or without defaults spelled
// out, has the same digest.
//
// Specs are written by hand, decoded with Parse, or produced by the Go
// builder (New). Resolve type-checks the whole graph and infers every node's
// input and output schemas; Validate reports only the errors.
//
// Times and durations are epoch milliseconds. Windows are aligned to the epoch
// and half-open, [start, end).
package jobspec

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"

	"sigs.k8s.io/yaml"

	"github.com/sealflow/sealflow/engine/record"
)

// Default values applied when a spec leaves them unset.
const (
	// DefaultMaxParallelism is the default number of key groups.
	DefaultMaxParallelism = 128
	// DefaultParallelism is the default number of parallel tasks per node.
	DefaultParallelism = 1
	// MaxKeyGroups bounds MaxParallelism.
	MaxKeyGroups = 1 << 15
	// DefaultWindowStartField and DefaultWindowEndField name the window bound
	// fields that windowed nodes add to their output.
	DefaultWindowStartField = "window_start"
	DefaultWindowEndField   = "window_end"
	// OmitField as a window bound field name leaves that bound out of the
	// output.
	OmitField = "-"
)

// Kind names an operator.
type Kind string

// The operator kinds.
const (
	KindSource          Kind = "source"           // reads a stream: params stream, schema, timeField, watermark
	KindMap             Kind = "map"              // projects: params fields (name, expr)
	KindFilter          Kind = "filter"           // keeps records where params expr is true
	KindFlatMap         Kind = "flat-map"         // one record per element of list params expr, as field params as
	KindKeyBy           Kind = "key-by"           // partitions by params keys (key groups)
	KindUnion           Kind = "union"            // merges inputs of one schema
	KindWindowAggregate Kind = "window-aggregate" // params window, aggregates; groups by the input's keys
	KindWindowJoin      Kind = "window-join"      // params window, leftKeys, rightKeys
	KindIntervalJoin    Kind = "interval-join"    // params leftKeys, rightKeys, between
	KindJoin            Kind = "join"             // regular join, unbounded state: params leftKeys, rightKeys
	KindTopN            Kind = "top-n"            // params n, orderBy, window; per input key and window
	KindUDF             Kind = "udf"              // a WebAssembly function over batches: params udf
	KindSink            Kind = "sink"             // writes a stream: params stream
)

// Kinds lists every operator kind, in documentation order.
var Kinds = []Kind{KindSource, KindMap, KindFilter, KindFlatMap, KindKeyBy, KindUnion,
	KindWindowAggregate, KindWindowJoin, KindIntervalJoin, KindJoin, KindTopN, KindUDF, KindSink}

// Spec is a job: named record schemas and an ordered list of operator nodes.
type Spec struct {
	// Name identifies the job.
	Name string `json:"name"`
	// Version is the job author's version label.
	Version string `json:"version,omitempty"`
	// MaxParallelism is the number of key groups keyed state is divided
	// into; it bounds every node's parallelism and cannot change without
	// losing state (default 128).
	MaxParallelism int `json:"maxParallelism,omitempty"`
	// Parallelism is the default number of tasks per node (default 1).
	Parallelism int `json:"parallelism,omitempty"`
	// Schemas are the named record schemas that sources refer to.
	Schemas map[string][]Field `json:"schemas,omitempty"`
	// Nodes are the operators. Inputs refer to node IDs.
	Nodes []Node `json:"nodes"`
}

// Field is a typed field of a schema.
type Field struct {
	// Name is the field's name, a CEL identifier.
	Name string `json:"name"`
	// Type is int, float, string or bool.
	Type record.Type `json:"type"`
}

// Node is one operator of the graph.
type Node struct {
	// ID names the node; other nodes refer to it in Inputs.
	ID string `json:"id"`
	// Kind selects the operator.
	Kind Kind `json:"kind"`
	// Inputs are the IDs of the nodes this one reads, in order (joins:
	// left, right).
	Inputs []string `json:"inputs,omitempty"`
	// Params are the operator's parameters; which apply depends on Kind.
	Params Params `json:"params"`
	// Parallelism overrides the spec's default for this node.
	Parallelism int `json:"parallelism,omitempty"`
	// Placement constrains or prefers where this node's tasks run.
	Placement *Placement `json:"placement,omitempty"`
}

// Params holds the parameters of every operator kind; Validate refuses
// parameters that do not apply to a node's kind.
type Params struct {
	// Stream is the stream a source reads or a sink writes.
	Stream string `json:"stream,omitempty"`
	// Schema names the source's record schema in Spec.Schemas.
	Schema string `json:"schema,omitempty"`
	// TimeField is the source's int field holding the event time (epoch
	// ms). Empty keeps the time the producer stamped on each record.
	TimeField string `json:"timeField,omitempty"`
	// Watermark configures the source's watermarks.
	Watermark *Watermark `json:"watermark,omitempty"`

	// Expr is a CEL expression: the predicate of a filter (bool), the list
	// of a flat-map, or an extra condition over a join's output row (bool).
	Expr string `json:"expr,omitempty"`
	// As names the field a flat-map appends for each list element.
	As string `json:"as,omitempty"`
	// Fields are a map's output fields, in order.
	Fields []Projection `json:"fields,omitempty"`
	// Keys are a key-by's key fields.
	Keys []string `json:"keys,omitempty"`

	// Window is the window of window-aggregate, window-join and top-n.
	Window *Window `json:"window,omitempty"`
	// Aggregates are a window-aggregate's outputs.
	Aggregates []Aggregate `json:"aggregates,omitempty"`

	// LeftKeys are a join's equality keys on its left input.
	LeftKeys []string `json:"leftKeys,omitempty"`
	// RightKeys are the right input's keys, pairwise with LeftKeys.
	RightKeys []string `json:"rightKeys,omitempty"`
	// LeftPrefix is prepended to the names of a join's left fields in its
	// output, to keep names unique.
	LeftPrefix string `json:"leftPrefix,omitempty"`
	// RightPrefix is prepended to the names of a join's right fields.
	RightPrefix string `json:"rightPrefix,omitempty"`
	// Between bounds an interval join.
	Between *Interval `json:"between,omitempty"`

	// N is a top-n's number of rows per key and window.
	N int `json:"n,omitempty"`
	// OrderBy orders a top-n's rows.
	OrderBy []Order `json:"orderBy,omitempty"`
	// RankField, when set, names the int field (1..N) a top-n adds.
	RankField string `json:"rankField,omitempty"`

	// UDF references the WebAssembly function of a udf node.
	UDF *UDF `json:"udf,omitempty"`
}

// UDF references a user-defined function in a WebAssembly module. The module
// is identified by the digest of its plaintext, so that owners approve
// exactly that code without seeing it; the function is called a batch at a
// time and returns a batch of records of schema Output.
type UDF struct {
	// Module is the module's digest, "sha256:<64 hex digits>".
	Module string `json:"module"`
	// Function is the name of the exported function.
	Function string `json:"function"`
	// Output is the schema of the records the function returns.
	Output []Field `json:"output"`
	// Allow lists the capabilities the module may use beyond pure
	// computation: "clock" and "random". Filesystem and network access are
	// never granted.
	Allow []string `json:"allow,omitempty"`
}

// UDF capabilities a spec may grant.
const (
	AllowClock  = "clock"
	AllowRandom = "random"
)

// Watermark configures a source's event-time watermarks.
type Watermark struct {
	// MaxOutOfOrdernessMs is how far behind the largest seen event time
	// the watermark trails (bounded out-of-orderness).
	MaxOutOfOrdernessMs int64 `json:"maxOutOfOrdernessMs,omitempty"`
	// IdleTimeoutMs marks a source partition idle after this long without
	// records, so that it stops holding back the watermark (0: never).
	IdleTimeoutMs int64 `json:"idleTimeoutMs,omitempty"`
}

// WindowType names a window assigner.
type WindowType string

// The window types.
const (
	WindowTumbling WindowType = "tumbling"
	WindowSliding  WindowType = "sliding"
	WindowSession  WindowType = "session"
)

// Window configures event-time windows. Tumbling and sliding windows are
// aligned to the epoch and half-open, [start, end); a session is [first record
// time, last record time + gap). A window's results carry the event time
// end - 1, so that they fall into the same window of a downstream tumbling
// window of the slide's size.
type Window struct {
	// Type is tumbling, sliding or session.
	Type WindowType `json:"type"`
	// SizeMs is a tumbling or sliding window's length.
	SizeMs int64 `json:"sizeMs,omitempty"`
	// SlideMs is a sliding window's step; it must divide SizeMs.
	SlideMs int64 `json:"slideMs,omitempty"`
	// GapMs closes a session after this long without records.
	GapMs int64 `json:"gapMs,omitempty"`
	// AllowedLatenessMs keeps windows open for late records this long past
	// the watermark; a late window firing again emits an updated result.
	AllowedLatenessMs int64 `json:"allowedLatenessMs,omitempty"`
	// LateOutput names the side output that receives records too late for
	// every window they belong to; empty drops them (they are counted).
	LateOutput string `json:"lateOutput,omitempty"`
	// StartField names the window start field (int, epoch ms) added to
	// the output (default window_start; "-" omits it).
	StartField string `json:"startField,omitempty"`
	// EndField names the window end field (default window_end; "-" omits
	// it).
	EndField string `json:"endField,omitempty"`
}

// Aggregate functions.
const (
	AggCount   = "count"
	AggSum     = "sum"
	AggMin     = "min"
	AggMax     = "max"
	AggAvg     = "avg"
	AggMaxRows = "max-rows" // the input rows whose Field equals the window's maximum
)

// Aggregate is one output of a window-aggregate.
type Aggregate struct {
	// Fn is count, sum, min, max, avg or max-rows.
	Fn string `json:"fn"`
	// Field is the aggregated input field (not for count).
	Field string `json:"field,omitempty"`
	// As names the output field (not for max-rows, which outputs the input
	// rows).
	As string `json:"as,omitempty"`
}

// Projection is one output field of a map.
type Projection struct {
	// Name is the output field's name.
	Name string `json:"name"`
	// Expr computes it over the input record; empty means the input field
	// of the same name.
	Expr string `json:"expr,omitempty"`
}

// Interval bounds an interval join: a right record joins a left record when
// left.time+LowerMs <= right.time <= left.time+UpperMs.
type Interval struct {
	// LowerMs is the lower bound, relative to the left record's time.
	LowerMs int64 `json:"lowerMs"`
	// UpperMs is the upper bound (inclusive), at least LowerMs.
	UpperMs int64 `json:"upperMs"`
}

// Order is one sort key of a top-n.
type Order struct {
	// Field is the input field to order by.
	Field string `json:"field"`
	// Desc orders largest first.
	Desc bool `json:"desc,omitempty"`
}

// Placement holds placement hints for a node's tasks.
type Placement struct {
	// Tier, when set, is a constraint: tasks run only on nodes of this
	// tier (device, edge, regional, cloud).
	Tier string `json:"tier,omitempty"`
	// PreferTier is a preference the scheduler honours when it can.
	PreferTier string `json:"preferTier,omitempty"`
	// Region, when set, is a constraint on the node's region.
	Region string `json:"region,omitempty"`
}

// MaxSpecBytes bounds the size of a spec Parse accepts.
const MaxSpecBytes = 4 << 20

// MaxNodes bounds the number of nodes of a spec.
const MaxNodes = 10000

// Parse decodes a spec from YAML or JSON. Unknown fields, duplicate keys and
// malformed values are refused. Parse does not validate the graph: call
// Validate or Resolve.
func Parse(data []byte) (*Spec, error) {
	if len(data) > MaxSpecBytes {
		return nil, fmt.Errorf("job spec is %d bytes, more than the limit of %d", len(data), MaxSpecBytes)
	}
	if t := bytes.TrimSpace(data); len(t) > 0 && t[0] == '{' {
		// JSON: YAML would accept some trailing data after the object.
		dec := json.NewDecoder(bytes.NewReader(t))
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("job spec: %w", err)
		}
		if dec.InputOffset() != int64(len(t)) {
			return nil, fmt.Errorf("job spec: trailing data after the JSON object at byte %d", dec.InputOffset())
		}
	}
	// Through YAML even for JSON: it refuses duplicate keys.
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("job spec: %w", err)
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return nil, fmt.Errorf("job spec is empty")
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var s Spec
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("job spec: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("job spec: trailing data after the spec")
	}
	return &s, nil
}

// JSON returns the spec's canonical JSON encoding: defaults applied, fields in
// a fixed order, schemas sorted by name, no insignificant whitespace.
func (s *Spec) JSON() ([]byte, error) {
	return json.Marshal(s.WithDefaults())
}

// YAML returns the spec in YAML form (defaults applied).
func (s *Spec) YAML() ([]byte, error) {
	js, err := s.JSON()
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(js)
}

// Digest returns "sha256:<hex>" over the canonical JSON encoding. This is the
// identity owners approve.
func (s *Spec) Digest() (string, error) {
	js, err := s.JSON()
	if err != nil {
		return "", fmt.Errorf("job spec %q: digest: %w", s.Name, err)
	}
	sum := sha256.Sum256(js)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// LogicDigest is like Digest but leaves out the parallelism and placement
// settings, which the operator changes when it scales or migrates a job: two
// specs with the same LogicDigest compute the same results over the same
// state layout (MaxParallelism stays in).
func (s *Spec) LogicDigest() (string, error) {
	c := s.WithDefaults()
	c.Parallelism = 0
	for i := range c.Nodes {
		c.Nodes[i].Parallelism = 0
		c.Nodes[i].Placement = nil
	}
	js, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("job spec %q: digest: %w", s.Name, err)
	}
	sum := sha256.Sum256(js)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// WithDefaults returns a deep copy of s with every default spelled out.
func (s *Spec) WithDefaults() *Spec {
	c := s.clone()
	if c.MaxParallelism == 0 {
		c.MaxParallelism = DefaultMaxParallelism
	}
	if c.Parallelism == 0 {
		c.Parallelism = DefaultParallelism
	}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		if n.Parallelism == 0 {
			n.Parallelism = c.Parallelism
		}
		if w := n.Params.Window; w != nil {
			if w.StartField == "" {
				w.StartField = DefaultWindowStartField
			}
			if w.EndField == "" {
				w.EndField = DefaultWindowEndField
			}
		}
		for j := range n.Params.Fields {
			if p := &n.Params.Fields[j]; p.Expr == "" {
				p.Expr = p.Name
			}
		}
		if n.Placement != nil && *n.Placement == (Placement{}) {
			n.Placement = nil
		}
	}
	return c
}

// clone returns a deep copy of s.
func (s *Spec) clone() *Spec {
	c := *s
	if s.Schemas != nil {
		c.Schemas = make(map[string][]Field, len(s.Schemas))
		for k, v := range s.Schemas {
			c.Schemas[k] = slices.Clone(v)
		}
	}
	c.Nodes = slices.Clone(s.Nodes)
	for i := range c.Nodes {
		n := &c.Nodes[i]
		n.Inputs = slices.Clone(n.Inputs)
		if n.Placement != nil {
			p := *n.Placement
			n.Placement = &p
		}
		p := &n.Params
		if p.Watermark != nil {
			w := *p.Watermark
			p.Watermark = &w
		}
		if p.Window != nil {
			w := *p.Window
			p.Window = &w
		}
		if p.Between != nil {
			b := *p.Between
			p.Between = &b
		}
		if p.UDF != nil {
			u := *p.UDF
			u.Output = slices.Clone(u.Output)
			u.Allow = slices.Clone(u.Allow)
			p.UDF = &u
		}
		p.Fields = slices.Clone(p.Fields)
		p.Keys = slices.Clone(p.Keys)
		p.Aggregates = slices.Clone(p.Aggregates)
		p.LeftKeys = slices.Clone(p.LeftKeys)
		p.RightKeys = slices.Clone(p.RightKeys)
		p.OrderBy = slices.Clone(p.OrderBy)
	}
	return &c
}

// Node returns the node with the given ID, or nil.
func (s *Spec) Node(id string) *Node {
	for i := range s.Nodes {
		if s.Nodes[i].ID == id {
			return &s.Nodes[i]
		}
	}
	return nil
}

// RecordSchema converts a named schema of the spec to a record.Schema, or
// returns nil if there is none of that name.
func (s *Spec) RecordSchema(name string) *record.Schema {
	fs, ok := s.Schemas[name]
	if !ok {
		return nil
	}
	rs := &record.Schema{Fields: make([]record.Field, len(fs))}
	for i, f := range fs {
		rs.Fields[i] = record.Field{Name: f.Name, Type: f.Type}
	}
	return rs
}

// Streams returns the streams the job reads (its sources') and writes (its
// sinks'), each sorted and without duplicates: the trust plane checks the
// policy of every input stream's owner, and releases output keys, by these.
func (s *Spec) Streams() (inputs, outputs []string) {
	for _, n := range s.Nodes {
		switch n.Kind {
		case KindSource:
			inputs = append(inputs, n.Params.Stream)
		case KindSink:
			outputs = append(outputs, n.Params.Stream)
		}
	}
	slices.Sort(inputs)
	slices.Sort(outputs)
	return slices.Compact(inputs), slices.Compact(outputs)
}

// Modules returns the digests of the WebAssembly modules the job's udf nodes
// run, sorted and without duplicates: the code digests policies see.
func (s *Spec) Modules() []string {
	var out []string
	for _, n := range s.Nodes {
		if n.Kind == KindUDF && n.Params.UDF != nil {
			out = append(out, n.Params.UDF.Module)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
