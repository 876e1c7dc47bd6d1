package operator

import (
	"fmt"
	"math"

	"github.com/sealflow/sealflow/engine/record"
)

// DefaultErrorSide is the side output that receives records an operator's
// function failed on, when its config names none.
const DefaultErrorSide = "error"

// MapConfig configures a Map (projection) operator.
type MapConfig struct {
	// Fn appends the output values for r to dst (a reused buffer, empty on
	// entry) and returns it. An error routes r to the error side output.
	Fn func(dst []record.Value, r *record.Record) ([]record.Value, error)
	// ErrorSide names the side output for failed records (DefaultErrorSide if "").
	ErrorSide string
}

// Map applies a function to every record, keeping its time.
type Map struct {
	cfg    MapConfig
	buf    []record.Value
	errors int64
}

// NewMap returns a map operator.
func NewMap(cfg MapConfig) (*Map, error) {
	if cfg.Fn == nil {
		return nil, fmt.Errorf("map: Fn is nil")
	}
	if cfg.ErrorSide == "" {
		cfg.ErrorSide = DefaultErrorSide
	}
	return &Map{cfg: cfg}, nil
}

// ProcessBatch maps every record of b.
func (m *Map) ProcessBatch(_ int, b *record.Batch, out Emitter) error {
	for i := range b.Records {
		r := &b.Records[i]
		vals, err := m.cfg.Fn(m.buf[:0], r)
		m.buf = vals[:0]
		if err != nil {
			m.errors++
			out.EmitSide(m.cfg.ErrorSide, *r)
			continue
		}
		out.Emit(record.Record{Time: r.Time, Values: vals})
	}
	return nil
}

// ProcessWatermark forwards the watermark.
func (m *Map) ProcessWatermark(_ int, wm int64, out Emitter) error {
	out.EmitWatermark(wm)
	return nil
}

// Finish does nothing: a map holds no state.
func (m *Map) Finish(Emitter) error { return nil }

// Errors returns the number of records Fn failed on.
func (m *Map) Errors() int64 { return m.errors }

// FilterConfig configures a Filter operator.
type FilterConfig struct {
	// Pred keeps r when it returns true. An error routes r to the error side output.
	Pred func(r *record.Record) (bool, error)
	// ErrorSide names the side output for failed records (DefaultErrorSide if "").
	ErrorSide string
}

// Filter passes on the records its predicate accepts.
type Filter struct {
	cfg    FilterConfig
	errors int64
}

// NewFilter returns a filter operator.
func NewFilter(cfg FilterConfig) (*Filter, error) {
	if cfg.Pred == nil {
		return nil, fmt.Errorf("filter: Pred is nil")
	}
	if cfg.ErrorSide == "" {
		cfg.ErrorSide = DefaultErrorSide
	}
	return &Filter{cfg: cfg}, nil
}

// ProcessBatch filters b.
func (f *Filter) ProcessBatch(_ int, b *record.Batch, out Emitter) error {
	for i := range b.Records {
		r := &b.Records[i]
		ok, err := f.cfg.Pred(r)
		if err != nil {
			f.errors++
			out.EmitSide(f.cfg.ErrorSide, *r)
			continue
		}
		if ok {
			out.Emit(*r)
		}
	}
	return nil
}

// ProcessWatermark forwards the watermark.
func (f *Filter) ProcessWatermark(_ int, wm int64, out Emitter) error {
	out.EmitWatermark(wm)
	return nil
}

// Finish does nothing: a filter holds no state.
func (f *Filter) Finish(Emitter) error { return nil }

// Errors returns the number of records Pred failed on.
func (f *Filter) Errors() int64 { return f.errors }

// FlatMapConfig configures a FlatMap operator.
type FlatMapConfig struct {
	// Fn calls emit for each output record of r (zero or more). emit copies
	// nothing: the receiver does. An error routes r to the error side output
	// (records already emitted for r stay emitted).
	Fn func(r *record.Record, emit func(record.Record)) error
	// ErrorSide names the side output for failed records (DefaultErrorSide if "").
	ErrorSide string
}

// FlatMap turns each record into zero or more records.
type FlatMap struct {
	cfg    FlatMapConfig
	out    Emitter
	emit   func(record.Record)
	errors int64
}

// NewFlatMap returns a flat-map operator.
func NewFlatMap(cfg FlatMapConfig) (*FlatMap, error) {
	if cfg.Fn == nil {
		return nil, fmt.Errorf("flat-map: Fn is nil")
	}
	if cfg.ErrorSide == "" {
		cfg.ErrorSide = DefaultErrorSide
	}
	f := &FlatMap{cfg: cfg}
	f.emit = func(r record.Record) { f.out.Emit(r) }
	return f, nil
}

// ProcessBatch expands every record of b.
func (f *FlatMap) ProcessBatch(_ int, b *record.Batch, out Emitter) error {
	f.out = out
	for i := range b.Records {
		r := &b.Records[i]
		if err := f.cfg.Fn(r, f.emit); err != nil {
			f.errors++
			out.EmitSide(f.cfg.ErrorSide, *r)
		}
	}
	f.out = nil
	return nil
}

// ProcessWatermark forwards the watermark.
func (f *FlatMap) ProcessWatermark(_ int, wm int64, out Emitter) error {
	out.EmitWatermark(wm)
	return nil
}

// Finish does nothing: a flat-map holds no state.
func (f *FlatMap) Finish(Emitter) error { return nil }

// Errors returns the number of records Fn failed on.
func (f *FlatMap) Errors() int64 { return f.errors }

// KeyBy materializes a record's key: it appends the key as a trailing int
// field, so a downstream keyed operator (or an exchange) can use KeyOf(that
// index) instead of recomputing an expensive key. Routing itself is the
// exchange's job; operators that compute keys on the fly need no KeyBy.
type KeyBy struct {
	key KeyFunc
	buf []record.Value
}

// NewKeyBy returns a key-by operator appending key(r) to every record.
func NewKeyBy(key KeyFunc) (*KeyBy, error) {
	if key == nil {
		return nil, fmt.Errorf("key-by: key function is nil")
	}
	return &KeyBy{key: key}, nil
}

// ProcessBatch appends the key to every record of b.
func (k *KeyBy) ProcessBatch(_ int, b *record.Batch, out Emitter) error {
	for i := range b.Records {
		r := &b.Records[i]
		k.buf = append(append(k.buf[:0], r.Values...), record.Int(int64(k.key(r))))
		out.Emit(record.Record{Time: r.Time, Values: k.buf})
	}
	return nil
}

// ProcessWatermark forwards the watermark.
func (k *KeyBy) ProcessWatermark(_ int, wm int64, out Emitter) error {
	out.EmitWatermark(wm)
	return nil
}

// Finish does nothing.
func (k *KeyBy) Finish(Emitter) error { return nil }

// WatermarkCombiner computes the watermark of an operator with several inputs:
// the minimum over its inputs that are not idle, never decreasing. When every
// input is idle the combined output is IdleWatermark.
type WatermarkCombiner struct {
	in      []int64
	idle    []bool
	out     int64
	outIdle bool
}

// noWatermark is an input's watermark before it has sent any.
const noWatermark = math.MinInt64 + 1

// NewWatermarkCombiner returns a combiner over n inputs, none of which has a
// watermark yet (so the output does not advance until every active input has sent one).
func NewWatermarkCombiner(n int) *WatermarkCombiner {
	c := &WatermarkCombiner{in: make([]int64, n), idle: make([]bool, n), out: noWatermark}
	for i := range c.in {
		c.in[i] = noWatermark
	}
	return c
}

// Current returns the combined watermark (IdleWatermark when all inputs are idle).
func (c *WatermarkCombiner) Current() int64 {
	if c.outIdle {
		return IdleWatermark
	}
	return c.out
}

// Update records wm from input and returns the combined watermark and whether
// it changed (and so should be emitted). wm may be IdleWatermark.
func (c *WatermarkCombiner) Update(input int, wm int64) (int64, bool) {
	if wm == IdleWatermark {
		c.idle[input] = true
	} else {
		c.idle[input] = false
		if wm > c.in[input] {
			c.in[input] = wm
		}
	}
	lowest, active := int64(math.MaxInt64), false
	for i, w := range c.in {
		if !c.idle[i] {
			active = true
			lowest = min(lowest, w)
		}
	}
	if !active {
		if c.outIdle {
			return IdleWatermark, false
		}
		c.outIdle = true
		return IdleWatermark, true
	}
	wasIdle := c.outIdle
	c.outIdle = false
	if lowest > c.out {
		c.out = lowest
		return c.out, true
	}
	return c.out, wasIdle && c.out != noWatermark
}

// Union merges several inputs of one schema into one stream; its watermark is
// the minimum of its inputs' (idle inputs excluded).
type Union struct {
	wm *WatermarkCombiner
}

// NewUnion returns a union of n inputs.
func NewUnion(n int) (*Union, error) {
	if n < 1 {
		return nil, fmt.Errorf("union: %d inputs, need at least 1", n)
	}
	return &Union{wm: NewWatermarkCombiner(n)}, nil
}

// ProcessBatch forwards the records of b.
func (u *Union) ProcessBatch(input int, b *record.Batch, out Emitter) error {
	if input < 0 || input >= len(u.wm.in) {
		return fmt.Errorf("union: input %d outside [0,%d)", input, len(u.wm.in))
	}
	for i := range b.Records {
		out.Emit(b.Records[i])
	}
	return nil
}

// ProcessWatermark combines the inputs' watermarks.
func (u *Union) ProcessWatermark(input int, wm int64, out Emitter) error {
	if input < 0 || input >= len(u.wm.in) {
		return fmt.Errorf("union: input %d outside [0,%d)", input, len(u.wm.in))
	}
	if w, ok := u.wm.Update(input, wm); ok {
		out.EmitWatermark(w)
	}
	return nil
}

// Finish emits the final watermark if the inputs have not.
func (u *Union) Finish(out Emitter) error {
	if u.wm.Current() != FinalWatermark {
		for i := range u.wm.in {
			u.wm.Update(i, FinalWatermark)
		}
		out.EmitWatermark(FinalWatermark)
	}
	return nil
}

// NewProject returns a map operator that keeps the fields at the given
// indexes, in that order (a field beyond a record's length becomes null).
func NewProject(fields ...int) (*Map, error) {
	for _, f := range fields {
		if f < 0 {
			return nil, fmt.Errorf("project: negative field index %d", f)
		}
	}
	fs := append([]int(nil), fields...)
	return NewMap(MapConfig{Fn: func(dst []record.Value, r *record.Record) ([]record.Value, error) {
		for _, f := range fs {
			if f < len(r.Values) {
				dst = append(dst, r.Values[f])
			} else {
				dst = append(dst, record.Value{})
			}
		}
		return dst, nil
	}})
}

// Compile-time checks of the interfaces operators promise.
var (
	_ Operator    = (*Map)(nil)
	_ Operator    = (*Filter)(nil)
	_ Operator    = (*FlatMap)(nil)
	_ Operator    = (*KeyBy)(nil)
	_ Operator    = (*Union)(nil)
	_ Operator    = (*Watermarks)(nil)
	_ Ticker      = (*Watermarks)(nil)
	_ Snapshotter = (*WindowAggregate)(nil)
	_ Snapshotter = (*WindowJoin)(nil)
	_ Snapshotter = (*IntervalJoin)(nil)
	_ Snapshotter = (*RegularJoin)(nil)
	_ Operator    = (*WindowAggregate)(nil)
	_ Operator    = (*WindowJoin)(nil)
	_ Operator    = (*IntervalJoin)(nil)
	_ Operator    = (*RegularJoin)(nil)
)
