package operator

import (
	"fmt"
	"math"

	"github.com/sealflow/sealflow/engine/record"
)

// DefaultCombinerEntries bounds the (key, pane) entries of a CountCombiner
// whose CountCombinerConfig.MaxEntries is zero. Past it, records pass one by
// one until the next flush.
const DefaultCombinerEntries = 1 << 16

// CountCombinerConfig configures a CountCombiner. Windowing must be the
// downstream window aggregate's, whose every aggregate counts records
// (AggCount without NonNull) and which has no allowed lateness.
type CountCombinerConfig struct {
	// Windowing is the downstream window's: tumbling or sliding.
	Windowing Windowing
	// MaxEntries bounds the entries held between two flushes
	// (DefaultCombinerEntries if 0).
	MaxEntries int
}

// CountCombiner pre-aggregates records on the sending side of a keyed
// exchange into a window aggregate that only counts them (Nexmark q5's
// first stage): of the records of one key and one pane (a window of a
// tumbling window, a slide of a sliding one) it sends one, carrying their
// number as a weight, where the exchange would carry every record. This is
// Flink's local-global aggregation: the window adds the weight instead of
// one (WindowConfig.WeightField).
//
// It holds records only until the producer flushes it (Flush), which the
// runtime does before it sends a watermark or a checkpoint barrier over the
// exchange, and at the end of input. A combined record is therefore
// delivered before any watermark that could make it late and in the same
// checkpoint epoch as the records it stands for: the combiner has no state
// to snapshot, and the window's results are those it would compute from the
// records themselves. A record it cannot combine passes with weight 1: a
// record with an invalid event time, one whose every window ended at or
// before the last watermark sent (the window counts it as late), and any
// record while MaxEntries entries are held.
//
// A combined record carries the values of the first record of its key and
// pane, so the window sees the key fields it groups by, and the pane's start
// as its time. A CountCombiner is not safe for concurrent use.
type CountCombiner struct {
	cfg      CountCombinerConfig
	idx      map[prefilterKey]int
	entries  []combined
	wm       int64
	combined int64
}

// combined is one (key, pane) entry: its first record and the count.
type combined struct {
	key uint64
	rec record.Record
	n   int64
}

// NewCountCombiner returns a combiner for a downstream window with cfg's
// windowing.
func NewCountCombiner(cfg CountCombinerConfig) (*CountCombiner, error) {
	if cfg.Windowing.Kind != TumblingWindows && cfg.Windowing.Kind != SlidingWindows {
		return nil, fmt.Errorf("count combiner: windows of kind %d, want tumbling or sliding", cfg.Windowing.Kind)
	}
	if err := cfg.Windowing.Validate(); err != nil {
		return nil, fmt.Errorf("count combiner: %w", err)
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = DefaultCombinerEntries
	}
	return &CountCombiner{cfg: cfg, idx: make(map[prefilterKey]int), wm: math.MinInt64}, nil
}

// Add offers r, of group key key, to the combiner and reports whether it
// took it; if not, the caller sends r itself, with weight 1.
func (c *CountCombiner) Add(key uint64, r *record.Record) bool {
	if !validTime(r.Time) {
		return false
	}
	wd := &c.cfg.Windowing
	ps := wd.lastStart(r.Time)
	if ps+wd.Size-1 <= c.wm {
		return false // late for every window of its pane: the window counts it as such
	}
	k := prefilterKey{key: key, start: ps}
	if i, ok := c.idx[k]; ok {
		c.entries[i].n++
		c.combined++
		return true
	}
	if len(c.entries) >= c.cfg.MaxEntries {
		return false
	}
	n := len(c.entries)
	if n < cap(c.entries) {
		c.entries = c.entries[:n+1]
	} else {
		c.entries = append(c.entries, combined{})
	}
	e := &c.entries[n]
	e.key, e.n = key, 1
	e.rec.Time = ps
	e.rec.Values = append(e.rec.Values[:0], r.Values...)
	c.idx[k] = n
	return true
}

// Flush hands every entry held to emit, in the order of their first
// records, as its key, its record and its weight (the records it stands
// for), and empties the combiner. The record is valid only during the call.
func (c *CountCombiner) Flush(emit func(key uint64, r *record.Record, weight int64)) {
	for i := range c.entries {
		e := &c.entries[i]
		emit(e.key, &e.rec, e.n)
	}
	c.entries = c.entries[:0]
	clear(c.idx)
}

// Advance records wm, the watermark the producer sends next over the
// exchange, after flushing: records whose every window ends at or before it
// are late downstream and pass uncombined.
func (c *CountCombiner) Advance(wm int64) {
	if wm == IdleWatermark || wm <= c.wm {
		return
	}
	c.wm = wm
}

// Combined returns the number of records that will not be sent because the
// record of an entry carries them: every record taken but the first of its
// key and pane. It never decreases, so it can back a counter metric.
func (c *CountCombiner) Combined() int64 { return c.combined }

// Len returns the number of entries held.
func (c *CountCombiner) Len() int { return len(c.entries) }
