package jobspec_test

import (
	"fmt"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
)

// A Nexmark-style query built in Go: the bids whose auction has the most
// bids in each sliding window.
func ExampleNew() {
	b := jobspec.New("hot-items").
		Schema("bid", jobspec.Int("auction"), jobspec.Int("price"), jobspec.Int("dateTime"))
	b.Source("bids", "bid", jobspec.EventTime("dateTime", time.Second)).
		KeyBy("auction").
		Window(jobspec.Sliding(10*time.Second, 2*time.Second), jobspec.Count("num")).
		Window(jobspec.Tumbling(2*time.Second).Bounds(jobspec.OmitField, jobspec.OmitField), jobspec.MaxRows("num")).
		Sink("hot-items")
	spec, err := b.Build()
	if err != nil {
		fmt.Println(err)
		return
	}
	r, _ := spec.Resolve()
	for _, id := range r.Order {
		n := r.Nodes[id]
		fmt.Printf("%-18s %-16s out=%d fields, group by %v\n", id, n.Node.Kind, len(n.Out.Fields), n.GroupBy)
	}
	// Output:
	// source1            source           out=3 fields, group by []
	// key-by1            key-by           out=3 fields, group by []
	// window-aggregate1  window-aggregate out=4 fields, group by [auction]
	// window-aggregate2  window-aggregate out=4 fields, group by []
	// sink1              sink             out=4 fields, group by []
}

// Specs in YAML are decoded strictly and validated with exact locations.
func ExampleParse() {
	spec, err := jobspec.Parse([]byte(`
name: cheap-bids
schemas:
  bid: [{name: auction, type: int}, {name: price, type: int}]
nodes:
  - {id: bids, kind: source, params: {stream: bids, schema: bid}}
  - {id: cheap, kind: filter, inputs: [bids], params: {expr: "price < '10'"}}
  - {id: out, kind: sink, inputs: [cheap], params: {stream: cheap-bids}}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	err = spec.Validate()
	for _, e := range err.(jobspec.Errors) {
		fmt.Println(e.Path, e.RefusedBy())
	}
	// Output:
	// nodes[1] (id "cheap").params.expr jobspec.expr
}

func ExampleResolved_Describe() {
	b := jobspec.New("q2").Schema("bid", jobspec.Int("auction"), jobspec.Int("price"))
	b.Source("bids", "bid").As("bids").
		Filter("auction % 123 == 0").As("filter").
		KeyBy("auction").As("byAuction").
		Window(jobspec.Tumbling(time.Second), jobspec.Sum("price", "total")).As("sums").
		Sink("q2").As("out")
	spec, _ := b.Build()
	r, _ := spec.Resolve()
	fmt.Print(r.Describe())
	// Output:
	// bids (source): auction int, price int
	// filter (filter) <- bids: auction int, price int
	// byAuction (key-by) <- filter: auction int, price int keyed by auction
	// sums (window-aggregate) <- byAuction: auction int, window_start int, window_end int, total int grouped by auction
	// out (sink) <- sums: auction int, window_start int, window_end int, total int
}
