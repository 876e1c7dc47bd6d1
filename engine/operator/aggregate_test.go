package operator

import (
	"math"
	"testing"
)

func TestWindowAggregate(t *testing.T) {
	count := []Agg{{Kind: AggCount}}
	for _, tc := range []struct {
		name  string
		cfg   WindowConfig
		steps []step
		want  []string
		late  int64
		side  []string // records on the "late" side output
	}{{
		name: "tumbling count per key fires when the watermark reaches end-1",
		cfg:  WindowConfig{Windowing: Tumbling(10), Key: KeyOf(0), KeyFields: []int{0}, Aggs: count},
		steps: []step{
			B(rec(0, 1), rec(9, 1), rec(3, 2), rec(10, 1)),
			W(8), // nothing yet: 9 may still come
			W(9),
			F(),
		},
		want: []string{"9:1,0,10,2", "9:2,0,10,1", "19:1,10,20,1"},
	}, {
		name:  "windows are aligned to the epoch, negative times included",
		cfg:   WindowConfig{Windowing: Tumbling(10), Aggs: count},
		steps: []step{B(rec(-1), rec(-10), rec(-11), rec(25)), F()},
		want:  []string{"-11:-20,-10,1", "-1:-10,0,2", "29:20,30,1"},
	}, {
		name:  "empty windows emit nothing",
		cfg:   WindowConfig{Windowing: Tumbling(10), Aggs: count},
		steps: []step{B(rec(5)), W(100), B(rec(105)), F()},
		want:  []string{"9:0,10,1", "109:100,110,1"},
	}, {
		name:  "late records are dropped and counted",
		cfg:   WindowConfig{Windowing: Tumbling(10), Aggs: count},
		steps: []step{B(rec(5)), W(9), B(rec(7), rec(12)), F()},
		want:  []string{"9:0,10,1", "19:10,20,1"},
		late:  1,
	}, {
		name:  "late records go to the named side output",
		cfg:   WindowConfig{Windowing: Tumbling(10), Aggs: count, LateSide: "late"},
		steps: []step{B(rec(5)), W(9), B(rec(7, 42)), F()},
		want:  []string{"9:0,10,1"},
		late:  1,
		side:  []string{"7:42"},
	}, {
		name: "allowed lateness re-fires with the update, then drops",
		cfg:  WindowConfig{Windowing: Tumbling(10), Aggs: count, AllowedLateness: 5},
		steps: []step{
			B(rec(5)), W(9), // fires count 1
			B(rec(6)), // within lateness: fires count 2
			W(14),     // window state dropped at end-1+5
			B(rec(7)), // too late
			F(),
		},
		want: []string{"9:0,10,1", "9:0,10,2"},
		late: 1,
	}, {
		name: "allowed lateness: a late record opening a new window fires at once",
		cfg:  WindowConfig{Windowing: Tumbling(10), Aggs: count, AllowedLateness: 25},
		steps: []step{
			B(rec(25)), W(29),
			B(rec(3)), // window [0,10) never existed; end-1+20 > 29
			F(),
		},
		want: []string{"29:20,30,1", "9:0,10,1"},
	}, {
		name:  "sliding windows overlap",
		cfg:   WindowConfig{Windowing: Sliding(10, 5), Aggs: count},
		steps: []step{B(rec(7), rec(12)), F()},
		want:  []string{"9:0,10,1", "14:5,15,2", "19:10,20,1"},
	}, {
		name:  "sliding: a record late for one window still counts in the next",
		cfg:   WindowConfig{Windowing: Sliding(10, 5), Aggs: count},
		steps: []step{B(rec(2)), W(9), B(rec(7)), F()},
		want:  []string{"4:-5,5,1", "9:0,10,1", "14:5,15,1"},
		late:  0,
	}, {
		name: "sliding with allowed lateness re-fires every window a late record is in",
		cfg:  WindowConfig{Windowing: Sliding(10, 5), Aggs: count, AllowedLateness: 10},
		steps: []step{
			B(rec(7)), W(14), // fires [0,10) and [5,15)
			B(rec(8)), // re-fires both
			W(20),     // [0,10) is gone (9+10 <= 20), [5,15) is not
			B(rec(6)), // counts in [5,15) only: not late
			W(24),     // [5,15) is gone
			B(rec(9)), // late
			F(),
		},
		want: []string{"9:0,10,1", "14:5,15,1", "9:0,10,2", "14:5,15,2", "14:5,15,3"},
		late: 1,
	}, {
		name: "sliding: windows fire in order of their end, across keys",
		cfg:  WindowConfig{Windowing: Sliding(20, 5), Key: KeyOf(0), KeyFields: []int{0}, Aggs: []Agg{{Kind: AggSum, Field: 1}}},
		steps: []step{
			B(rec(3, 2, 10), rec(12, 1, 1), rec(4, 1, 100)),
			W(14),
			B(rec(17, 2, 5)),
			F(),
		},
		want: []string{
			"4:1,-15,5,100", "4:2,-15,5,10",
			"9:1,-10,10,100", "9:2,-10,10,10",
			"14:1,-5,15,101", "14:2,-5,15,10",
			"19:1,0,20,101", "19:2,0,20,15",
			"24:1,5,25,1", "24:2,5,25,5",
			"29:1,10,30,1", "29:2,10,30,5",
			"34:2,15,35,5",
		},
	}, {
		name: "session windows merge when a record bridges two sessions",
		cfg:  WindowConfig{Windowing: Session(10), Key: KeyOf(0), KeyFields: []int{0}, Aggs: count},
		steps: []step{
			B(rec(0, 1), rec(18, 1), rec(50, 2)),
			B(rec(9, 1)), // [9,19) touches [0,10) and [18,28)
			F(),
		},
		want: []string{"27:1,0,28,3", "59:2,50,60,1"},
	}, {
		name:  "sessions stay apart when the gap is exceeded",
		cfg:   WindowConfig{Windowing: Session(10), Aggs: count},
		steps: []step{B(rec(0), rec(11)), W(10), B(rec(30)), F()},
		want:  []string{"9:0,10,1", "20:11,21,1", "39:30,40,1"},
	}, {
		name: "session within allowed lateness grows, fires again, then is dropped",
		cfg:  WindowConfig{Windowing: Session(10), Aggs: count, AllowedLateness: 20},
		steps: []step{
			B(rec(0)), W(9), // fires [0,10)
			B(rec(5)), // extends the session to [0,15): fires when the watermark reaches 14
			W(14),
			W(40),     // cleaned up at 14+20
			B(rec(3)), // late
			F(),
		},
		want: []string{"9:0,10,1", "14:0,15,2"},
		late: 1,
	}, {
		name:  "late session record is dropped",
		cfg:   WindowConfig{Windowing: Session(10), Aggs: count},
		steps: []step{B(rec(100)), W(200), B(rec(150)), F()},
		want:  []string{"109:100,110,1"},
		late:  1,
	}, {
		name: "scalar aggregates with nulls and floats",
		cfg: WindowConfig{Windowing: Tumbling(10), Aggs: []Agg{
			{Kind: AggCount}, {Kind: AggSum, Field: 0}, {Kind: AggMin, Field: 0}, {Kind: AggMax, Field: 0}, {Kind: AggAvg, Field: 0},
			{Kind: AggSum, Field: 1}, {Kind: AggMax, Field: 2}, {Kind: AggSum, Field: 3},
		}},
		steps: []step{B(rec(1, 4, 1.5, "b", nil), rec(2, -2, 2, "c", nil), rec(3, nil, 1, "a", nil)), F()},
		want:  []string{"9:0,10,3,2,-2,4,1,4.5,c,null"},
	}, {
		name: "max-rows keeps every row equal to the maximum",
		cfg:  WindowConfig{Windowing: Tumbling(10), Aggs: []Agg{{Kind: AggMaxRows, Field: 1}}},
		steps: []step{
			B(rec(1, 1, 5), rec(2, 2, 7), rec(3, 3, 7), rec(4, 4, 6), rec(12, 5, 1)),
			F(),
		},
		want: []string{"9:2,7,0,10", "9:3,7,0,10", "19:5,1,10,20"},
	}, {
		name: "top-n by arrival among ties",
		cfg:  WindowConfig{Windowing: Tumbling(10), Aggs: []Agg{{Kind: AggTopN, N: 2, OrderBy: []SortKey{{Field: 1, Desc: true}}, Rank: true}}},
		steps: []step{
			B(rec(1, 1, 5), rec(2, 2, 7), rec(3, 3, 5), rec(4, 4, 1)),
			F(),
		},
		want: []string{"9:2,7,0,10,1", "9:1,5,0,10,2"},
	}, {
		name: "top-n with ties keeps all rows tied with the n-th, ranked like RANK()",
		cfg:  WindowConfig{Windowing: Tumbling(10), Aggs: []Agg{{Kind: AggTopN, N: 2, OrderBy: []SortKey{{Field: 1, Desc: true}}, WithTies: true, Rank: true}}},
		steps: []step{
			B(rec(1, 1, 5), rec(2, 2, 7), rec(3, 3, 5), rec(4, 4, 1), rec(5, 5, 5)),
			F(),
		},
		want: []string{"9:2,7,0,10,1", "9:1,5,0,10,2", "9:3,5,0,10,2", "9:5,5,0,10,2"},
	}, {
		name: "top-n ascending",
		cfg:  WindowConfig{Windowing: Tumbling(10), Aggs: []Agg{{Kind: AggTopN, N: 1, OrderBy: []SortKey{{Field: 1}}, Rank: true}}},
		steps: []step{
			B(rec(1, 1, 5), rec(2, 2, 7), rec(3, 3, 1)),
			F(),
		},
		want: []string{"9:3,1,0,10,1"},
	}, {
		name: "top-n orders by several keys, nulls last",
		cfg: WindowConfig{Windowing: Tumbling(10), Aggs: []Agg{{Kind: AggTopN, N: 3,
			OrderBy: []SortKey{{Field: 1, Desc: true}, {Field: 0}}}}},
		steps: []step{B(rec(1, 5, 2), rec(2, 3, 2), rec(3, 4, nil), rec(4, 1, 9)), F()},
		want:  []string{"9:1,9,0,10", "9:3,2,0,10", "9:5,2,0,10"},
	}, {
		name: "count of non-null values, window start omitted",
		cfg: WindowConfig{Windowing: Tumbling(10), OmitStart: true,
			Aggs: []Agg{{Kind: AggCount}, {Kind: AggCount, Field: 0, NonNull: true}}},
		steps: []step{B(rec(1, nil), rec(2, 3)), F()},
		want:  []string{"9:10,2,1"},
	}, {
		name: "session max-rows merge keeps the larger maximum",
		cfg:  WindowConfig{Windowing: Session(10), Aggs: []Agg{{Kind: AggMaxRows, Field: 0}}},
		steps: []step{
			B(rec(0, 3), rec(18, 9), rec(9, 3)),
			F(),
		},
		want: []string{"27:9,0,28"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			op, err := NewWindowAggregate(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			var out recorder
			run(t, op, &out, tc.steps...)
			checkRows(t, "results", out.out, tc.want)
			if op.Late() != tc.late {
				t.Errorf("late = %d, want %d", op.Late(), tc.late)
			}
			checkRows(t, "late side output", out.side["late"], tc.side)
			if n := op.Keys(); n != 0 {
				t.Errorf("%d keys still hold state after Finish", n)
			}
			if l := len(out.wms); l == 0 || out.wms[l-1] != FinalWatermark {
				t.Errorf("watermarks %v do not end with the final watermark", out.wms)
			}
		})
	}
}

func TestWindowAggregateErrorsAndConfig(t *testing.T) {
	op, err := NewWindowAggregate(WindowConfig{Windowing: Tumbling(10), Aggs: []Agg{{Kind: AggSum, Field: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	var out recorder
	run(t, op, &out, B(rec(1, 1), rec(2, 1, "x"), rec(3, 1, 4), rec(math.MaxInt64-1, 1, 1)), F())
	checkRows(t, "results", out.out, []string{"9:0,10,4"})
	checkRows(t, "errors", out.side[DefaultErrorSide], []string{"1:1", "2:1,x", "9223372036854775806:1,1"})
	if op.Errors() != 3 {
		t.Errorf("errors = %d, want 3", op.Errors())
	}
	for name, cfg := range map[string]WindowConfig{
		"no aggs":       {Windowing: Tumbling(10)},
		"bad size":      {Windowing: Tumbling(0), Aggs: []Agg{{Kind: AggCount}}},
		"bad slide":     {Windowing: Sliding(10, 3), Aggs: []Agg{{Kind: AggCount}}},
		"rows + scalar": {Windowing: Tumbling(10), Aggs: []Agg{{Kind: AggCount}, {Kind: AggMaxRows}}},
		"top-n zero":    {Windowing: Tumbling(10), Aggs: []Agg{{Kind: AggTopN}}},
		"neg lateness":  {Windowing: Tumbling(10), Aggs: []Agg{{Kind: AggCount}}, AllowedLateness: -1},
		"huge window":   {Windowing: Tumbling(MaxWindowSpan + 1), Aggs: []Agg{{Kind: AggCount}}},
		"bad range":     {Windowing: Tumbling(10), Aggs: []Agg{{Kind: AggCount}}, MaxParallelism: 4, KeyGroups: rangeOf(2, 9)},
	} {
		if _, err := NewWindowAggregate(cfg); err == nil {
			t.Errorf("%s: config accepted", name)
		}
	}
}
