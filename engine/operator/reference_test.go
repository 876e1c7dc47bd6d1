package operator

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

// randomSteps returns batches of records (key, value) with out-of-order times
// and watermarks that sometimes jump, so some records are late.
func randomSteps(seed uint64, n, keys int) []step {
	x := seed
	next := func(m int) int {
		x = x*6364136223846793005 + 1442695040888963407
		return int(x>>33) % m
	}
	var steps []step
	var t, wm int64
	for i := 0; i < n; i++ {
		var recs []record.Record
		for j := next(6); j > 0; j-- {
			recs = append(recs, rec(t-int64(next(40)), next(keys), next(50)-10))
		}
		steps = append(steps, B(recs...))
		t += int64(next(8))
		if next(3) == 0 {
			wm = max(wm, t-int64(next(30)))
			steps = append(steps, W(wm))
		}
	}
	return append(steps, F())
}

// naiveWindows computes, by brute force, the final result of every window:
// a record counts in a window if, when it arrived, the window's end-1 plus
// the allowed lateness was above the watermark.
func naiveWindows(steps []step, size, slide, lateness int64) map[string][]string {
	type acc struct {
		count, sum, max int64
		rows            []record.Record
	}
	windows := map[string]*acc{}
	wm := int64(math.MinInt64)
	for _, s := range steps {
		if s.isWM {
			wm = max(wm, s.wm)
			continue
		}
		for _, r := range s.recs {
			for start := r.Time - ((r.Time%slide)+slide)%slide; start > r.Time-size; start -= slide {
				end := start + size
				if end-1+lateness <= wm {
					continue
				}
				k := fmt.Sprintf("%d,%d,%d", r.Values[0].I, start, end)
				a := windows[k]
				if a == nil {
					a = &acc{max: math.MinInt64}
					windows[k] = a
				}
				v := r.Values[1].I
				a.count++
				a.sum += v
				if v > a.max {
					a.max, a.rows = v, nil
				}
				if v == a.max {
					a.rows = append(a.rows, r)
				}
			}
		}
	}
	out := map[string][]string{}
	for k, a := range windows {
		var start, end, key int64
		fmt.Sscanf(k, "%d,%d,%d", &key, &start, &end)
		out[k] = []string{fmt.Sprintf("%d:%d,%d,%d,%d,%d,%d", end-1, key, start, end, a.count, a.sum, a.max)}
		var rows []string
		for _, r := range a.rows {
			rows = append(rows, show([]record.Record{{Time: end - 1, Values: append(slices.Clone(r.Values), record.Int(start), record.Int(end))}})...)
		}
		out[k+"/rows"] = rows
	}
	return out
}

func TestWindowAggregateAgainstBruteForce(t *testing.T) {
	for _, tc := range []struct {
		size, slide, lateness int64
	}{{10, 10, 0}, {10, 10, 15}, {20, 5, 0}, {20, 5, 7}, {30, 10, 100}} {
		for seed := uint64(1); seed <= 5; seed++ {
			t.Run(fmt.Sprintf("size%d-slide%d-late%d-seed%d", tc.size, tc.slide, tc.lateness, seed), func(t *testing.T) {
				steps := randomSteps(seed, 300, 7)
				wd := Sliding(tc.size, tc.slide)
				if tc.size == tc.slide {
					wd = Tumbling(tc.size)
				}
				scalar, err := NewWindowAggregate(WindowConfig{Windowing: wd, Key: KeyOf(0), KeyFields: []int{0},
					Aggs: []Agg{{Kind: AggCount}, {Kind: AggSum, Field: 1}, {Kind: AggMax, Field: 1}}, AllowedLateness: tc.lateness})
				if err != nil {
					t.Fatal(err)
				}
				rows, err := NewWindowAggregate(WindowConfig{Windowing: wd, Key: KeyOf(0),
					Aggs: []Agg{{Kind: AggMaxRows, Field: 1}}, AllowedLateness: tc.lateness})
				if err != nil {
					t.Fatal(err)
				}
				// Feed one record at a time: then a window fires at most once per
				// step, and its last firing's rows are its final result.
				got := map[string][]string{}
				for _, st := range steps {
					single := []step{st}
					if !st.isWM && !st.finish {
						single = nil
						for _, r := range st.recs {
							single = append(single, B(r))
						}
					}
					for _, one := range single {
						var so, ro recorder
						run(t, scalar, &so, one)
						run(t, rows, &ro, one)
						for _, r := range so.out {
							k := fmt.Sprintf("%d,%d,%d", r.Values[0].I, r.Values[1].I, r.Values[2].I)
							got[k] = show([]record.Record{r})
						}
						fired := map[string]bool{}
						for _, r := range ro.out {
							n := len(r.Values)
							k := fmt.Sprintf("%d,%d,%d/rows", r.Values[0].I, r.Values[n-2].I, r.Values[n-1].I)
							if !fired[k] {
								got[k], fired[k] = nil, true
							}
							got[k] = append(got[k], show([]record.Record{r})...)
						}
					}
				}
				want := naiveWindows(steps, tc.size, tc.slide, tc.lateness)
				for k, w := range want {
					if !slices.Equal(got[k], w) {
						t.Errorf("window %s: got %q, want %q", k, got[k], w)
					}
				}
				for k := range got {
					if _, ok := want[k]; !ok {
						t.Errorf("window %s emitted %q but holds no record", k, got[k])
					}
				}
			})
		}
	}
}

// Nexmark q5's shape: count per key over sliding windows, then per window the
// keys whose count equals the window's maximum (a tumbling window as long as
// the slide over the counts, each timed at its window's end - 1).
func TestSlidingCountThenMaxRowsLikeQ5(t *testing.T) {
	const size, slide = 20, 5
	for seed := uint64(1); seed <= 5; seed++ {
		steps := randomSteps(seed, 300, 9)
		counts, _ := NewWindowAggregate(WindowConfig{Windowing: Sliding(size, slide), Key: KeyOf(0), KeyFields: []int{0},
			Aggs: []Agg{{Kind: AggCount}}})
		hottest, _ := NewWindowAggregate(WindowConfig{Windowing: Tumbling(slide), Aggs: []Agg{{Kind: AggMaxRows, Field: 3}}})
		var final recorder
		for _, st := range steps {
			var mid recorder
			run(t, counts, &mid, st)
			run(t, hottest, &final, B(mid.out...))
			for _, wm := range mid.wms {
				run(t, hottest, &final, W(wm))
			}
			if st.finish {
				run(t, hottest, &final, F())
			}
		}
		var got []string
		for _, r := range final.out {
			got = append(got, fmt.Sprintf("key %d window [%d,%d) count %d", r.Values[0].I, r.Values[1].I, r.Values[2].I, r.Values[3].I))
		}
		want := naiveWindows(steps, size, slide, 0)
		best := map[[2]int64]int64{}
		type kw struct{ key, start, end, count int64 }
		var all []kw
		for k, v := range want {
			if strings.HasSuffix(k, "/rows") {
				continue
			}
			var x kw
			fmt.Sscanf(k, "%d,%d,%d", &x.key, &x.start, &x.end)
			var tm, key, s, e, sum, mx int64
			fmt.Sscanf(v[0], "%d:%d,%d,%d,%d,%d,%d", &tm, &key, &s, &e, &x.count, &sum, &mx)
			all = append(all, x)
			w := [2]int64{x.start, x.end}
			best[w] = max(best[w], x.count)
		}
		var wantRows []string
		for _, x := range all {
			if x.count == best[[2]int64{x.start, x.end}] {
				wantRows = append(wantRows, fmt.Sprintf("key %d window [%d,%d) count %d", x.key, x.start, x.end, x.count))
			}
		}
		if g, w := sorted(got), sorted(wantRows); !slices.Equal(g, w) || len(w) == 0 {
			t.Fatalf("seed %d: got %d rows, want %d:\n got %q\nwant %q", seed, len(g), len(w), g, w)
		}
	}
}
