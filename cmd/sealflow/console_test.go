package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/attest/sim"
	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/console"
	orchapi "github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
)

// findChromium returns the path of a headless-capable Chromium. When none is
// installed it tries Debian's chromium package once (apt-get update, then
// apt-get install -y chromium, with a timeout); the test is skipped only
// when that fails too.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	apt, err := exec.LookPath("apt-get")
	if err != nil || os.Geteuid() != 0 {
		t.Skip("no chromium on PATH and apt-get is unavailable (or not root): install Debian's chromium package to run the browser test")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "chromium"}} {
		c := exec.CommandContext(ctx, apt, args...)
		c.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := c.CombinedOutput(); err != nil {
			t.Skipf("no chromium on PATH and `apt-get %s` failed (%v): install Debian's chromium package to run the browser test\n%s", strings.Join(args, " "), err, tail(string(out), 2000))
		}
	}
	p, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("apt-get installed chromium but it is not on PATH")
	}
	return p
}

// headless runs Chromium headless on url with extra flags (--dump-dom,
// --screenshot=FILE) and returns its standard output. The page's scripts run
// for budget of virtual time first.
func headless(ctx context.Context, t *testing.T, chrome, url string, budget time.Duration, extra ...string) string {
	t.Helper()
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
		"--user-data-dir=" + t.TempDir(), "--ignore-certificate-errors", "--hide-scrollbars",
		fmt.Sprintf("--virtual-time-budget=%d", budget.Milliseconds())}
	args = append(append(args, extra...), url)
	c := exec.CommandContext(ctx, chrome, args...)
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(extra, " "), err, tail(stderr.String(), 3000))
	}
	return string(out)
}

// TestConsoleInBrowser opens the web console in headless Chromium against
// `sealflow up` with a deployed two-stage job and checks what a person would
// see: every admitted node in its tier, the job's tasks on their nodes, each
// task's operator graph and rows with records, rates, watermark lag and
// backpressure, each task's latest checkpoint and its age, the log with
// proofs verified by the page, and the owner view highlighting
// exactly the nodes the orchestrator's owner view names (computed from the
// log), with every inclusion proof verified in the browser. It saves a
// screenshot in the test's temp dir and, when SEALFLOW_SCREENSHOT_DIR is set,
// there too.
func TestConsoleInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary, starts five processes and a browser")
	}
	chrome := findChromium(t)
	dir := t.TempDir()
	bin := sealflowBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ep := startUp(ctx, t, bin, dir, "--workers", "3")
	run := sealflowRunner(ctx, t, bin)

	file := func(name, content string) string { return writeTestFile(t, filepath.Join(dir, name), content) }
	newParty := func(role, name string) (key, trust string) { return registerPartyCLI(run, ep, dir, role, name) }
	grid, gridTrust := newParty("provider", "grid-operator")
	owners := map[string][2]string{}
	for _, id := range []string{"a", "b"} {
		k, tr := newParty("owner", "owner-"+id)
		owners[id] = [2]string{k, tr}
		run("owner", "register-stream", "--key", k, "--trust", tr, "--stream", "meter-"+id, "--schema", "household:string,kwh:float,ts:int",
			"--policy", file("policy-"+id+".yaml", fmt.Sprintf("stream: meter-%s\nrules:\n  - name: belgium\n    stage: placement\n    expr: \"node.region.startsWith('be-')\"\n", id)))
		var lines strings.Builder
		for j := 0; j < 20; j++ {
			fmt.Fprintf(&lines, `{"household": "house-%s", "kwh": %g, "ts": %d}`+"\n", id, float64(j%5+1)/4, int64(1764057600000)+int64(j)*1000)
		}
		run("owner", "publish", "--key", k, "--trust", tr, "--stream", "meter-"+id, "--input", file("meter-"+id+".jsonl", lines.String()), "--time-field", "ts", "--nats", ep.NATSURL)
	}
	manifest := exampleFile(t, "smartgrid/balance.yaml")
	sub := run("service", "submit", "--key", grid, "--trust", gridTrust, "--json", manifest)
	digest := regexp.MustCompile(`"digest":\s*"([0-9a-f]{64})"`).FindStringSubmatch(sub)
	if digest == nil {
		t.Fatalf("service submit printed no digest:\n%s", sub)
	}
	for id, o := range owners {
		run("owner", "approve", "--key", o[0], "--trust", o[1], "--stream", "meter-"+id, "--service", digest[1])
	}
	run("service", "deploy", "--key", grid, "--trust", gridTrust, "--service", "balance")

	// What the page must show, from the API through a pinned client.
	plat, err := sim.LoadOrCreate(ep.SimDir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := sim.NewVerifier(plat.RootCertPEM())
	if err != nil {
		t.Fatal(err)
	}
	trust, _, err := client.Verify(ctx, ep.OrchestratorURL, client.VerifyOptions{Measurement: ep.OrchestratorMeasurement, AllowSim: true,
		Verifiers: map[attest.TEE]attest.Verifier{attest.TEESim: v}})
	if err != nil {
		t.Fatal(err)
	}
	api := client.New(trust)
	alice, err := party.Load(owners["a"][0])
	if err != nil {
		t.Fatal(err)
	}
	var want console.OwnerView
	if err := api.Get(ctx, "/console/api/owner?owner="+string(alice.ID()), &want); err != nil {
		t.Fatal(err)
	}
	if len(want.Nodes) != 2 { // edge (both edge tasks) and regional
		t.Fatalf("owner-a's view names %d nodes, want 2 (the edge and the regional node of balance): %+v", len(want.Nodes), want.NodeIDs())
	}

	// Wait until every task's node has reported its progress with its
	// operators (two reports, so rates), the edge source has read all 20
	// records, and every task has an accepted checkpoint, so the page has
	// states, rates and checkpoint ages to show.
	for {
		var st []orchapi.TaskStatus
		if err := api.Get(ctx, "/v1/status?job=balance", &st); err != nil {
			t.Fatal(err)
		}
		var cv orchapi.CheckpointView
		if err := api.Get(ctx, "/v1/checkpoints?job=balance", &cv); err != nil {
			t.Fatal(err)
		}
		reported := len(st) == 3 && !slices.ContainsFunc(st, func(x orchapi.TaskStatus) bool {
			return x.State == "" || len(x.Operators) == 0 || x.Updated.IsZero()
		})
		edgeRead := slices.ContainsFunc(st, func(x orchapi.TaskStatus) bool {
			return x.Task == "balance/edge-a" && slices.ContainsFunc(x.Operators, func(o orchapi.OperatorStatus) bool { return o.ID == "src" && o.RecordsOut == 20 })
		})
		checkpointed := len(cv.Tasks) == 3 && !slices.ContainsFunc(cv.Tasks, func(x orchapi.TaskCheckpoint) bool { return x.Checkpoint == 0 })
		if reported && edgeRead && checkpointed {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the nodes did not report the tasks' operators and checkpoints: status %+v, checkpoints %+v", st, cv)
		case <-time.After(200 * time.Millisecond):
		}
	}

	url := ep.OrchestratorURL + "/console/?owner=" + string(alice.ID())
	shot := filepath.Join(t.TempDir(), "console.png")
	dom := headless(ctx, t, chrome, url, 8*time.Second, "--dump-dom", "--screenshot="+shot, "--window-size=1440,2000")
	checks := []struct{ what, pattern string }{
		{"the page loaded its data", `<body[^>]* data-loaded="yes"`},
		{"the live status", `data-state="live"`},
		{"the edge node in the edge tier", `data-tier="edge"[\s\S]*data-name="edge-be-antwerp-1"`},
		{"the regional node", `data-name="regional-be-flanders-2"`},
		{"the cloud node", `data-name="cloud-de-frankfurt-3"`},
		{"the job", `data-job="balance"`},
		{"a task placed on a node", `data-task="balance/edge-a"`},
		{"the job graph's regional task", `data-vertex="balance/regional"`},
		{"the edge task's reported state", `data-vertex="balance/edge-a" data-task-state="(running|finished)"`},
		{"the edge task's records read", `in 20 · out`},
		{"the edge source's operator row: 20 records out and a rate", `<tr[^>]*data-operator="balance/edge-a:src"><td[^>]*>src</td><td>source</td><td class="num">20</td><td class="num rate">\d+(\.\d)?/s</td><td class="num">20</td><td class="num rate">\d+(\.\d)?/s</td>`},
		// The edge tasks read all of their input and end; a task still
		// reading shows how far its watermark trails.
		{"the edge window's operator row with its watermark", `data-operator="balance/edge-a:win">(<td[^>]*>[^<]*</td>){6}<td class="num lag">(input ended|−?[\d.]+ (ms|s)|\d+m \d+s|\d+h \d+m)</td>`},
		{"the regional sink's operator row", `data-operator="balance/regional:out">`},
		{"the operator graph's union", `data-op="balance/regional:all"`},
		{"edges from the nodes' inputs in the operator graph", `class="graph ops"[^>]*>[\s\S]*?<path class="edge"[^>]*marker-end="url\(#op-arrow\)"`},
		{"the edge task's backpressure", `data-stage="balance/edge-a"[\s\S]*?backpressure \d+%`},
		{"the edge task's checkpoint and its age", `data-stage="balance/edge-a"[\s\S]*?data-checkpoint="[1-9]\d*" data-checkpoint-age="\d+\.\d">checkpoint #[1-9]\d* · [\d.]+ (ms|s) ago<`},
		{"the regional task's checkpoint", `data-stage="balance/regional"[\s\S]*?data-checkpoint="[1-9]\d*"`},
		{"the job's checkpoint status", `data-job-checkpoint="balance">(last complete checkpoint #\d+|no complete checkpoint yet)`},
		{"the log's key releases", `key\.released`},
		{"every shown log entry proven", `✓ proof`},
		{"the tree head signature verified", `Ed25519 verified in this browser`},
		{"the browser's witness kept the head and found later polls consistent", `data-witness="(same|consistent)"`},
		{"the owner's proofs all verified", `data-proofs="ok"`},
		{"the owner view recomputed in the browser agrees", `data-agree="yes"`},
		{"the service the owner approved", `id="owner-services"[^>]*>Services approved to read them: <span class="svc">balance \(`},
	}
	for _, c := range checks {
		if !regexp.MustCompile(c.pattern).MatchString(dom) {
			t.Errorf("the console does not show %s (no %q in the DOM)", c.what, c.pattern)
		}
	}
	if strings.Contains(dom, "✗ proof") {
		t.Error("the console shows a log entry whose inclusion proof failed")
	}
	// The highlighted nodes are exactly the owner view's.
	var highlighted []string
	for _, m := range regexp.MustCompile(`data-node="([0-9a-f]{64})"[^>]*data-holds-key="`).FindAllStringSubmatch(dom, -1) {
		highlighted = append(highlighted, m[1])
	}
	slices.Sort(highlighted)
	if !slices.Equal(highlighted, want.NodeIDs()) {
		t.Errorf("highlighted nodes %v, want the owner view's %v", highlighted, want.NodeIDs())
	}
	if t.Failed() {
		if m := regexp.MustCompile(`<div id="status"[^>]*>[^<]*</div>`).FindString(dom); m != "" {
			t.Logf("status line: %s", m)
		}
		t.Logf("DOM:\n%s", tail(dom, 6000))
	}

	png, err := os.ReadFile(shot)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("no PNG screenshot at %s: %v", shot, err)
	}
	t.Logf("screenshot: %s (%d bytes)", shot, len(png))
	if d := os.Getenv("SEALFLOW_SCREENSHOT_DIR"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "console.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
