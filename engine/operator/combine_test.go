package operator

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

// TestCountCombinerSameCounts feeds the same disordered records and
// watermarks to a counting window directly and, through a CountCombiner
// flushed before each watermark, to the same window taking weights: the
// results, the late count and the late side output are the same, and far
// fewer records reach the second window.
func TestCountCombinerSameCounts(t *testing.T) {
	for _, tc := range []struct {
		name string
		wd   Windowing
	}{
		{"tumbling", Tumbling(100)},
		{"sliding", Sliding(100, 25)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			cfg := WindowConfig{Windowing: tc.wd, Key: KeyOf(0), KeyFields: []int{0}, Aggs: []Agg{{Kind: AggCount}, {Kind: AggCount}}, LateSide: "late"}
			plain, err := NewWindowAggregate(cfg)
			if err != nil {
				t.Fatal(err)
			}
			wcfg := cfg
			wcfg.Weighted, wcfg.WeightField = true, 2
			weighted, err := NewWindowAggregate(wcfg)
			if err != nil {
				t.Fatal(err)
			}
			comb, err := NewCountCombiner(CountCombinerConfig{Windowing: tc.wd, MaxEntries: 40})
			if err != nil {
				t.Fatal(err)
			}
			var outPlain, outWeighted recorder
			var sent int
			send := func(recs []record.Record) {
				b := record.Batch{Records: recs}
				sent += len(recs)
				if err := weighted.ProcessBatch(0, &b, &outWeighted); err != nil {
					t.Fatal(err)
				}
			}
			flush := func() {
				var recs []record.Record
				comb.Flush(func(_ uint64, r *record.Record, w int64) {
					recs = append(recs, record.Record{Time: r.Time, Values: append(slices.Clone(r.Values), record.Int(w))})
				})
				send(recs)
			}
			key := KeyOf(0)
			wm := int64(-1)
			for step := range 200 {
				var batch, pass []record.Record
				for range 50 {
					// Times up to 80 behind the watermark: some records are
					// late for every window of their pane.
					r := rec(wm+1+int64(rng.IntN(120))-80, int64(rng.IntN(12)), "x")
					batch = append(batch, r)
					if !comb.Add(key(&r), &r) {
						pass = append(pass, record.Record{Time: r.Time, Values: append(slices.Clone(r.Values), record.Int(1))})
					}
				}
				b := record.Batch{Records: batch}
				if err := plain.ProcessBatch(0, &b, &outPlain); err != nil {
					t.Fatal(err)
				}
				send(pass)
				if step%3 == 2 {
					wm += 40
					flush()
					comb.Advance(wm)
					if err := plain.ProcessWatermark(0, wm, &outPlain); err != nil {
						t.Fatal(err)
					}
					if err := weighted.ProcessWatermark(0, wm, &outWeighted); err != nil {
						t.Fatal(err)
					}
				}
			}
			flush()
			if err := plain.Finish(&outPlain); err != nil {
				t.Fatal(err)
			}
			if err := weighted.Finish(&outWeighted); err != nil {
				t.Fatal(err)
			}
			if got, want := sorted(show(outWeighted.out)), sorted(show(outPlain.out)); !slices.Equal(got, want) {
				t.Fatalf("combined: %d rows, direct: %d; first %q and %q", len(got), len(want), got[:min(3, len(got))], want[:min(3, len(want))])
			}
			if plain.Late() == 0 || weighted.Late() != plain.Late() {
				t.Fatalf("late: %d combined, %d direct; want equal and some", weighted.Late(), plain.Late())
			}
			if got, want := sorted(show(outWeighted.side["late"])), sorted(show(outPlain.side["late"])); !slices.Equal(got, want) {
				t.Fatalf("late side output differs: %q, want %q (without the weight)", got[:min(3, len(got))], want[:min(3, len(want))])
			}
			if sent > 200*50/2 {
				t.Fatalf("%d records reached the weighted window of %d", sent, 200*50)
			}
			t.Logf("%d of %d records sent, %d rows, %d late", sent, 200*50, len(outPlain.out), plain.Late())
		})
	}
}

func TestCountCombinerPassesWhatItCannotCombine(t *testing.T) {
	c, err := NewCountCombiner(CountCombinerConfig{Windowing: Tumbling(10), MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		key  uint64
		r    record.Record
		want bool
	}{
		{"first of a pane", 1, rec(5, 1), true},
		{"same key and pane", 1, rec(9, 1), true},
		{"another pane", 1, rec(12, 1), true},
		{"a third entry is over MaxEntries", 2, rec(5, 2), false},
		{"an invalid event time", 1, rec(MaxEventTime+1, 1), false},
	} {
		if got := c.Add(tc.key, &tc.r); got != tc.want {
			t.Errorf("%s: taken %v, want %v", tc.name, got, tc.want)
		}
	}
	var got []string
	before := c.Combined()
	c.Flush(func(key uint64, r *record.Record, w int64) {
		got = append(got, show([]record.Record{{Time: r.Time, Values: append(slices.Clone(r.Values), record.Int(w))}})...)
	})
	if want := []string{"0:1,2", "10:1,1"}; !slices.Equal(got, want) {
		t.Fatalf("flushed %q, want %q (the pane's start as time, the weight last)", got, want)
	}
	// Combined backs a counter metric: it counts the one record that
	// joined an entry, before the flush as after it.
	if c.Len() != 0 || c.Combined() != 1 || before != 1 {
		t.Fatalf("%d combined before the flush, %d after, %d entries left; want 1, 1 and 0", before, c.Combined(), c.Len())
	}
	c.Advance(19)
	if r := rec(15, 1); c.Add(1, &r) {
		t.Error("a record whose window ended at the watermark sent was taken")
	}
	if r := rec(20, 1); !c.Add(1, &r) {
		t.Error("a record of an open window was not taken")
	}
	if _, err := NewCountCombiner(CountCombinerConfig{Windowing: Session(10)}); err == nil {
		t.Error("a combiner for session windows was made")
	}
}

func TestWindowAggregateWeights(t *testing.T) {
	count := []Agg{{Kind: AggCount}}
	for _, tc := range []struct {
		name string
		cfg  WindowConfig
	}{
		{"session windows", WindowConfig{Windowing: Session(10), Aggs: count, Weighted: true, WeightField: 1}},
		{"allowed lateness", WindowConfig{Windowing: Tumbling(10), Aggs: count, AllowedLateness: 5, Weighted: true, WeightField: 1}},
		{"a sum", WindowConfig{Windowing: Tumbling(10), Aggs: []Agg{{Kind: AggSum, Field: 0}}, Weighted: true, WeightField: 1}},
		{"a count of a field", WindowConfig{Windowing: Tumbling(10), Aggs: []Agg{{Kind: AggCount, Field: 0, NonNull: true}}, Weighted: true, WeightField: 1}},
	} {
		if _, err := NewWindowAggregate(tc.cfg); err == nil {
			t.Errorf("%s: a weighted window aggregate was made", tc.name)
		}
	}
	op, err := NewWindowAggregate(WindowConfig{Windowing: Tumbling(10), Key: KeyOf(0), KeyFields: []int{0}, Aggs: count, Weighted: true, WeightField: 1})
	if err != nil {
		t.Fatal(err)
	}
	out := &recorder{}
	run(t, op, out, B(rec(1, 7, 3), rec(2, 7, 0), rec(3, 7, "x"), rec(4, 7), rec(5, 7, 4)), W(9), B(rec(8, 7, 5)))
	checkRows(t, "weighted counts", out.out, []string{"9:7,0,10,7"})
	if op.Late() != 5 {
		t.Errorf("a late record of weight 5 counted as %d late records, want 5", op.Late())
	}
	if got := sorted(show(out.side[DefaultErrorSide])); !slices.Equal(got, []string{"2:7", "3:7", "4:7"}) {
		t.Fatalf("error side output %q, want the three records without a positive weight, shown without it", got)
	}
}
