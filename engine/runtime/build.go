package runtime

import (
	"fmt"

	"github.com/sealflow/sealflow/engine/expr"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/operator"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/state"
)

// indexes returns the positions of the named fields in s.
func indexes(s *record.Schema, names []string) ([]int, error) {
	out := make([]int, len(names))
	for i, n := range names {
		out[i] = s.Index(n)
		if out[i] < 0 {
			return nil, fmt.Errorf("field %q not in schema", n)
		}
	}
	return out, nil
}

// keyFor returns the key function a keyed node uses for its input, which its
// input exchange must route by too. ok is false for unkeyed nodes.
func keyFor(info *jobspec.NodeInfo, input int) (operator.KeyFunc, bool, error) {
	n := info.Node
	var names []string
	switch n.Kind {
	case jobspec.KindWindowAggregate, jobspec.KindTopN:
		names = info.GroupBy
	case jobspec.KindWindowJoin, jobspec.KindIntervalJoin, jobspec.KindJoin:
		names = n.Params.LeftKeys
		if input == 1 {
			names = n.Params.RightKeys
		}
	default:
		return nil, false, nil
	}
	idx, err := indexes(info.In[input], names)
	if err != nil {
		return nil, false, fmt.Errorf("node %q input %d key: %w", n.ID, input, err)
	}
	return operator.KeyOf(idx...), true, nil
}

func windowing(w *jobspec.Window) (operator.Windowing, error) {
	switch w.Type {
	case jobspec.WindowTumbling:
		return operator.Tumbling(w.SizeMs), nil
	case jobspec.WindowSliding:
		return operator.Sliding(w.SizeMs, w.SlideMs), nil
	case jobspec.WindowSession:
		return operator.Session(w.GapMs), nil
	}
	return operator.Windowing{}, fmt.Errorf("unknown window type %q", w.Type)
}

// buildOperator creates the operator of one node for one subtask, with the
// key groups that subtask owns.
//
// weightField is the index of the weight field of the records of the node's
// input, or -1: a window aggregate whose input edge is combined
// (edge.combine) reads the number of records each one stands for there.
func buildOperator(info *jobspec.NodeInfo, spec *jobspec.Spec, subtask, parallelism int, sink Sink, split Split, weightField int) (operator.Operator, error) {
	n := info.Node
	p := &n.Params
	maxP := spec.MaxParallelism
	kg := state.RangeFor(subtask, parallelism, maxP)
	switch n.Kind {
	case jobspec.KindSource:
		cfg := operator.WatermarksConfig{}
		if w := p.Watermark; w != nil {
			cfg.MaxOutOfOrderness, cfg.IdleTimeout = w.MaxOutOfOrdernessMs, w.IdleTimeoutMs
		}
		if p.TimeField != "" {
			i := info.Out.Index(p.TimeField)
			if i < 0 {
				return nil, fmt.Errorf("time field %q not in schema", p.TimeField)
			}
			cfg.Timestamp = func(r *record.Record) int64 { return r.Values[i].I }
		}
		return operator.NewWatermarks(cfg)

	case jobspec.KindSink:
		return &sinkOp{sink: sink, split: split}, nil

	case jobspec.KindKeyBy:
		// Routing by key is the exchange's job (see keyFor); the records
		// themselves pass unchanged.
		return passThrough{}, nil

	case jobspec.KindFilter:
		prog, err := expr.Compile(p.Expr, info.In[0], record.TypeBool)
		if err != nil {
			return nil, err
		}
		return operator.NewFilter(operator.FilterConfig{Pred: prog.EvalBool})

	case jobspec.KindMap:
		env, err := expr.NewEnv(info.In[0])
		if err != nil {
			return nil, err
		}
		type field struct {
			copyFrom int // input field index, or -1 to evaluate prog
			prog     *expr.Program
		}
		fields := make([]field, len(p.Fields))
		for i, f := range p.Fields {
			if j := info.In[0].Index(f.Expr); j >= 0 {
				fields[i] = field{copyFrom: j}
				continue
			}
			prog, err := env.Compile(f.Expr, record.TypeNull)
			if err != nil {
				return nil, fmt.Errorf("fields[%d] (%s): %w", i, f.Name, err)
			}
			fields[i] = field{copyFrom: -1, prog: prog}
		}
		return operator.NewMap(operator.MapConfig{Fn: func(dst []record.Value, r *record.Record) ([]record.Value, error) {
			for i := range fields {
				f := &fields[i]
				if f.copyFrom >= 0 {
					dst = append(dst, r.Values[f.copyFrom])
					continue
				}
				v, err := f.prog.Eval(r)
				if err != nil {
					return dst, err
				}
				dst = append(dst, v)
			}
			return dst, nil
		}})

	case jobspec.KindFlatMap:
		prog, err := expr.CompileList(p.Expr, info.In[0], record.TypeNull)
		if err != nil {
			return nil, err
		}
		var elems, vals []record.Value
		return operator.NewFlatMap(operator.FlatMapConfig{Fn: func(r *record.Record, emit func(record.Record)) error {
			var err error
			elems, err = prog.EvalList(r, elems[:0])
			if err != nil {
				return err
			}
			for _, e := range elems {
				vals = append(append(vals[:0], r.Values...), e)
				emit(record.Record{Time: r.Time, Values: vals})
			}
			return nil
		}})

	case jobspec.KindUnion:
		return operator.NewUnion(len(n.Inputs))

	case jobspec.KindWindowAggregate, jobspec.KindTopN:
		wdw, err := windowing(p.Window)
		if err != nil {
			return nil, err
		}
		in := info.In[0]
		group, err := indexes(in, info.GroupBy)
		if err != nil {
			return nil, err
		}
		cfg := operator.WindowConfig{
			Windowing: wdw, Key: operator.KeyOf(group...), KeyFields: group,
			AllowedLateness: p.Window.AllowedLatenessMs, LateSide: p.Window.LateOutput,
			MaxParallelism: maxP, KeyGroups: kg,
		}
		cfg.OmitStart = p.Window.StartField == jobspec.OmitField
		cfg.OmitEnd = p.Window.EndField == jobspec.OmitField
		if weightField >= 0 {
			cfg.Weighted, cfg.WeightField = true, weightField
		}
		if n.Kind == jobspec.KindTopN {
			ag := operator.Agg{Kind: operator.AggTopN, N: p.N, Rank: p.RankField != ""}
			for _, o := range p.OrderBy {
				ag.OrderBy = append(ag.OrderBy, operator.SortKey{Field: in.Index(o.Field), Desc: o.Desc})
			}
			cfg.Aggs = []operator.Agg{ag}
		} else {
			for _, a := range p.Aggregates {
				ag := operator.Agg{}
				switch a.Fn {
				case jobspec.AggCount:
					ag.Kind = operator.AggCount
				case jobspec.AggSum:
					ag.Kind = operator.AggSum
				case jobspec.AggMin:
					ag.Kind = operator.AggMin
				case jobspec.AggMax:
					ag.Kind = operator.AggMax
				case jobspec.AggAvg:
					ag.Kind = operator.AggAvg
				case jobspec.AggMaxRows:
					ag.Kind = operator.AggMaxRows
				default:
					return nil, fmt.Errorf("unknown aggregate %q", a.Fn)
				}
				if a.Field != "" {
					ag.Field = in.Index(a.Field)
					ag.NonNull = a.Fn == jobspec.AggCount
				}
				cfg.Aggs = append(cfg.Aggs, ag)
			}
		}
		op, err := operator.NewWindowAggregate(cfg)
		if err != nil {
			return nil, err
		}
		return checkWidth(op, info)
	case jobspec.KindWindowJoin, jobspec.KindIntervalJoin, jobspec.KindJoin:
		lk, _, err := keyFor(info, 0)
		if err != nil {
			return nil, err
		}
		rk, _, err := keyFor(info, 1)
		if err != nil {
			return nil, err
		}
		jc := operator.JoinConfig{LeftKey: lk, RightKey: rk, MaxParallelism: maxP, KeyGroups: kg}
		var op operator.Operator
		switch n.Kind {
		case jobspec.KindWindowJoin:
			wdw, err := windowing(p.Window)
			if err != nil {
				return nil, err
			}
			jc.LateSide = p.Window.LateOutput
			op, err = operator.NewWindowJoin(operator.WindowJoinConfig{JoinConfig: jc, Windowing: wdw,
				OmitStart: p.Window.StartField == jobspec.OmitField, OmitEnd: p.Window.EndField == jobspec.OmitField})
		case jobspec.KindIntervalJoin:
			op, err = operator.NewIntervalJoin(operator.IntervalJoinConfig{JoinConfig: jc, Lower: p.Between.LowerMs, Upper: p.Between.UpperMs})
		default:
			op, err = operator.NewRegularJoin(jc)
		}
		if err != nil {
			return nil, err
		}
		if op, err = checkWidth(op, info); err != nil {
			return nil, err
		}
		if p.Expr != "" {
			prog, err := expr.Compile(p.Expr, info.Out, record.TypeBool)
			if err != nil {
				return nil, err
			}
			op = &filtered{Operator: op, pred: prog}
		}
		return op, nil
	}
	return nil, fmt.Errorf("unsupported operator kind %q", n.Kind)
}

// passThrough forwards records and watermarks unchanged.
type passThrough struct{}

func (passThrough) ProcessBatch(_ int, b *record.Batch, out operator.Emitter) error {
	for i := range b.Records {
		out.Emit(b.Records[i])
	}
	return nil
}

func (passThrough) ProcessWatermark(_ int, wm int64, out operator.Emitter) error {
	out.EmitWatermark(wm)
	return nil
}

func (passThrough) Finish(operator.Emitter) error { return nil }

// checkWidth wraps op so that a record whose width differs from the node's
// inferred output schema fails the subtask instead of corrupting the frames
// downstream; the check costs one comparison per record.
func checkWidth(op operator.Operator, info *jobspec.NodeInfo) (operator.Operator, error) {
	return &widthChecked{Operator: op, em: widthEmitter{width: len(info.Out.Fields), node: info.Node.ID}}, nil
}

type widthChecked struct {
	operator.Operator
	em widthEmitter
}

type widthEmitter struct {
	operator.Emitter
	width int
	node  string
	err   error
}

func (e *widthEmitter) Emit(r record.Record) {
	if len(r.Values) != e.width && e.err == nil {
		e.err = fmt.Errorf("node %q emitted a record of %d fields; its output schema has %d", e.node, len(r.Values), e.width)
		return
	}
	e.Emitter.Emit(r)
}

// Unwrap returns the wrapped operator (for snapshots of its state).
func (o *widthChecked) Unwrap() operator.Operator { return o.Operator }

func (o *widthChecked) ProcessBatch(input int, b *record.Batch, out operator.Emitter) error {
	o.em.Emitter = out
	if err := o.Operator.ProcessBatch(input, b, &o.em); err != nil {
		return err
	}
	return o.em.err
}

func (o *widthChecked) ProcessWatermark(input int, wm int64, out operator.Emitter) error {
	o.em.Emitter = out
	if err := o.Operator.ProcessWatermark(input, wm, &o.em); err != nil {
		return err
	}
	return o.em.err
}

func (o *widthChecked) Finish(out operator.Emitter) error {
	o.em.Emitter = out
	if err := o.Operator.Finish(&o.em); err != nil {
		return err
	}
	return o.em.err
}

// filtered drops the records of op's output for which pred is false; records
// it fails on go to the error side output.
type filtered struct {
	operator.Operator
	pred *expr.Program
	em   filterEmitter
}

type filterEmitter struct {
	operator.Emitter
	pred *expr.Program
	// rec holds the record being filtered, so that the pointer EvalBool
	// takes does not move Emit's parameter to the heap (an allocation per
	// record).
	rec record.Record
}

func (e *filterEmitter) Emit(r record.Record) {
	e.rec = r
	ok, err := e.pred.EvalBool(&e.rec)
	e.rec.Values = nil // do not keep the producer's batch alive
	if err != nil {
		e.Emitter.EmitSide(operator.DefaultErrorSide, r)
		return
	}
	if ok {
		e.Emitter.Emit(r)
	}
}

// Unwrap returns the wrapped operator (for snapshots of its state).
func (o *filtered) Unwrap() operator.Operator { return o.Operator }

func (o *filtered) wrap(out operator.Emitter) operator.Emitter {
	o.em = filterEmitter{Emitter: out, pred: o.pred}
	return &o.em
}

func (o *filtered) ProcessBatch(input int, b *record.Batch, out operator.Emitter) error {
	return o.Operator.ProcessBatch(input, b, o.wrap(out))
}

func (o *filtered) ProcessWatermark(input int, wm int64, out operator.Emitter) error {
	return o.Operator.ProcessWatermark(input, wm, o.wrap(out))
}

func (o *filtered) Finish(out operator.Emitter) error { return o.Operator.Finish(o.wrap(out)) }

// sinkOp hands every batch to the job's sink for its stream.
type sinkOp struct {
	sink  Sink
	split Split
}

func (s *sinkOp) ProcessBatch(_ int, b *record.Batch, _ operator.Emitter) error {
	if b.Len() == 0 {
		return nil
	}
	return s.sink(s.split, b)
}

func (s *sinkOp) ProcessWatermark(int, int64, operator.Emitter) error { return nil }

func (s *sinkOp) Finish(operator.Emitter) error { return nil }

// copyPath follows e's records over forward edges through key-by nodes and
// maps that only copy fields, each its input's only consumer, to the first
// edge that is not forward, and returns it with the map from its fields to
// e's (idx[j] is the field of e its field j copies). It returns nil if the
// records are computed on, filtered, merged or fanned out before.
func copyPath(e *edge) (last *edge, idx []int) {
	idx = make([]int, len(e.schema.Fields))
	for i := range idx {
		idx[i] = i
	}
	last = e
	for t, i := e.to, 0; last.part == forward; {
		info := t.nodes[i]
		switch n := info.Node; n.Kind {
		case jobspec.KindKeyBy:
		case jobspec.KindMap:
			next := make([]int, len(n.Params.Fields))
			for k, f := range n.Params.Fields {
				j := info.In[0].Index(f.Expr)
				if j < 0 {
					return nil, nil // computed, not copied
				}
				next[k] = idx[j]
			}
			idx = next
		default:
			return nil, nil
		}
		if len(info.Consumers) != 1 {
			return nil, nil
		}
		if i+1 < len(t.nodes) {
			i++
			continue
		}
		if len(t.out) != 1 {
			return nil, nil
		}
		last, t, i = t.out[0], t.out[0].to, 0
	}
	return last, idx
}

// weightFieldName names the weight field a combined edge appends to its
// records (edge.combine). It is never seen by an operator's schema.
const weightFieldName = "_sealflow_weight"

// combineWindowing returns the windowing of the window aggregate that e
// feeds if the producers of e should combine its records by key and pane
// (operator.CountCombiner): e is keyed and goes straight into a tumbling or
// sliding window aggregate without allowed lateness whose every aggregate
// counts records. Nexmark q5's first stage is one. Combined records reach
// the window before any watermark that could make them late and in the
// checkpoint epoch of the records they stand for, so the window's results
// are unchanged; a window that re-fires for late records within an allowed
// lateness would re-fire once per combined record instead of once per
// record, so it gets none. Nor does a window with a late side output: a
// restored sender starts without a watermark and may combine records that
// are late at the window's restored one, which the side output would then
// see as one record (the late count adds their weight, so it stays exact).
func combineWindowing(e *edge) (operator.Windowing, bool) {
	if e.part != hashed || len(e.to.nodes) == 0 {
		return operator.Windowing{}, false
	}
	w := e.to.nodes[0]
	p := &w.Node.Params
	if w.Node.Kind != jobspec.KindWindowAggregate || p.Window == nil || p.Window.AllowedLatenessMs != 0 || p.Window.LateOutput != "" || len(p.Aggregates) == 0 ||
		(p.Window.Type != jobspec.WindowTumbling && p.Window.Type != jobspec.WindowSliding) {
		return operator.Windowing{}, false
	}
	for _, a := range p.Aggregates {
		if a.Fn != jobspec.AggCount || a.Field != "" {
			return operator.Windowing{}, false
		}
	}
	wd, err := windowing(p.Window)
	if err != nil {
		return operator.Windowing{}, false
	}
	return wd, true
}

// newPrefilter returns the maxima pre-filter for the sending side of edge e
// and the key function it groups e's records by, or nil if e has none. A
// pre-filter goes on an edge whose records reach a tumbling window aggregate
// without allowed lateness or late side output whose only aggregate is
// max-rows of an int, bool or string field (Nexmark q7's two stages, q5's second), either
// over e itself, a keyed exchange, or over a forward path of key-by nodes and
// maps that only copy fields (see copyPath), and then a keyed exchange into
// the window (q7 with every edge an exchange: source → project → key-by →
// window). Along such a path each record of e becomes exactly one record with
// the same time and copied values, in order, so dropping it on e is dropping
// it before the window; only the path's first edge gets the filter. The filter
// drops records certainly below their window's maximum before they are
// encoded and sealed; it keeps no checkpointed state (see
// operator.MaxPrefilter for why the window's main output stays exact, across
// restores too, and why a window with a late side output gets no filter: the
// window's watermark can be ahead of the sender's, so the filter could drop
// records that side output must get).
func newPrefilter(e *edge, o *Options) (*operator.MaxPrefilter, operator.KeyFunc, error) {
	if o.DisablePrefilter {
		return nil, nil, nil
	}
	last, idx := copyPath(e)
	if last == nil {
		return nil, nil, nil
	}
	// On a forward path only the first edge gets a filter: the later ones
	// would see the same records, keys and watermarks and drop nothing,
	// for a hash and a lookup per record each. e is a later edge when an
	// input edge of its producing task copies its records through that
	// task and on over e (the path then ends at the same keyed edge).
	for _, up := range e.from.in {
		if l, _ := copyPath(up); l == last {
			return nil, nil, nil
		}
	}
	if last.part != hashed {
		return nil, nil, nil
	}
	w := last.to.nodes[0]
	p := &w.Node.Params
	if w.Node.Kind != jobspec.KindWindowAggregate || p.Window == nil || p.Window.Type != jobspec.WindowTumbling ||
		p.Window.AllowedLatenessMs != 0 || p.Window.LateOutput != "" || len(p.Aggregates) != 1 || p.Aggregates[0].Fn != jobspec.AggMaxRows {
		return nil, nil, nil
	}
	field := last.schema.Index(p.Aggregates[0].Field)
	group, err := indexes(last.schema, w.GroupBy)
	if field < 0 || err != nil {
		return nil, nil, nil
	}
	// The window's key fields, as e's fields (when last is e, idx is the
	// identity and this is e.key).
	for k, g := range group {
		group[k] = idx[g]
	}
	key := operator.KeyOf(group...)
	field = idx[field]
	switch typ := e.schema.Fields[field].Type; typ {
	case record.TypeInt, record.TypeBool, record.TypeString:
		wdw, err := windowing(p.Window)
		if err != nil {
			return nil, nil, err
		}
		f, err := operator.NewMaxPrefilter(operator.MaxPrefilterConfig{Windowing: wdw, Field: field, Type: typ})
		return f, key, err
	}
	return nil, nil, nil
}
