package nexmark_test

import (
	"fmt"

	"github.com/sealflow/sealflow/nexmark"
)

// The kinds and ids of the first events of a run: a person, three auctions,
// then bids. Sellers and bidders are hot persons (1000, 1001) or random recent
// ones, which may be a few ids ahead of the last person created (1002, 1005).
func ExampleGenerator() {
	g, err := nexmark.NewGenerator(nexmark.DefaultConfig(1))
	if err != nil {
		panic(err)
	}
	var ev nexmark.Event
	for range 6 {
		g.Next(&ev)
		switch ev.Kind {
		case nexmark.KindPerson:
			fmt.Println(ev.Kind, ev.Person.ID, ev.Person.DateTime)
		case nexmark.KindAuction:
			fmt.Println(ev.Kind, ev.Auction.ID, "seller", ev.Auction.Seller)
		case nexmark.KindBid:
			fmt.Println(ev.Kind, "auction", ev.Bid.Auction, "bidder", ev.Bid.Bidder)
		}
	}
	// Output:
	// person 1000 1704067200000
	// auction 1000 seller 1002
	// auction 1001 seller 1000
	// auction 1002 seller 1000
	// bid auction 1000 bidder 1005
	// bid auction 1000 bidder 1001
}

// A query's JobSpec: q7 finds, per 10 s window, the bids at the highest
// price, in two keyed stages so that the first runs in parallel.
func ExampleJobSpec() {
	spec, err := nexmark.JobSpec("q7", nexmark.QueryOptions{Parallelism: 2})
	if err != nil {
		panic(err)
	}
	for _, n := range spec.Nodes {
		fmt.Println(n.ID, n.Kind, n.Inputs)
	}
	// Output:
	// bids source []
	// map1 map [bids]
	// key-by1 key-by [map1]
	// window-aggregate1 window-aggregate [key-by1]
	// key-by2 key-by [window-aggregate1]
	// window-aggregate2 window-aggregate [key-by2]
	// map2 map [window-aggregate2]
	// sink1 sink [map2]
}
