package operator_test

import (
	"fmt"

	"github.com/sealflow/sealflow/engine/operator"
	"github.com/sealflow/sealflow/engine/record"
)

// printer is an Emitter that prints what it receives.
type printer struct{}

func (printer) Emit(r record.Record) {
	fmt.Print(r.Time, ":")
	for _, v := range r.Values {
		fmt.Print(" ", v.I)
	}
	fmt.Println()
}
func (printer) EmitSide(name string, r record.Record) { fmt.Println("side", name, r.Time) }
func (printer) EmitWatermark(wm int64)                {}

// Count bids per auction in tumbling 10-second windows, then finish the input:
// the final watermark fires every open window.
func ExampleNewWindowAggregate() {
	const auction = 0 // field index of the auction id in a bid row
	op, err := operator.NewWindowAggregate(operator.WindowConfig{
		Windowing: operator.Tumbling(10_000),
		Key:       operator.KeyOf(auction),
		KeyFields: []int{auction},
		Aggs:      []operator.Agg{{Kind: operator.AggCount}},
		LateSide:  "late",
	})
	if err != nil {
		panic(err)
	}
	bid := func(t, a int64) record.Record { return record.Record{Time: t, Values: []record.Value{record.Int(a)}} }
	out := printer{}
	op.ProcessBatch(0, &record.Batch{Records: []record.Record{bid(1_000, 7), bid(2_000, 7), bid(3_000, 8), bid(12_000, 7)}}, out)
	op.ProcessWatermark(0, 9_999, out) // fires [0, 10000)
	op.ProcessBatch(0, &record.Batch{Records: []record.Record{bid(5_000, 7)}}, out)
	op.Finish(out)
	// Output:
	// 9999: 7 0 10000 2
	// 9999: 8 0 10000 1
	// side late 5000
	// 19999: 7 10000 20000 1
}
