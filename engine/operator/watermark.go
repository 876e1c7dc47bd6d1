package operator

import (
	"fmt"
	"math"

	"github.com/sealflow/sealflow/engine/record"
)

// WatermarksConfig configures a per-source watermark generator.
type WatermarksConfig struct {
	// MaxOutOfOrderness is how far (ms) a record may lag the newest record seen
	// and still not be late: the watermark is maxTime - MaxOutOfOrderness - 1.
	MaxOutOfOrderness int64
	// IdleTimeout (ms of the caller's processing time, see Ticker) after which
	// an input with no records is declared idle (IdleWatermark), so it stops
	// holding back downstream watermarks. 0 disables idleness.
	IdleTimeout int64
	// Timestamp, if set, extracts each record's event time (epoch ms) and
	// overwrites Record.Time with it; otherwise Record.Time is used as is.
	Timestamp func(*record.Record) int64
}

// Watermarks is a bounded out-of-orderness watermark generator for one source
// (or source partition). It passes records through and emits a watermark after
// each batch that advances it. It implements Ticker for idleness.
type Watermarks struct {
	cfg        WatermarksConfig
	maxTime    int64
	emitted    int64
	idle       bool
	active     bool // a batch arrived since the last tick
	lastActive int64
	ticked     bool
}

// NewWatermarks returns a watermark generator.
func NewWatermarks(cfg WatermarksConfig) (*Watermarks, error) {
	if cfg.MaxOutOfOrderness < 0 || cfg.IdleTimeout < 0 {
		return nil, fmt.Errorf("watermarks: negative out-of-orderness %d or idle timeout %d", cfg.MaxOutOfOrderness, cfg.IdleTimeout)
	}
	return &Watermarks{cfg: cfg, maxTime: math.MinInt64, emitted: math.MinInt64}, nil
}

// ProcessBatch passes b's records on and advances the watermark.
func (w *Watermarks) ProcessBatch(_ int, b *record.Batch, out Emitter) error {
	if w.emitted == FinalWatermark && len(b.Records) > 0 {
		return fmt.Errorf("watermarks: %d records after the final watermark", len(b.Records))
	}
	for i := range b.Records {
		r := &b.Records[i]
		if w.cfg.Timestamp != nil {
			r.Time = w.cfg.Timestamp(r)
		}
		w.maxTime = max(w.maxTime, r.Time)
		out.Emit(*r)
	}
	if len(b.Records) == 0 {
		return nil
	}
	w.active = true
	wm := w.maxTime - w.cfg.MaxOutOfOrderness - 1
	if w.maxTime < math.MinInt64+w.cfg.MaxOutOfOrderness+2 {
		wm = noWatermark
	}
	if wm > w.emitted || (w.idle && wm >= w.emitted) {
		w.emitted = wm
		w.idle = false
		out.EmitWatermark(wm)
	}
	return nil
}

// ProcessWatermark ignores upstream watermarks except the final one, which it
// forwards: a generator is the origin of its stream's event time.
func (w *Watermarks) ProcessWatermark(_ int, wm int64, out Emitter) error {
	if wm == FinalWatermark {
		return w.Finish(out)
	}
	return nil
}

// Tick declares the input idle once no batch arrived for IdleTimeout of the
// caller's time.
func (w *Watermarks) Tick(now int64, out Emitter) error {
	if w.cfg.IdleTimeout == 0 || w.emitted == FinalWatermark {
		return nil
	}
	if w.active || !w.ticked {
		w.active, w.ticked, w.lastActive = false, true, now
		return nil
	}
	if !w.idle && now-w.lastActive >= w.cfg.IdleTimeout {
		w.idle = true
		out.EmitWatermark(IdleWatermark)
	}
	return nil
}

// Idle reports whether the generator has declared its input idle.
func (w *Watermarks) Idle() bool { return w.idle }

// Finish emits the final watermark.
func (w *Watermarks) Finish(out Emitter) error {
	if w.emitted != FinalWatermark {
		w.emitted = FinalWatermark
		out.EmitWatermark(FinalWatermark)
	}
	return nil
}
