package operator

import (
	"fmt"
	"math"

	"github.com/sealflow/sealflow/engine/record"
)

// DefaultPrefilterEntries bounds the (key, window) entries of a MaxPrefilter
// whose MaxPrefilterConfig.MaxEntries is zero: 64k entries of about 100
// bytes each with the map's overhead.
const DefaultPrefilterEntries = 1 << 16

// MaxPrefilterConfig configures a MaxPrefilter. Windowing and Field must be
// those of the downstream window aggregate whose only aggregate is
// AggMaxRows: the filter assigns records to windows with the same function
// (Windowing.lastStart of Record.Time) the window operator uses.
type MaxPrefilterConfig struct {
	// Windowing is the downstream window's; only tumbling windows are
	// supported.
	Windowing Windowing
	// Field is the index of the field AggMaxRows maximizes.
	Field int
	// Type is Field's schema type: int, bool or string. Values of any other
	// type (null above all) pass unfiltered. Floats are refused: NaN is
	// unordered, so the window's "equal to the first kept row" test is not
	// transitive and a row below a sender's maximum could still be kept.
	Type record.Type
	// MaxEntries bounds the entries kept (DefaultPrefilterEntries if 0);
	// when a new entry would exceed it, every entry is dropped.
	MaxEntries int
}

// prefilterKey is one group key and window start.
type prefilterKey struct {
	key   uint64
	start int64
}

// MaxPrefilter is a map-side combiner for a keyed exchange into a tumbling
// window whose only aggregate is AggMaxRows (Nexmark q7): on the sending
// side it remembers, per (group key, window start), the highest value of
// the field it has let through, and drops a record only when its value is
// strictly below that maximum. Ties and everything it cannot judge pass:
// records without the field or with a null or mistyped value, records with
// an invalid event time, and records whose window ended at or before the
// latest watermark the filter saw (Advance).
//
// It never holds a record back, so latency, watermarks and barriers are
// unchanged, and the window's main output is the same. A dropped record r is
// strictly below a record s of the same key and window sent before it on
// the same channel. If r would have reached the window in time, so did s
// (it arrived earlier, when the window's watermark was no higher), so the
// window's maximum is at least s's value, above r's: r could neither be kept
// nor change a result. If r would have been late, it could not change the
// main output either (the window must have no allowed lateness: a record
// within the lateness re-emits the window's result even when it does not
// change it, which a dropped record would not).
//
// What can change is the window's late-record accounting. The window's
// watermark, the least over its active input channels, can be ahead of the
// watermark this filter saw: when this sender's input is idle, or after a
// restore (the filter starts with no watermark while the window restored
// its own). A record late at the window can then still be dropped here, so
// the window counts fewer late records, and a late side output would miss
// it: the runtime puts no filter before a window with a late side output.
//
// Its state is a hint, not checkpointed: a restored sender starts with an
// empty filter, which passes a superset of what the failed run's filter
// would have. The exactly-once argument for the main output: every record
// dropped before the checkpoint's barrier is below a record sent before that
// barrier, which the window's snapshot reflects; every record dropped after
// the restore is below a record the restored filter sent earlier. Either way
// the window sees, for each key and window, every record at the maximum
// that is not late, which is all its result depends on.
//
// Memory is bounded: entries of windows the watermark has passed are
// evicted, and at MaxEntries the map is cleared, which only makes the
// filter pass more. A MaxPrefilter is not safe for concurrent use.
type MaxPrefilter struct {
	cfg     MaxPrefilterConfig
	max     map[prefilterKey]record.Value
	wm      int64
	minEnd  int64 // the least window end among the entries (MaxInt64: none)
	dropped int64
}

// NewMaxPrefilter returns an empty pre-filter.
func NewMaxPrefilter(cfg MaxPrefilterConfig) (*MaxPrefilter, error) {
	if cfg.Windowing.Kind != TumblingWindows {
		return nil, fmt.Errorf("max pre-filter: windows of kind %d, want tumbling", cfg.Windowing.Kind)
	}
	if err := cfg.Windowing.Validate(); err != nil {
		return nil, fmt.Errorf("max pre-filter: %w", err)
	}
	if cfg.Field < 0 {
		return nil, fmt.Errorf("max pre-filter: field index %d", cfg.Field)
	}
	switch cfg.Type {
	case record.TypeInt, record.TypeBool, record.TypeString:
	default:
		return nil, fmt.Errorf("max pre-filter: field type %s, want int, bool or string", cfg.Type)
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = DefaultPrefilterEntries
	}
	return &MaxPrefilter{cfg: cfg, max: make(map[prefilterKey]record.Value), wm: math.MinInt64, minEnd: math.MaxInt64}, nil
}

// Keep reports whether r, whose group key (the downstream window's KeyFunc
// of r) is key, must be sent; false means it is certainly not among its
// window's maximal rows. It counts the records it drops.
func (f *MaxPrefilter) Keep(key uint64, r *record.Record) bool {
	if !validTime(r.Time) || f.cfg.Field >= len(r.Values) {
		return true
	}
	v := &r.Values[f.cfg.Field]
	if v.T != f.cfg.Type {
		return true
	}
	start := f.cfg.Windowing.lastStart(r.Time)
	end := start + f.cfg.Windowing.Size
	if end-1 <= f.wm {
		return true
	}
	k := prefilterKey{key: key, start: start}
	if m, ok := f.max[k]; ok {
		cmp, err := compareValues(v, &m)
		switch {
		case err != nil || cmp == 0:
			return true
		case cmp < 0:
			f.dropped++
			return false
		}
	} else if len(f.max) >= f.cfg.MaxEntries {
		clear(f.max)
		f.minEnd = math.MaxInt64
	}
	f.max[k] = *v
	f.minEnd = min(f.minEnd, end)
	return true
}

// Advance notes the watermark wm of the sending task's output: records of
// windows with end-1 <= wm pass from now on, and their entries are evicted.
// IdleWatermark and watermarks not above the last are ignored.
func (f *MaxPrefilter) Advance(wm int64) {
	if wm == IdleWatermark || wm <= f.wm {
		return
	}
	f.wm = wm
	if f.minEnd-1 > wm {
		return
	}
	f.minEnd = math.MaxInt64
	for k := range f.max {
		end := k.start + f.cfg.Windowing.Size
		if end-1 <= wm {
			delete(f.max, k)
			continue
		}
		f.minEnd = min(f.minEnd, end)
	}
}

// Dropped returns the number of records Keep dropped.
func (f *MaxPrefilter) Dropped() int64 { return f.dropped }

// Len returns the number of (key, window) entries held.
func (f *MaxPrefilter) Len() int { return len(f.max) }
