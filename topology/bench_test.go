package topology

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sealflow/sealflow/substrate"
)

// startPair starts a hub and one edge leafnode behind a link of latency lat.
func startPair(b *testing.B, lat time.Duration) *Running {
	b.Helper()
	topo, err := Parse(fmt.Appendf(nil, `
name: pair
sites:
  - {name: cloud, tier: cloud, region: c, nats: {role: hub}}
  - {name: edge, tier: edge, region: r, parent: cloud, nats: {role: leafnode}, link: {latencyMs: %d}}
`, lat.Milliseconds()))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(b.Context(), 20*time.Second)
	defer cancel()
	r, err := Start(ctx, topo, b.TempDir(), WithSync(substrate.SyncRelaxed), WithReconnectInterval(100*time.Millisecond))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(r.Stop)
	if err := r.WaitConnected(ctx); err != nil {
		b.Fatal(err)
	}
	return r
}

// BenchmarkEdgeToHubLatency reports the one-way delivery time of a core NATS
// message published at an edge site to a subscriber at the hub, across one
// emulated link of 5, 20 and 50 ms.
func BenchmarkEdgeToHubLatency(b *testing.B) {
	for _, lat := range []time.Duration{5 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond} {
		b.Run(lat.String(), func(b *testing.B) {
			r := startPair(b, lat)
			hub, err := substrate.Connect(b.Context(), r.URL("cloud"), "hub")
			if err != nil {
				b.Fatal(err)
			}
			defer hub.Close()
			edge, err := substrate.Connect(b.Context(), r.URL("edge"), "edge")
			if err != nil {
				b.Fatal(err)
			}
			defer edge.Close()
			got := make(chan time.Time, 1)
			sub, err := hub.Subscribe("lat", func(*nats.Msg) { got <- time.Now() })
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Unsubscribe()
			hub.Flush()
			// Wait for the subscription's interest to reach the edge.
			for {
				edge.Publish("lat", nil)
				select {
				case <-got:
				case <-time.After(4 * lat):
					continue
				}
				break
			}
			var total time.Duration
			for b.Loop() {
				start := time.Now()
				edge.Publish("lat", nil)
				total += (<-got).Sub(start)
			}
			b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms/msg")
		})
	}
}

// BenchmarkDrainBacklog reports how fast a backlog buffered at an edge site
// during an outage is copied to the hub once the 20 ms link returns.
func BenchmarkDrainBacklog(b *testing.B) {
	for _, size := range []int{100, 1000} {
		b.Run(strconv.Itoa(size)+"B", func(b *testing.B) {
			const n = 2000
			r := startPair(b, 20*time.Millisecond)
			edgeNC, _ := substrate.Connect(b.Context(), r.URL("edge"), "edge")
			defer edgeNC.Close()
			hubNC, _ := substrate.Connect(b.Context(), r.URL("cloud"), "hub")
			defer hubNC.Close()
			edge, _ := jetstream.New(edgeNC)
			hub, _ := jetstream.New(hubNC)
			ctx := b.Context()
			var drain time.Duration
			round := 0
			for b.Loop() {
				round++
				name := "B" + strconv.Itoa(round)
				x, err := EnsureCrossSite(ctx, edge, hub, CrossSite{Stream: name, Subjects: []string{name}, Domain: "edge", MaxBytes: 64 << 20})
				if err != nil {
					b.Fatal(err)
				}
				r.Link("edge").SetDown(true)
				body := make([]byte, size)
				for i := range n {
					if _, err := edge.Publish(ctx, name, body); err != nil {
						b.Fatalf("message %d: %v", i, err)
					}
				}
				start := time.Now()
				r.Link("edge").SetDown(false)
				if err := r.WaitConnected(ctx); err != nil {
					b.Fatal(err)
				}
				x.Restart(ctx)
				for {
					info, err := x.HubStream().Info(ctx)
					if err == nil && info.State.Msgs == n {
						break
					}
					time.Sleep(5 * time.Millisecond)
				}
				drain += time.Since(start)
			}
			b.ReportMetric(float64(n)*float64(b.N)/drain.Seconds(), "msgs/s")
			b.ReportMetric(drain.Seconds()/float64(b.N), "s/2000msgs")
		})
	}
}
