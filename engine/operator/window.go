package operator

import (
	"fmt"
	"slices"
	"strings"

	"github.com/sealflow/sealflow/engine/record"
)

// WindowKind selects how records are assigned to windows.
type WindowKind uint8

// The window kinds.
const (
	// TumblingWindows are fixed, non-overlapping windows of Size ms.
	TumblingWindows WindowKind = iota + 1
	// SlidingWindows are windows of Size ms starting every Slide ms; a record
	// belongs to Size/Slide of them.
	SlidingWindows
	// SessionWindows group a key's records separated by less than Gap ms (or
	// exactly Gap: touching sessions merge, as in Flink); a record that bridges
	// two sessions merges them.
	SessionWindows
)

// Windowing describes the windows of a windowed operator. Tumbling and sliding
// windows are aligned to the epoch and half-open, [start, end), in epoch ms; a
// session is [first record time, last record time + Gap).
type Windowing struct {
	Kind  WindowKind
	Size  int64
	Slide int64
	Gap   int64
}

// Tumbling returns tumbling windows of size ms.
func Tumbling(size int64) Windowing { return Windowing{Kind: TumblingWindows, Size: size, Slide: size} }

// Sliding returns windows of size ms starting every slide ms.
func Sliding(size, slide int64) Windowing {
	return Windowing{Kind: SlidingWindows, Size: size, Slide: slide}
}

// Session returns session windows closed by gap ms of inactivity.
func Session(gap int64) Windowing { return Windowing{Kind: SessionWindows, Gap: gap} }

// MaxEventTime bounds the event times (epoch ms, either sign) that windowed
// operators and joins accept, and MaxWindowSpan their sizes, gaps and
// lateness, so window arithmetic cannot overflow. A record outside the range
// goes to the error side output. 2^62 ms is about 146 million years.
const (
	MaxEventTime  = 1 << 62
	MaxWindowSpan = 1 << 50
)

// validTime reports whether t is within ±MaxEventTime.
func validTime(t int64) bool { return t >= -MaxEventTime && t <= MaxEventTime }

// Validate checks sizes: positive, at most MaxWindowSpan, and for sliding
// windows a slide that divides the size.
func (w Windowing) Validate() error {
	if w.Size > MaxWindowSpan || w.Slide > MaxWindowSpan || w.Gap > MaxWindowSpan {
		return fmt.Errorf("window size %d, slide %d or gap %d ms exceeds %d", w.Size, w.Slide, w.Gap, int64(MaxWindowSpan))
	}
	switch w.Kind {
	case TumblingWindows:
		if w.Size <= 0 {
			return fmt.Errorf("tumbling window size %d ms is not positive", w.Size)
		}
	case SlidingWindows:
		if w.Size <= 0 || w.Slide <= 0 || w.Slide > w.Size || w.Size%w.Slide != 0 {
			return fmt.Errorf("sliding window size %d ms, slide %d ms: both must be positive and the slide must divide the size", w.Size, w.Slide)
		}
	case SessionWindows:
		if w.Gap <= 0 {
			return fmt.Errorf("session gap %d ms is not positive", w.Gap)
		}
	default:
		return fmt.Errorf("unknown window kind %d", w.Kind)
	}
	return nil
}

// slide returns the distance between window starts (tumbling: the size).
func (w Windowing) slide() int64 {
	if w.Kind == TumblingWindows {
		return w.Size
	}
	return w.Slide
}

// lastStart returns the start of the latest aligned window containing t.
func (w Windowing) lastStart(t int64) int64 {
	s := w.slide()
	m := t % s
	if m < 0 {
		m += s
	}
	return t - m
}

// timerQueue holds, for each distinct time, the keys with a timer at it. Times
// pop in ascending order; keys of one time pop sorted and deduplicated, so
// firing is deterministic whatever the arrival order and across restores.
type timerQueue struct {
	heap  []int64
	keys  map[int64]*[]uint64
	spare []*[]uint64
	lastT int64
	lastL *[]uint64
	// pending holds the keys returned by the last popDue; it is recycled at the
	// next popDue, so timers added while firing never overwrite them.
	pending *[]uint64
}

func newTimerQueue() *timerQueue { return &timerQueue{keys: make(map[int64]*[]uint64)} }

func (q *timerQueue) add(t int64, key uint64) {
	if q.lastL != nil && q.lastT == t {
		*q.lastL = append(*q.lastL, key)
		return
	}
	l := q.keys[t]
	if l == nil {
		if n := len(q.spare); n > 0 {
			l = q.spare[n-1]
			q.spare = q.spare[:n-1]
		} else {
			l = new([]uint64)
		}
		q.keys[t] = l
		q.push(t)
	}
	*l = append(*l, key)
	q.lastT, q.lastL = t, l
}

// popDue removes the earliest time if it is <= wm and returns it with its keys,
// which stay valid until the next popDue.
func (q *timerQueue) popDue(wm int64) (int64, []uint64, bool) {
	if q.pending != nil {
		*q.pending = (*q.pending)[:0]
		q.spare = append(q.spare, q.pending)
		q.pending = nil
	}
	if len(q.heap) == 0 || q.heap[0] > wm {
		return 0, nil, false
	}
	t := q.pop()
	l := q.keys[t]
	delete(q.keys, t)
	if q.lastL == l {
		q.lastL = nil
	}
	slices.Sort(*l)
	*l = slices.Compact(*l)
	q.pending = l
	return t, *l, true
}

func (q *timerQueue) len() int { return len(q.heap) }

func (q *timerQueue) push(t int64) {
	q.heap = append(q.heap, t)
	i := len(q.heap) - 1
	for i > 0 {
		p := (i - 1) / 2
		if q.heap[p] <= q.heap[i] {
			break
		}
		q.heap[p], q.heap[i] = q.heap[i], q.heap[p]
		i = p
	}
}

func (q *timerQueue) pop() int64 {
	h := q.heap
	t := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && h[l] < h[m] {
			m = l
		}
		if r < n && h[r] < h[m] {
			m = r
		}
		if m == i {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	q.heap = h
	return t
}

// compareValues orders two non-null values: numbers numerically (ints exactly),
// strings lexicographically. It fails on a number compared with a string.
func compareValues(a, b *record.Value) (int, error) {
	an, bn := a.T != record.TypeString, b.T != record.TypeString
	switch {
	case an && bn:
		if a.T != record.TypeFloat && b.T != record.TypeFloat {
			return cmpInt(a.I, b.I), nil
		}
		af, bf := asFloat(a), asFloat(b)
		switch {
		case af < bf:
			return -1, nil
		case af > bf:
			return 1, nil
		}
		return 0, nil
	case !an && !bn:
		return strings.Compare(a.S, b.S), nil
	}
	return 0, fmt.Errorf("cannot compare %s with %s", a.T, b.T)
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func asFloat(v *record.Value) float64 {
	if v.T == record.TypeFloat {
		return v.F
	}
	return float64(v.I)
}
