package operator

import (
	"math"
	"slices"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

// prefilterStep is one call on a MaxPrefilter: a record (with its key) whose
// Keep result is checked, or a watermark (rec nil) passed to Advance.
type prefilterStep struct {
	key  uint64
	rec  *record.Record
	wm   int64
	keep bool
}

func keepStep(key uint64, r record.Record, keep bool) prefilterStep {
	return prefilterStep{key: key, rec: &r, keep: keep}
}

func wmStep(wm int64) prefilterStep { return prefilterStep{wm: wm} }

func TestMaxPrefilter(t *testing.T) {
	// Tumbling windows of 10 ms; field 1 is maximized (int unless said).
	for _, tc := range []struct {
		name    string
		typ     record.Type
		max     int
		steps   []prefilterStep
		dropped int64
		entries int // entries held at the end (-1: don't check)
	}{
		{name: "ties pass, lower dropped, higher replaces", steps: []prefilterStep{
			keepStep(1, rec(0, "a", 5), true),
			keepStep(1, rec(3, "b", 5), true),  // tie
			keepStep(1, rec(4, "c", 4), false), // strictly below
			keepStep(1, rec(5, "d", 7), true),  // new maximum
			keepStep(1, rec(6, "e", 5), false), // below the new maximum
			keepStep(1, rec(9, "f", 7), true),
		}, dropped: 2, entries: 1},
		{name: "windows and keys are independent", steps: []prefilterStep{
			keepStep(1, rec(0, "a", 9), true),
			keepStep(1, rec(10, "b", 1), true), // next window
			keepStep(2, rec(0, "c", 1), true),  // other key
			keepStep(1, rec(-1, "d", 1), true), // window [-10, 0)
			keepStep(1, rec(9, "e", 8), false),
			keepStep(1, rec(19, "f", 0), false),
			keepStep(2, rec(5, "g", 0), false),
			keepStep(1, rec(-10, "h", 0), false),
		}, dropped: 4, entries: 4},
		{name: "null, missing field and invalid time pass", steps: []prefilterStep{
			keepStep(1, rec(0, "a", 5), true),
			keepStep(1, rec(1, "b", nil), true),
			keepStep(1, rec(2, "c"), true),
			keepStep(1, rec(MaxEventTime+1, "d", 1), true),
			keepStep(1, rec(3, "e", 4.0), true), // not the field's type
			keepStep(1, rec(4, "f", 4), false),
		}, dropped: 1, entries: 1},
		{name: "watermark evicts ended windows and lets their records pass", steps: []prefilterStep{
			keepStep(1, rec(0, "a", 5), true),
			keepStep(1, rec(10, "b", 5), true),
			keepStep(2, rec(25, "c", 5), true),
			wmStep(8), // nothing ended yet: [0,10) ends at wm 9
			keepStep(1, rec(1, "d", 1), false),
			wmStep(9),                         // [0, 10) ended
			keepStep(1, rec(2, "e", 1), true), // late: the window's business
			keepStep(1, rec(12, "f", 1), false),
			wmStep(19),
			keepStep(1, rec(13, "g", 1), true),
			keepStep(2, rec(26, "h", 1), false),
			wmStep(IdleWatermark), // ignored
			wmStep(5),             // backwards: ignored
			keepStep(2, rec(27, "i", 1), false),
		}, dropped: 4, entries: 1},
		{name: "overflow clears the map", max: 2, steps: []prefilterStep{
			keepStep(1, rec(0, "a", 5), true),
			keepStep(2, rec(0, "b", 5), true),
			keepStep(1, rec(1, "c", 4), false),
			keepStep(3, rec(0, "d", 5), true), // third entry: cleared first
			keepStep(1, rec(2, "e", 4), true), // forgotten: passes again
			keepStep(3, rec(3, "f", 4), false),
		}, dropped: 2, entries: 2},
		{name: "strings", typ: record.TypeString, steps: []prefilterStep{
			keepStep(1, rec(0, 1, "m"), true),
			keepStep(1, rec(1, 2, "a"), false),
			keepStep(1, rec(2, 3, "m"), true),
			keepStep(1, rec(3, 4, "z"), true),
			keepStep(1, rec(4, 5, "m"), false),
		}, dropped: 2, entries: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			typ := tc.typ
			if typ == record.TypeNull {
				typ = record.TypeInt
			}
			f, err := NewMaxPrefilter(MaxPrefilterConfig{Windowing: Tumbling(10), Field: 1, Type: typ, MaxEntries: tc.max})
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tc.steps {
				if s.rec == nil {
					f.Advance(s.wm)
					continue
				}
				if got := f.Keep(s.key, s.rec); got != s.keep {
					t.Fatalf("step %d: Keep(key %d, %v) = %v, want %v", i, s.key, s.rec, got, s.keep)
				}
			}
			if f.Dropped() != tc.dropped {
				t.Errorf("Dropped() = %d, want %d", f.Dropped(), tc.dropped)
			}
			if tc.entries >= 0 && f.Len() != tc.entries {
				t.Errorf("Len() = %d, want %d", f.Len(), tc.entries)
			}
		})
	}
}

func TestMaxPrefilterFinalWatermarkEmpties(t *testing.T) {
	f, err := NewMaxPrefilter(MaxPrefilterConfig{Windowing: Tumbling(1000), Field: 0, Type: record.TypeInt})
	if err != nil {
		t.Fatal(err)
	}
	for i := range int64(5000) {
		r := rec(i*7, i%13)
		f.Keep(uint64(i%50), &r)
	}
	if f.Len() == 0 {
		t.Fatal("no entries")
	}
	f.Advance(FinalWatermark)
	if f.Len() != 0 {
		t.Fatalf("%d entries after the final watermark", f.Len())
	}
}

// TestMaxPrefilterKeepsWindowResult feeds a window aggregate with max-rows
// the records a pre-filter passes, and the same records unfiltered, from
// several interleaved senders, and checks the results are equal.
func TestMaxPrefilterKeepsWindowResult(t *testing.T) {
	const senders = 3
	var filters [senders]*MaxPrefilter
	for i := range filters {
		f, err := NewMaxPrefilter(MaxPrefilterConfig{Windowing: Tumbling(100), Field: 1, Type: record.TypeInt, MaxEntries: 64})
		if err != nil {
			t.Fatal(err)
		}
		filters[i] = f
	}
	newWindow := func() *WindowAggregate {
		op, err := NewWindowAggregate(WindowConfig{Windowing: Tumbling(100), Key: KeyOf(0), KeyFields: []int{0},
			Aggs: []Agg{{Kind: AggMaxRows, Field: 1}}})
		if err != nil {
			t.Fatal(err)
		}
		return op
	}
	all, some := newWindow(), newWindow()
	var gotAll, gotSome recorder
	var b, kept record.Batch
	wm := int64(math.MinInt64)
	for i := range int64(20000) {
		// Keys 0..19, values with many ties, time going forward with
		// disorder of up to 30 ms.
		r := rec(i/4+(i*37%31), i%20, (i*7919)%50, i)
		if r.Time <= wm {
			continue // late: the test's watermark is the senders' too
		}
		b.Records = append(b.Records[:0], r)
		kept.Records = kept.Records[:0]
		if filters[i%senders].Keep(KeyOf(0)(&r), &r) {
			kept.Records = append(kept.Records, r)
		}
		if err := all.ProcessBatch(0, &b, &gotAll); err != nil {
			t.Fatal(err)
		}
		if err := some.ProcessBatch(0, &kept, &gotSome); err != nil {
			t.Fatal(err)
		}
		if i%100 == 99 {
			wm = i/4 - 31
			for _, f := range filters {
				f.Advance(wm)
			}
			_ = all.ProcessWatermark(0, wm, &gotAll)
			_ = some.ProcessWatermark(0, wm, &gotSome)
		}
	}
	_ = all.Finish(&gotAll)
	_ = some.Finish(&gotSome)
	var dropped int64
	for _, f := range filters {
		dropped += f.Dropped()
	}
	if dropped == 0 {
		t.Fatal("the pre-filters dropped nothing")
	}
	if len(gotAll.out) != len(gotSome.out) {
		t.Fatalf("%d result rows with the pre-filter, %d without", len(gotSome.out), len(gotAll.out))
	}
	for i := range gotAll.out {
		if a, s := gotAll.out[i], gotSome.out[i]; a.Time != s.Time || !slices.Equal(a.Values, s.Values) {
			t.Fatalf("row %d: %v with the pre-filter, %v without", i, s, a)
		}
	}
	t.Logf("%d rows, %d of 20000 records dropped", len(gotAll.out), dropped)
}

func TestNewMaxPrefilterRefuses(t *testing.T) {
	for _, cfg := range []MaxPrefilterConfig{
		{Windowing: Sliding(10, 5), Type: record.TypeInt},
		{Windowing: Session(10), Type: record.TypeInt},
		{Windowing: Tumbling(0), Type: record.TypeInt},
		{Windowing: Tumbling(10), Type: record.TypeFloat},
		{Windowing: Tumbling(10), Type: record.TypeNull},
		{Windowing: Tumbling(10), Field: -1, Type: record.TypeInt},
	} {
		if _, err := NewMaxPrefilter(cfg); err == nil {
			t.Errorf("NewMaxPrefilter(%+v) succeeded", cfg)
		}
	}
}
