package topology

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sealflow/sealflow/substrate"
	"sigs.k8s.io/yaml"
)

const valid = `
name: t
sites:
  - {name: cloud, tier: cloud, region: c, nats: {role: hub}}
  - {name: reg, tier: regional, region: r, parent: cloud, nats: {role: leafnode}, link: {latencyMs: 20, bandwidth: 1Gbit}}
  - {name: edge, tier: edge, region: r, parent: reg, nats: {role: leafnode, domain: e1}, workers: 2, link: {latencyMs: 5, loss: 0.01}}
  - {name: dev, tier: device, region: r, parent: edge, nats: {role: client}}
`

func TestParseValid(t *testing.T) {
	topo, err := Parse([]byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	if got := topo.Hub().Name; got != "cloud" {
		t.Errorf("Hub() = %q, want cloud", got)
	}
	for site, want := range map[string]string{"cloud": "hub", "reg": "reg", "edge": "e1", "dev": "e1", "nope": ""} {
		if got := topo.DomainOf(site); got != want {
			t.Errorf("DomainOf(%q) = %q, want %q", site, got, want)
		}
	}
	if got, want := topo.PathToHub("dev"), []string{"dev", "edge", "reg", "cloud"}; !slices.Equal(got, want) {
		t.Errorf("PathToHub(dev) = %v, want %v", got, want)
	}
	wc, err := topo.Site("reg").Link.WAN()
	if err != nil || wc.Latency != 20*time.Millisecond || wc.Bandwidth != 125_000_000 {
		t.Errorf("reg link = %+v, %v; want 20ms and 125000000 B/s", wc, err)
	}
}

func TestOrderParentsFirst(t *testing.T) {
	// Children listed before their parents.
	topo, err := Parse([]byte(`
name: t
sites:
  - {name: dev, tier: device, region: r, parent: edge, nats: {role: client}}
  - {name: edge, tier: edge, region: r, parent: reg, nats: {role: leafnode}}
  - {name: edge2, tier: edge, region: r, parent: cloud, nats: {role: leafnode}}
  - {name: reg, tier: regional, region: r, parent: cloud, nats: {role: leafnode}}
  - {name: cloud, tier: cloud, region: c, nats: {role: hub}}
`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range topo.Order() {
		got = append(got, s.Name)
	}
	if want := []string{"cloud", "edge2", "reg", "edge", "dev"}; !slices.Equal(got, want) {
		t.Errorf("Order() = %v, want %v", got, want)
	}
}

func TestParseRefuses(t *testing.T) {
	hub := "  - {name: cloud, tier: cloud, region: c, nats: {role: hub}}\n"
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"unknown field", "name: t\nsites:\n" + hub + "  - {name: e, tier: edge, region: r, parent: cloud, nats: {role: leafnode}, colour: red}\n", `unknown field "colour"`},
		{"unknown nested field", "name: t\nsites:\n" + hub + "  - {name: e, tier: edge, region: r, parent: cloud, nats: {role: leafnode}, link: {latency: 5}}\n", `unknown field "latency"`},
		{"duplicate key", "name: t\nname: u\nsites:\n" + hub, `"name" already set`},
		{"no name", "sites:\n" + hub, "name is empty"},
		{"no sites", "name: t\n", "no sites"},
		{"no hub", "name: t\nsites:\n  - {name: e, tier: edge, region: r, parent: x, nats: {role: leafnode}}\n", "no site has nats role hub"},
		{"two hubs", "name: t\nsites:\n" + hub + "  - {name: c2, tier: cloud, region: c, nats: {role: hub}}\n", "both hubs"},
		{"missing parent", "name: t\nsites:\n" + hub + "  - {name: e, tier: edge, region: r, parent: reg, nats: {role: leafnode}}\n", `parent "reg" is not a site`},
		{"no parent", "name: t\nsites:\n" + hub + "  - {name: e, tier: edge, region: r, nats: {role: leafnode}}\n", "without a parent"},
		{"cycle", "name: t\nsites:\n" + hub + "  - {name: a, tier: edge, region: r, parent: b, nats: {role: leafnode}}\n  - {name: b, tier: regional, region: r, parent: a, nats: {role: leafnode}}\n", "cycle"},
		{"self parent", "name: t\nsites:\n" + hub + "  - {name: a, tier: edge, region: r, parent: a, nats: {role: leafnode}}\n", "cycle"},
		{"edge under edge", "name: t\nsites:\n" + hub + "  - {name: a, tier: edge, region: r, parent: cloud, nats: {role: leafnode}}\n  - {name: b, tier: edge, region: r, parent: a, nats: {role: leafnode}}\n", "higher tier"},
		{"regional under edge", "name: t\nsites:\n" + hub + "  - {name: a, tier: edge, region: r, parent: cloud, nats: {role: leafnode}}\n  - {name: b, tier: regional, region: r, parent: a, nats: {role: leafnode}}\n", "higher tier"},
		{"child of client", "name: t\nsites:\n" + hub + "  - {name: a, tier: edge, region: r, parent: cloud, nats: {role: client}}\n  - {name: b, tier: device, region: r, parent: a, nats: {role: client}}\n", "runs no NATS server"},
		{"bad tier", "name: t\nsites:\n" + hub + "  - {name: a, tier: fog, region: r, parent: cloud, nats: {role: leafnode}}\n", `tier "fog"`},
		{"bad role", "name: t\nsites:\n" + hub + "  - {name: a, tier: edge, region: r, parent: cloud, nats: {role: gateway}}\n", `role "gateway"`},
		{"hub not cloud", "name: t\nsites:\n  - {name: c, tier: regional, region: c, nats: {role: hub}}\n", "the hub is a cloud site"},
		{"hub of 2", "name: t\nsites:\n  - {name: c, tier: cloud, region: c, nats: {role: hub, servers: 2}}\n", "1 or 3 servers"},
		{"hub with link", "name: t\nsites:\n  - {name: c, tier: cloud, region: c, nats: {role: hub}, link: {latencyMs: 1}}\n", "the hub has a link"},
		{"duplicate site", "name: t\nsites:\n" + hub + hub, "defined twice"},
		{"bad site name", "name: t\nsites:\n" + hub + "  - {name: Edge.1, tier: edge, region: r, parent: cloud, nats: {role: leafnode}}\n", `name "Edge.1"`},
		{"duplicate domain", "name: t\nsites:\n" + hub + "  - {name: a, tier: edge, region: r, parent: cloud, nats: {role: leafnode, domain: d}}\n  - {name: b, tier: edge, region: r, parent: cloud, nats: {role: leafnode, domain: d}}\n", "share JetStream domain"},
		{"hub domain", "name: t\nsites:\n" + hub + "  - {name: hub, tier: edge, region: r, parent: cloud, nats: {role: leafnode}}\n", "reserved for the hub"},
		{"no region", "name: t\nsites:\n" + hub + "  - {name: a, tier: edge, parent: cloud, nats: {role: leafnode}}\n", "region is empty"},
		{"negative workers", "name: t\nsites:\n" + hub + "  - {name: a, tier: edge, region: r, parent: cloud, nats: {role: leafnode}, workers: -1}\n", "workers -1"},
		{"negative latency", "name: t\nsites:\n" + hub + "  - {name: a, tier: edge, region: r, parent: cloud, nats: {role: leafnode}, link: {latencyMs: -5}}\n", "latencyMs -5"},
		{"loss 1", "name: t\nsites:\n" + hub + "  - {name: a, tier: edge, region: r, parent: cloud, nats: {role: leafnode}, link: {loss: 1}}\n", "loss 1"},
		{"bandwidth unit", "name: t\nsites:\n" + hub + "  - {name: a, tier: edge, region: r, parent: cloud, nats: {role: leafnode}, link: {bandwidth: \"100\"}}\n", "has no unit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatalf("Parse accepted:\n%s", tc.doc)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestParseBandwidth(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"", 0, true},
		{"0", 0, true},
		{"8bit", 1, true},
		{"100kbit", 12_500, true},
		{"100Mbit", 12_500_000, true},
		{"2.5Gbit", 312_500_000, true},
		{"10MB", 10_000_000, true},
		{"1KB", 1000, true},
		{"3B", 3, true},
		{"1GB", 1_000_000_000, true},
		{"100", 0, false},
		{"Mbit", 0, false},
		{"-1Mbit", 0, false},
		{"NaNMbit", 0, false},
		{"InfGB", 0, false},
		{"1bit", 0, false},
		{"100mbit", 0, false},
		{"1e20GB", 0, false},
	} {
		got, err := ParseBandwidth(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseBandwidth(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestExamplesLoad(t *testing.T) {
	files, err := filepath.Glob("../deploy/topologies/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range files {
		topo, err := Load(f)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		names[filepath.Base(f)] = true
		tiers := map[Tier]bool{}
		for _, s := range topo.Sites {
			tiers[s.Tier] = true
		}
		for _, tier := range []Tier{Device, Edge, Regional, Cloud} {
			if !tiers[tier] {
				t.Errorf("%s has no %s site", f, tier)
			}
		}
	}
	for _, want := range []string{"smart-grid.yaml", "transport.yaml"} {
		if !names[want] {
			t.Errorf("deploy/topologies/%s missing or invalid", want)
		}
	}
}

// TestStartExample starts the transport example and checks that the hub
// reaches every leafnode site's JetStream domain, each across its links.
func TestStartExample(t *testing.T) {
	topo, err := Load("../deploy/topologies/transport.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	r, err := Start(ctx, topo, t.TempDir(), WithSync(substrate.SyncRelaxed), WithReconnectInterval(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	if err := r.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	nc, err := substrate.Connect(ctx, r.URL("cloud"), "test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, rs := range r.Sites() {
		if rs.Site.NATS.Role == Hub {
			if rs.Link != nil {
				t.Errorf("hub has a link")
			}
			continue
		}
		if rs.Link == nil {
			t.Errorf("site %s has no link to its parent", rs.Site.Name)
			continue
		}
		wc, _ := rs.Site.Link.WAN()
		if got := rs.Link.Config().Latency; got != wc.Latency {
			t.Errorf("site %s link latency %v, want %v", rs.Site.Name, got, wc.Latency)
		}
		js, err := jetstream.NewWithDomain(nc, rs.Domain)
		if err != nil {
			t.Fatal(err)
		}
		// Retry while interest in the domain's API propagates.
		for {
			_, err = js.AccountInfo(ctx)
			if err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("hub cannot reach JetStream domain %q of site %s: %v", rs.Domain, rs.Site.Name, err)
		}
		if rs.Link.Stats().Accepted == 0 {
			t.Errorf("site %s: nothing crossed its link", rs.Site.Name)
		}
	}
}

// TestStartThreeServerHub checks that a 3-server hub forms a JetStream
// cluster that stores replicated streams.
func TestStartThreeServerHub(t *testing.T) {
	topo, err := Parse([]byte(`
name: h3
sites:
  - {name: cloud, tier: cloud, region: c, nats: {role: hub, servers: 3}}
  - {name: edge, tier: edge, region: r, parent: cloud, nats: {role: leafnode}, link: {latencyMs: 1}}
`))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	r, err := Start(ctx, topo, t.TempDir(), WithSync(substrate.SyncRelaxed), WithReconnectInterval(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	if n := len(r.Site("cloud").Servers()); n != 3 {
		t.Fatalf("hub runs %d servers, want 3", n)
	}
	if err := r.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	nc, err := substrate.Connect(ctx, r.URL("cloud"), "test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	var s jetstream.Stream
	for {
		// The meta leader is elected a few seconds after the servers start.
		// Requests sent before then are dropped, so each attempt is short.
		attempt, cancel := context.WithTimeout(ctx, time.Second)
		s, err = js.CreateStream(attempt, jetstream.StreamConfig{Name: "R3", Subjects: []string{"r3"}, Replicas: 3})
		cancel()
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("creating an R3 stream on the hub cluster: %v", err)
	}
	if info := s.CachedInfo(); info.Config.Replicas != 3 || info.Cluster == nil || info.Cluster.Leader == "" {
		t.Fatalf("R3 stream created as %+v with cluster %+v, want 3 replicas and a leader", info.Config.Replicas, info.Cluster)
	}
	// An acknowledged publish needs a quorum of the three servers.
	if _, err := js.Publish(ctx, "r3", []byte("x")); err != nil {
		t.Fatalf("publishing to the R3 stream: %v", err)
	}
}

// FuzzParse checks that Parse never panics and that what it accepts
// survives a round trip through YAML unchanged.
func FuzzParse(f *testing.F) {
	f.Add([]byte(valid))
	f.Add([]byte(chain))
	f.Add([]byte("name: t\nsites:\n  - {name: a, tier: edge, region: r, parent: b, nats: {role: leafnode}}\n  - {name: b, tier: regional, region: r, parent: a, nats: {role: leafnode}}\n"))
	f.Add([]byte("name: t\nsites: [{name: c, tier: cloud, region: c, nats: {role: hub, servers: 3}}]"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		topo, err := Parse(data)
		if err != nil {
			return
		}
		out, err := yaml.Marshal(topo)
		if err != nil {
			t.Fatalf("marshalling an accepted topology: %v", err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("re-parsing %q: %v", out, err)
		}
		out2, _ := yaml.Marshal(again)
		if string(out) != string(out2) {
			t.Fatalf("round trip changed the topology:\n%s\n%s", out, out2)
		}
		_ = topo.Order()
	})
}

// FuzzParseBandwidth checks that ParseBandwidth never panics and returns a
// positive rate exactly when it accepts a non-zero value.
func FuzzParseBandwidth(f *testing.F) {
	for _, s := range []string{"", "0", "100Mbit", "2.5Gbit", "10MB", "1e3kbit", "-1B", "NaNGB", "Mbit", "1bit"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseBandwidth(s)
		if err != nil {
			if v != 0 {
				t.Fatalf("ParseBandwidth(%q) = %d with error %v", s, v, err)
			}
			return
		}
		if (s == "" || s == "0") != (v == 0) || v < 0 {
			t.Fatalf("ParseBandwidth(%q) = %d", s, v)
		}
	})
}

// TestLinkCapsSiteTraffic checks that a site's link settings govern the NATS
// traffic between the site and its parent: 512 KB published at the edge
// reaches the hub no faster than the link's 1 MB/s allows.
func TestLinkCapsSiteTraffic(t *testing.T) {
	topo, err := Parse([]byte(`
name: capped
sites:
  - {name: cloud, tier: cloud, region: c, nats: {role: hub}}
  - {name: edge, tier: edge, region: r, parent: cloud, nats: {role: leafnode}, link: {latencyMs: 2, bandwidth: 1MB}}
`))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	r, err := Start(ctx, topo, t.TempDir(), WithSync(substrate.SyncRelaxed))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	if err := r.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	hub, err := substrate.Connect(ctx, r.URL("cloud"), "hub")
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Close()
	edge, err := substrate.Connect(ctx, r.URL("edge"), "edge")
	if err != nil {
		t.Fatal(err)
	}
	defer edge.Close()
	const n, size = 64, 8 << 10
	got := make(chan int, n+16)
	sub, err := hub.Subscribe("bulk", func(m *nats.Msg) { got <- len(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	hub.Flush()
	// Wait until the hub's interest has reached the edge.
	for {
		edge.Publish("bulk", nil)
		edge.Flush()
		select {
		case <-got:
		case <-time.After(50 * time.Millisecond):
			continue
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
		break
	}
	for len(got) > 0 {
		<-got
	}
	start := time.Now()
	body := make([]byte, size)
	for range n {
		if err := edge.Publish("bulk", body); err != nil {
			t.Fatal(err)
		}
	}
	edge.Flush()
	bytes := 0
	for bytes < n*size {
		select {
		case b := <-got:
			bytes += b
		case <-ctx.Done():
			t.Fatalf("hub got %d of %d bytes", bytes, n*size)
		}
	}
	took := time.Since(start)
	// 524288 bytes at 1e6 B/s is 0.52 s; the burst lets 64 KiB through early.
	if floor := 400 * time.Millisecond; took < floor {
		t.Errorf("512 KiB crossed a 1 MB/s link in %v, want at least %v", took, floor)
	}
	t.Logf("512 KiB across a 1 MB/s link in %v", took)
}
