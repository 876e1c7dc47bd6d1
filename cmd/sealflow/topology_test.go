package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestUpWithTopology: `sealflow up --topology` starts a hub and an edge
// leafnode site behind an emulated 5 ms WAN link, with a worker at each; the
// edge worker, which only dials out to its own site, is admitted through the
// link and holds the tier and region of its site.
func TestUpWithTopology(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts a topology")
	}
	dir := t.TempDir()
	bin := sealflowBinary(t)
	topo := filepath.Join(dir, "topo.yaml")
	os.WriteFile(topo, []byte(`name: two-sites
sites:
  - {name: cloud, tier: cloud, region: eu-central, nats: {role: hub}, workers: 1}
  - {name: edge-a, tier: edge, region: be-antwerp, parent: cloud, nats: {role: leafnode}, workers: 1, link: {latencyMs: 5, bandwidth: 100Mbit}}
`), 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ep := startUp(ctx, t, bin, dir, "--topology", topo)
	trust := filepath.Join(dir, "trust.json")
	if out, err := exec.Command(bin, "verify", "--orchestrator", ep.OrchestratorURL, "--measurement", ep.OrchestratorMeasurement,
		"--allow-sim", "--sim-dir", ep.SimDir, "--trust", trust).CombinedOutput(); err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	var nodes []struct {
		Name     string `json:"name"`
		Location struct {
			Tier, Region, Site string
		} `json:"location"`
	}
	err := waitUntil(ctx, time.Minute, func() bool {
		out, err := exec.Command(bin, "infra", "nodes", "--trust", trust, "--json").Output()
		return err == nil && json.Unmarshal(out, &nodes) == nil && len(nodes) == 2
	})
	if err != nil {
		t.Fatalf("nodes admitted: %+v", nodes)
	}
	sites := map[string]string{}
	for _, n := range nodes {
		sites[n.Location.Site] = n.Location.Tier + "/" + n.Location.Region
	}
	if sites["edge-a"] != "edge/be-antwerp" || sites["cloud"] != "cloud/eu-central" {
		t.Fatalf("admitted nodes by site: %v", sites)
	}

	// endpoints.json describes the sites; `infra wan` starts and ends an
	// outage of a site's uplink through up's WAN control.
	if s := ep.Sites["edge-a"]; s.Domain != "edge-a" || s.Parent != "cloud" || s.NATSURL == "" || s.NATSURL == ep.NATSURL {
		t.Fatalf("endpoints.json site edge-a: %+v (hub %s)", s, ep.NATSURL)
	}
	if s := ep.Sites["cloud"]; s.Domain != "hub" || s.NATSURL != ep.NATSURL {
		t.Fatalf("endpoints.json site cloud: %+v (hub %s)", s, ep.NATSURL)
	}
	if ep.WANControl == "" || len(ep.Workers) != 2 {
		t.Fatalf("endpoints.json: wan_control %q, workers %+v", ep.WANControl, ep.Workers)
	}
	wan := func(args ...string) []WANLinkView {
		t.Helper()
		out, err := exec.Command(bin, append([]string{"infra", "wan", "--dir", filepath.Join(dir, "up"), "--json"}, args...)...).Output()
		var links []WANLinkView
		if err == nil {
			err = json.Unmarshal(out, &links)
		}
		if err != nil {
			t.Fatalf("infra wan %v: %v\n%s", args, err, out)
		}
		return links
	}
	if l := wan(); len(l) != 1 || l[0].Site != "edge-a" || l[0].Down || l[0].LatencyMs != 5 || l[0].Stats.Up == 0 {
		t.Fatalf("infra wan: %+v", l)
	}
	if l := wan("--site", "edge-a", "--down"); len(l) != 1 || !l[0].Down || l[0].Stats.Reset == 0 {
		t.Fatalf("infra wan --down: %+v (the leafnode connection must be reset)", l)
	}
	if out, err := exec.Command(bin, "infra", "wan", "--dir", filepath.Join(dir, "up"), "--site", "cloud", "--down").CombinedOutput(); err == nil {
		t.Fatalf("infra wan --site cloud (the hub has no uplink) succeeded: %s", out)
	}
	if l := wan("--site", "edge-a", "--up"); len(l) != 1 || l[0].Down {
		t.Fatalf("infra wan --up: %+v", l)
	}
	// Once the link is up the site's leafnode reconnects through it.
	err = waitUntil(ctx, time.Minute, func() bool {
		l := wan()
		return len(l) == 1 && l[0].Stats.Accepted >= 2
	})
	if err != nil {
		t.Fatalf("edge-a's leafnode did not reconnect through its link: %+v", wan())
	}
}
