package operator

import (
	"fmt"
	"slices"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/state"
)

// keyedOp is a keyed operator under test.
type keyedOp interface {
	Operator
	Snapshotter
}

// events returns a deterministic stream over two inputs: batches of records
// (field 0 is the key, field 1 a value) with out-of-order times, each batch
// followed by a watermark on both inputs lagging the newest time by 15 ms.
func events(n, keys int, seed uint64) []step {
	x := seed
	next := func(m int) int {
		x = x*6364136223846793005 + 1442695040888963407
		return int(x>>33) % m
	}
	var steps []step
	var maxT int64
	for i := 0; i < n; i += 10 {
		for input := 0; input < 2; input++ {
			var recs []record.Record
			for j := 0; j < 5; j++ {
				ts := int64(i*3 + next(20))
				maxT = max(maxT, ts)
				recs = append(recs, rec(ts, next(keys), next(1000)))
			}
			steps = append(steps, BI(input, recs...))
		}
		steps = append(steps, WI(0, maxT-15), WI(1, maxT-15))
	}
	return steps
}

// runParallel runs steps through parallel subtasks, routing each record by
// its key to the subtask owning its key group and broadcasting watermarks; it
// returns every subtask's output.
func runParallel(t *testing.T, subtasks []keyedOp, maxP int, keys [2]KeyFunc, steps []step) []string {
	t.Helper()
	p := len(subtasks)
	var outs []string
	for _, s := range steps {
		for i, op := range subtasks {
			var out recorder
			var err error
			switch {
			case s.finish:
				err = op.Finish(&out)
			case s.isWM:
				err = op.ProcessWatermark(s.input, s.wm, &out)
			default:
				var b record.Batch
				for _, r := range s.recs {
					if state.SubtaskFor(state.KeyGroup(keys[s.input](&r), maxP), p, maxP) == i {
						b.Records = append(b.Records, record.Record{Time: r.Time, Values: slices.Clone(r.Values)})
					}
				}
				err = op.ProcessBatch(s.input, &b, &out)
			}
			if err != nil {
				t.Fatal(err)
			}
			outs = append(outs, show(out.out)...)
			for name, side := range out.side {
				for _, r := range show(side) {
					outs = append(outs, name+"/"+r)
				}
			}
		}
	}
	return outs
}

// rescale snapshots every old subtask's whole range and builds newP subtasks
// restored from all the snapshots.
func rescale(t *testing.T, old []keyedOp, newP, maxP int, make func(state.Range) keyedOp) []keyedOp {
	t.Helper()
	var snaps [][]byte
	for i, op := range old {
		r := state.RangeFor(i, len(old), maxP)
		snap, err := op.Snapshot(r.From, r.To)
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, snap)
	}
	var subtasks []keyedOp
	for i := 0; i < newP; i++ {
		r := state.RangeFor(i, newP, maxP)
		op := make(r)
		for _, snap := range snaps {
			if err := op.Restore(r.From, r.To, snap); err != nil {
				t.Fatal(err)
			}
		}
		subtasks = append(subtasks, op)
	}
	return subtasks
}

func TestSnapshotRestoreAndRescale(t *testing.T) {
	const maxP = 16
	left, right := KeyOf(0), KeyOf(0)
	must := func(op keyedOp, err error) keyedOp {
		if err != nil {
			t.Fatal(err)
		}
		return op
	}
	cases := []struct {
		name string
		make func(state.Range) keyedOp
		keys [2]KeyFunc
	}{
		{"tumbling count+sum", func(r state.Range) keyedOp {
			return must(NewWindowAggregate(WindowConfig{Windowing: Tumbling(20), Key: left, KeyFields: []int{0},
				Aggs: []Agg{{Kind: AggCount}, {Kind: AggSum, Field: 1}}, AllowedLateness: 5, LateSide: "late",
				MaxParallelism: maxP, KeyGroups: r}))
		}, [2]KeyFunc{left, left}},
		{"sliding max-rows", func(r state.Range) keyedOp {
			return must(NewWindowAggregate(WindowConfig{Windowing: Sliding(40, 10), Key: left,
				Aggs: []Agg{{Kind: AggMaxRows, Field: 1}}, MaxParallelism: maxP, KeyGroups: r}))
		}, [2]KeyFunc{left, left}},
		{"session top-n", func(r state.Range) keyedOp {
			return must(NewWindowAggregate(WindowConfig{Windowing: Session(3), Key: left,
				Aggs: []Agg{{Kind: AggTopN, N: 2, OrderBy: []SortKey{{Field: 1, Desc: true}, {Field: 0}}, WithTies: true}}, MaxParallelism: maxP, KeyGroups: r}))
		}, [2]KeyFunc{left, left}},
		{"window join", func(r state.Range) keyedOp {
			return must(NewWindowJoin(WindowJoinConfig{Windowing: Tumbling(20),
				JoinConfig: JoinConfig{LeftKey: left, RightKey: right, LateSide: "late", MaxParallelism: maxP, KeyGroups: r}}))
		}, [2]KeyFunc{left, right}},
		{"sliding window join with lateness", func(r state.Range) keyedOp {
			return must(NewWindowJoin(WindowJoinConfig{Windowing: Sliding(20, 10), AllowedLateness: 8,
				JoinConfig: JoinConfig{LeftKey: left, RightKey: right, LateSide: "late", MaxParallelism: maxP, KeyGroups: r}}))
		}, [2]KeyFunc{left, right}},
		{"interval join", func(r state.Range) keyedOp {
			return must(NewIntervalJoin(IntervalJoinConfig{Lower: -10, Upper: 5,
				JoinConfig: JoinConfig{LeftKey: left, RightKey: right, LateSide: "late", MaxParallelism: maxP, KeyGroups: r}}))
		}, [2]KeyFunc{left, right}},
		{"regular join", func(r state.Range) keyedOp {
			return must(NewRegularJoin(JoinConfig{LeftKey: left, RightKey: right, MaxParallelism: maxP, KeyGroups: r}))
		}, [2]KeyFunc{left, right}},
	}
	for _, tc := range cases {
		steps := append(events(400, 30, 7), F())
		// Single-input operators see only input 0.
		if _, ok := tc.make(state.Range{From: 0, To: maxP}).(*WindowAggregate); ok {
			steps = slices.DeleteFunc(steps, func(s step) bool { return s.input == 1 })
		}
		cut := len(steps) / 2
		for !steps[cut-1].isWM {
			cut++
		}
		reference := sorted(runParallel(t, []keyedOp{tc.make(state.Range{From: 0, To: maxP})}, maxP, tc.keys, steps))
		if len(reference) < 20 {
			t.Fatalf("%s: only %d results; the test stream is too thin", tc.name, len(reference))
		}
		for _, scale := range [][2]int{{1, 1}, {2, 3}, {3, 2}, {2, 1}} {
			t.Run(fmt.Sprintf("%s/%d->%d", tc.name, scale[0], scale[1]), func(t *testing.T) {
				var old []keyedOp
				for i := 0; i < scale[0]; i++ {
					old = append(old, tc.make(state.RangeFor(i, scale[0], maxP)))
				}
				got := runParallel(t, old, maxP, tc.keys, steps[:cut])
				restored := rescale(t, old, scale[1], maxP, tc.make)
				got = sorted(append(got, runParallel(t, restored, maxP, tc.keys, steps[cut:])...))
				if !slices.Equal(got, reference) {
					t.Fatalf("after snapshot at step %d and restore at parallelism %d: %d results differ from the %d of an uninterrupted run",
						cut, scale[1], len(got), len(reference))
				}
			})
		}
	}
}

func TestRestoreRefusesBadSnapshots(t *testing.T) {
	op, _ := NewWindowAggregate(WindowConfig{Windowing: Tumbling(10), Key: KeyOf(0), Aggs: []Agg{{Kind: AggCount}}, MaxParallelism: 8})
	var out recorder
	run(t, op, &out, B(rec(1, 1), rec(2, 2)))
	good, err := op.Snapshot(0, 8)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewWindowAggregate(WindowConfig{Windowing: Tumbling(10), Key: KeyOf(0), Aggs: []Agg{{Kind: AggCount}}, MaxParallelism: 16})
	if err := other.Restore(0, 16, good); err == nil {
		t.Error("restore across different max parallelism succeeded")
	}
	for name, data := range map[string][]byte{
		"empty":     nil,
		"version":   append([]byte{9}, good[1:]...),
		"truncated": good[:len(good)-2],
		"trailing":  append(slices.Clone(good), 1),
	} {
		if err := op.Restore(0, 8, data); err == nil {
			t.Errorf("%s snapshot restored", name)
		}
	}
}

func FuzzKeyStateCodec(f *testing.F) {
	op, _ := NewWindowAggregate(WindowConfig{Windowing: Tumbling(10), Key: KeyOf(0), Aggs: []Agg{{Kind: AggMaxRows, Field: 1}}})
	var out recorder
	run(&testing.T{}, op, &out, B(rec(1, 1, 5), rec(2, 1, 5), rec(3, 2, "s")))
	var ks keyState
	f.Add(keyStateCodec{}.Append(nil, op.store.Get(1)))
	f.Add([]byte{0, 1, 0, 20, 1, 2, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := (keyStateCodec{}).Decode(data, &ks); err != nil {
			return
		}
		again := keyStateCodec{}.Append(nil, &ks)
		if !slices.Equal(again, data) {
			t.Fatalf("decoded key state re-encodes differently:\n in %x\nout %x", data, again)
		}
	})
}

func FuzzJoinStateCodec(f *testing.F) {
	js := joinState{parts: []part{{start: 0, end: 10, left: []record.Record{rec(1, 1, "a")}, right: []record.Record{rec(2, 1, 2.5)}}}}
	f.Add(joinStateCodec{}.Append(nil, &js))
	f.Add([]byte{1, 0, 20, 1, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var js joinState
		if err := (joinStateCodec{}).Decode(data, &js); err != nil {
			return
		}
		again := joinStateCodec{}.Append(nil, &js)
		if !slices.Equal(again, data) {
			t.Fatalf("decoded join state re-encodes differently:\n in %x\nout %x", data, again)
		}
	})
}

func FuzzDecodeEnvelope(f *testing.F) {
	op, _ := NewRegularJoin(JoinConfig{LeftKey: KeyOf(0), RightKey: KeyOf(0), MaxParallelism: 4})
	var out recorder
	run(&testing.T{}, op, &out, BI(Left, rec(1, 1, "x")), BI(Right, rec(2, 1, 3)))
	good, _ := op.Snapshot(0, 4)
	f.Add(good)
	f.Add([]byte{1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		fresh, _ := NewRegularJoin(JoinConfig{LeftKey: KeyOf(0), RightKey: KeyOf(0), MaxParallelism: 4})
		if err := fresh.Restore(0, 4, data); err != nil {
			return
		}
		again, err := fresh.Snapshot(0, 4)
		if err != nil {
			t.Fatal(err)
		}
		// What was restored snapshots canonically: restoring that again is a fixed point.
		second, _ := NewRegularJoin(JoinConfig{LeftKey: KeyOf(0), RightKey: KeyOf(0), MaxParallelism: 4})
		if err := second.Restore(0, 4, again); err != nil {
			t.Fatalf("restoring a snapshot of restored state: %v", err)
		}
		third, _ := second.Snapshot(0, 4)
		if !slices.Equal(again, third) {
			t.Fatalf("snapshot of restored state is not a fixed point:\n %x\n %x", again, third)
		}
	})
}
