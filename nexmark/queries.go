package nexmark

import (
	"fmt"
	"strings"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
)

// The streams the query JobSpecs read and write.
const (
	PersonStream  = "nexmark.person"
	AuctionStream = "nexmark.auction"
	BidStream     = "nexmark.bid"
	// OutputStream is the stream every query's sink writes.
	OutputStream = "nexmark.out"
)

// Stream returns the stream that carries events of kind k.
func Stream(k Kind) string {
	switch k {
	case KindPerson:
		return PersonStream
	case KindAuction:
		return AuctionStream
	}
	return BidStream
}

// QueryOptions tune the JobSpec of a query; the zero value is valid.
type QueryOptions struct {
	// Parallelism is the number of tasks per node (default 1).
	Parallelism int
	// MaxOutOfOrderness is how far event time may go backwards within a
	// source partition before records count as late (default 0: the
	// generator emits each partition in event-time order).
	MaxOutOfOrderness time.Duration
}

func specFields(s *record.Schema) []jobspec.Field {
	out := make([]jobspec.Field, len(s.Fields))
	for i, f := range s.Fields {
		out[i] = jobspec.Field{Name: f.Name, Type: f.Type}
	}
	return out
}

// JobSpec returns the JobSpec of a query. Sources read PersonStream,
// AuctionStream and BidStream (records of PersonSchema, AuctionSchema and
// BidSchema, event time in dateTime); the sink writes OutputStream with the
// columns Columns(query), in that order.
func JobSpec(query string, opt QueryOptions) (*jobspec.Spec, error) {
	if Columns(query) == nil {
		return nil, fmt.Errorf("unknown query %q (want one of %s)", query, strings.Join(Queries, ", "))
	}
	b := jobspec.New("nexmark-" + query).Version("1")
	if opt.Parallelism > 0 {
		b.Parallelism(opt.Parallelism)
	}
	b.Schema("person", specFields(&PersonSchema)...)
	b.Schema("auction", specFields(&AuctionSchema)...)
	b.Schema("bid", specFields(&BidSchema)...)
	et := jobspec.EventTime("dateTime", opt.MaxOutOfOrderness)
	bids := func() *jobspec.Stream { return b.Source(BidStream, "bid", et).As("bids") }
	persons := func() *jobspec.Stream { return b.Source(PersonStream, "person", et).As("persons") }
	auctions := func() *jobspec.Stream { return b.Source(AuctionStream, "auction", et).As("auctions") }
	const sec = time.Second
	cols := Columns(query)
	switch query {
	case "q0":
		// Pass-through: every bid, every field (BidSchema is q0's columns).
		bids().Sink(OutputStream)
	case "q1":
		// Currency conversion; price becomes the float64 Q1Rate*price.
		bids().Map(
			jobspec.Col("auction", ""), jobspec.Col("bidder", ""),
			jobspec.Col("price", fmt.Sprintf("double(price) * %v", Q1Rate)),
			jobspec.Col("dateTime", ""), jobspec.Col("extra", "")).
			Sink(OutputStream)
	case "q2":
		bids().Filter(fmt.Sprintf("auction %% %d == 0", Q2Modulus)).Project(cols...).Sink(OutputStream)
	case "q3":
		// Incremental regular join: both sides stay in state, so a match
		// is found whichever of auction and seller arrives first.
		a := auctions().Filter(fmt.Sprintf("category == %d", Q3Category)).
			Map(jobspec.Col("auction_id", "id"), jobspec.Col("seller", "")).KeyBy("seller")
		p := persons().Filter(`state == "OR" || state == "ID" || state == "CA"`).
			Project("id", "name", "city", "state").KeyBy("id")
		a.Join(p, jobspec.On("seller", "id")).
			Map(jobspec.Col("name", ""), jobspec.Col("city", ""), jobspec.Col("state", ""), jobspec.Col("id", "auction_id")).
			Sink(OutputStream)
	case "q5":
		// Bids per auction per sliding window, then, per window, the
		// auctions whose count is the window's maximum. All counts of one
		// window carry the same time, so the second stage (keyed by the
		// window) sees each window whole in one of its tumbling windows.
		counts := bids().Project("auction").KeyBy("auction").
			Window(jobspec.Sliding(Q5WindowSize*time.Millisecond, Q5WindowSlide*time.Millisecond), jobspec.Count("num"))
		counts.KeyBy("window_start").
			Window(jobspec.Tumbling(Q5WindowSlide*time.Millisecond).Bounds(jobspec.OmitField, jobspec.OmitField), jobspec.MaxRows("num")).
			Project(cols...).Sink(OutputStream)
	case "q7":
		// Two phases so that the first runs in parallel: the highest bids
		// per auction and window, then per window the highest of those.
		top := bids().Project(cols...).KeyBy("auction").
			Window(jobspec.Tumbling(Q7WindowSize*time.Millisecond).Bounds("window_start", jobspec.OmitField), jobspec.MaxRows("price"))
		top.KeyBy("window_start").
			Window(jobspec.Tumbling(Q7WindowSize*time.Millisecond).Bounds(jobspec.OmitField, jobspec.OmitField), jobspec.MaxRows("price")).
			Project(cols...).Sink(OutputStream)
	case "q8":
		// Persons and sellers per tumbling window (one row each), joined on
		// person id and window start.
		w := jobspec.Tumbling(Q8WindowSize * time.Millisecond)
		p := persons().Project("id", "name").KeyBy("id", "name").Window(w, jobspec.Count("n")).
			KeyBy("id", "window_start")
		s := auctions().Project("seller").KeyBy("seller").Window(w, jobspec.Count("auctions")).
			KeyBy("seller", "window_start")
		p.Join(s, jobspec.On("id", "seller"), jobspec.On("window_start", "window_start"), jobspec.Prefixes("", "s_")).
			Project(cols...).Sink(OutputStream)
	case "q11":
		// Bids per bidder session (gap Q11SessionGap).
		bids().Project("bidder").KeyBy("bidder").
			Window(jobspec.Session(Q11SessionGap*time.Millisecond), jobspec.Count("bid_count")).
			Project(cols...).Sink(OutputStream)
	}
	return b.Build()
}
