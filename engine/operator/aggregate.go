package operator

import (
	"fmt"
	"math"
	"slices"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/state"
)

// AggKind is a window aggregate function.
type AggKind uint8

// The aggregate functions. Null values are skipped by all but AggCount, which
// counts rows. Sum and avg accept numbers (an int sum stays int until a float
// is added); min, max, max-rows and top-N also order strings.
const (
	AggCount AggKind = iota + 1
	AggSum
	AggMin
	AggMax
	AggAvg
	// AggMaxRows keeps the rows whose Field equals the window's maximum
	// (Nexmark q7; q5's "auctions whose count equals the window's max").
	AggMaxRows
	// AggTopN keeps the first N rows in OrderBy order.
	AggTopN
)

// String returns the aggregate's name.
func (k AggKind) String() string {
	switch k {
	case AggCount:
		return "count"
	case AggSum:
		return "sum"
	case AggMin:
		return "min"
	case AggMax:
		return "max"
	case AggAvg:
		return "avg"
	case AggMaxRows:
		return "max-rows"
	case AggTopN:
		return "top-n"
	}
	return fmt.Sprintf("agg(%d)", uint8(k))
}

// Agg is one aggregate of a window operator.
type Agg struct {
	Kind AggKind
	// Field is the input field index aggregated (AggCount: see NonNull).
	Field int
	// NonNull makes AggCount count the rows whose Field is not null, instead
	// of all rows.
	NonNull bool
	// N is the number of rows AggTopN keeps.
	N int
	// OrderBy is AggTopN's order: the first key decides, later ones break
	// ties. Nulls sort last in either direction.
	OrderBy []SortKey
	// WithTies makes AggTopN also keep the rows tied with the N-th (equal on
	// every OrderBy key) and rank like SQL RANK() (equal rows, equal rank);
	// without it ties are broken by arrival order and ranks are 1..N.
	WithTies bool
	// Rank makes AggTopN append each row's rank (int) after the window bounds.
	Rank bool
}

// SortKey is one key of a top-N order.
type SortKey struct {
	Field int
	// Desc orders larger values first.
	Desc bool
}

// WindowConfig configures a WindowAggregate.
//
// Result rows (the layout engine/jobspec infers): with scalar aggregates
// (count, sum, min, max, avg) one row per key and window: the KeyFields
// values, window_start, window_end, then one value per aggregate. With
// AggMaxRows (which must be the only aggregate) one row per kept row: its
// values, window_start, window_end, in arrival order. With AggTopN (also
// alone): its values, window_start, window_end and, if Agg.Rank, the rank,
// best first. OmitStart and OmitEnd leave the bounds out.
// Every result has Time = window_end - 1 and is emitted when the watermark
// reaches window_end - 1; a late record within AllowedLateness updates the
// window and re-emits its result. Windows without records emit nothing.
type WindowConfig struct {
	Windowing Windowing
	// Key groups records (nil: one global group with key 0).
	Key KeyFunc
	// KeyFields are copied from a key's first record to the front of scalar results.
	KeyFields []int
	Aggs      []Agg
	// AllowedLateness (ms) keeps a window's state after it fired, so records
	// up to this late still update it.
	AllowedLateness int64
	// LateSide names the side output for records too late for every window
	// they belong to; "" drops them. Either way they are counted (Late).
	LateSide string
	// MaxParallelism is the job's number of key groups (0: state.DefaultMaxParallelism).
	MaxParallelism int
	// KeyGroups is the range this subtask owns (zero value: all groups).
	KeyGroups state.Range
	// ErrorSide names the side output for records the aggregates cannot use
	// (too few fields, a string to sum) (DefaultErrorSide if "").
	ErrorSide string
	// OmitStart and OmitEnd leave window_start or window_end out of results.
	OmitStart, OmitEnd bool
	// Weighted says that field WeightField of each input record is the
	// number of records it stands for (at least 1), as a CountCombiner on
	// the sending side of the exchange made them. Only tumbling and sliding
	// windows without allowed lateness whose every aggregate is AggCount
	// without NonNull take weights.
	Weighted    bool
	WeightField int
}

// acc is the running state of one scalar aggregate.
type acc struct {
	n int64
	v record.Value
}

// window is one open window of one key.
type window struct {
	start, end int64
	fired      bool
	count      int64
	accs       []acc
	rows       []record.Record
}

// keyState is all the window state of one key. For session windows wins are
// the sessions; for tumbling and sliding windows they are panes: the
// slide-long, aligned slices of time a window is made of (a tumbling window
// is one pane, a sliding one Size/Slide panes), so a record updates one pane
// and a window's result combines its panes when it fires.
type keyState struct {
	keyVals []record.Value
	wins    []window
	// firedUpTo is the time of the last timer that fired for this key, so
	// several timers due at one watermark emit each window once. It is not
	// snapshotted: after a restore the restored watermark plays its role.
	firedUpTo int64
}

// Reset empties the state for reuse by another key. It keeps the key buffer
// and a window slice of capacity one, and drops a larger one: a recycled state
// that kept the most windows any key it served ever had would make the memory
// of the free list creep up over a long stream (see WindowAggregate.spare).
func (k *keyState) Reset() {
	k.keyVals = k.keyVals[:0]
	if cap(k.wins) > 1 {
		k.wins = nil
	} else {
		k.wins = k.wins[:0]
	}
	k.firedUpTo = math.MinInt64
}

// winBufs are the buffers of a removed window, kept for the next window that
// any key of the operator opens.
type winBufs struct {
	accs []acc
	rows []record.Record
}

// maxSpareRows is the largest row buffer a removed window gives back for
// reuse; a larger one (a max-rows window of many ties) is left to the GC.
const maxSpareRows = 16

// WindowAggregate computes aggregates over event-time windows per key.
type WindowAggregate struct {
	cfg      WindowConfig
	rowsMode AggKind // 0, AggMaxRows or AggTopN
	store    *state.Store[keyState]
	timers   *timerQueue
	wm       int64
	prevWM   int64 // the watermark before the one being processed
	tmp      window
	idleOut  bool
	restored bool
	late     int64
	errors   int64
	buf      []record.Value
	// spare holds the buffers of removed windows. Windows close and open all
	// the time; keeping their buffers here, not in the key that last had them,
	// bounds what is kept by the most windows open at once rather than by the
	// most windows every recycled key state ever held, which grows with the
	// length of the stream.
	spare []winBufs
}

// NewWindowAggregate returns a window aggregate operator.
func NewWindowAggregate(cfg WindowConfig) (*WindowAggregate, error) {
	if err := cfg.Windowing.Validate(); err != nil {
		return nil, fmt.Errorf("window aggregate: %w", err)
	}
	if len(cfg.Aggs) == 0 {
		return nil, fmt.Errorf("window aggregate: no aggregates")
	}
	if cfg.Weighted {
		if cfg.Windowing.Kind == SessionWindows || cfg.AllowedLateness != 0 || cfg.WeightField < 0 {
			return nil, fmt.Errorf("window aggregate: weights need tumbling or sliding windows without allowed lateness and a weight field (got kind %d, lateness %d, field %d)", cfg.Windowing.Kind, cfg.AllowedLateness, cfg.WeightField)
		}
		for i, a := range cfg.Aggs {
			if a.Kind != AggCount || a.NonNull {
				return nil, fmt.Errorf("window aggregate: with weights every aggregate must count records; aggregate %d is %s", i, a.Kind)
			}
		}
	}
	if cfg.AllowedLateness < 0 || cfg.AllowedLateness > MaxWindowSpan {
		return nil, fmt.Errorf("window aggregate: allowed lateness %d is negative or above %d", cfg.AllowedLateness, int64(MaxWindowSpan))
	}
	op := &WindowAggregate{cfg: cfg, wm: math.MinInt64, timers: newTimerQueue()}
	for i, a := range cfg.Aggs {
		switch a.Kind {
		case AggCount, AggSum, AggMin, AggMax, AggAvg:
		case AggMaxRows, AggTopN:
			if len(cfg.Aggs) != 1 {
				return nil, fmt.Errorf("window aggregate: %s (aggregate %d) must be the only aggregate", a.Kind, i)
			}
			if a.Kind == AggTopN && (a.N < 1 || len(a.OrderBy) == 0) {
				return nil, fmt.Errorf("window aggregate: top-n needs N >= 1 (got %d) and at least one OrderBy key", a.N)
			}
			for _, k := range a.OrderBy {
				if k.Field < 0 {
					return nil, fmt.Errorf("window aggregate: top-n orders by negative field %d", k.Field)
				}
			}
			op.rowsMode = a.Kind
		default:
			return nil, fmt.Errorf("window aggregate: aggregate %d has unknown kind %d", i, a.Kind)
		}
		if a.Field < 0 {
			return nil, fmt.Errorf("window aggregate: aggregate %d (%s) reads negative field %d", i, a.Kind, a.Field)
		}
	}
	if op.cfg.Key == nil {
		op.cfg.Key = KeyOf()
	}
	if op.cfg.ErrorSide == "" {
		op.cfg.ErrorSide = DefaultErrorSide
	}
	store, err := newStore(&op.cfg.MaxParallelism, &op.cfg.KeyGroups, keyStateCodec{})
	if err != nil {
		return nil, fmt.Errorf("window aggregate: %w", err)
	}
	op.store = store
	return op, nil
}

// newStore fills in the default max parallelism and range and creates a store.
func newStore[V any](maxP *int, r *state.Range, codec state.Codec[V]) (*state.Store[V], error) {
	if *maxP == 0 {
		*maxP = state.DefaultMaxParallelism
	}
	if *r == (state.Range{}) {
		*r = state.Range{From: 0, To: *maxP}
	}
	return state.NewStore(*maxP, *r, codec)
}

// Late returns the number of records dropped or side-output as late.
func (op *WindowAggregate) Late() int64 { return op.late }

// Errors returns the number of records routed to the error side output.
func (op *WindowAggregate) Errors() int64 { return op.errors }

// Keys returns the number of keys with open windows.
func (op *WindowAggregate) Keys() int { return op.store.Len() }

// ProcessBatch adds b's records to their windows.
func (op *WindowAggregate) ProcessBatch(_ int, b *record.Batch, out Emitter) error {
	for i := range b.Records {
		r := &b.Records[i]
		if err := op.check(r); err != nil {
			op.errors++
			out.EmitSide(op.cfg.ErrorSide, op.sideRecord(r))
			continue
		}
		var err error
		if op.cfg.Windowing.Kind == SessionWindows {
			err = op.addSession(r, out)
		} else {
			err = op.addAligned(r, out)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// check reports whether the aggregates can use r.
func (op *WindowAggregate) check(r *record.Record) error {
	if !validTime(r.Time) {
		return fmt.Errorf("event time %d is outside ±%d", r.Time, int64(MaxEventTime))
	}
	if op.cfg.Weighted {
		if f := op.cfg.WeightField; f >= len(r.Values) || r.Values[f].T != record.TypeInt || r.Values[f].I < 1 {
			return fmt.Errorf("weight field %d of a record with %d fields is not a positive integer", f, len(r.Values))
		}
	}
	for i := range op.cfg.Aggs {
		a := &op.cfg.Aggs[i]
		if a.Kind == AggCount && !a.NonNull {
			continue
		}
		for _, k := range a.OrderBy {
			if k.Field >= len(r.Values) {
				return fmt.Errorf("top-n orders by field %d of a record with %d fields", k.Field, len(r.Values))
			}
		}
		if a.Kind == AggTopN {
			continue
		}
		if a.Field >= len(r.Values) {
			return fmt.Errorf("aggregate %s reads field %d of a record with %d fields", a.Kind, a.Field, len(r.Values))
		}
		if (a.Kind == AggSum || a.Kind == AggAvg) && r.Values[a.Field].T == record.TypeString {
			return fmt.Errorf("aggregate %s of string field %d", a.Kind, a.Field)
		}
	}
	for _, f := range op.cfg.KeyFields {
		if f >= len(r.Values) {
			return fmt.Errorf("key field %d of a record with %d fields", f, len(r.Values))
		}
	}
	return nil
}

func (op *WindowAggregate) keyState(key uint64, r *record.Record) (*keyState, error) {
	ks, created, err := op.store.GetOrCreate(key)
	if err != nil {
		return nil, fmt.Errorf("window aggregate: %w", err)
	}
	if created {
		ks.firedUpTo = math.MinInt64
		for _, f := range op.cfg.KeyFields {
			ks.keyVals = append(ks.keyVals, r.Values[f])
		}
	}
	return ks, nil
}

// newWindow appends a window to ks, reusing a spare slot's buffers.
func (op *WindowAggregate) newWindow(ks *keyState, start, end int64) *window {
	n := len(ks.wins)
	if n < cap(ks.wins) {
		ks.wins = ks.wins[:n+1]
	} else {
		ks.wins = append(ks.wins, window{})
	}
	w := &ks.wins[n]
	if w.accs == nil && w.rows == nil {
		if m := len(op.spare); m > 0 {
			w.accs, w.rows = op.spare[m-1].accs, op.spare[m-1].rows
			op.spare[m-1] = winBufs{}
			op.spare = op.spare[:m-1]
		}
	}
	w.start, w.end, w.fired, w.count = start, end, false, 0
	w.accs = w.accs[:0]
	for range op.cfg.Aggs {
		w.accs = append(w.accs, acc{})
	}
	w.rows = w.rows[:0]
	return w
}

// removeWindow removes window i of ks (moving the last one into its slot) and
// gives its buffers to op.spare.
func (op *WindowAggregate) removeWindow(ks *keyState, i int) {
	last := len(ks.wins) - 1
	ks.wins[i], ks.wins[last] = ks.wins[last], ks.wins[i]
	w := &ks.wins[last]
	if cap(w.rows) <= maxSpareRows {
		if op.rowsMode == AggTopN {
			clear(w.rows) // top-n clones the rows it keeps: old ones would only hold memory
		}
		op.spare = append(op.spare, winBufs{accs: w.accs, rows: w.rows})
	}
	*w = window{}
	ks.wins = ks.wins[:last]
}

// sideRecord returns r as a side output shows it: without the weight a
// combiner appended (WindowConfig.Weighted), which is not part of the
// input's schema.
func (op *WindowAggregate) sideRecord(r *record.Record) record.Record {
	if op.cfg.Weighted && op.cfg.WeightField < len(r.Values) {
		return record.Record{Time: r.Time, Values: r.Values[:op.cfg.WeightField]}
	}
	return *r
}

func (op *WindowAggregate) lateRecord(r *record.Record, out Emitter) {
	if op.cfg.Weighted {
		op.late += r.Values[op.cfg.WeightField].I // checked by check
	} else {
		op.late++
	}
	if op.cfg.LateSide != "" {
		out.EmitSide(op.cfg.LateSide, op.sideRecord(r))
	}
}

// addAligned adds r to the pane of its key holding its time. Windows of the
// pane that already fired but are within the allowed lateness fire again now.
func (op *WindowAggregate) addAligned(r *record.Record, out Emitter) error {
	wd := &op.cfg.Windowing
	slide, size, lateness := wd.slide(), wd.Size, op.cfg.AllowedLateness
	ps := wd.lastStart(r.Time)
	if ps+size-1+lateness <= op.wm {
		op.lateRecord(r, out) // every window r belongs to is gone
		return nil
	}
	key := op.cfg.Key(r)
	ks, err := op.keyState(key, r)
	if err != nil {
		return err
	}
	var pane *window
	for j := len(ks.wins) - 1; j >= 0; j-- { // the newest pane is usually last
		if ks.wins[j].start == ps {
			pane = &ks.wins[j]
			break
		}
	}
	isNew := pane == nil
	if isNew {
		pane = op.newWindow(ks, ps, ps+slide)
	}
	if err := op.addRow(pane, r); err != nil {
		op.errors++
		out.EmitSide(op.cfg.ErrorSide, op.sideRecord(r))
		return nil
	}
	if isNew {
		if e, ok := op.nextEnd(ks, op.wm); ok {
			op.timers.add(e-1, key)
		}
		if lateness > 0 {
			op.timers.add(ps+size-1+lateness, key)
		}
	}
	// Windows of this pane the watermark passed, within lateness: fire again.
	for e := ps + slide; e <= ps+size && e-1 <= op.wm; e += slide {
		if e-1+lateness > op.wm {
			op.emitWindow(ks, e-size, e, out)
		}
	}
	return nil
}

// nextEnd returns the end of the earliest window ending after time after
// (end-1 > after) that holds a pane of ks.
func (op *WindowAggregate) nextEnd(ks *keyState, after int64) (int64, bool) {
	wd := &op.cfg.Windowing
	slide, size := wd.slide(), wd.Size
	best, found := int64(math.MaxInt64), false
	for j := range ks.wins {
		p := ks.wins[j].start
		if p+size-1 <= after {
			continue // every window of this pane ended
		}
		e := p + slide // the first window holding the pane
		if e-1 <= after {
			e = wd.lastStart(after+1) + slide
		}
		if e < best {
			best, found = e, true
		}
	}
	return best, found
}

// emitWindow emits the result of window [start, end) of ks from its panes.
func (op *WindowAggregate) emitWindow(ks *keyState, start, end int64, out Emitter) {
	if op.cfg.Windowing.Kind == TumblingWindows {
		for j := range ks.wins {
			if ks.wins[j].start == start {
				op.emit(ks, &ks.wins[j], out)
				return
			}
		}
		return
	}
	w := &op.tmp
	w.start, w.end, w.count = start, end, 0
	w.accs = w.accs[:0]
	for range op.cfg.Aggs {
		w.accs = append(w.accs, acc{})
	}
	if op.rowsMode == AggTopN {
		clear(w.rows) // top-n inserts shift rows: no spare slot may alias a kept one
	}
	w.rows = w.rows[:0]
	found := false
	for j := range ks.wins {
		if p := &ks.wins[j]; p.start >= start && p.start < end {
			if err := op.mergeWindow(w, p); err != nil {
				op.errors++
				return
			}
			found = true
		}
	}
	if found {
		w.start, w.end = start, end
		op.emit(ks, w, out)
	}
}

// fireAligned emits, for each key, its windows that ended since it last
// fired (end-1 in (max(previous watermark, firedUpTo), t]) in order, drops
// the panes beyond their allowed lateness, and sets the key's next timer.
func (op *WindowAggregate) fireAligned(t int64, keys []uint64, out Emitter) {
	size, lateness := op.cfg.Windowing.Size, op.cfg.AllowedLateness
	for _, key := range keys {
		ks := op.store.Get(key)
		if ks == nil {
			continue
		}
		from := max(op.prevWM, ks.firedUpTo)
		for from < t {
			e, ok := op.nextEnd(ks, from)
			if !ok || e-1 > t {
				break
			}
			op.emitWindow(ks, e-size, e, out)
			from = e - 1
		}
		ks.firedUpTo = max(ks.firedUpTo, t)
		for j := 0; j < len(ks.wins); {
			if ks.wins[j].start+size-1+lateness <= t {
				op.removeWindow(ks, j)
				continue
			}
			j++
		}
		if len(ks.wins) == 0 {
			op.store.Delete(key)
			continue
		}
		if e, ok := op.nextEnd(ks, t); ok {
			op.timers.add(e-1, key)
		}
	}
}

// addSession adds r to its key's sessions, merging those it bridges.
func (op *WindowAggregate) addSession(r *record.Record, out Emitter) error {
	lateness := op.cfg.AllowedLateness
	start, end := r.Time, r.Time+op.cfg.Windowing.Gap
	if end-1+lateness <= op.wm {
		op.lateRecord(r, out)
		return nil
	}
	key := op.cfg.Key(r)
	ks, err := op.keyState(key, r)
	if err != nil {
		return err
	}
	target := -1
	for j := 0; j < len(ks.wins); {
		w := &ks.wins[j]
		if w.start > end || start > w.end {
			j++
			continue
		}
		if target < 0 {
			target = j
			j++
			continue
		}
		t := &ks.wins[target]
		if err := op.mergeWindow(t, w); err != nil {
			op.errors++
			out.EmitSide(op.cfg.ErrorSide, op.sideRecord(r))
			return nil
		}
		op.removeWindow(ks, j)
		if target == len(ks.wins) { // removeWindow moved the target into slot j
			target = j
		}
	}
	var w *window
	oldEnd, wasFired := int64(math.MinInt64), false
	if target < 0 {
		w = op.newWindow(ks, start, end)
	} else {
		w = &ks.wins[target]
		oldEnd, wasFired = w.end, w.fired
	}
	w.start, w.end = min(w.start, start), max(w.end, end)
	if err := op.addRow(w, r); err != nil {
		op.errors++
		out.EmitSide(op.cfg.ErrorSide, op.sideRecord(r))
		return nil
	}
	if w.end-1 <= op.wm { // within allowed lateness: fire (again) now
		op.emit(ks, w, out)
		w.fired = true
		op.timers.add(w.end-1+lateness, key)
		return nil
	}
	w.fired = false
	if w.end != oldEnd || wasFired {
		op.timers.add(w.end-1, key)
	}
	return nil
}

// addRow adds r to the aggregates of w.
func (op *WindowAggregate) addRow(w *window, r *record.Record) error {
	if op.cfg.Weighted {
		w.count += r.Values[op.cfg.WeightField].I // checked by check
		return nil                                // every aggregate counts
	}
	w.count++
	for i := range op.cfg.Aggs {
		a := &op.cfg.Aggs[i]
		switch a.Kind {
		case AggCount:
			if a.NonNull && r.Values[a.Field].T != record.TypeNull {
				w.accs[i].n++
			}
			continue
		case AggTopN:
			if err := op.addTopN(w, a, r); err != nil {
				return err
			}
			continue
		}
		v := r.Values[a.Field]
		if v.T == record.TypeNull {
			continue
		}
		if v.T == record.TypeBool {
			v.T = record.TypeInt
		}
		switch a.Kind {
		case AggSum, AggAvg, AggMin, AggMax:
			if err := addAcc(a.Kind, &w.accs[i], v, 1); err != nil {
				return err
			}
		case AggMaxRows:
			if err := op.addMaxRow(w, a, &v, r); err != nil {
				return err
			}
		}
	}
	return nil
}

// addAcc folds value v (representing n non-null values) into c.
func addAcc(kind AggKind, c *acc, v record.Value, n int64) error {
	if c.n == 0 {
		c.n, c.v = n, v
		return nil
	}
	switch kind {
	case AggSum, AggAvg:
		if c.v.T == record.TypeFloat || v.T == record.TypeFloat {
			c.v = record.Float(asFloat(&c.v) + asFloat(&v))
		} else {
			c.v.I += v.I
		}
	case AggMin, AggMax:
		cmp, err := compareValues(&v, &c.v)
		if err != nil {
			return err
		}
		if (kind == AggMin && cmp < 0) || (kind == AggMax && cmp > 0) {
			c.v = v
		}
	}
	c.n += n
	return nil
}

func copyRow(dst *record.Record, src *record.Record) {
	dst.Time = src.Time
	dst.Values = append(dst.Values[:0], src.Values...)
}

func (op *WindowAggregate) addMaxRow(w *window, a *Agg, v *record.Value, r *record.Record) error {
	if len(w.rows) > 0 {
		cmp, err := compareValues(v, &w.rows[0].Values[a.Field])
		if err != nil {
			return err
		}
		if cmp < 0 {
			return nil
		}
		if cmp > 0 {
			w.rows = w.rows[:0]
		}
	}
	n := len(w.rows)
	if n < cap(w.rows) {
		w.rows = w.rows[:n+1]
	} else {
		w.rows = append(w.rows, record.Record{})
	}
	copyRow(&w.rows[n], r)
	return nil
}

// better reports how row x ranks against row y in a's top-N order: >0 if x
// comes first, 0 if they tie on every key.
func better(a *Agg, x, y *record.Record) (int, error) {
	for _, k := range a.OrderBy {
		xv, yv := &x.Values[k.Field], &y.Values[k.Field]
		xn, yn := xv.T == record.TypeNull, yv.T == record.TypeNull
		switch {
		case xn && yn:
			continue
		case xn:
			return -1, nil
		case yn:
			return 1, nil
		}
		cmp, err := compareValues(xv, yv)
		if err != nil {
			return 0, fmt.Errorf("top-n order field %d: %w", k.Field, err)
		}
		if !k.Desc {
			cmp = -cmp
		}
		if cmp != 0 {
			return cmp, nil
		}
	}
	return 0, nil
}

func (op *WindowAggregate) addTopN(w *window, a *Agg, r *record.Record) error {
	// Find the first row that r ranks strictly before (ties keep arrival order).
	pos := len(w.rows)
	for j := range w.rows {
		cmp, err := better(a, r, &w.rows[j])
		if err != nil {
			return err
		}
		if cmp > 0 {
			pos = j
			break
		}
	}
	if pos >= a.N && !a.WithTies {
		return nil
	}
	if pos >= a.N { // with ties: keep only if tied with the N-th row
		if cmp, _ := better(a, r, &w.rows[a.N-1]); cmp < 0 {
			return nil
		}
	}
	row := record.Record{Time: r.Time, Values: slices.Clone(r.Values)}
	w.rows = slices.Insert(w.rows, pos, row)
	trimTopN(w, a)
	return nil
}

// trimTopN drops rows beyond the N-th (keeping those tied with it WithTies).
func trimTopN(w *window, a *Agg) {
	keep := len(w.rows)
	if keep > a.N {
		keep = a.N
		if a.WithTies {
			for keep < len(w.rows) {
				if cmp, _ := better(a, &w.rows[keep], &w.rows[a.N-1]); cmp != 0 {
					break
				}
				keep++
			}
		}
	}
	clear(w.rows[keep:]) // no slot beyond len may alias a kept row's values
	w.rows = w.rows[:keep]
}

// mergeWindow folds session window src into dst.
func (op *WindowAggregate) mergeWindow(dst, src *window) error {
	dst.start, dst.end = min(dst.start, src.start), max(dst.end, src.end)
	dst.count += src.count
	dst.fired = dst.fired && src.fired
	for i := range op.cfg.Aggs {
		a := &op.cfg.Aggs[i]
		switch a.Kind {
		case AggCount:
			if a.NonNull {
				dst.accs[i].n += src.accs[i].n
			}
		case AggSum, AggAvg, AggMin, AggMax:
			if src.accs[i].n > 0 {
				if err := addAcc(a.Kind, &dst.accs[i], src.accs[i].v, src.accs[i].n); err != nil {
					return err
				}
			}
		case AggMaxRows:
			for j := range src.rows {
				v := src.rows[j].Values[a.Field]
				if err := op.addMaxRow(dst, a, &v, &src.rows[j]); err != nil {
					return err
				}
			}
		case AggTopN:
			for j := range src.rows {
				if err := op.addTopN(dst, a, &src.rows[j]); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// appendBounds appends the window bounds that are not omitted.
func (op *WindowAggregate) appendBounds(dst []record.Value, w *window) []record.Value {
	if !op.cfg.OmitStart {
		dst = append(dst, record.Int(w.start))
	}
	if !op.cfg.OmitEnd {
		dst = append(dst, record.Int(w.end))
	}
	return dst
}

// emit sends the current result of window w of ks downstream.
func (op *WindowAggregate) emit(ks *keyState, w *window, out Emitter) {
	switch op.rowsMode {
	case AggMaxRows:
		for j := range w.rows {
			op.buf = op.appendBounds(append(op.buf[:0], w.rows[j].Values...), w)
			out.Emit(record.Record{Time: w.end - 1, Values: op.buf})
		}
		return
	case AggTopN:
		a := &op.cfg.Aggs[0]
		rank := 0
		for j := range w.rows {
			if !a.WithTies || j == 0 {
				rank = j + 1
			} else if cmp, _ := better(a, &w.rows[j-1], &w.rows[j]); cmp != 0 {
				rank = j + 1
			}
			op.buf = op.appendBounds(append(op.buf[:0], w.rows[j].Values...), w)
			if a.Rank {
				op.buf = append(op.buf, record.Int(int64(rank)))
			}
			out.Emit(record.Record{Time: w.end - 1, Values: op.buf})
		}
		return
	}
	op.buf = op.appendBounds(append(op.buf[:0], ks.keyVals...), w)
	for i := range op.cfg.Aggs {
		c := &w.accs[i]
		var v record.Value
		switch a := &op.cfg.Aggs[i]; a.Kind {
		case AggCount:
			if a.NonNull {
				v = record.Int(c.n)
			} else {
				v = record.Int(w.count)
			}
		case AggSum, AggMin, AggMax:
			if c.n > 0 {
				v = c.v
			}
		case AggAvg:
			if c.n > 0 {
				v = record.Float(asFloat(&c.v) / float64(c.n))
			}
		}
		op.buf = append(op.buf, v)
	}
	out.Emit(record.Record{Time: w.end - 1, Values: op.buf})
}

// ProcessWatermark fires the windows the watermark passed and drops those
// beyond their allowed lateness, then forwards the watermark.
func (op *WindowAggregate) ProcessWatermark(_ int, wm int64, out Emitter) error {
	if wm == IdleWatermark {
		if !op.idleOut {
			op.idleOut = true
			out.EmitWatermark(IdleWatermark)
		}
		return nil
	}
	if wm <= op.wm {
		if op.idleOut && wm == op.wm {
			op.idleOut = false
			out.EmitWatermark(wm)
		}
		return nil
	}
	op.prevWM, op.wm = op.wm, wm
	op.idleOut = false
	for {
		t, keys, ok := op.timers.popDue(wm)
		if !ok {
			break
		}
		if op.cfg.Windowing.Kind == SessionWindows {
			op.fireSession(t, keys, out)
		} else {
			op.fireAligned(t, keys, out)
		}
	}
	out.EmitWatermark(wm)
	return nil
}

// fireSession handles the timers at time t for keys' sessions.
func (op *WindowAggregate) fireSession(t int64, keys []uint64, out Emitter) {
	lateness := op.cfg.AllowedLateness
	for _, key := range keys {
		ks := op.store.Get(key)
		if ks == nil {
			continue
		}
		for j := 0; j < len(ks.wins); {
			w := &ks.wins[j]
			if !w.fired && w.end-1 <= t {
				op.emit(ks, w, out)
				w.fired = true
				if lateness > 0 {
					op.timers.add(w.end-1+lateness, key)
				}
			}
			if w.fired && w.end-1+lateness <= t {
				op.removeWindow(ks, j)
				continue
			}
			j++
		}
		if len(ks.wins) == 0 {
			op.store.Delete(key)
		}
	}
}

// Finish fires every open window with the final watermark.
func (op *WindowAggregate) Finish(out Emitter) error {
	if op.wm != FinalWatermark {
		return op.ProcessWatermark(0, FinalWatermark, out)
	}
	return nil
}

// Snapshot encodes the window state of the key groups [from, to), with the
// operator's watermark (see DecodeEnvelope).
func (op *WindowAggregate) Snapshot(from, to int) ([]byte, error) {
	return snapshotEnvelope(op.wm, op.store, from, to)
}

// Restore replaces the window state of the key groups [from, to) with the
// snapshot's and re-arms their timers. The operator's watermark becomes the
// lowest of the restored snapshots', so records the old subtasks would have
// dropped as late are dropped here too.
func (op *WindowAggregate) Restore(from, to int, data []byte) error {
	r := state.Range{From: from, To: to}
	wm, err := restoreEnvelope(op.store, r, data)
	if err != nil {
		return fmt.Errorf("window aggregate: %w", err)
	}
	if !op.restored || wm < op.wm {
		op.wm = wm
	}
	op.restored = true
	maxP := op.store.MaxParallelism()
	sessions := op.cfg.Windowing.Kind == SessionWindows
	op.store.ForEach(func(key uint64, ks *keyState) bool {
		if !r.Contains(state.KeyGroup(key, maxP)) {
			return true
		}
		ks.firedUpTo = math.MinInt64
		if !sessions {
			if e, ok := op.nextEnd(ks, op.wm); ok {
				op.timers.add(e-1, key)
			}
		}
		for j := range ks.wins {
			w := &ks.wins[j]
			switch {
			case !sessions:
				if op.cfg.AllowedLateness > 0 {
					op.timers.add(w.start+op.cfg.Windowing.Size-1+op.cfg.AllowedLateness, key)
				}
			case w.fired:
				op.timers.add(w.end-1+op.cfg.AllowedLateness, key)
			default:
				op.timers.add(w.end-1, key)
			}
		}
		return true
	})
	return nil
}

// envelopeVersion opens an operator snapshot: the version byte, the operator's
// watermark (varint), then the state.Store snapshot of the range.
const envelopeVersion = 1

func snapshotEnvelope[V any](wm int64, s *state.Store[V], from, to int) ([]byte, error) {
	buf := state.AppendVarint([]byte{envelopeVersion}, wm)
	return s.AppendSnapshot(buf, state.Range{From: from, To: to})
}

// DecodeEnvelope splits an operator snapshot into the watermark it was taken
// at and the state.Store snapshot that follows.
func DecodeEnvelope(data []byte) (wm int64, store []byte, err error) {
	d := state.NewDecoder(data)
	if v := d.Byte(); d.Err() == nil && v != envelopeVersion {
		return 0, nil, fmt.Errorf("operator snapshot version %d is not supported (want %d)", v, envelopeVersion)
	}
	wm = d.Varint()
	if d.Err() != nil {
		return 0, nil, fmt.Errorf("operator snapshot header: %w", d.Err())
	}
	return wm, d.Bytes(d.Remaining()), nil
}

func restoreEnvelope[V any](s *state.Store[V], r state.Range, data []byte) (int64, error) {
	wm, inner, err := DecodeEnvelope(data)
	if err != nil {
		return 0, err
	}
	return wm, s.Restore(r, inner)
}

// keyStateCodec encodes keyState in snapshots.
type keyStateCodec struct{}

// Append implements state.Codec.
func (keyStateCodec) Append(dst []byte, ks *keyState) []byte {
	dst = state.AppendUvarint(dst, uint64(len(ks.keyVals)))
	for _, v := range ks.keyVals {
		dst = state.AppendValue(dst, v)
	}
	dst = state.AppendUvarint(dst, uint64(len(ks.wins)))
	for j := range ks.wins {
		w := &ks.wins[j]
		dst = state.AppendVarint(dst, w.start)
		dst = state.AppendVarint(dst, w.end)
		if w.fired {
			dst = append(dst, 1)
		} else {
			dst = append(dst, 0)
		}
		dst = state.AppendVarint(dst, w.count)
		dst = state.AppendUvarint(dst, uint64(len(w.accs)))
		for _, c := range w.accs {
			dst = state.AppendVarint(dst, c.n)
			dst = state.AppendValue(dst, c.v)
		}
		dst = state.AppendUvarint(dst, uint64(len(w.rows)))
		for k := range w.rows {
			dst = state.AppendRecord(dst, &w.rows[k])
		}
	}
	return dst
}

// Decode implements state.Codec, strictly: every byte must be used.
func (keyStateCodec) Decode(src []byte, ks *keyState) error {
	d := state.NewDecoder(src)
	ks.keyVals = ks.keyVals[:0]
	for n := d.Count(1); n > 0 && d.Err() == nil; n-- {
		ks.keyVals = append(ks.keyVals, d.Value())
	}
	ks.wins = ks.wins[:0]
	for n := d.Count(6); n > 0 && d.Err() == nil; n-- {
		var w window
		w.start, w.end, w.fired, w.count = d.Varint(), d.Varint(), d.Bool(), d.Varint()
		for m := d.Count(2); m > 0 && d.Err() == nil; m-- {
			w.accs = append(w.accs, acc{n: d.Varint(), v: d.Value()})
		}
		for m := d.Count(2); m > 0 && d.Err() == nil; m-- {
			var r record.Record
			d.Record(&r)
			w.rows = append(w.rows, r)
		}
		if d.Err() == nil && w.end <= w.start {
			d.Fail(fmt.Errorf("window [%d,%d) is empty", w.start, w.end))
		}
		ks.wins = append(ks.wins, w)
	}
	return d.Done()
}
