package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sealflow/sealflow/substrate"
)

// chaosCluster runs NATS in the test process (so it can be restarted on the
// same port and store) and the orchestrator and workers as separate
// processes of the sealflow binary, which the test kills with SIGKILL.
type chaosCluster struct {
	t       *testing.T
	ctx     context.Context
	bin     string
	dir     string
	natsDir string
	port    int
	nats    *substrate.Server
	orch    *exec.Cmd
	listen  string
	ep      Endpoints

	mu      sync.Mutex
	workers map[string]*chaosWorker
	seq     int
}

type chaosWorker struct {
	name, tier, region string
	cmd                *exec.Cmd
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (c *chaosCluster) startNATS() {
	c.t.Helper()
	s, err := substrate.Start(c.ctx, substrate.Options{StoreDir: c.natsDir, Port: c.port})
	if err != nil {
		c.t.Fatal(err)
	}
	c.nats = s
}

// restartNATS stops the server and starts it again on the same port and
// store: every connection drops and reconnects, JetStream recovers from disk.
func (c *chaosCluster) restartNATS() {
	c.t.Helper()
	c.nats.Shutdown()
	time.Sleep(500 * time.Millisecond)
	c.startNATS()
}

func (c *chaosCluster) logFile(name string) *os.File {
	c.t.Helper()
	f, err := os.OpenFile(filepath.Join(c.dir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	return f
}

func (c *chaosCluster) startOrchestrator() {
	c.t.Helper()
	orchDir := filepath.Join(c.dir, "orchestrator")
	epFile := filepath.Join(orchDir, orchEndpointsFile)
	_ = os.Remove(epFile)
	cmd := exec.Command(c.bin, "orchestrator", "--dir", orchDir, "--nats", c.nats.ClientURL(), "--allow-sim", "--listen", c.listen, "--node-timeout", "3s")
	logf := c.logFile("orchestrator")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.orch = cmd
	var oe orchEndpoints
	if err := waitFile(c.ctx, epFile, time.Minute, &oe); err != nil {
		c.t.Fatalf("orchestrator: %v", err)
	}
	c.ep = Endpoints{NATSURL: c.nats.ClientURL(), OrchestratorURL: oe.OrchestratorURL, OrchestratorMeasurement: oe.OrchestratorMeasurement, SimDir: oe.SimDir}
}

// restartOrchestrator kills the orchestrator with SIGKILL and starts it again
// on the same directory and address: it restores its sealed state.
func (c *chaosCluster) restartOrchestrator() {
	c.t.Helper()
	_ = c.orch.Process.Kill()
	_ = c.orch.Wait()
	c.startOrchestrator()
}

func (c *chaosCluster) startWorker(tier, region string) string {
	c.t.Helper()
	c.mu.Lock()
	c.seq++
	name := fmt.Sprintf("%s-%s-%d", tier, region, c.seq)
	c.mu.Unlock()
	cmd := exec.Command(c.bin, "worker", "--nats", c.nats.ClientURL(), "--orchestrator", c.ep.OrchestratorURL, "--measurement", c.ep.OrchestratorMeasurement,
		"--allow-sim", "--sim-dir", c.ep.SimDir, "--name", name, "--tier", tier, "--region", region, "--site", name,
		"--operator-key", filepath.Join(c.dir, "orchestrator", "operator.key"), "--checkpoint-interval", "500ms")
	logf := c.logFile(name)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.workers[name] = &chaosWorker{name: name, tier: tier, region: region, cmd: cmd}
	c.mu.Unlock()
	return name
}

// kill sends SIGKILL to a worker and starts a replacement with the same tier
// and region (a new process: new keys, a new admission).
func (c *chaosCluster) kill(name string) string {
	c.t.Helper()
	c.mu.Lock()
	w := c.workers[name]
	delete(c.workers, name)
	c.mu.Unlock()
	_ = w.cmd.Process.Signal(syscall.SIGKILL)
	_ = w.cmd.Wait()
	return c.startWorker(w.tier, w.region)
}

func (c *chaosCluster) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range c.workers {
		_ = w.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, w := range c.workers {
		done := make(chan struct{})
		go func() { _ = w.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = w.cmd.Process.Kill()
		}
	}
	if c.orch != nil {
		_ = c.orch.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = c.orch.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = c.orch.Process.Kill()
		}
	}
	if c.nats != nil {
		c.nats.Shutdown()
	}
}

// newChaosCluster starts NATS, the orchestrator and the given workers (tier,
// region pairs) and stops everything when the test ends, logging the
// processes' logs if it failed.
func newChaosCluster(ctx context.Context, t *testing.T, nodes ...[2]string) *chaosCluster {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o700); err != nil {
		t.Fatal(err)
	}
	c := &chaosCluster{t: t, ctx: ctx, bin: sealflowBinary(t), dir: dir, natsDir: filepath.Join(dir, "nats"), port: freePort(t),
		listen: fmt.Sprintf("127.0.0.1:%d", freePort(t)), workers: map[string]*chaosWorker{}}
	c.startNATS()
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			logs, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				t.Logf("%s:\n%s", filepath.Base(l), tail(string(b), 2500))
			}
		}
	})
	c.startOrchestrator()
	for _, n := range nodes {
		c.startWorker(n[0], n[1])
	}
	return c
}

// balanceRun is the demo's balancing service deployed on a chaos cluster,
// with two owners' meter streams and the exact result expected.
type balanceRun struct {
	c               *chaosCluster
	run             func(args ...string) string
	grid, gridTrust string
	owners          []*balanceOwner
	want            map[int64]float64 // window start → kWh
}

type balanceOwner struct {
	id, key, trust string
	lines          []string
}

// setupBalance registers the parties and streams, submits the balance
// service, has both owners approve it and deploys it; perStream readings per
// stream, 100 ms apart in event time.
func setupBalance(ctx context.Context, t *testing.T, c *chaosCluster, perStream int) *balanceRun {
	t.Helper()
	b := &balanceRun{c: c, run: sealflowRunner(ctx, t, c.bin), want: map[int64]float64{}}
	file := func(name, content string) string { return writeTestFile(t, filepath.Join(c.dir, name), content) }
	party := func(role, name string) (key, trust string) { return registerPartyCLI(b.run, c.ep, c.dir, role, name) }
	b.grid, b.gridTrust = party("provider", "grid-operator")
	start := int64(1764057600000)
	for i, id := range []string{"a", "b"} {
		k, tr := party("owner", "owner-"+id)
		o := &balanceOwner{id: id, key: k, trust: tr}
		b.owners = append(b.owners, o)
		pol := file("policy-"+id+".yaml", fmt.Sprintf("stream: meter-%s\nrules:\n  - name: belgium\n    stage: placement\n    expr: \"node.region.startsWith('be-')\"\n  - name: grid-only\n    stage: recipient\n    expr: \"recipient.name == 'grid-operator'\"\n", id))
		b.run("owner", "register-stream", "--key", k, "--trust", tr, "--stream", "meter-"+id, "--schema", "household:string,kwh:float,ts:int", "--policy", pol)
		for j := range perStream {
			ts := start + int64(j)*100
			kwh := float64((i+1)*(j%7+1)) / 8
			b.want[ts-ts%5000] += kwh
			o.lines = append(o.lines, fmt.Sprintf(`{"household": "house-%s-%d", "kwh": %g, "ts": %d}`, id, j%3, kwh, ts))
		}
	}
	var sub struct {
		Result struct {
			Digest string `json:"digest"`
		} `json:"result"`
	}
	if err := json.Unmarshal([]byte(b.run("service", "submit", "--key", b.grid, "--trust", b.gridTrust, "--json", exampleFile(t, "smartgrid/balance.yaml"))), &sub); err != nil || sub.Result.Digest == "" {
		t.Fatalf("service submit: %v %+v", err, sub)
	}
	for _, o := range b.owners {
		b.run("owner", "approve", "--key", o.key, "--trust", o.trust, "--stream", "meter-"+o.id, "--service", sub.Result.Digest)
	}
	b.run("service", "deploy", "--key", b.grid, "--trust", b.gridTrust, "--service", "balance", "--wait=false")
	return b
}

// gateways starts one long-lived `owner publish` per stream, fed a line
// every pace (a batch of 8 at a time) while pause is not held; the returned
// function waits until both published everything and closed their streams.
func (b *balanceRun) gateways(ctx context.Context, t *testing.T, pace time.Duration, pause *sync.RWMutex) func() {
	t.Helper()
	var pubs []*exec.Cmd
	var wg sync.WaitGroup
	for _, o := range b.owners {
		cmd := exec.CommandContext(ctx, b.c.bin, "owner", "publish", "--key", o.key, "--trust", o.trust, "--stream", "meter-"+o.id,
			"--input", "-", "--time-field", "ts", "--nats", b.c.nats.ClientURL(), "--batch", "8")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		logf := b.c.logFile("publish-" + o.id)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pubs = append(pubs, cmd)
		wg.Go(func() {
			w := bufio.NewWriter(stdin)
			for j, l := range o.lines {
				pause.RLock()
				fmt.Fprintln(w, l)
				if j%8 == 7 {
					_ = w.Flush()
				}
				pause.RUnlock()
				time.Sleep(pace)
			}
			_ = w.Flush()
			_ = stdin.Close()
		})
	}
	return func() {
		wg.Wait()
		for _, p := range pubs {
			if err := p.Wait(); err != nil {
				t.Fatalf("owner publish failed: %v", err)
			}
		}
	}
}

// checkResults waits for the complete output (every partition's last frame)
// and checks it is exactly the expected one: one row per window, exact sums.
func (b *balanceRun) checkResults(ctx context.Context, t *testing.T) {
	t.Helper()
	checkBalanceOutput(ctx, t, b.c.bin, b.grid, b.gridTrust, b.c.nats.ClientURL(), b.want, 3*time.Minute)
}

// checkBalanceOutput waits up to within for the balance job's complete output
// (every partition's last frame), read as the grid operator, and checks it
// equals want exactly: one row per window, each with the exact sum (the
// readings are multiples of 1/8 kWh, so sums are exact whatever the order).
func checkBalanceOutput(ctx context.Context, t *testing.T, bin, key, trust, natsURL string, want map[int64]float64, within time.Duration) {
	t.Helper()
	var out string
	deadline := time.Now().Add(within)
	for {
		o, err := exec.CommandContext(ctx, bin, "service", "results", "--key", key, "--trust", trust, "--job", "balance", "--nats", natsURL).Output()
		if err == nil {
			out = string(o)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no complete results within %v: %v", within, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	got := map[int64]float64{}
	rows := 0
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var row struct {
			WindowStart int64   `json:"window_start"`
			KWh         float64 `json:"kwh"`
		}
		if err := json.Unmarshal(sc.Bytes(), &row); err != nil {
			t.Fatalf("result line %q: %v", sc.Text(), err)
		}
		if _, dup := got[row.WindowStart]; dup {
			t.Errorf("window %d appears twice in the output", row.WindowStart)
		}
		got[row.WindowStart] += row.KWh
		rows++
	}
	if rows != len(want) {
		t.Errorf("%d result rows, want %d (one per window)", rows, len(want))
	}
	for w, v := range want {
		if got[w] != v {
			t.Errorf("window %d: %v kWh, want exactly %v", w, got[w], v)
		}
	}
}

// TestChaosExactlyOnce runs the demo's balancing pipeline (two edge stages
// with keyed windows, a regional stage joining them) and Nexmark q5 across
// processes while records are published, and meanwhile kills five workers running its tasks
// with SIGKILL, restarts the NATS server once and the orchestrator once. The
// final output must equal the failure-free result exactly: one row per window
// with the exact sum (the readings are multiples of 1/8 kWh, so sums are exact
// in floating point whatever the order).
func TestChaosExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary, starts and kills many processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	c := newChaosCluster(ctx, t, [2]string{"edge", "be-antwerp"}, [2]string{"edge", "be-ghent"}, [2]string{"edge", "be-antwerp"},
		[2]string{"regional", "be-flanders"}, [2]string{"regional", "be-flanders"})
	b := setupBalance(ctx, t, c, 1200)
	q5 := setupQ5(ctx, t, c, b.run, b.grid, b.gridTrust, 20000)
	var pause sync.RWMutex
	wait := b.gateways(ctx, t, 25*time.Millisecond, &pause)     // 1200 lines in about 30 s
	waitBids := q5.gateway(ctx, t, 25*time.Millisecond, &pause) // 20000 bids in about 30 s

	// The chaos: every few seconds one event, killing workers that run
	// tasks of the job.
	status := func() map[string]string { // node id → a running task on it
		var st struct {
			Status []struct {
				Task  string `json:"task"`
				State string `json:"state"`
				Node  string `json:"node"`
			} `json:"status"`
		}
		m := map[string]string{}
		for _, job := range []string{"balance", "q5"} {
			out, err := exec.CommandContext(ctx, c.bin, "service", "status", "--trust", b.gridTrust, "--json", job).Output()
			if err != nil || json.Unmarshal(out, &st) != nil {
				continue
			}
			for _, s := range st.Status {
				if s.State == "running" {
					m[s.Node] = s.Task
				}
			}
		}
		return m
	}
	nodeNames := func() map[string]string { // node id → name
		var nodes []struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		}
		out, err := exec.CommandContext(ctx, c.bin, "infra", "nodes", "--trust", b.gridTrust, "--json").Output()
		if err != nil || json.Unmarshal(out, &nodes) != nil {
			return nil
		}
		m := map[string]string{}
		for _, n := range nodes {
			m[n.ID] = n.Name
		}
		return m
	}
	killRunning := func() {
		running, names := status(), nodeNames()
		var victims []string
		c.mu.Lock()
		for id := range running {
			if n := names[id]; n != "" && c.workers[n] != nil {
				victims = append(victims, n)
			}
		}
		if len(victims) == 0 { // no report yet: any worker
			for n := range c.workers {
				victims = append(victims, n)
			}
		}
		c.mu.Unlock()
		v := victims[rand.IntN(len(victims))]
		repl := c.kill(v)
		t.Logf("%s: SIGKILL %s (running: %d tasks reported), replacement %s", time.Now().Format("15:04:05.000"), v, len(running), repl)
	}
	events := []string{"kill", "kill", "nats", "kill", "orchestrator", "kill", "kill"}
	for _, ev := range events {
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(time.Duration(2500+rand.IntN(2000)) * time.Millisecond):
		}
		switch ev {
		case "kill":
			killRunning()
		case "nats":
			pause.Lock()
			time.Sleep(300 * time.Millisecond) // let the gateways' in-flight batches land
			c.restartNATS()
			pause.Unlock()
			t.Logf("%s: restarted NATS", time.Now().Format("15:04:05.000"))
		case "orchestrator":
			c.restartOrchestrator()
			t.Logf("%s: restarted the orchestrator (SIGKILL, same state)", time.Now().Format("15:04:05.000"))
		}
	}
	wait()
	waitBids()
	b.checkResults(ctx, t)
	q5.checkResults(ctx, t, b.grid, b.gridTrust)
}
