package operator

import (
	"errors"
	"slices"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

func TestStatelessOperators(t *testing.T) {
	double, _ := NewMap(MapConfig{Fn: func(dst []record.Value, r *record.Record) ([]record.Value, error) {
		if r.Values[0].T != record.TypeInt {
			return dst, errors.New("not an int")
		}
		return append(dst, record.Int(r.Values[0].I*2), r.Values[0]), nil
	}})
	even, _ := NewFilter(FilterConfig{Pred: func(r *record.Record) (bool, error) {
		if r.Values[0].T != record.TypeInt {
			return false, errors.New("not an int")
		}
		return r.Values[0].I%2 == 0, nil
	}, ErrorSide: "bad"})
	repeat, _ := NewFlatMap(FlatMapConfig{Fn: func(r *record.Record, emit func(record.Record)) error {
		if r.Values[0].T != record.TypeInt {
			return errors.New("not an int")
		}
		for i := int64(0); i < r.Values[0].I; i++ {
			emit(record.Record{Time: r.Time + i, Values: []record.Value{record.Int(i)}})
		}
		return nil
	}})
	keyBy, _ := NewKeyBy(KeyOf(0, 1))
	project, _ := NewProject(1, 0, 5)
	input := []record.Record{rec(1, 3, "x"), rec(2, 2, "y"), rec(3, "oops", "z"), rec(4, 0, "w")}
	for _, tc := range []struct {
		name      string
		op        Operator
		want      []string
		errSide   string
		wantError []string
	}{
		{"map", double, []string{"1:6,3", "2:4,2", "4:0,0"}, DefaultErrorSide, []string{"3:oops,z"}},
		{"filter", even, []string{"2:2,y", "4:0,w"}, "bad", []string{"3:oops,z"}},
		{"project", project, []string{"1:x,3,null", "2:y,2,null", "3:z,oops,null", "4:w,0,null"}, DefaultErrorSide, nil},
		{"flat-map", repeat, []string{"1:0", "2:1", "3:2", "2:0", "3:1"}, DefaultErrorSide, []string{"3:oops,z"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out recorder
			run(t, tc.op, &out, B(input...), W(7), F())
			checkRows(t, "results", out.out, tc.want)
			checkRows(t, "errors", out.side[tc.errSide], tc.wantError)
			if !slices.Equal(out.wms, []int64{7}) {
				t.Errorf("watermarks %v, want [7]", out.wms)
			}
		})
	}
	var out recorder
	run(t, keyBy, &out, B(input[:2]...))
	for i, r := range out.out {
		want := HashValues(input[i].Values, []int{0, 1})
		if got := uint64(r.Values[len(r.Values)-1].I); got != want || len(r.Values) != 3 {
			t.Errorf("key-by row %d: %v, want trailing key %#x", i, show(out.out[i:i+1]), want)
		}
	}
}

func TestKeyOf(t *testing.T) {
	a, b := rec(0, 42, "s"), rec(0, "42", "s")
	if KeyOf(0)(&a) != 42 {
		t.Errorf("KeyOf(int field) = %d, want the value 42", KeyOf(0)(&a))
	}
	if KeyOf(0)(&a) == KeyOf(0)(&b) {
		t.Error("int 42 and string \"42\" get the same key")
	}
	c, d := rec(0, "ab", "c"), rec(0, "a", "bc")
	if KeyOf(0, 1)(&c) == KeyOf(0, 1)(&d) {
		t.Error(`("ab","c") and ("a","bc") get the same key`)
	}
	short := rec(0)
	if KeyOf(3)(&short) != KeyOf(0)(&record.Record{Values: []record.Value{{}}}) || KeyOf(1, 4)(&a) == 0 {
		t.Error("a missing field does not key like null")
	}
	if KeyOf()(&a) != 0 {
		t.Error("KeyOf() is not constant 0")
	}
}

func TestUnionWatermarkAndIdleness(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []step
		want  []int64
	}{
		{"minimum of inputs", []step{WI(0, 10), WI(1, 5), WI(2, 7), WI(1, 20), WI(2, 30)}, []int64{5, 7, 10}},
		{"never decreases", []step{WI(0, 10), WI(1, 10), WI(2, 10), WI(0, 3), WI(1, 4)}, []int64{10}},
		{"idle input stops holding back", []step{WI(0, 10), WI(1, 5), WI(2, 50), WI(1, IdleWatermark)}, []int64{5, 10}},
		{"all idle, then active again", []step{WI(0, 10), WI(1, 10), WI(2, 10), WI(0, IdleWatermark), WI(1, IdleWatermark), WI(2, IdleWatermark), WI(2, 12)}, []int64{10, IdleWatermark, 12}},
		{"resumed input holds back again", []step{WI(0, 10), WI(1, IdleWatermark), WI(2, 50), WI(1, 20), WI(0, 40)}, []int64{10, 20}},
		{"finish emits the final watermark", []step{WI(0, 10), F()}, []int64{FinalWatermark}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, _ := NewUnion(3)
			var out recorder
			run(t, u, &out, tc.steps...)
			if !slices.Equal(out.wms, tc.want) {
				t.Errorf("watermarks %v, want %v", out.wms, tc.want)
			}
		})
	}
	u, _ := NewUnion(2)
	var out recorder
	run(t, u, &out, BI(0, rec(1, 1)), BI(1, rec(2, 2)))
	checkRows(t, "union records", out.out, []string{"1:1", "2:2"})
	if err := u.ProcessBatch(2, &record.Batch{}, &out); err == nil {
		t.Error("union accepted input 2 of 2")
	}
}

// tick is a test step for Ticker operators.
func tickAll(t *testing.T, op Ticker, out *recorder, nows ...int64) {
	t.Helper()
	for _, now := range nows {
		if err := op.Tick(now, out); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWatermarksGenerator(t *testing.T) {
	g, err := NewWatermarks(WatermarksConfig{MaxOutOfOrderness: 5, IdleTimeout: 100,
		Timestamp: func(r *record.Record) int64 { return r.Values[0].I }})
	if err != nil {
		t.Fatal(err)
	}
	var out recorder
	run(t, g, &out, B(rec(0, 20), rec(0, 10)), B(rec(0, 12)), B(rec(0, 30)))
	checkRows(t, "records get their event time", out.out, []string{"20:20", "10:10", "12:12", "30:30"})
	if want := []int64{14, 24}; !slices.Equal(out.wms, want) {
		t.Fatalf("watermarks %v, want %v (max time - 5 - 1, only when advancing)", out.wms, want)
	}
	out.wms = nil
	tickAll(t, g, &out, 1000, 1050) // active since the last tick: not idle
	run(t, g, &out, B(rec(0, 31)))
	tickAll(t, g, &out, 1099, 1149) // batch before 1099: idle clock restarts at 1099
	if g.Idle() {
		t.Fatal("idle 50 ms after the last batch with a 100 ms timeout")
	}
	tickAll(t, g, &out, 1199, 1300)
	if !g.Idle() {
		t.Fatal("not idle 100 ms after the last batch")
	}
	run(t, g, &out, B(rec(0, 31))) // back: re-announces its watermark
	run(t, g, &out, F())
	if want := []int64{25, IdleWatermark, 25, FinalWatermark}; !slices.Equal(out.wms, want) {
		t.Fatalf("watermarks %v, want %v", out.wms, want)
	}
	if err := g.ProcessBatch(0, &record.Batch{Records: []record.Record{rec(0, 40)}}, &out); err == nil {
		t.Error("a batch after the final watermark was accepted")
	}
	if _, err := NewWatermarks(WatermarksConfig{MaxOutOfOrderness: -1}); err == nil {
		t.Error("negative out-of-orderness accepted")
	}
}

// An idle source feeding a union lets windows downstream fire.
func TestIdleSourceLetsWindowsFire(t *testing.T) {
	gens := [2]*Watermarks{}
	for i := range gens {
		gens[i], _ = NewWatermarks(WatermarksConfig{IdleTimeout: 10})
	}
	u, _ := NewUnion(2)
	win, _ := NewWindowAggregate(WindowConfig{Windowing: Tumbling(100), Aggs: []Agg{{Kind: AggCount}}})
	var final recorder
	// chain: generator i -> union input i -> window
	feed := func(i int, fn func(out Emitter) error) {
		var mid recorder
		if err := fn(&mid); err != nil {
			t.Fatal(err)
		}
		var um recorder
		if len(mid.out) > 0 {
			u.ProcessBatch(i, &record.Batch{Records: mid.out}, &um)
		}
		for _, wm := range mid.wms {
			u.ProcessWatermark(i, wm, &um)
		}
		win.ProcessBatch(0, &record.Batch{Records: um.out}, &final)
		for _, w := range um.wms {
			win.ProcessWatermark(0, w, &final)
		}
	}
	for i := range gens {
		feed(i, func(out Emitter) error { return gens[i].Tick(0, out) })
	}
	feed(0, func(out Emitter) error {
		return gens[0].ProcessBatch(0, &record.Batch{Records: []record.Record{rec(50), rec(150)}}, out)
	})
	if len(final.out) != 0 {
		t.Fatalf("window fired while input 1 has no watermark: %v", show(final.out))
	}
	for _, now := range []int64{5, 10} {
		feed(0, func(out Emitter) error {
			return gens[0].ProcessBatch(0, &record.Batch{Records: []record.Record{rec(150)}}, out)
		})
		for i := range gens {
			feed(i, func(out Emitter) error { return gens[i].Tick(now, out) })
		}
	}
	checkRows(t, "after input 1 went idle", final.out, []string{"99:0,100,1"})
}
