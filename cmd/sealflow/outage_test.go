package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/confidential"
	"github.com/sealflow/sealflow/substrate"
	"github.com/sealflow/sealflow/worker"
)

// geoTopology is the sites of the geo tests: the hub in the cloud (it runs
// the regional stage) and two edge sites, each a leafnode with its own
// JetStream domain behind an emulated 20 ms, 10 Mbit/s link.
const geoTopology = `name: geo-balance
sites:
  - {name: cloud, tier: cloud, region: be-brussels, nats: {role: hub}, workers: 1}
  - {name: edge-a, tier: edge, region: be-antwerp, parent: cloud, nats: {role: leafnode}, workers: 1, link: {latencyMs: 20, bandwidth: 10Mbit}}
  - {name: edge-b, tier: edge, region: be-ghent, parent: cloud, nats: {role: leafnode}, workers: 1, link: {latencyMs: 20, bandwidth: 10Mbit}}
`

// geoRun is the demo's balance pipeline running on geoTopology under `sealflow
// up --topology`: the meters' streams are registered with their edge site,
// their gateways publish at that site, the edge stages run there and the
// regional stage (allowed on the cloud tier too) at the hub.
type geoRun struct {
	t          *testing.T
	ctx        context.Context
	bin, dir   string
	ep         Endpoints
	grid       string
	gridTrust  string
	want       map[int64]float64
	pubs       []*exec.Cmd
	pubWG      sync.WaitGroup
	publishing time.Time
}

// startGeoRun starts the deployment with the extra `up` flags, deploys the
// pipeline and starts the two gateways, each feeding perStream readings at
// one per 25 ms.
func startGeoRun(ctx context.Context, t *testing.T, perStream int, upFlags ...string) *geoRun {
	t.Helper()
	g := &geoRun{t: t, ctx: ctx, bin: sealflowBinary(t), dir: t.TempDir(), want: map[int64]float64{}}
	topo := writeTestFile(t, filepath.Join(g.dir, "topo.yaml"), geoTopology)
	g.ep = startUp(ctx, t, g.bin, g.dir, append([]string{"--topology", topo, "--checkpoint-interval", "500ms"}, upFlags...)...)
	for _, s := range []string{"cloud", "edge-a", "edge-b"} {
		if g.ep.Sites[s].NATSURL == "" {
			t.Fatalf("endpoints.json has no NATS URL for site %s: %+v", s, g.ep.Sites)
		}
	}
	if g.ep.Sites["edge-a"].Domain != "edge-a" || g.ep.Sites["cloud"].Domain != "hub" {
		t.Fatalf("site domains: %+v", g.ep.Sites)
	}

	run := sealflowRunner(ctx, t, g.bin)
	file := func(name, content string) string { return writeTestFile(t, filepath.Join(g.dir, name), content) }
	party := func(role, name string) (key, trust string) { return registerPartyCLI(run, g.ep, g.dir, role, name) }
	g.grid, g.gridTrust = party("provider", "grid-operator")

	start := int64(1764057600000)
	type owner struct {
		id, key, trust string
		lines          []string
	}
	var owners []*owner
	for i, id := range []string{"a", "b"} {
		k, tr := party("owner", "owner-"+id)
		o := &owner{id: id, key: k, trust: tr}
		owners = append(owners, o)
		pol := file("policy-"+id+".yaml", fmt.Sprintf("stream: meter-%s\nrules:\n  - name: belgium\n    stage: placement\n    expr: \"node.region.startsWith('be-')\"\n  - name: grid-only\n    stage: recipient\n    expr: \"recipient.name == 'grid-operator'\"\n", id))
		run("owner", "register-stream", "--key", k, "--trust", tr, "--stream", "meter-"+id, "--schema", "household:string,kwh:float,ts:int",
			"--policy", pol, "--site", "edge-"+id)
		for j := range perStream {
			ts := start + int64(j)*100
			kwh := float64((i+1)*(j%7+1)) / 8
			g.want[ts-ts%5000] += kwh
			o.lines = append(o.lines, fmt.Sprintf(`{"household": "house-%s-%d", "kwh": %g, "ts": %d}`, id, j%3, kwh, ts))
		}
	}
	// The regional stage may also run in the cloud, where this topology's
	// only non-edge workers are.
	spec, err := os.ReadFile(exampleFile(t, "smartgrid/balance.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	geoSpec := strings.Replace(string(spec), "tiers: [regional]", "tiers: [regional, cloud]", 1)
	if geoSpec == string(spec) {
		t.Fatal("balance.yaml no longer places its regional stage with tiers: [regional]")
	}
	var sub struct {
		Result struct {
			Digest string `json:"digest"`
		} `json:"result"`
	}
	if err := json.Unmarshal([]byte(run("service", "submit", "--key", g.grid, "--trust", g.gridTrust, "--json", file("balance.yaml", geoSpec))), &sub); err != nil || sub.Result.Digest == "" {
		t.Fatalf("service submit: %v %+v", err, sub)
	}
	for _, o := range owners {
		run("owner", "approve", "--key", o.key, "--trust", o.trust, "--stream", "meter-"+o.id, "--service", sub.Result.Digest)
	}
	run("service", "deploy", "--key", g.grid, "--trust", g.gridTrust, "--service", "balance")

	// The gateways publish at their owner's site.
	g.publishing = time.Now()
	for _, o := range owners {
		cmd := exec.CommandContext(ctx, g.bin, "owner", "publish", "--key", o.key, "--trust", o.trust, "--stream", "meter-"+o.id,
			"--input", "-", "--time-field", "ts", "--nats", g.ep.Sites["edge-"+o.id].NATSURL, "--batch", "8")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		logf, err := os.OpenFile(filepath.Join(g.dir, "up", "logs", "publish-"+o.id+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		g.pubs = append(g.pubs, cmd)
		g.pubWG.Go(func() {
			w := bufio.NewWriter(stdin)
			for j, l := range o.lines {
				fmt.Fprintln(w, l)
				if j%8 == 7 {
					_ = w.Flush()
				}
				time.Sleep(25 * time.Millisecond)
			}
			_ = w.Flush()
			_ = stdin.Close()
		})
	}
	return g
}

// waitPublished waits until both gateways have sealed their last record.
func (g *geoRun) waitPublished() {
	g.t.Helper()
	g.pubWG.Wait()
	for _, p := range g.pubs {
		if err := p.Wait(); err != nil {
			g.t.Fatalf("owner publish failed: %v", err)
		}
	}
}

// checkResults waits for the complete output (every partition's last frame)
// and checks it equals the failure-free result exactly: one row per window,
// each with the exact sum.
func (g *geoRun) checkResults(within time.Duration) {
	g.t.Helper()
	checkBalanceOutput(g.ctx, g.t, g.bin, g.grid, g.gridTrust, g.ep.NATSURL, g.want, within)
}

// wan runs `sealflow infra wan` against the deployment.
func (g *geoRun) wan(args ...string) []WANLinkView {
	g.t.Helper()
	out, err := exec.CommandContext(g.ctx, g.bin, append([]string{"infra", "wan", "--dir", filepath.Join(g.dir, "up"), "--json"}, args...)...).Output()
	if err != nil {
		g.t.Fatalf("infra wan %v: %v", args, err)
	}
	var links []WANLinkView
	if err := json.Unmarshal(out, &links); err != nil {
		g.t.Fatalf("infra wan %v: %v\n%s", args, err, out)
	}
	return links
}

// exchangeState returns the number of messages of intermediate stream x-a in
// edge-a's buffer and in the hub's copy.
func (g *geoRun) exchangeState() (site, hub uint64, err error) {
	name := confidential.IngestStreamPrefix + worker.IntermediateScope("balance", "x-a")
	count := func(url string) (uint64, error) {
		nc, err := substrate.Connect(g.ctx, url, "geo-test")
		if err != nil {
			return 0, err
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return 0, err
		}
		s, err := js.Stream(g.ctx, name)
		if err != nil {
			return 0, err
		}
		info, err := s.Info(g.ctx)
		if err != nil {
			return 0, err
		}
		return info.State.Msgs, nil
	}
	if site, err = count(g.ep.Sites["edge-a"].NATSURL); err != nil {
		return 0, 0, err
	}
	hub, err = count(g.ep.NATSURL)
	return site, hub, err
}

// readEndpoints re-reads endpoints.json (up rewrites it when it restarts a
// worker).
func (g *geoRun) readEndpoints() Endpoints {
	g.t.Helper()
	var ep Endpoints
	b, err := os.ReadFile(filepath.Join(g.dir, "up", "endpoints.json"))
	if err == nil {
		err = json.Unmarshal(b, &ep)
	}
	if err != nil {
		g.t.Fatal(err)
	}
	return ep
}

// restarts reads a worker's sealflow_worker_task_restarts_total.
func restarts(ctx context.Context, metricsAddr string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "sealflow_worker_task_restarts_total") {
			f := strings.Fields(l)
			return strconv.ParseFloat(f[len(f)-1], 64)
		}
	}
	return 0, fmt.Errorf("%s serves no sealflow_worker_task_restarts_total", metricsAddr)
}

// TestGeoOutageExactlyOnce cuts the link between edge site edge-a and the
// cloud for 30 s while the gateways publish, with `sealflow infra wan`. The
// gateway at edge-a keeps sealing into the site's own JetStream; after the
// link returns the edge task's output reaches the hub through the cross-site
// exchange and the output is exact: no window lost, none twice, every sum
// exact. It logs how long the backlog took to drain.
func TestGeoOutageExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a topology of processes through a 30 s outage")
	}
	outage := 30 * time.Second
	if v := os.Getenv("SEALFLOW_GEO_OUTAGE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("SEALFLOW_GEO_OUTAGE=%q: %v", v, err)
		}
		outage = d
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	// Nodes silent through the outage must not be declared lost. The
	// gateways publish for 45 s, so the edge stage's input ends after the
	// link returns (see the note on final checkpoints in docs/deploy.md).
	g := startGeoRun(ctx, t, 1800, "--node-timeout", (outage + time.Minute).String())

	time.Sleep(4 * time.Second)
	before := g.wan()
	links := g.wan("--site", "edge-a", "--down")
	if len(links) != 1 || !links[0].Down {
		t.Fatalf("infra wan --down: %+v", links)
	}
	down := time.Now()
	t.Logf("%s: edge-a's link down (%v after the gateways started)", down.Format("15:04:05.000"), down.Sub(g.publishing).Round(time.Millisecond))
	time.Sleep(outage / 2)
	siteMid, _, err := g.exchangeState()
	if err != nil {
		t.Logf("x-a at edge-a mid-outage: %v", err)
	}
	time.Sleep(outage - outage/2)
	_, hubBefore, err := g.exchangeState()
	if err != nil {
		t.Fatalf("x-a before the link returns: %v", err)
	}
	links = g.wan("--site", "edge-a", "--up")
	if len(links) != 1 || links[0].Down {
		t.Fatalf("infra wan --up: %+v", links)
	}
	up := time.Now()
	t.Logf("%s: edge-a's link up after %v (x-a frames at edge-a mid-outage: %d)", up.Format("15:04:05.000"), up.Sub(down).Round(time.Millisecond), siteMid)
	// The backlog reaches the hub: the edge task commits what it computed
	// during the outage at its first accepted checkpoint, into edge-a's
	// buffer, and the hub's source copies it.
	var reached time.Time
	err = waitUntil(ctx, 2*time.Minute, func() bool {
		_, hub, err := g.exchangeState()
		if err == nil && hub > hubBefore {
			reached = time.Now()
			return true
		}
		return false
	})
	if err != nil {
		t.Fatalf("nothing of x-a reached the hub after the link returned (%d frames there before)", hubBefore)
	}
	t.Logf("backlog: the hub's copy of x-a grew beyond its %d pre-return frames %v after the link returned", hubBefore, reached.Sub(up).Round(time.Millisecond))
	g.waitPublished()
	published := time.Now()

	// The backlog drains: the hub's copy catches up with the site's buffer.
	var site, hub uint64
	err = waitUntil(ctx, 2*time.Minute, func() bool {
		var err error
		site, hub, err = g.exchangeState()
		return err == nil && site > 0 && site == hub
	})
	if err != nil {
		t.Fatalf("hub copy of x-a holds %d messages, edge-a's buffer %d", hub, site)
	}
	g.checkResults(3 * time.Minute)
	done := time.Now()
	after := g.wan()
	var upBytes, resets int64
	for i, l := range after {
		if l.Site == "edge-a" {
			upBytes = l.Stats.Up - before[i].Stats.Up
			resets = l.Stats.Reset
		}
	}
	if resets == 0 {
		t.Errorf("the outage reset no connection through edge-a's link")
	}
	// What shipping the raw readings to the cloud would carry at least: the
	// sealed owner stream stored at the site.
	raw := uint64(0)
	if nc, err := substrate.Connect(ctx, g.ep.Sites["edge-a"].NATSURL, "geo-test"); err == nil {
		if js, err := jetstream.New(nc); err == nil {
			if s, err := js.Stream(ctx, confidential.IngestStreamPrefix+"meter-a"); err == nil {
				if info, err := s.Info(ctx); err == nil {
					raw = info.State.Bytes
				}
			}
		}
		nc.Close()
	}
	total := int64(0)
	for _, l := range after {
		if l.Site == "edge-a" {
			total = l.Stats.Up
		}
	}
	t.Logf("WAN: edge-a uplink carried %d bytes in all (pre-aggregated x-a, checkpoints, control); the raw sealed meter-a stream at the site is %d bytes", total, raw)
	t.Logf("backlog drained: complete exact output %v after the link returned (%v after the gateways finished); x-a: %d frames at edge-a, %d at the hub; edge-a uplink carried %d bytes since just before the outage",
		done.Sub(up).Round(time.Millisecond), done.Sub(published).Round(time.Millisecond), site, hub, upBytes)
}

// TestGeoEdgeFailureRestartsOnlyItsSite kills the worker process of edge
// site edge-a with SIGKILL while the pipeline runs. `sealflow up` starts a new
// worker at the site, the orchestrator moves the lost node's task to it and
// the task restores from its checkpoint; the cloud's worker keeps its
// process and restarts no task, and so does edge-b's. The output is exact.
func TestGeoEdgeFailureRestartsOnlyItsSite(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a topology of processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	g := startGeoRun(ctx, t, 800, "--node-timeout", "3s")
	byName := func(ep Endpoints) map[string]WorkerEndpoint {
		m := map[string]WorkerEndpoint{}
		for _, w := range ep.Workers {
			m[w.Site] = w
		}
		return m
	}
	first := byName(g.ep)
	if len(first) != 3 {
		t.Fatalf("workers in endpoints.json: %+v", g.ep.Workers)
	}
	time.Sleep(8 * time.Second)
	victim := first["edge-a"]
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: SIGKILL edge-a's worker (pid %d)", time.Now().Format("15:04:05.000"), victim.PID)
	err := waitUntil(ctx, 30*time.Second, func() bool { return byName(g.readEndpoints())["edge-a"].Starts == 2 })
	if err != nil {
		t.Fatalf("up did not restart edge-a's worker: %+v", g.readEndpoints().Workers)
	}
	g.waitPublished()
	g.checkResults(3 * time.Minute)

	last := byName(g.readEndpoints())
	for _, site := range []string{"cloud", "edge-b"} {
		if last[site].PID != first[site].PID || last[site].Starts != 1 {
			t.Errorf("%s's worker: pid %d (%d starts), was %d", site, last[site].PID, last[site].Starts, first[site].PID)
		}
		n, err := restarts(ctx, last[site].Metrics)
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%s's worker restarted %v tasks; an edge failure must restart only the edge site's", site, n)
		}
	}
	if last["edge-a"].PID == victim.PID {
		t.Errorf("edge-a's worker still has pid %d", victim.PID)
	}
}
