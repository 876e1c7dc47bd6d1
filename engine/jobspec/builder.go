package jobspec

import (
	"fmt"
	"time"

	"github.com/sealflow/sealflow/engine/record"
)

// Builder produces a Spec from Go code:
//
//	b := jobspec.New("q5").Schema("bid", jobspec.Int("auction"), jobspec.Int("dateTime"))
//	b.Source("bids", "bid", jobspec.EventTime("dateTime", 0)).
//		KeyBy("auction").
//		Window(jobspec.Sliding(10*time.Second, 2*time.Second), jobspec.Count("num")).
//		Sink("q5-out")
//	spec, err := b.Build()
//
// Each call appends one node with a generated ID (kind and a counter); As
// renames it. Builder methods never fail: problems are collected and Build
// reports them together with the spec's validation errors.
type Builder struct {
	spec  Spec
	count map[Kind]int
	errs  Errors
}

// New starts a job named name.
func New(name string) *Builder {
	return &Builder{spec: Spec{Name: name}, count: map[Kind]int{}}
}

// Version sets the job's version label.
func (b *Builder) Version(v string) *Builder { b.spec.Version = v; return b }

// Parallelism sets the default number of tasks per node.
func (b *Builder) Parallelism(p int) *Builder { b.spec.Parallelism = p; return b }

// MaxParallelism sets the number of key groups.
func (b *Builder) MaxParallelism(n int) *Builder { b.spec.MaxParallelism = n; return b }

// Schema declares a named record schema for sources.
func (b *Builder) Schema(name string, fields ...Field) *Builder {
	if b.spec.Schemas == nil {
		b.spec.Schemas = map[string][]Field{}
	}
	if _, dup := b.spec.Schemas[name]; dup {
		b.fail("schemas."+name, "schema", "schema %q declared twice", name)
	}
	b.spec.Schemas[name] = fields
	return b
}

// Int declares an int field.
func Int(name string) Field { return Field{Name: name, Type: record.TypeInt} }

// Float declares a float field.
func Float(name string) Field { return Field{Name: name, Type: record.TypeFloat} }

// String declares a string field.
func String(name string) Field { return Field{Name: name, Type: record.TypeString} }

// Bool declares a bool field.
func Bool(name string) Field { return Field{Name: name, Type: record.TypeBool} }

// Spec returns a copy of the spec built so far, without validating it.
func (b *Builder) Spec() *Spec { return b.spec.clone() }

// Build validates the spec and returns it. The error is Errors.
func (b *Builder) Build() (*Spec, error) {
	s := b.spec.clone()
	errs := append(Errors(nil), b.errs...)
	if err := s.Validate(); err != nil {
		errs = append(errs, err.(Errors)...)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return s, nil
}

// MustBuild is Build for specs written in code that are known to be valid
// (tests, built-in queries): it panics on an invalid spec.
func (b *Builder) MustBuild() *Spec {
	s, err := b.Build()
	if err != nil {
		panic(err)
	}
	return s
}

func (b *Builder) fail(path, rule, format string, args ...any) {
	b.errs = append(b.errs, &Error{Path: path, Rule: rule, Msg: fmt.Sprintf(format, args...)})
}

func (b *Builder) add(kind Kind, params Params, inputs ...*Stream) *Stream {
	b.count[kind]++
	id := fmt.Sprintf("%s%d", kind, b.count[kind])
	for b.spec.Node(id) != nil {
		b.count[kind]++
		id = fmt.Sprintf("%s%d", kind, b.count[kind])
	}
	n := Node{ID: id, Kind: kind, Params: params}
	for _, in := range inputs {
		if in == nil || in.b != b {
			b.fail(fmt.Sprintf("nodes[%d] (id %q).inputs", len(b.spec.Nodes), id), "builder", "input stream belongs to another builder")
			continue
		}
		n.Inputs = append(n.Inputs, in.id)
	}
	b.spec.Nodes = append(b.spec.Nodes, n)
	return &Stream{b: b, id: id}
}

// ms converts a builder duration to milliseconds, recording an error for
// sub-millisecond precision.
func (b *Builder) ms(what string, d time.Duration) int64 {
	if d%time.Millisecond != 0 {
		b.fail(what, "duration", "%s is not a whole number of milliseconds", d)
	}
	return d.Milliseconds()
}

// SourceOption configures a source.
type SourceOption func(b *Builder, p *Params)

// EventTime takes event time from the int field (epoch ms) and sets the
// watermark to trail the largest seen time by maxOutOfOrderness.
func EventTime(field string, maxOutOfOrderness time.Duration) SourceOption {
	return func(b *Builder, p *Params) {
		p.TimeField = field
		if p.Watermark == nil {
			p.Watermark = &Watermark{}
		}
		p.Watermark.MaxOutOfOrdernessMs = b.ms("watermark.maxOutOfOrdernessMs", maxOutOfOrderness)
	}
}

// IdleTimeout marks a source partition idle after d without records.
func IdleTimeout(d time.Duration) SourceOption {
	return func(b *Builder, p *Params) {
		if p.Watermark == nil {
			p.Watermark = &Watermark{}
		}
		p.Watermark.IdleTimeoutMs = b.ms("watermark.idleTimeoutMs", d)
	}
}

// Source adds a node that reads stream with records of the named schema.
func (b *Builder) Source(stream, schema string, opts ...SourceOption) *Stream {
	p := Params{Stream: stream, Schema: schema}
	for _, o := range opts {
		o(b, &p)
	}
	return b.add(KindSource, p)
}

// Stream is the output of a node in a Builder; its methods append nodes that
// read it.
type Stream struct {
	b  *Builder
	id string
}

// ID returns the node's ID.
func (s *Stream) ID() string { return s.id }

func (s *Stream) node() *Node { return s.b.spec.Node(s.id) }

// As renames the node to id (and every reference to it).
func (s *Stream) As(id string) *Stream {
	if s.b.spec.Node(id) != nil && id != s.id {
		s.b.fail("nodes", "node-id", "As(%q): a node already has this id", id)
		return s
	}
	for i := range s.b.spec.Nodes {
		n := &s.b.spec.Nodes[i]
		if n.ID == s.id {
			n.ID = id
		}
		for j, in := range n.Inputs {
			if in == s.id {
				n.Inputs[j] = id
			}
		}
	}
	s.id = id
	return s
}

// Parallelism overrides the number of tasks of this node.
func (s *Stream) Parallelism(p int) *Stream { s.node().Parallelism = p; return s }

// Place sets placement hints for this node.
func (s *Stream) Place(p Placement) *Stream { s.node().Placement = &p; return s }

// Filter keeps the records for which the CEL predicate is true.
func (s *Stream) Filter(predicate string) *Stream {
	return s.b.add(KindFilter, Params{Expr: predicate}, s)
}

// Col is a map output field computed by a CEL expression.
func Col(name, expr string) Projection { return Projection{Name: name, Expr: expr} }

// Map emits one record per input record with the given fields.
func (s *Stream) Map(fields ...Projection) *Stream {
	return s.b.add(KindMap, Params{Fields: fields}, s)
}

// Project keeps the named input fields, in the given order.
func (s *Stream) Project(names ...string) *Stream {
	fs := make([]Projection, len(names))
	for i, n := range names {
		fs[i] = Projection{Name: n}
	}
	return s.Map(fs...)
}

// FlatMap emits, for each element of the CEL list expression, the input
// record with the element appended as field as.
func (s *Stream) FlatMap(list, as string) *Stream {
	return s.b.add(KindFlatMap, Params{Expr: list, As: as}, s)
}

// KeyBy partitions the stream by the key fields.
func (s *Stream) KeyBy(keys ...string) *Stream {
	return s.b.add(KindKeyBy, Params{Keys: keys}, s)
}

// Union merges this stream with others of the same schema.
func (s *Stream) Union(others ...*Stream) *Stream {
	return s.b.add(KindUnion, Params{}, append([]*Stream{s}, others...)...)
}

// Tumbling returns tumbling windows of the given size.
func Tumbling(size time.Duration) WindowSpec {
	return WindowSpec{w: Window{Type: WindowTumbling}, size: size}
}

// Sliding returns windows of the given size starting every slide.
func Sliding(size, slide time.Duration) WindowSpec {
	return WindowSpec{w: Window{Type: WindowSliding}, size: size, slide: slide}
}

// Session returns session windows closed by gap without records.
func Session(gap time.Duration) WindowSpec {
	return WindowSpec{w: Window{Type: WindowSession}, gap: gap}
}

// WindowSpec is a window under construction in the builder.
type WindowSpec struct {
	w                          Window
	size, slide, gap, lateness time.Duration
}

// AllowedLateness keeps windows open for late records for d past the
// watermark.
func (w WindowSpec) AllowedLateness(d time.Duration) WindowSpec { w.lateness = d; return w }

// LateOutput sends records too late for their windows to the named side
// output.
func (w WindowSpec) LateOutput(name string) WindowSpec { w.w.LateOutput = name; return w }

// Bounds names the window bound fields of the output (OmitField leaves one
// out).
func (w WindowSpec) Bounds(start, end string) WindowSpec {
	w.w.StartField, w.w.EndField = start, end
	return w
}

func (b *Builder) window(w WindowSpec) *Window {
	out := w.w
	out.SizeMs = b.ms("window.sizeMs", w.size)
	out.SlideMs = b.ms("window.slideMs", w.slide)
	out.GapMs = b.ms("window.gapMs", w.gap)
	out.AllowedLatenessMs = b.ms("window.allowedLatenessMs", w.lateness)
	return &out
}

// Count counts records into field as.
func Count(as string) Aggregate { return Aggregate{Fn: AggCount, As: as} }

// Sum sums field into as.
func Sum(field, as string) Aggregate { return Aggregate{Fn: AggSum, Field: field, As: as} }

// Min takes the minimum of field into as.
func Min(field, as string) Aggregate { return Aggregate{Fn: AggMin, Field: field, As: as} }

// Max takes the maximum of field into as.
func Max(field, as string) Aggregate { return Aggregate{Fn: AggMax, Field: field, As: as} }

// Avg averages field into as (a float).
func Avg(field, as string) Aggregate { return Aggregate{Fn: AggAvg, Field: field, As: as} }

// MaxRows emits the input rows whose field equals the window's maximum.
func MaxRows(field string) Aggregate { return Aggregate{Fn: AggMaxRows, Field: field} }

// Window aggregates the stream per key (of the preceding KeyBy, if any) and
// window.
func (s *Stream) Window(w WindowSpec, aggs ...Aggregate) *Stream {
	return s.b.add(KindWindowAggregate, Params{Window: s.b.window(w), Aggregates: aggs}, s)
}

// JoinOption configures a join.
type JoinOption func(p *Params)

// On adds an equality key pair: left field = right field.
func On(left, right string) JoinOption {
	return func(p *Params) {
		p.LeftKeys = append(p.LeftKeys, left)
		p.RightKeys = append(p.RightKeys, right)
	}
}

// Prefixes prepends left and right to the output names of each side's
// fields.
func Prefixes(left, right string) JoinOption {
	return func(p *Params) { p.LeftPrefix, p.RightPrefix = left, right }
}

// Where adds a CEL condition over the joined output row.
func Where(cond string) JoinOption { return func(p *Params) { p.Expr = cond } }

func joinParams(p Params, opts []JoinOption) Params {
	for _, o := range opts {
		o(&p)
	}
	return p
}

// Join joins this stream (left) with right on key equality, keeping all
// records of both sides in state (a regular, unbounded join).
func (s *Stream) Join(right *Stream, opts ...JoinOption) *Stream {
	return s.b.add(KindJoin, joinParams(Params{}, opts), s, right)
}

// WindowJoin joins records of both sides that share a key and a window.
func (s *Stream) WindowJoin(right *Stream, w WindowSpec, opts ...JoinOption) *Stream {
	return s.b.add(KindWindowJoin, joinParams(Params{Window: s.b.window(w)}, opts), s, right)
}

// IntervalJoin joins a left record with the right records of the same key
// whose time lies in [left.time+lower, left.time+upper].
func (s *Stream) IntervalJoin(right *Stream, lower, upper time.Duration, opts ...JoinOption) *Stream {
	p := Params{Between: &Interval{LowerMs: s.b.ms("between.lowerMs", lower), UpperMs: s.b.ms("between.upperMs", upper)}}
	return s.b.add(KindIntervalJoin, joinParams(p, opts), s, right)
}

// Asc orders by field, smallest first.
func Asc(field string) Order { return Order{Field: field} }

// Desc orders by field, largest first.
func Desc(field string) Order { return Order{Field: field, Desc: true} }

// TopN emits, per key and window, the first n records in the given order,
// with their rank (1..n) in rankField unless it is empty.
func (s *Stream) TopN(n int, w WindowSpec, rankField string, order ...Order) *Stream {
	return s.b.add(KindTopN, Params{N: n, Window: s.b.window(w), OrderBy: order, RankField: rankField}, s)
}

// Sink writes the stream to the named output stream.
func (s *Stream) Sink(stream string) *Stream {
	return s.b.add(KindSink, Params{Stream: stream}, s)
}

// UDF passes the stream through the WebAssembly function fn of the module
// with the given digest, which returns records with the output fields.
func (s *Stream) UDF(module, fn string, output []Field, allow ...string) *Stream {
	return s.b.add(KindUDF, Params{UDF: &UDF{Module: module, Function: fn, Output: output, Allow: allow}}, s)
}

// FieldsOf converts a record schema to spec fields.
func FieldsOf(s *record.Schema) []Field {
	out := make([]Field, len(s.Fields))
	for i, f := range s.Fields {
		out[i] = Field{Name: f.Name, Type: f.Type}
	}
	return out
}

// SchemaOf declares a named schema with the fields of a record schema.
func (b *Builder) SchemaOf(name string, s *record.Schema) *Builder {
	return b.Schema(name, FieldsOf(s)...)
}
