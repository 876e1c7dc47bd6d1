package operator

import (
	"fmt"
	"math"
	"slices"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/state"
)

// Join inputs: input 0 is the left side, input 1 the right side.
const (
	Left  = 0
	Right = 1
)

// JoinConfig holds what every join needs.
type JoinConfig struct {
	// LeftKey and RightKey compute the equi-join key of each side; records
	// join when their keys are equal. Both sides' exchanges must route with them.
	LeftKey, RightKey KeyFunc
	// Output appends the joined values of a pair to dst (a reused, empty
	// buffer). nil: the left values followed by the right values.
	Output func(dst []record.Value, left, right *record.Record) []record.Value
	// LateSide names the side output for late records ("" drops them; they are
	// counted either way). Regular joins have no late records.
	LateSide string
	// ErrorSide names the side output for records with an event time beyond
	// ±MaxEventTime (DefaultErrorSide if "").
	ErrorSide string
	// MaxParallelism is the job's number of key groups (0: state.DefaultMaxParallelism).
	MaxParallelism int
	// KeyGroups is the range this subtask owns (zero value: all groups).
	KeyGroups state.Range
}

func concatOutput(dst []record.Value, l, r *record.Record) []record.Value {
	return append(append(dst, l.Values...), r.Values...)
}

// part is the buffered rows of both sides of one key, for one window (window
// join) or for all time (interval and regular joins, start = end = 0).
type part struct {
	start, end  int64
	fired       bool // window join: the window fired (kept for allowed lateness)
	left, right []record.Record
}

// joinState is all the buffered rows of one key.
type joinState struct {
	parts []part
}

// Reset empties the state.
func (j *joinState) Reset() { j.parts = j.parts[:0] }

func (j *joinState) part(start, end int64) *part {
	for i := range j.parts {
		if j.parts[i].start == start {
			return &j.parts[i]
		}
	}
	j.parts = append(j.parts, part{start: start, end: end})
	return &j.parts[len(j.parts)-1]
}

func (p *part) side(input int) *[]record.Record {
	if input == Left {
		return &p.left
	}
	return &p.right
}

// joinCore is the machinery shared by the joins: inputs, keys, state,
// watermark, timers, late records.
type joinCore struct {
	name     string
	cfg      JoinConfig
	store    *state.Store[joinState]
	timers   *timerQueue
	wm       *WatermarkCombiner
	cur      int64
	idleOut  bool
	restored bool
	late     int64
	errors   int64
	buf      []record.Value
}

func (c *joinCore) init(name string, cfg JoinConfig) error {
	if cfg.LeftKey == nil || cfg.RightKey == nil {
		return fmt.Errorf("%s: LeftKey and RightKey are required", name)
	}
	if cfg.Output == nil {
		cfg.Output = concatOutput
	}
	if cfg.ErrorSide == "" {
		cfg.ErrorSide = DefaultErrorSide
	}
	store, err := newStore(&cfg.MaxParallelism, &cfg.KeyGroups, joinStateCodec{})
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	*c = joinCore{name: name, cfg: cfg, store: store, timers: newTimerQueue(), wm: NewWatermarkCombiner(2), cur: math.MinInt64}
	return nil
}

func (c *joinCore) key(input int, r *record.Record) (uint64, error) {
	switch input {
	case Left:
		return c.cfg.LeftKey(r), nil
	case Right:
		return c.cfg.RightKey(r), nil
	}
	return 0, fmt.Errorf("%s: input %d is neither left (0) nor right (1)", c.name, input)
}

func (c *joinCore) state(key uint64) (*joinState, error) {
	js, _, err := c.store.GetOrCreate(key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.name, err)
	}
	return js, nil
}

// badTime routes r to the error output if its time is out of range.
func (c *joinCore) badTime(r *record.Record, out Emitter) bool {
	if validTime(r.Time) {
		return false
	}
	c.errors++
	out.EmitSide(c.cfg.ErrorSide, *r)
	return true
}

// Errors returns the number of records routed to the error side output.
func (c *joinCore) Errors() int64 { return c.errors }

func (c *joinCore) lateRecord(r *record.Record, out Emitter) {
	c.late++
	if c.cfg.LateSide != "" {
		out.EmitSide(c.cfg.LateSide, *r)
	}
}

// emitPair emits the join of l and r, with extra values appended, at time t.
func (c *joinCore) emitPair(l, r *record.Record, t int64, out Emitter, extra ...record.Value) {
	c.buf = append(c.cfg.Output(c.buf[:0], l, r), extra...)
	out.Emit(record.Record{Time: t, Values: c.buf})
}

// watermark combines an input's watermark and, if the output advanced, fires
// due timers with fire and emits it.
func (c *joinCore) watermark(input int, wm int64, out Emitter, fire func(t int64, keys []uint64, out Emitter)) error {
	if input != Left && input != Right {
		return fmt.Errorf("%s: input %d is neither left (0) nor right (1)", c.name, input)
	}
	w, changed := c.wm.Update(input, wm)
	if !changed {
		return nil
	}
	if w == IdleWatermark {
		out.EmitWatermark(IdleWatermark)
		return nil
	}
	c.cur = w
	for {
		t, keys, ok := c.timers.popDue(w)
		if !ok {
			break
		}
		fire(t, keys, out)
	}
	out.EmitWatermark(w)
	return nil
}

func (c *joinCore) finish(out Emitter, fire func(t int64, keys []uint64, out Emitter)) error {
	if c.wm.Current() == FinalWatermark {
		return nil
	}
	c.wm.Update(Left, FinalWatermark)
	return c.watermark(Right, FinalWatermark, out, fire)
}

// Late returns the number of late records dropped or side-output.
func (c *joinCore) Late() int64 { return c.late }

// Keys returns the number of keys with buffered rows.
func (c *joinCore) Keys() int { return c.store.Len() }

// Snapshot encodes the buffered rows of the key groups [from, to), with the
// operator's watermark.
func (c *joinCore) Snapshot(from, to int) ([]byte, error) {
	return snapshotEnvelope(c.cur, c.store, from, to)
}

// restore restores groups [from, to) and re-arms timers with arm.
func (c *joinCore) restore(from, to int, data []byte, arm func(key uint64, js *joinState)) error {
	r := state.Range{From: from, To: to}
	wm, err := restoreEnvelope(c.store, r, data)
	if err != nil {
		return fmt.Errorf("%s: %w", c.name, err)
	}
	if !c.restored || wm < c.cur {
		c.cur = wm
		c.wm.out = max(wm, noWatermark)
	}
	c.restored = true
	if arm == nil {
		return nil
	}
	maxP := c.store.MaxParallelism()
	c.store.ForEach(func(key uint64, js *joinState) bool {
		if r.Contains(state.KeyGroup(key, maxP)) {
			arm(key, js)
		}
		return true
	})
	return nil
}

// WindowJoinConfig configures a WindowJoin.
type WindowJoinConfig struct {
	JoinConfig
	// Windowing must be tumbling or sliding.
	Windowing Windowing
	// Semi emits each left row at most once per window, if some right row
	// matches it, as its own values (Output is not used).
	Semi bool
	// OmitStart and OmitEnd leave window_start or window_end out of results.
	OmitStart, OmitEnd bool
	// AllowedLateness (ms) keeps a window's rows after it fired; a record up
	// to this late emits at once its new pairs with the window's other side
	// (Semi: the left rows that now have their first match).
	AllowedLateness int64
}

// WindowJoin joins left and right records with equal keys in the same window.
// When the watermark (the minimum of both inputs') reaches window_end - 1 it
// emits, for each matching pair, Output(left, right) followed by window_start
// and window_end, at Time = window_end - 1, left rows in arrival order and for
// each its right matches in arrival order. Records whose windows all ended
// (end-1+AllowedLateness <= watermark) are late.
type WindowJoin struct {
	joinCore
	wcfg WindowJoinConfig
}

// NewWindowJoin returns a window join.
func NewWindowJoin(cfg WindowJoinConfig) (*WindowJoin, error) {
	if err := cfg.Windowing.Validate(); err != nil {
		return nil, fmt.Errorf("window join: %w", err)
	}
	if cfg.Windowing.Kind == SessionWindows {
		return nil, fmt.Errorf("window join: session windows are not supported; use tumbling or sliding windows")
	}
	if cfg.AllowedLateness < 0 || cfg.AllowedLateness > MaxWindowSpan {
		return nil, fmt.Errorf("window join: allowed lateness %d is negative or above %d", cfg.AllowedLateness, int64(MaxWindowSpan))
	}
	op := &WindowJoin{wcfg: cfg}
	if err := op.init("window join", cfg.JoinConfig); err != nil {
		return nil, err
	}
	return op, nil
}

// ProcessBatch buffers b's records in their windows; in windows that already
// fired (within the allowed lateness) it emits the new pairs at once.
func (op *WindowJoin) ProcessBatch(input int, b *record.Batch, out Emitter) error {
	wd := &op.wcfg.Windowing
	lateness := op.wcfg.AllowedLateness
	for i := range b.Records {
		r := &b.Records[i]
		key, err := op.key(input, r)
		if err != nil {
			return err
		}
		if op.badTime(r, out) {
			continue
		}
		var js *joinState
		for s := wd.lastStart(r.Time); s > r.Time-wd.Size; s -= wd.slide() {
			end := s + wd.Size
			if end-1+lateness <= op.cur {
				break
			}
			if js == nil {
				if js, err = op.state(key); err != nil {
					return err
				}
			}
			p := js.part(s, end)
			if len(p.left) == 0 && len(p.right) == 0 {
				if end-1 > op.cur {
					op.timers.add(end-1, key)
				} else { // a new window that ended: it has fired, with nothing
					p.fired = true
					op.timers.add(end-1+lateness, key)
				}
			}
			side := p.side(input)
			*side = append(*side, record.Record{Time: r.Time, Values: slices.Clone(r.Values)})
			if p.fired {
				op.emitLate(p, input, out)
			}
		}
		if js == nil {
			op.lateRecord(r, out)
		}
	}
	return nil
}

// bounds returns the window bound values to append to results.
func (op *WindowJoin) bounds(p *part, buf *[2]record.Value) []record.Value {
	*buf = [2]record.Value{record.Int(p.start), record.Int(p.end)}
	bs := buf[:]
	switch {
	case op.wcfg.OmitStart && op.wcfg.OmitEnd:
		bs = bs[:0]
	case op.wcfg.OmitStart:
		bs = bs[1:]
	case op.wcfg.OmitEnd:
		bs = bs[:1]
	}
	return bs
}

// emitLate emits the results that the record just appended to the input side
// of fired window p adds.
func (op *WindowJoin) emitLate(p *part, input int, out Emitter) {
	var bb [2]record.Value
	bs := op.bounds(p, &bb)
	if op.wcfg.Semi {
		switch {
		case input == Left && len(p.right) > 0:
			l := &p.left[len(p.left)-1]
			op.buf = append(append(op.buf[:0], l.Values...), bs...)
			out.Emit(record.Record{Time: p.end - 1, Values: op.buf})
		case input == Right && len(p.right) == 1: // the left rows' first match
			for li := range p.left {
				op.buf = append(append(op.buf[:0], p.left[li].Values...), bs...)
				out.Emit(record.Record{Time: p.end - 1, Values: op.buf})
			}
		}
		return
	}
	if input == Left {
		l := &p.left[len(p.left)-1]
		for ri := range p.right {
			op.emitPair(l, &p.right[ri], p.end-1, out, bs...)
		}
		return
	}
	rr := &p.right[len(p.right)-1]
	for li := range p.left {
		op.emitPair(&p.left[li], rr, p.end-1, out, bs...)
	}
}

func (op *WindowJoin) fire(t int64, keys []uint64, out Emitter) {
	lateness := op.wcfg.AllowedLateness
	var bb [2]record.Value
	for _, key := range keys {
		js := op.store.Get(key)
		if js == nil {
			continue
		}
		for j := 0; j < len(js.parts); {
			p := &js.parts[j]
			if !p.fired && p.end-1 <= t {
				bs := op.bounds(p, &bb)
				for li := range p.left {
					l := &p.left[li]
					if op.wcfg.Semi {
						if len(p.right) > 0 {
							op.buf = append(append(op.buf[:0], l.Values...), bs...)
							out.Emit(record.Record{Time: p.end - 1, Values: op.buf})
						}
						continue
					}
					for ri := range p.right {
						op.emitPair(l, &p.right[ri], p.end-1, out, bs...)
					}
				}
				p.fired = true
				if lateness > 0 {
					op.timers.add(p.end-1+lateness, key)
				}
			}
			if p.fired && p.end-1+lateness <= t {
				last := len(js.parts) - 1
				js.parts[j] = js.parts[last]
				js.parts = js.parts[:last]
				continue
			}
			j++
		}
		if len(js.parts) == 0 {
			op.store.Delete(key)
		}
	}
}

// ProcessWatermark combines the inputs' watermarks and fires ended windows.
func (op *WindowJoin) ProcessWatermark(input int, wm int64, out Emitter) error {
	return op.watermark(input, wm, out, op.fire)
}

// Finish fires every open window.
func (op *WindowJoin) Finish(out Emitter) error { return op.finish(out, op.fire) }

// Restore replaces the buffered rows of the key groups [from, to).
func (op *WindowJoin) Restore(from, to int, data []byte) error {
	return op.restore(from, to, data, func(key uint64, js *joinState) {
		for _, p := range js.parts {
			if p.fired {
				op.timers.add(p.end-1+op.wcfg.AllowedLateness, key)
			} else {
				op.timers.add(p.end-1, key)
			}
		}
	})
}

// IntervalJoinConfig configures an IntervalJoin.
type IntervalJoinConfig struct {
	JoinConfig
	// A left record a and a right record b with equal keys join when
	// a.Time+Lower <= b.Time <= a.Time+Upper (bounds inclusive, Lower <= Upper).
	Lower, Upper int64
}

// IntervalJoin joins each left record with the right records of the same key
// whose time lies within [left.Time+Lower, left.Time+Upper]. A pair is emitted
// as soon as its second record arrives, at Time = max of the two times. A
// record is late if its time is at or below the watermark; rows are dropped
// once the watermark guarantees they can match nothing more.
type IntervalJoin struct {
	joinCore
	lower, upper int64
}

// NewIntervalJoin returns an interval join.
func NewIntervalJoin(cfg IntervalJoinConfig) (*IntervalJoin, error) {
	if cfg.Lower > cfg.Upper {
		return nil, fmt.Errorf("interval join: lower bound %d is above upper bound %d", cfg.Lower, cfg.Upper)
	}
	if cfg.Lower < -MaxWindowSpan || cfg.Upper > MaxWindowSpan {
		return nil, fmt.Errorf("interval join: bounds [%d,%d] exceed ±%d ms", cfg.Lower, cfg.Upper, int64(MaxWindowSpan))
	}
	op := &IntervalJoin{lower: cfg.Lower, upper: cfg.Upper}
	if err := op.init("interval join", cfg.JoinConfig); err != nil {
		return nil, err
	}
	return op, nil
}

// expiry is the time after which a row of the input can match nothing more.
func (op *IntervalJoin) expiry(input int, t int64) int64 {
	if input == Left {
		return t + op.upper
	}
	return t - op.lower
}

// ProcessBatch joins b's records with the other side's buffered rows.
func (op *IntervalJoin) ProcessBatch(input int, b *record.Batch, out Emitter) error {
	for i := range b.Records {
		r := &b.Records[i]
		key, err := op.key(input, r)
		if err != nil {
			return err
		}
		if op.badTime(r, out) {
			continue
		}
		if r.Time <= op.cur {
			op.lateRecord(r, out)
			continue
		}
		js, err := op.state(key)
		if err != nil {
			return err
		}
		p := js.part(0, 0)
		if input == Left {
			for j := range p.right {
				if b := &p.right[j]; b.Time >= r.Time+op.lower && b.Time <= r.Time+op.upper {
					op.emitPair(r, b, max(r.Time, b.Time), out)
				}
			}
		} else {
			for j := range p.left {
				if a := &p.left[j]; r.Time >= a.Time+op.lower && r.Time <= a.Time+op.upper {
					op.emitPair(a, r, max(r.Time, a.Time), out)
				}
			}
		}
		if exp := op.expiry(input, r.Time); exp > op.cur {
			side := p.side(input)
			*side = append(*side, record.Record{Time: r.Time, Values: slices.Clone(r.Values)})
			op.timers.add(exp, key)
		} else if len(p.left) == 0 && len(p.right) == 0 {
			op.store.Delete(key)
		}
	}
	return nil
}

func (op *IntervalJoin) fire(t int64, keys []uint64, out Emitter) {
	for _, key := range keys {
		js := op.store.Get(key)
		if js == nil || len(js.parts) == 0 {
			continue
		}
		p := &js.parts[0]
		p.left = slices.DeleteFunc(p.left, func(a record.Record) bool { return op.expiry(Left, a.Time) <= t })
		p.right = slices.DeleteFunc(p.right, func(b record.Record) bool { return op.expiry(Right, b.Time) <= t })
		if len(p.left) == 0 && len(p.right) == 0 {
			op.store.Delete(key)
		}
	}
}

// ProcessWatermark combines the inputs' watermarks and drops expired rows.
func (op *IntervalJoin) ProcessWatermark(input int, wm int64, out Emitter) error {
	return op.watermark(input, wm, out, op.fire)
}

// Finish emits the final watermark; an interval join has nothing pending.
func (op *IntervalJoin) Finish(out Emitter) error { return op.finish(out, op.fire) }

// Restore replaces the buffered rows of the key groups [from, to).
func (op *IntervalJoin) Restore(from, to int, data []byte) error {
	return op.restore(from, to, data, func(key uint64, js *joinState) {
		for _, p := range js.parts {
			for _, a := range p.left {
				op.timers.add(op.expiry(Left, a.Time), key)
			}
			for _, b := range p.right {
				op.timers.add(op.expiry(Right, b.Time), key)
			}
		}
	})
}

// RegularJoin is an unbounded, incremental inner equi-join: every record is
// kept, and each arrival emits its pairs with the other side's rows of the
// same key, so a pair is emitted exactly once, when its second record arrives,
// whatever the arrival order (Nexmark q3). Pairs carry Time = max of the two
// times. State grows with the number of distinct records: use it where one
// side is small or bounded (persons, auctions).
type RegularJoin struct {
	joinCore
}

// NewRegularJoin returns a regular join.
func NewRegularJoin(cfg JoinConfig) (*RegularJoin, error) {
	op := &RegularJoin{}
	if err := op.init("regular join", cfg); err != nil {
		return nil, err
	}
	return op, nil
}

// ProcessBatch joins b's records with the other side's rows and keeps them.
func (op *RegularJoin) ProcessBatch(input int, b *record.Batch, out Emitter) error {
	for i := range b.Records {
		r := &b.Records[i]
		key, err := op.key(input, r)
		if err != nil {
			return err
		}
		if op.badTime(r, out) {
			continue
		}
		js, err := op.state(key)
		if err != nil {
			return err
		}
		p := js.part(0, 0)
		if input == Left {
			for j := range p.right {
				op.emitPair(r, &p.right[j], max(r.Time, p.right[j].Time), out)
			}
		} else {
			for j := range p.left {
				op.emitPair(&p.left[j], r, max(r.Time, p.left[j].Time), out)
			}
		}
		side := p.side(input)
		*side = append(*side, record.Record{Time: r.Time, Values: slices.Clone(r.Values)})
	}
	return nil
}

func noTimers(int64, []uint64, Emitter) {}

// ProcessWatermark forwards the minimum of the inputs' watermarks.
func (op *RegularJoin) ProcessWatermark(input int, wm int64, out Emitter) error {
	return op.watermark(input, wm, out, noTimers)
}

// Finish emits the final watermark.
func (op *RegularJoin) Finish(out Emitter) error { return op.finish(out, noTimers) }

// Restore replaces the rows of the key groups [from, to).
func (op *RegularJoin) Restore(from, to int, data []byte) error {
	return op.restore(from, to, data, nil)
}

// joinStateCodec encodes joinState in snapshots.
type joinStateCodec struct{}

// Append implements state.Codec.
func (joinStateCodec) Append(dst []byte, js *joinState) []byte {
	dst = state.AppendUvarint(dst, uint64(len(js.parts)))
	for i := range js.parts {
		p := &js.parts[i]
		dst = state.AppendVarint(dst, p.start)
		dst = state.AppendVarint(dst, p.end)
		if p.fired {
			dst = append(dst, 1)
		} else {
			dst = append(dst, 0)
		}
		for _, rows := range [2][]record.Record{p.left, p.right} {
			dst = state.AppendUvarint(dst, uint64(len(rows)))
			for j := range rows {
				dst = state.AppendRecord(dst, &rows[j])
			}
		}
	}
	return dst
}

// Decode implements state.Codec, strictly: every byte must be used.
func (joinStateCodec) Decode(src []byte, js *joinState) error {
	d := state.NewDecoder(src)
	js.parts = js.parts[:0]
	for n := d.Count(5); n > 0 && d.Err() == nil; n-- {
		p := part{start: d.Varint(), end: d.Varint(), fired: d.Bool()}
		for _, rows := range [2]*[]record.Record{&p.left, &p.right} {
			for m := d.Count(2); m > 0 && d.Err() == nil; m-- {
				var r record.Record
				d.Record(&r)
				*rows = append(*rows, r)
			}
		}
		js.parts = append(js.parts, p)
	}
	return d.Done()
}
