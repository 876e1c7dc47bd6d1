package operator

import (
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

// Join test rows: left (id, name), right (ref, amount); keys are field 0.
var joinKeys = JoinConfig{LeftKey: KeyOf(0), RightKey: KeyOf(0)}

func TestWindowJoin(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   WindowJoinConfig
		steps []step
		want  []string
		late  int64
	}{{
		name: "pairs in the same tumbling window, emitted when both watermarks pass",
		cfg:  WindowJoinConfig{JoinConfig: joinKeys, Windowing: Tumbling(10)},
		steps: []step{
			BI(Left, rec(1, 7, "a"), rec(2, 8, "b"), rec(12, 7, "c")),
			BI(Right, rec(5, 7, 100), rec(6, 7, 101), rec(3, 9, 102), rec(11, 8, 103)),
			WI(Left, 20),                             // right still holds back
			WI(Right, 9),                             // window [0,10) fires
			BI(Right, rec(4, 7, 1), rec(15, 7, 104)), // 4 is late
			F(),
		},
		want: []string{"9:7,a,7,100,0,10", "9:7,a,7,101,0,10", "19:7,c,7,104,10,20"},
		late: 1,
	}, {
		name: "sliding windows join a pair once per shared window",
		cfg:  WindowJoinConfig{JoinConfig: joinKeys, Windowing: Sliding(10, 5)},
		steps: []step{
			BI(Left, rec(6, 1, "x")),
			BI(Right, rec(8, 1, 2)),
			F(),
		},
		want: []string{"9:1,x,1,2,0,10", "14:1,x,1,2,5,15"},
	}, {
		name: "semi join emits each left row once per window",
		cfg:  WindowJoinConfig{JoinConfig: joinKeys, Windowing: Tumbling(10), Semi: true},
		steps: []step{
			BI(Left, rec(1, 1, "p"), rec(2, 2, "q")),
			BI(Right, rec(3, 1, 0), rec(4, 1, 0), rec(5, 1, 0)),
			F(),
		},
		want: []string{"9:1,p,0,10"},
	}, {
		name: "records within the allowed lateness emit their new pairs at once",
		cfg:  WindowJoinConfig{JoinConfig: joinKeys, Windowing: Tumbling(10), AllowedLateness: 10},
		steps: []step{
			BI(Left, rec(1, 7, "a")), BI(Right, rec(2, 7, 100)),
			WI(Left, 9), WI(Right, 9),
			BI(Right, rec(3, 7, 101)),
			BI(Left, rec(4, 7, "b")),
			WI(Left, 19), WI(Right, 19), // [0,10) dropped at 9+10
			BI(Left, rec(5, 7, "c")), // late
			F(),
		},
		want: []string{"9:7,a,7,100,0,10", "9:7,a,7,101,0,10", "9:7,b,7,100,0,10", "9:7,b,7,101,0,10"},
		late: 1,
	}, {
		name: "semi join within the allowed lateness emits left rows at their first match",
		cfg:  WindowJoinConfig{JoinConfig: joinKeys, Windowing: Tumbling(10), Semi: true, AllowedLateness: 10},
		steps: []step{
			BI(Left, rec(1, 1, "p"), rec(2, 2, "q")), BI(Right, rec(3, 1, 0)),
			WI(Left, 9), WI(Right, 9),
			BI(Right, rec(4, 2, 0)), // q's first match
			BI(Right, rec(5, 2, 0)), // q already emitted
			BI(Left, rec(6, 2, "r")),
			F(),
		},
		want: []string{"9:1,p,0,10", "9:2,q,0,10", "9:2,r,0,10"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			op, err := NewWindowJoin(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			var out recorder
			run(t, op, &out, tc.steps...)
			checkRows(t, "results", out.out, tc.want)
			if op.Late() != tc.late {
				t.Errorf("late = %d, want %d", op.Late(), tc.late)
			}
			if op.Keys() != 0 {
				t.Errorf("%d keys hold state after Finish", op.Keys())
			}
		})
	}
	if _, err := NewWindowJoin(WindowJoinConfig{JoinConfig: joinKeys, Windowing: Session(5)}); err == nil {
		t.Error("window join accepted session windows")
	}
}

func TestJoinsInBothArrivalOrders(t *testing.T) {
	left := []record.Record{rec(10, 1, "a"), rec(20, 2, "b"), rec(30, 1, "c")}
	right := []record.Record{rec(12, 1, 100), rec(25, 2, 200), rec(50, 1, 300), rec(5, 3, 400)}
	for _, tc := range []struct {
		name string
		make func() (Operator, error)
		want []string
	}{{
		name: "regular join",
		make: func() (Operator, error) { return NewRegularJoin(joinKeys) },
		want: []string{"12:1,a,1,100", "25:2,b,2,200", "30:1,c,1,100", "50:1,a,1,300", "50:1,c,1,300"},
	}, {
		name: "interval join [0,5]",
		make: func() (Operator, error) {
			return NewIntervalJoin(IntervalJoinConfig{JoinConfig: joinKeys, Lower: 0, Upper: 5})
		},
		want: []string{"12:1,a,1,100", "25:2,b,2,200"},
	}, {
		name: "interval join [-20,20]",
		make: func() (Operator, error) {
			return NewIntervalJoin(IntervalJoinConfig{JoinConfig: joinKeys, Lower: -20, Upper: 20})
		},
		want: []string{"12:1,a,1,100", "25:2,b,2,200", "30:1,c,1,100", "50:1,c,1,300"},
	}} {
		for _, order := range []string{"left first", "right first", "interleaved"} {
			t.Run(tc.name+"/"+order, func(t *testing.T) {
				op, err := tc.make()
				if err != nil {
					t.Fatal(err)
				}
				var steps []step
				switch order {
				case "left first":
					steps = []step{BI(Left, left...), BI(Right, right...)}
				case "right first":
					steps = []step{BI(Right, right...), BI(Left, left...)}
				default:
					for i := 0; i < len(right); i++ {
						if i < len(left) {
							steps = append(steps, BI(Left, left[i]))
						}
						steps = append(steps, BI(Right, right[i]))
					}
				}
				var out recorder
				run(t, op, &out, append(steps, F())...)
				got := sorted(show(out.out))
				if len(got) != len(tc.want) {
					t.Fatalf("got %q, want %q", got, tc.want)
				}
				for i := range got {
					if got[i] != tc.want[i] {
						t.Fatalf("got %q, want %q", got, tc.want)
					}
				}
			})
		}
	}
}

func TestIntervalJoinLateAndCleanup(t *testing.T) {
	op, err := NewIntervalJoin(IntervalJoinConfig{JoinConfig: joinKeys, Lower: -5, Upper: 5})
	if err != nil {
		t.Fatal(err)
	}
	op.cfg.LateSide = "late"
	var out recorder
	run(t, op, &out,
		BI(Left, rec(10, 1, "a")),
		WI(Left, 14), WI(Right, 14),
		BI(Right, rec(15, 1, 0)),    // 15 <= 10+5: joins
		WI(Left, 15), WI(Right, 15), // left row expires (10+5 <= 15), right row too (15+5 > 15: no)
		BI(Right, rec(12, 1, 1)), // late
	)
	checkRows(t, "results", out.out, []string{"15:1,a,1,0"})
	checkRows(t, "late", out.side["late"], []string{"12:1,1"})
	js := op.store.Get(1)
	if js == nil || len(js.parts[0].left) != 0 || len(js.parts[0].right) != 1 {
		t.Fatalf("state after watermark 15: %+v, want no left rows and one right row", js)
	}
	run(t, op, &out, WI(Left, 20), WI(Right, 20))
	if op.Keys() != 0 {
		t.Fatalf("%d keys hold state after every row expired", op.Keys())
	}
}

func TestJoinConfigRefusals(t *testing.T) {
	for name, err := range map[string]error{
		"no keys": func() error { _, err := NewRegularJoin(JoinConfig{}); return err }(),
		"lower > upper": func() error {
			_, err := NewIntervalJoin(IntervalJoinConfig{JoinConfig: joinKeys, Lower: 5, Upper: 1})
			return err
		}(),
		"huge interval": func() error {
			_, err := NewIntervalJoin(IntervalJoinConfig{JoinConfig: joinKeys, Upper: MaxWindowSpan + 1})
			return err
		}(),
		"bad key range": func() error {
			_, err := NewRegularJoin(JoinConfig{LeftKey: KeyOf(0), RightKey: KeyOf(0), MaxParallelism: 4, KeyGroups: rangeOf(3, 9)})
			return err
		}(),
		"session window": func() error {
			_, err := NewWindowJoin(WindowJoinConfig{JoinConfig: joinKeys, Windowing: Session(5)})
			return err
		}(),
	} {
		if err == nil {
			t.Errorf("%s: config accepted", name)
		}
	}
	op, _ := NewRegularJoin(joinKeys)
	if err := op.ProcessBatch(2, &record.Batch{Records: []record.Record{rec(1, 1)}}, &recorder{}); err == nil {
		t.Error("a join accepted input 2")
	}
}

func TestJoinsRouteBadTimesToErrors(t *testing.T) {
	op, _ := NewRegularJoin(joinKeys)
	var out recorder
	run(t, op, &out, BI(Left, rec(-MaxEventTime-1, 1, "a")), BI(Right, rec(1, 1, 2)))
	if len(out.out) != 0 || len(out.side[DefaultErrorSide]) != 1 || op.Errors() != 1 {
		t.Fatalf("results %v, errors %v (count %d): want the out-of-range record on the error output only", show(out.out), show(out.side[DefaultErrorSide]), op.Errors())
	}
}

func TestJoinWatermarkIsMinimumOfInputs(t *testing.T) {
	op, _ := NewRegularJoin(joinKeys)
	var out recorder
	run(t, op, &out, WI(Left, 10), WI(Right, 5), WI(Right, 20), WI(Left, 30), WI(Left, IdleWatermark), WI(Right, 25))
	want := []int64{5, 10, 20, 25}
	if len(out.wms) != len(want) {
		t.Fatalf("watermarks %v, want %v", out.wms, want)
	}
	for i := range want {
		if out.wms[i] != want[i] {
			t.Fatalf("watermarks %v, want %v", out.wms, want)
		}
	}
}
