package runtime

import (
	"context"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/exchange"
)

// bidSchema is shaped like a Nexmark bid.
var bidSchema = []jobspec.Field{
	{Name: "auction", Type: record.TypeInt}, {Name: "bidder", Type: record.TypeInt}, {Name: "price", Type: record.TypeInt},
	{Name: "channel", Type: record.TypeString}, {Name: "url", Type: record.TypeString}, {Name: "dateTime", Type: record.TypeInt},
	{Name: "extra", Type: record.TypeString},
}

func bid(i int64, r *record.Record) error {
	r.Time = 0
	r.Values = append(r.Values[:0], record.Int(1000+i%997), record.Int(2000+i%1009), record.Int(100+i*31%10000),
		record.String("Google"), record.String("https://www.nexmark.com/item.htm?query=1"), record.Int(1_700_000_000_000+i), record.String(""))
	return nil
}

// statelessSpec is Nexmark q1: every bid with its price converted.
func statelessSpec() *jobspec.Spec {
	return &jobspec.Spec{
		Name: "q1", Schemas: map[string][]jobspec.Field{"bid": bidSchema},
		Nodes: []jobspec.Node{
			{ID: "bids", Kind: jobspec.KindSource, Params: jobspec.Params{Stream: "bids", Schema: "bid", TimeField: "dateTime"}},
			{ID: "q1", Kind: jobspec.KindMap, Inputs: []string{"bids"}, Params: jobspec.Params{Fields: []jobspec.Projection{
				{Name: "auction"}, {Name: "bidder"}, {Name: "price", Expr: "double(price) * 0.908"}, {Name: "dateTime"}, {Name: "extra"}}}},
			{ID: "out", Kind: jobspec.KindSink, Inputs: []string{"q1"}, Params: jobspec.Params{Stream: "out"}},
		},
	}
}

// windowedBidSpec counts bids per auction in 10 s tumbling windows, then
// keeps each window's busiest auctions (the shape of Nexmark q5 with tumbling
// windows).
func windowedBidSpec() *jobspec.Spec {
	return &jobspec.Spec{
		Name: "windowed", Schemas: map[string][]jobspec.Field{"bid": bidSchema},
		Nodes: []jobspec.Node{
			{ID: "bids", Kind: jobspec.KindSource, Params: jobspec.Params{Stream: "bids", Schema: "bid", TimeField: "dateTime"}},
			{ID: "byAuction", Kind: jobspec.KindKeyBy, Inputs: []string{"bids"}, Params: jobspec.Params{Keys: []string{"auction"}}},
			{ID: "count", Kind: jobspec.KindWindowAggregate, Inputs: []string{"byAuction"}, Params: jobspec.Params{
				Window:     &jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 10_000},
				Aggregates: []jobspec.Aggregate{{Fn: jobspec.AggCount, As: "num"}}}},
			{ID: "out", Kind: jobspec.KindSink, Inputs: []string{"count"}, Params: jobspec.Params{Stream: "out"}},
		},
	}
}

func benchRun(b *testing.B, spec *jobspec.Spec, tr func() exchange.Transport) {
	benchRunOpts(b, spec, tr, false)
}

func benchRunOpts(b *testing.B, spec *jobspec.Spec, tr func() exchange.Transport, noChain bool) {
	const events = 1 << 20
	ctx := context.Background()
	var cpu, wall time.Duration
	b.ResetTimer()
	for range b.N {
		var out int64
		start := time.Now()
		c0 := cpuTime()
		_, err := Run(ctx, spec, Options{
			Sources:   map[string]Source{"bids": GeneratorSource(events, 512, bid)},
			Sinks:     map[string]Sink{"out": func(_ Split, b *record.Batch) error { out += int64(b.Len()); return nil }},
			Transport: tr(), DisableChaining: noChain,
		})
		if err != nil {
			b.Fatal(err)
		}
		wall += time.Since(start)
		cpu += cpuTime() - c0
	}
	n := float64(events) * float64(b.N)
	b.ReportMetric(n/wall.Seconds(), "events/s")
	if cpu > 0 {
		b.ReportMetric(n/cpu.Seconds(), "events/cpu-s")
	}
}

func BenchmarkStatelessLocal(b *testing.B) {
	benchRun(b, statelessSpec(), func() exchange.Transport { return nil })
}

func BenchmarkWindowedLocal(b *testing.B) {
	benchRun(b, windowedBidSpec(), func() exchange.Transport { return nil })
}

func BenchmarkWindowedNATS(b *testing.B) {
	tr := natsTransport(b, 32)
	benchRun(b, windowedBidSpec(), func() exchange.Transport { return tr })
}

// BenchmarkStatelessNATSUnchained runs q1 with every edge over NATS: source →
// map → sink are three tasks and every record crosses two NATS exchanges.
func BenchmarkStatelessNATSUnchained(b *testing.B) {
	tr := natsTransport(b, 32)
	benchRunOpts(b, statelessSpec(), func() exchange.Transport { return tr }, true)
}
