package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/confidential"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/substrate"
	"github.com/sealflow/sealflow/worker"
)

// The geo benchmarks of docs/benchmarks.md ("Geo: the balance pipeline across
// sites"). They start `sealflow up --topology` several times for minutes, so
// they run only with SEALFLOW_GEO_BENCH=1:
//
//	SEALFLOW_GEO_BENCH=1 go test -count=1 -run 'TestGeoBench' -v ./cmd/sealflow/
//
// Each logs its figures with t.Logf; the checks they make (exact output, every
// probe seen) fail the test, the figures never do.

// geoBenchEnabled skips t unless SEALFLOW_GEO_BENCH is set.
func geoBenchEnabled(t *testing.T) {
	t.Helper()
	if os.Getenv("SEALFLOW_GEO_BENCH") == "" || testing.Short() {
		t.Skip("a geo benchmark: set SEALFLOW_GEO_BENCH=1 to run it (minutes of processes on emulated WAN links)")
	}
}

// geoBenchTopology is geoTopology with both edge links at latencyMs and
// 10 Mbit/s.
func geoBenchTopology(latencyMs int) string {
	return fmt.Sprintf(`name: geo-bench
sites:
  - {name: cloud, tier: cloud, region: be-brussels, nats: {role: hub}, workers: 1}
  - {name: edge-a, tier: edge, region: be-antwerp, parent: cloud, nats: {role: leafnode}, workers: 1, link: {latencyMs: %d, bandwidth: 10Mbit}}
  - {name: edge-b, tier: edge, region: be-ghent, parent: cloud, nats: {role: leafnode}, workers: 1, link: {latencyMs: %d, bandwidth: 10Mbit}}
`, latencyMs, latencyMs)
}

// The pipelines the benchmarks compare, as variants of
// examples/smartgrid/balance.yaml (the regional stage may run in the cloud,
// where these topologies' only non-edge worker is).
const (
	// pipelinePreAgg is balance.yaml: 5 s sums per household at the edge,
	// so only the sums cross the WAN link.
	pipelinePreAgg = "pre-aggregated"
	// pipelineRaw ships every reading to the cloud: the edge stages pass
	// the readings through and the regional stage sums them per 5 s window
	// (the same output as pipelinePreAgg).
	pipelineRaw = "raw"
	// pipelinePassThrough has no window at all: each reading goes through
	// the edge stage and the cloud stage unchanged into the output, so the
	// time from a reading to its output row is the pipeline's latency.
	pipelinePassThrough = "pass-through"
)

// geoBenchSpec returns the manifest of one of the pipelines.
func geoBenchSpec(t *testing.T, pipeline string) string {
	t.Helper()
	spec, err := os.ReadFile(exampleFile(t, "smartgrid/balance.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(spec), "tiers: [regional]", "tiers: [regional, cloud]", 1)
	if s == string(spec) {
		t.Fatal("balance.yaml no longer places its regional stage with tiers: [regional]")
	}
	if pipeline == pipelinePreAgg {
		return s
	}
	head, _, ok := strings.Cut(s, "stages:\n")
	if !ok {
		t.Fatal("balance.yaml has no stages")
	}
	const meter = `      schemas:
        meter: [{name: household, type: string}, {name: kwh, type: float}, {name: ts, type: int}]
`
	edge := func(id string) string {
		return "    edge-" + id + ":\n      name: edge-" + id + "\n" + meter + `      nodes:
        - {id: src, kind: source, params: {stream: meter-` + id + `, schema: meter, timeField: ts}}
        - {id: out, kind: sink, inputs: [src], params: {stream: x-` + id + `}}
`
	}
	regional := "    regional:\n      name: regional\n" + meter + `      nodes:
        - {id: a, kind: source, params: {stream: x-a, schema: meter, timeField: ts, watermark: {maxOutOfOrdernessMs: 10000}}}
        - {id: b, kind: source, params: {stream: x-b, schema: meter, timeField: ts, watermark: {maxOutOfOrdernessMs: 10000}}}
        - {id: all, kind: union, inputs: [a, b]}
`
	if pipeline == pipelineRaw {
		regional += `        - {id: w, kind: window-aggregate, inputs: [all], params: {window: {type: tumbling, sizeMs: 5000}, aggregates: [{fn: sum, field: kwh, as: kwh}]}}
        - {id: out, kind: sink, inputs: [w], params: {stream: balance-out}}
`
	} else {
		regional += "        - {id: out, kind: sink, inputs: [all], params: {stream: balance-out}}\n"
	}
	return head + "stages:\n" + edge("a") + edge("b") + regional
}

// geoBench is one deployment of a benchmark pipeline on geoBenchTopology.
type geoBench struct {
	t         *testing.T
	ctx       context.Context
	bin, dir  string
	ep        Endpoints
	grid      string
	gridTrust string
	owners    map[string][2]string // id → key, trust
}

// startGeoBench starts `sealflow up --topology` with links of latencyMs and
// deploys pipeline, without publishing anything.
func startGeoBench(ctx context.Context, t *testing.T, latencyMs int, pipeline string, upFlags ...string) *geoBench {
	t.Helper()
	g := &geoBench{t: t, ctx: ctx, bin: sealflowBinary(t), dir: t.TempDir(), owners: map[string][2]string{}}
	topo := writeTestFile(t, filepath.Join(g.dir, "topo.yaml"), geoBenchTopology(latencyMs))
	g.ep = startUp(ctx, t, g.bin, g.dir, append([]string{"--topology", topo}, upFlags...)...)
	run := sealflowRunner(ctx, t, g.bin)
	file := func(name, content string) string { return writeTestFile(t, filepath.Join(g.dir, name), content) }
	g.grid, g.gridTrust = registerPartyCLI(run, g.ep, g.dir, "provider", "grid-operator")
	for _, id := range []string{"a", "b"} {
		k, tr := registerPartyCLI(run, g.ep, g.dir, "owner", "owner-"+id)
		g.owners[id] = [2]string{k, tr}
		pol := file("policy-"+id+".yaml", fmt.Sprintf("stream: meter-%s\nrules:\n  - name: belgium\n    stage: placement\n    expr: \"node.region.startsWith('be-')\"\n  - name: grid-only\n    stage: recipient\n    expr: \"recipient.name == 'grid-operator'\"\n", id))
		run("owner", "register-stream", "--key", k, "--trust", tr, "--stream", "meter-"+id, "--schema", "household:string,kwh:float,ts:int",
			"--policy", pol, "--site", "edge-"+id)
	}
	var sub struct {
		Result struct {
			Digest string `json:"digest"`
		} `json:"result"`
	}
	if err := json.Unmarshal([]byte(run("service", "submit", "--key", g.grid, "--trust", g.gridTrust, "--json", file("balance.yaml", geoBenchSpec(t, pipeline)))), &sub); err != nil || sub.Result.Digest == "" {
		t.Fatalf("service submit: %v %+v", err, sub)
	}
	for id, o := range g.owners {
		run("owner", "approve", "--key", o[0], "--trust", o[1], "--stream", "meter-"+id, "--service", sub.Result.Digest)
	}
	run("service", "deploy", "--key", g.grid, "--trust", g.gridTrust, "--service", "balance")
	return g
}

// gateway is one owner's `owner publish` process at its site.
type gateway struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan error
}

// gateway starts owner id's gateway at its edge site, sealing frames of batch
// records; it publishes the lines sent on the returned gateway's channel,
// and ends when the channel is closed.
func (g *geoBench) gateway(id string, batch int) *gateway {
	g.t.Helper()
	o := g.owners[id]
	cmd := exec.CommandContext(g.ctx, g.bin, "owner", "publish", "--key", o[0], "--trust", o[1], "--stream", "meter-"+id,
		"--input", "-", "--time-field", "ts", "--nats", g.ep.Sites["edge-"+id].NATSURL, "--batch", fmt.Sprint(batch))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		g.t.Fatal(err)
	}
	logf, err := os.OpenFile(filepath.Join(g.dir, "up", "logs", "publish-"+id+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		g.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	gw := &gateway{cmd: cmd, lines: make(chan string, 1024), done: make(chan error, 1)}
	go func() {
		w := bufio.NewWriter(stdin)
		n := 0
		for l := range gw.lines {
			fmt.Fprintln(w, l)
			n++
			if n%batch == 0 {
				_ = w.Flush()
			}
		}
		_ = w.Flush()
		_ = stdin.Close()
		gw.done <- cmd.Wait()
		logf.Close()
	}()
	return gw
}

// wait closes the gateway's input and waits for it to exit.
func (gw *gateway) wait(t *testing.T) {
	t.Helper()
	close(gw.lines)
	if err := <-gw.done; err != nil {
		t.Fatalf("owner publish failed: %v", err)
	}
}

// meterLoad publishes readings of households meters per site, each one
// reading per second (so households readings per second and site), for
// seconds seconds, in event time from start. It returns the exact per-window
// sums the balance output must hold and how many readings each site got.
func (g *geoBench) meterLoad(households, seconds int, start int64) (want map[int64]float64, perSite int) {
	g.t.Helper()
	want = map[int64]float64{}
	gws := map[string]*gateway{"a": g.gateway("a", 8), "b": g.gateway("b", 8)}
	var wg sync.WaitGroup
	for i, id := range []string{"a", "b"} {
		var lines []string
		for j := range households * seconds {
			ts := start + int64(j)*1000/int64(households)
			kwh := float64((i+1)*(j%7+1)) / 8
			want[ts-ts%5000] += kwh
			lines = append(lines, fmt.Sprintf(`{"household": "house-%s-%d", "kwh": %g, "ts": %d}`, id, j%households, kwh, ts))
		}
		gw := gws[id]
		wg.Go(func() {
			// Readings go out in steps of 50 ms at the target rate.
			begin := time.Now()
			step := max(households/20, 1)
			for j := 0; j < len(lines); j += step {
				for _, l := range lines[j:min(j+step, len(lines))] {
					gw.lines <- l
				}
				due := begin.Add(time.Duration(j+step) * time.Second / time.Duration(households))
				time.Sleep(time.Until(due))
			}
		})
	}
	wg.Wait()
	for _, gw := range gws {
		gw.wait(g.t)
	}
	return want, households * seconds
}

// link returns the view of site's uplink.
func (g *geoBench) link(site string) WANLinkView {
	g.t.Helper()
	out, err := exec.CommandContext(g.ctx, g.bin, "infra", "wan", "--dir", filepath.Join(g.dir, "up"), "--json").Output()
	if err != nil {
		g.t.Fatalf("infra wan: %v", err)
	}
	var links []WANLinkView
	if err := json.Unmarshal(out, &links); err != nil {
		g.t.Fatalf("infra wan: %v\n%s", err, out)
	}
	for _, l := range links {
		if l.Site == site {
			return l
		}
	}
	g.t.Fatalf("no link of site %s in %+v", site, links)
	return WANLinkView{}
}

// setDown starts or ends site's outage.
func (g *geoBench) setDown(site string, down bool) {
	g.t.Helper()
	flag := "--up"
	if down {
		flag = "--down"
	}
	if out, err := exec.CommandContext(g.ctx, g.bin, "infra", "wan", "--dir", filepath.Join(g.dir, "up"), "--json", "--site", site, flag).CombinedOutput(); err != nil {
		g.t.Fatalf("infra wan %s %s: %v\n%s", site, flag, err, out)
	}
}

// frameAt is one message of a stream: when the server stored it and its size.
type frameAt struct {
	at   time.Time
	size int
}

// streamFrames returns the JetStream timestamp and data size of every
// message of stream at the server url, in stream order.
func streamFrames(ctx context.Context, url, stream string) ([]frameAt, error) {
	nc, err := substrate.Connect(ctx, url, "geo-bench")
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	var out []frameAt
	if info.State.Msgs == 0 {
		return nil, nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	for uint64(len(out)) < info.State.Msgs {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, err
		}
		n := 0
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				return nil, err
			}
			out = append(out, frameAt{md.Timestamp, len(m.Data())})
			n++
		}
		if n == 0 {
			return nil, fmt.Errorf("stream %s: read %d of %d messages", stream, len(out), info.State.Msgs)
		}
	}
	return out, nil
}

// streamCount returns the number of messages of stream at the server url.
func streamCount(ctx context.Context, url, stream string) (uint64, error) {
	n, _, err := streamSize(ctx, url, stream)
	return n, err
}

// streamSize returns the number of messages and bytes of stream at the
// server url.
func streamSize(ctx context.Context, url, stream string) (msgs, bytes uint64, err error) {
	nc, err := substrate.Connect(ctx, url, "geo-bench")
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, 0, err
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	return info.State.Msgs, info.State.Bytes, nil
}

// TestGeoBenchWANBytes measures the bytes edge-a's uplink carries for the
// balance pipeline with edge pre-aggregation and with the raw readings
// shipped to the cloud, interleaved (SEALFLOW_GEO_BENCH_RUNS pairs, 2 by
// default): households meters per site at one reading per second each
// (SEALFLOW_GEO_BENCH_METERS, 200 by default) for 60 s, checkpoints every
// SEALFLOW_GEO_BENCH_CHECKPOINT (500 ms by default). It first measures the
// link idle (deployed, nothing published) for 10 s, the control traffic's
// rate. Both variants' output must be exact.
func TestGeoBenchWANBytes(t *testing.T) {
	geoBenchEnabled(t)
	meters := envInt(t, "SEALFLOW_GEO_BENCH_METERS", 200)
	runs := envInt(t, "SEALFLOW_GEO_BENCH_RUNS", 2)
	ckpt := envDuration(t, "SEALFLOW_GEO_BENCH_CHECKPOINT", 500*time.Millisecond)
	const seconds = 60
	for r := range runs {
		for _, pipeline := range []string{pipelinePreAgg, pipelineRaw} {
			t.Run(fmt.Sprintf("%s/%d", pipeline, r+1), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
				defer cancel()
				g := startGeoBench(ctx, t, 20, pipeline, "--checkpoint-interval", ckpt.String())
				time.Sleep(5 * time.Second) // the tasks start
				idle0 := g.link("edge-a").Stats
				time.Sleep(10 * time.Second)
				idle1 := g.link("edge-a").Stats
				begin := time.Now()
				want, n := g.meterLoad(meters, seconds, 1764057600000)
				checkBalanceOutput(ctx, t, g.bin, g.grid, g.gridTrust, g.ep.NATSURL, want, 3*time.Minute)
				end := time.Now()
				l := g.link("edge-a").Stats
				up, down := l.Up-idle1.Up, l.Down-idle1.Down
				idleUp := float64(idle1.Up-idle0.Up) / 10
				dataUp := float64(up) - idleUp*end.Sub(begin).Seconds()
				raw, _ := streamCount(ctx, g.ep.Sites["edge-a"].NATSURL, confidential.IngestStreamPrefix+"meter-a")
				xa, xaBytes, _ := streamSize(ctx, g.ep.NATSURL, confidential.IngestStreamPrefix+worker.IntermediateScope("balance", "x-a"))
				t.Logf("GEO-WAN %s, checkpoints every %v: %d meters × 1/s for %d s = %d readings at edge-a (%d gateway frames); edge-a uplink: %d bytes up, %d down in %v until the exact output; idle %.0f B/s up; up %.1f B/reading, %.1f B/reading above idle; x-a at the hub %d frames, %d bytes (%.1f B/reading)",
					pipeline, ckpt, meters, seconds, n, raw, up, down, end.Sub(begin).Round(time.Millisecond), idleUp, float64(up)/float64(n), dataUp/float64(n), xa, xaBytes, float64(xaBytes)/float64(n))
			})
		}
	}
}

// TestGeoBenchLatency measures the end-to-end latency of the pass-through
// pipeline (edge stage, then cloud stage, then the output) with 5, 20 and
// 50 ms links, interleaved (SEALFLOW_GEO_BENCH_RUNS rounds, 2 by default): probes of one reading, one frame each, at
// edge-a, every 500 ms for 40 s. For each probe it reads the JetStream timestamps of its
// frame in edge-a's ingest stream (stored at the edge), of the edge stage's
// committed x-a frame at edge-a, of that frame's copy at the hub, and of the
// output frame at the hub, all on one machine's clock, and logs p50/p99 of
// each tier's latency from the moment the probe was written to the gateway.
func TestGeoBenchLatency(t *testing.T) {
	geoBenchEnabled(t)
	runs := envInt(t, "SEALFLOW_GEO_BENCH_RUNS", 2)
	for r := range runs {
		for _, lat := range []int{5, 20, 50} {
			geoBenchLatency(t, fmt.Sprintf("%dms/%d", lat, r+1), lat)
		}
	}
}

// geoBenchLatency is one run of TestGeoBenchLatency with links of latencyMs.
func geoBenchLatency(t *testing.T, name string, lat int) {
	t.Run(name, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		ckpt := envDuration(t, "SEALFLOW_GEO_BENCH_CHECKPOINT", 200*time.Millisecond)
		g := startGeoBench(ctx, t, lat, pipelinePassThrough, "--checkpoint-interval", ckpt.String())
		time.Sleep(5 * time.Second)
		gw := g.gateway("a", 1)
		step := probeStep(t)
		var sent []time.Time
		for range 80 {
			sent = append(sent, time.Now())
			// Identical probes: a frame's size says how many it holds.
			gw.lines <- fmt.Sprintf(`{"household": "house-a-0", "kwh": 1, "ts": %d}`, geoProbeTime)
			time.Sleep(500 * time.Millisecond)
		}
		// The gateway ends its stream at once: a reader takes a stream
		// silent for 5 s without its last frame for a truncated one.
		gw.wait(t)
		out := confidential.OutputStreamPrefix + "balance-out"
		xa := confidential.IngestStreamPrefix + worker.IntermediateScope("balance", "x-a")
		// The output is complete when it holds a frame per probe (or
		// stops growing: matchProbes then says what is missing).
		var outT []frameAt
		last, since := -1, time.Now()
		err := waitUntil(ctx, 2*time.Minute, func() bool {
			var err error
			outT, err = streamFrames(ctx, g.ep.NATSURL, out)
			if len(outT) != last {
				last, since = len(outT), time.Now()
			}
			return err == nil && (probesIn(outT, step, len(sent)) || time.Since(since) > 15*time.Second)
		})
		if err != nil {
			t.Fatalf("the output holds %d frames, want one per probe (%d)", len(outT), len(sent))
		}
		ingest, err1 := streamFrames(ctx, g.ep.Sites["edge-a"].NATSURL, confidential.IngestStreamPrefix+"meter-a")
		edge, err2 := streamFrames(ctx, g.ep.Sites["edge-a"].NATSURL, xa)
		hub, err3 := streamFrames(ctx, g.ep.NATSURL, xa)
		if err1 != nil || err2 != nil || err3 != nil {
			t.Fatalf("reading timestamps: %v %v %v", err1, err2, err3)
		}
		t.Logf("frames: %d probes, %d ingest at edge-a, %d x-a at edge-a, %d x-a at the hub, %d output", len(sent), len(ingest), len(edge), len(hub), len(outT))
		for _, tier := range []struct {
			name   string
			frames []frameAt
		}{{"ingest at edge-a", ingest}, {"edge stage's x-a at edge-a", edge}, {"x-a copied to the hub", hub}, {"cloud stage's output at the hub", outT}} {
			d, err := matchProbes(sent, tier.frames, step)
			if err != nil {
				t.Errorf("%s: %v", tier.name, err)
				continue
			}
			t.Logf("GEO-LATENCY link %d ms, checkpoints every %v: %s: p50 %v p99 %v max %v (%d probes)", lat, ckpt, tier.name,
				pct(d, 50), pct(d, 99), pct(d, 100), len(d))
		}
	})
}

// TestGeoBenchDrain cuts edge-a's link for 30 s while both sites' meters
// publish (SEALFLOW_GEO_BENCH_METERS readings per second and site, 200 by
// default, 75 s in all, the raw pipeline so the backlog is the readings
// themselves) and measures how long after the link returns the hub's copy
// of x-a catches up with edge-a's buffer and (raw pipeline) with every
// reading published until the return, and the exact output.
func TestGeoBenchDrain(t *testing.T) {
	geoBenchEnabled(t)
	meters := envInt(t, "SEALFLOW_GEO_BENCH_METERS", 200)
	for _, pipeline := range []string{pipelineRaw, pipelinePreAgg} {
		t.Run(pipeline, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
			defer cancel()
			g := startGeoBench(ctx, t, 20, pipeline, "--checkpoint-interval", "500ms", "--node-timeout", "2m")
			time.Sleep(5 * time.Second)
			xa := confidential.IngestStreamPrefix + worker.IntermediateScope("balance", "x-a")
			ingest := confidential.IngestStreamPrefix + "meter-a"
			type result struct {
				want map[int64]float64
				n    int
			}
			res := make(chan result, 1)
			begin := time.Now()
			go func() {
				w, n := g.meterLoad(meters, 75, 1764057600000)
				res <- result{w, n}
			}()
			time.Sleep(10 * time.Second)
			before := g.link("edge-a").Stats
			g.setDown("edge-a", true)
			time.Sleep(30 * time.Second)
			site, _ := streamCount(ctx, g.ep.Sites["edge-a"].NATSURL, xa)
			hubBefore, _ := streamCount(ctx, g.ep.NATSURL, xa)
			ingested, _ := streamCount(ctx, g.ep.Sites["edge-a"].NATSURL, ingest)
			g.setDown("edge-a", false)
			up := time.Now()
			// The backlog is what edge-a's buffer held beyond the hub's copy
			// when the link returned; drained when the hub's copy reaches
			// that count.
			var caught time.Time
			err := waitUntil(ctx, 3*time.Minute, func() bool {
				hub, err := streamCount(ctx, g.ep.NATSURL, xa)
				if err == nil && hub >= site {
					caught = time.Now()
					return true
				}
				return false
			})
			if err != nil {
				t.Fatalf("the hub's copy of x-a did not reach the %d frames edge-a held when the link returned", site)
			}
			// The raw pipeline's edge stage commits one x-a frame per
			// gateway frame (checked below), so the hub has caught up with
			// the readings published until the return when its copy of x-a
			// holds as many frames as edge-a's ingest stream held then.
			var current time.Time
			if pipeline == pipelineRaw {
				err := waitUntil(ctx, 3*time.Minute, func() bool {
					hub, err := streamCount(ctx, g.ep.NATSURL, xa)
					if err == nil && hub >= ingested {
						current = time.Now()
						return true
					}
					return false
				})
				if err != nil {
					t.Fatalf("the hub's copy of x-a did not reach the %d frames edge-a had ingested when the link returned", ingested)
				}
			}
			r := <-res
			published := time.Now()
			checkBalanceOutput(ctx, t, g.bin, g.grid, g.gridTrust, g.ep.NATSURL, r.want, 3*time.Minute)
			done := time.Now()
			l := g.link("edge-a").Stats
			finalIngest, _ := streamCount(ctx, g.ep.Sites["edge-a"].NATSURL, ingest)
			finalHub, _ := streamCount(ctx, g.ep.NATSURL, xa)
			if pipeline == pipelineRaw {
				t.Logf("GEO-DRAIN raw: edge-a had ingested %d gateway frames when the link returned; the hub's x-a held as many %v after the return (at the end: %d ingest frames, %d x-a frames at the hub)",
					ingested, current.Sub(up).Round(time.Millisecond), finalIngest, finalHub)
			}
			t.Logf("GEO-DRAIN %s: %d meters/s per site, link down 30 s from %v after publishing began; x-a at the return: %d frames at edge-a, %d at the hub; the hub's copy reached edge-a's count %v after the link returned; gateways finished %v after the return, exact output %v after they finished; edge-a uplink carried %d bytes from just before the outage, %d connections reset",
				pipeline, meters, up.Add(-30*time.Second).Sub(begin).Round(time.Millisecond), site, hubBefore, caught.Sub(up).Round(time.Millisecond),
				published.Sub(up).Round(time.Millisecond), done.Sub(published).Round(time.Millisecond), l.Up-before.Up, l.Reset-before.Reset)
		})
	}
}

// probeStep is how many bytes one more probe record adds to a frame: the
// binary batch encoding (engine/record) is additive, one record after another.
func probeStep(t *testing.T) int {
	t.Helper()
	schema := &record.Schema{Fields: []record.Field{{Name: "household", Type: record.TypeString}, {Name: "kwh", Type: record.TypeFloat}, {Name: "ts", Type: record.TypeInt}}}
	probe := record.Record{Time: geoProbeTime, Values: []record.Value{record.String("house-a-0"), record.Float(1), record.Int(geoProbeTime)}}
	one, err1 := record.AppendBatch(nil, schema, &record.Batch{Records: []record.Record{probe}})
	two, err2 := record.AppendBatch(nil, schema, &record.Batch{Records: []record.Record{probe, probe}})
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	return len(two) - len(one)
}

// geoProbeTime is the event time of every probe.
const geoProbeTime = int64(1764057600000)

// probeCounts returns how many of probes identical probe records each frame
// holds, from its size: each probe adds step bytes, so a frame of k probes
// has size one + (k-1)*step, and a smaller frame holds none (a stream's last
// frame). The size one of a one-probe frame is the largest that is a whole
// number of steps below every larger frame and makes the frames hold probes
// records in all (so a frame of one probe need not be among them); ok is
// false when there is none.
func probeCounts(frames []frameAt, step, probes int) (k []int, ok bool) {
	if len(frames) == 0 {
		return nil, probes == 0
	}
	// Candidates for one: each frame's size and whole steps below it,
	// largest first.
	var cands []int
	for _, f := range frames {
		for one := f.size; one > 0 && one > f.size-probes*step; one -= step {
			cands = append(cands, one)
		}
	}
	slices.Sort(cands)
	cands = slices.Compact(cands)
	slices.Reverse(cands)
	for _, one := range cands {
		k = make([]int, len(frames))
		n, whole := 0, true
		for i, f := range frames {
			if f.size >= one {
				whole = whole && (f.size-one)%step == 0
				k[i] = 1 + (f.size-one)/step
				n += k[i]
			}
		}
		if whole && n == probes {
			return k, true
		}
	}
	return nil, false
}

// probesIn says whether frames hold probes probe records.
func probesIn(frames []frameAt, step, probes int) bool {
	_, ok := probeCounts(frames, step, probes)
	return ok
}

// matchProbes pairs the probes sent, in order, with the probe records of
// frames, in order (a frame holding k probes serves the next k), and
// returns each probe's latency: when its frame was stored minus when it was
// sent. It fails when the frames' sizes cannot hold the probes sent, or
// when a frame precedes its probe: the pairing would be wrong.
func matchProbes(sent []time.Time, frames []frameAt, step int) ([]time.Duration, error) {
	counts, ok := probeCounts(frames, step, len(sent))
	if !ok {
		return nil, fmt.Errorf("the sizes of %d frames do not add up to the %d probes sent", len(frames), len(sent))
	}
	var d []time.Duration
	for i, k := range counts {
		for range k {
			s := sent[len(d)]
			if frames[i].at.Before(s) {
				return nil, fmt.Errorf("frame %d stored %v before its probe was sent", i, s.Sub(frames[i].at))
			}
			d = append(d, frames[i].at.Sub(s))
		}
	}
	return d, nil
}

// pct returns the p-th percentile (nearest rank) of d; p 100 is the maximum.
func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)].Round(100 * time.Microsecond)
}

// envInt reads a positive integer from the environment, or def.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var n int
	if _, err := fmt.Sscan(v, &n); err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// envDuration reads a duration from the environment, or def.
func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return d
}

func TestGeoBenchMatchProbes(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	sent := []time.Time{at(0), at(500), at(1000), at(1500)}
	tests := []struct {
		name    string
		frames  []frameAt
		want    []time.Duration
		wantErr string
	}{
		{"one frame per probe, a last frame", []frameAt{{at(100), 60}, {at(700), 60}, {at(1100), 60}, {at(1900), 60}, {at(2000), 20}},
			[]time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 100 * time.Millisecond, 400 * time.Millisecond}, ""},
		{"two probes in one frame", []frameAt{{at(300), 60}, {at(1200), 85}, {at(1600), 60}},
			[]time.Duration{300 * time.Millisecond, 700 * time.Millisecond, 200 * time.Millisecond, 100 * time.Millisecond}, ""},
		{"a probe missing", []frameAt{{at(300), 60}, {at(1200), 60}, {at(1600), 60}}, nil, "do not add up"},
		{"a frame before its probe", []frameAt{{at(300), 60}, {at(400), 60}, {at(1200), 60}, {at(1600), 60}}, nil, "before its probe"},
		{"two probes in each frame, none alone", []frameAt{{at(1200), 85}, {at(1800), 85}, {at(1900), 35}},
			[]time.Duration{1200 * time.Millisecond, 700 * time.Millisecond, 800 * time.Millisecond, 300 * time.Millisecond}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := matchProbes(sent, tc.frames, 25)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("matchProbes = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
