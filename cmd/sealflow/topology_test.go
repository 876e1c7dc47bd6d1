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
}
