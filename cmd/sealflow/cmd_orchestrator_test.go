package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/attest/sim"
	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/ledger"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/substrate"
)

// runningOrchestrator is `sealflow orchestrator` running in the test process.
type runningOrchestrator struct {
	t      *testing.T
	dir    string
	cancel context.CancelFunc
	done   chan error
	ep     orchEndpoints
}

func startOrchestrator(t *testing.T, dir string) *runningOrchestrator {
	t.Helper()
	epPath := filepath.Join(dir, orchEndpointsFile)
	os.Remove(epPath)
	ctx, cancel := context.WithCancel(context.Background())
	o := &runningOrchestrator{t: t, dir: dir, cancel: cancel, done: make(chan error, 1)}
	go func() { o.done <- runOrchestrator(ctx, []string{"--dir", dir, "--allow-sim"}) }()
	t.Cleanup(o.stop)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case err := <-o.done:
			t.Fatalf("the orchestrator stopped: %v", err)
		case <-deadline:
			t.Fatal("the orchestrator wrote no endpoints within 30 s")
		case <-tick.C:
		}
		if b, err := os.ReadFile(epPath); err == nil && json.Unmarshal(b, &o.ep) == nil {
			return o
		}
	}
}

func (o *runningOrchestrator) stop() {
	if o.cancel == nil {
		return
	}
	o.cancel()
	if err := <-o.done; err != nil {
		o.t.Errorf("orchestrator: %v", err)
	}
	o.cancel = nil
}

// cli runs a command function and returns what it printed.
func runCLI(t *testing.T, run func(context.Context, []string) error, args ...string) (string, error) {
	t.Helper()
	var buf bytes.Buffer
	old := cliOut
	cliOut = &buf
	defer func() { cliOut = old }()
	err := run(context.Background(), args)
	return buf.String(), err
}

func mustCLI(t *testing.T, run func(context.Context, []string) error, args ...string) string {
	t.Helper()
	out, err := runCLI(t, run, args...)
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return out
}

func writeTestFile(t *testing.T, path, data string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const testManifest = `id: balance
version: 1
inputs: [meter-a, meter-b]
outputs: [balance-out]
recipients: [grid]
tasks:
  - {id: balance/src-a, tiers: [edge], reads: [meter-a]}
  - {id: balance/src-b, tiers: [edge], reads: [meter-b]}
  - {id: balance/agg, writes: [balance-out]}
job:
  name: balance
  schemas:
    meter: [{name: kwh, type: float}, {name: household, type: string}]
  nodes:
    - {id: a, kind: source, params: {stream: meter-a, schema: meter}}
    - {id: out, kind: sink, inputs: [a], params: {stream: balance-out}}
`

func TestPartyCommandsAgainstOrchestrator(t *testing.T) {
	dir := t.TempDir()
	o := startOrchestrator(t, filepath.Join(dir, "orch"))
	trust := filepath.Join(dir, "client", "trust.json")
	key := func(role party.Role, name string) string {
		kf, err := party.Generate(role, name, nil)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name+".key")
		if err := kf.Save(p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	alice, bob, grid := key(party.RoleOwner, "alice"), key(party.RoleOwner, "bob"), key(party.RoleProvider, "grid")
	T := []string{"--trust", trust}
	with := func(args ...string) []string { return append(append([]string(nil), T...), args...) }

	// Nothing talks to an orchestrator that was not verified.
	if _, err := runCLI(t, runOwnerRegister, with("--key", alice)...); err == nil || !strings.Contains(err.Error(), "sealflow verify") {
		t.Fatalf("register without a trust file: %v", err)
	}
	// Sim evidence is refused unless allowed; a wrong measurement is refused.
	if _, err := runCLI(t, runVerify, with("--orchestrator", o.ep.OrchestratorURL, "--measurement", strings.Repeat("00", 48), "--sim-dir", o.ep.SimDir)...); err == nil {
		t.Fatal("verify accepted sim evidence without --allow-sim")
	}
	if _, err := os.Stat(trust); err == nil {
		t.Fatal("a failed verify wrote the trust file")
	}
	out := mustCLI(t, runVerify, with("--orchestrator", o.ep.OrchestratorURL, "--allow-sim", "--sim-dir", o.ep.SimDir)...)
	if !strings.Contains(out, o.ep.OrchestratorMeasurement) || !strings.Contains(out, o.ep.OrchestratorID) {
		t.Fatalf("verify printed no claims:\n%s", out)
	}

	// Everything published on NATS from here on is recorded, as the
	// infrastructure could.
	spy, err := substrate.Connect(context.Background(), o.ep.NATSURL, "spy")
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Close()
	var seenMu sync.Mutex
	var seen [][]byte
	if _, err := spy.Subscribe(">", func(m *nats.Msg) {
		seenMu.Lock()
		seen = append(seen, append([]byte(m.Subject+" "), m.Data...))
		seenMu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}

	for _, k := range []string{alice, bob, grid} {
		mustCLI(t, runOwnerRegister, with("--key", k)...)
	}
	pol := func(stream string) string {
		return writeTestFile(t, filepath.Join(dir, stream+".policy.yaml"), "stream: "+stream+"\nrules:\n  - {name: edge-only, stage: placement, expr: \"node.tier == 'edge'\"}\n")
	}
	js := mustCLI(t, runOwnerRegisterStream, with("--key", alice, "--stream", "meter-a", "--schema", "kwh:float,household:string", "--policy", pol("meter-a"), "--json")...)
	var rs registerStreamResult
	if err := json.Unmarshal([]byte(js), &rs); err != nil || !rs.KeyUploaded || rs.Epoch != 1 {
		t.Fatalf("register-stream --json: %v %s", err, js)
	}
	fi, err := os.Stat(client.KeystorePath(alice))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("owner keystore: %v (mode %v)", err, fi.Mode())
	}
	ks, _ := client.LoadOwnerKeys(client.KeystorePath(alice))
	if k, ok := ks.Key("meter-a", 1); !ok || len(k) != 32 {
		t.Fatal("the keystore does not hold epoch 1 of meter-a")
	}
	mustCLI(t, runOwnerRegisterStream, with("--key", bob, "--stream", "meter-b", "--schema", "kwh:float", "--policy", pol("meter-b"))...)
	// Bad inputs name the problem.
	if _, err := runCLI(t, runOwnerRegisterStream, with("--key", bob, "--stream", "meter-c", "--schema", "kwh:decimal", "--policy", pol("meter-c"))...); err == nil || !strings.Contains(err.Error(), "kwh") {
		t.Fatalf("bad schema: %v", err)
	}
	if _, err := runCLI(t, runOwnerRegisterStream, with("--key", bob, "--stream", "meter-a", "--schema", "kwh:float", "--policy", pol("meter-a"))...); refusedRule(err) != "stream.owner" {
		t.Fatalf("registering another owner's stream: %v, want a refusal by stream.owner", err)
	}

	// Remember the sealed state as it is now, to roll back to later.
	nc, err := substrate.Connect(context.Background(), o.ep.NATSURL, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	jsc, _ := jetstream.New(nc)
	kv, err := jsc.KeyValue(context.Background(), stateBucket)
	if err != nil {
		t.Fatal(err)
	}
	old, err := kv.Get(context.Background(), stateKey)
	if err != nil {
		t.Fatal(err)
	}

	// The provider submits; alice approves by service id; bob does not.
	man := writeTestFile(t, filepath.Join(dir, "balance.yaml"), testManifest)
	out = mustCLI(t, runServiceSubmit, append(with("--key", grid), man)...)
	if !strings.Contains(out, "meter-a") || !strings.Contains(out, "meter-b") {
		t.Fatalf("submit does not say whose approval is pending:\n%s", out)
	}
	mustCLI(t, runOwnerApprove, with("--key", alice, "--stream", "meter-a", "--service", "balance")...)
	out, err = runCLI(t, runServiceDeploy, with("--key", grid, "--service", "balance")...)
	if refusedRule(err) != "approval.pending" || !strings.Contains(out, "meter-b") || !strings.Contains(out, "bob") || strings.Contains(out, "meter-a ") {
		t.Fatalf("deploy with bob pending: err = %v\n%s", err, out)
	}

	// Admit a worker over NATS and explain bob's policy for it.
	op, err := party.Load(filepath.Join(o.dir, "operator.key"))
	if err != nil {
		t.Fatal(err)
	}
	plat, err := sim.LoadOrCreate(o.ep.SimDir)
	if err != nil {
		t.Fatal(err)
	}
	tr, _ := client.LoadTrust(trust)
	worker, _ := party.Generate(party.RoleWorker, "edge-1", nil)
	claims, _ := party.Sign(op, orchestrator.TypeNodeClaims, orchestrator.NodeClaims{Name: "edge-1", Tier: "edge", Region: "be", Site: "s1"}, time.Hour, time.Now())
	if _, err := api.NewControlClient(nc, tr.Identity).Admit(context.Background(), worker, plat.Issuer(), claims); err != nil {
		t.Fatal(err)
	}
	out = mustCLI(t, runInfraNodes, T...)
	if !strings.Contains(out, "edge-1") || !strings.Contains(out, "1 admitted nodes") {
		t.Fatalf("infra nodes:\n%s", out)
	}
	out = mustCLI(t, runOwnerPolicyExplain, with("--stream", "meter-b", "--service", "balance", "--node", "edge-1")...)
	if !strings.Contains(out, "ALLOWED") || !strings.Contains(out, "edge-only") {
		t.Fatalf("policy explain:\n%s", out)
	}
	mustCLI(t, runOwnerApprove, with("--key", bob, "--stream", "meter-b", "--service", "balance")...)
	// No worker process runs here: do not wait for the tasks to run.
	out = mustCLI(t, runServiceDeploy, with("--key", grid, "--service", "balance", "--wait=false")...)
	if !strings.Contains(out, "balance/agg") {
		t.Fatalf("deploy:\n%s", out)
	}
	out = mustCLI(t, runServiceStatus, append(T, "balance")...)
	if !strings.Contains(out, "edge-1") || !strings.Contains(out, "3 tasks") {
		t.Fatalf("status:\n%s", out)
	}

	// Bob revokes the service: it never receives epoch 2.
	out = mustCLI(t, runOwnerRevoke, with("--key", bob, "--stream", "meter-b", "--service", "balance", "--json")...)
	var rv api.Response
	if err := json.Unmarshal([]byte(out), &rv); err != nil || !rv.OK || rv.Result.(map[string]any)["next_epoch"] != 2.0 {
		t.Fatalf("revoke --json: %v\n%s", err, out)
	}
	if _, err := runCLI(t, runOwnerRevoke, with("--key", alice, "--stream", "meter-b", "--service", "balance")...); refusedRule(err) != "stream.owner" {
		t.Fatalf("alice revoking on bob's stream: %v, want a refusal by stream.owner", err)
	}

	// Neither NATS traffic nor any revision of the key-value bucket holds
	// alice's stream key, in any encoding.
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	aliceKey, _ := ks.Key("meter-a", 1)
	forms := [][]byte{aliceKey, []byte(hex.EncodeToString(aliceKey)), []byte(base64.StdEncoding.EncodeToString(aliceKey)[:40]),
		[]byte(base64.RawURLEncoding.EncodeToString(aliceKey)[:40])}
	hist, err := kv.History(context.Background(), stateKey)
	if err != nil {
		t.Fatal(err)
	}
	seenMu.Lock()
	all := append([][]byte(nil), seen...)
	seenMu.Unlock()
	for _, e := range hist {
		all = append(all, e.Value())
	}
	sawRelease := false
	for _, m := range all {
		sawRelease = sawRelease || bytes.HasPrefix(m, []byte(api.ReleaseSubject(worker.ID())))
	}
	if !sawRelease || len(hist) < 2 {
		t.Fatalf("the recording missed the key releases (%v) or the bucket's revisions (%d)", sawRelease, len(hist))
	}
	for _, m := range all {
		for _, f := range forms {
			if bytes.Contains(m, f) {
				t.Fatalf("a stream key appears in clear on NATS or in the bucket: %.80q", m)
			}
		}
	}

	// The owner audits: every entry proven.
	out = mustCLI(t, runAudit, with("--stream", "meter-a")...)
	if !strings.Contains(out, "stream.registered") || !strings.Contains(out, "key.released") || strings.Contains(out, "FAILED") || !strings.Contains(out, "proof ok") {
		t.Fatalf("audit:\n%s", out)
	}

	// The infrastructure rolls the key-value state back; after a restart
	// the orchestrator serves the old log, and the audit says so.
	if _, err := kv.Put(context.Background(), stateKey, old.Value()); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	o.stop()
	o = startOrchestrator(t, o.dir)
	mustCLI(t, runVerify, with("--orchestrator", o.ep.OrchestratorURL, "--allow-sim", "--sim-dir", o.ep.SimDir)...)
	out, err = runCLI(t, runAudit, with("--stream", "meter-a", "--json")...)
	if !errors.Is(err, ledger.ErrRollback) {
		t.Fatalf("audit after rollback: err = %v\n%s", err, out)
	}
	var ar auditResult
	if json.Unmarshal([]byte(out), &ar) != nil || ar.Problem != "rollback" || ar.OK {
		t.Fatalf("audit --json after rollback:\n%s", out)
	}
}

func refusedRule(err error) string {
	var r interface{ RefusedBy() string }
	if errors.As(err, &r) {
		return r.RefusedBy()
	}
	return ""
}

func TestParseSchema(t *testing.T) {
	tests := []struct {
		in   string
		want int
		bad  string
	}{
		{"kwh:float,household:string", 2, ""},
		{" kwh:float ", 1, ""},
		{"kwh", 0, "NAME:TYPE"},
		{"kwh:decimal", 0, "decimal"},
		{"kwh:float,kwh:int", 0, "twice"},
		{"9x:int", 0, "NAME:TYPE"},
		{"", 0, "NAME:TYPE"},
	}
	for _, tc := range tests {
		f, err := parseSchema(tc.in)
		if tc.bad != "" {
			if err == nil || !strings.Contains(err.Error(), tc.bad) {
				t.Errorf("parseSchema(%q) = %v, want an error mentioning %q", tc.in, err, tc.bad)
			}
			continue
		}
		if err != nil || len(f) != tc.want {
			t.Errorf("parseSchema(%q) = %v, %v", tc.in, f, err)
		}
	}
}

func TestLoadManifest(t *testing.T) {
	dir := t.TempDir()
	resolve := func(s string) (party.ID, error) {
		if s == "grid" {
			return party.ID(strings.Repeat("ab", 32)), nil
		}
		return "", errors.New("unknown")
	}
	spec := "name: s\nschemas:\n  m: [{name: kwh, type: float}]\nnodes:\n  - {id: a, kind: source, params: {stream: in, schema: m}}\n  - {id: o, kind: sink, inputs: [a], params: {stream: out}}\n"
	writeTestFile(t, filepath.Join(dir, "job.yaml"), spec)
	base := "id: s\nversion: 1\ninputs: [in]\ntasks: [{id: s/t, reads: [in]}]\n"
	tests := []struct {
		name, body, bad string
	}{
		{"by path", base + "job_file: job.yaml\nrecipients: [grid]\n", ""},
		{"no job", base, "no JobSpec"},
		{"both", base + "job_file: job.yaml\njob: {name: x}\n", "not both"},
		{"unknown recipient", base + "job_file: job.yaml\nrecipients: [nobody]\n", "nobody"},
		{"wrong digest", base + "job_file: job.yaml\njob_digest: abc\n", "job_digest"},
		{"unknown field", base + "job_file: job.yaml\nimage: x\n", "image"},
		{"invalid spec", base + "job: {name: x, nodes: [{id: a, kind: nonsense}]}\n", "JobSpec"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := loadManifest(writeTestFile(t, filepath.Join(dir, "m.yaml"), tc.body), resolve)
			if tc.bad != "" {
				if err == nil || !strings.Contains(err.Error(), tc.bad) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.bad)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Recipients) != 1 || m.JobDigest == "" || len(m.Spec) == 0 {
				t.Fatalf("manifest %+v", m)
			}
		})
	}
}

func TestOrchestratorGenesisAndOperator(t *testing.T) {
	dir := t.TempDir()
	op, _ := party.Generate(party.RoleOperator, "op", nil)
	owner, _ := party.Generate(party.RoleOwner, "o", nil)
	opKey := filepath.Join(dir, "op.key")
	if err := op.Save(opKey); err != nil {
		t.Fatal(err)
	}
	idJSON := func(kf *party.KeyFile) string { b, _ := json.Marshal(kf.Identity()); return string(b) }
	opID := writeTestFile(t, filepath.Join(dir, "op.json"), idJSON(op))
	ownerID := writeTestFile(t, filepath.Join(dir, "owner.json"), idJSON(owner))
	genesis := func(name, operator string) string {
		return writeTestFile(t, filepath.Join(dir, name), `{"name": "prod", "operator": `+operator+`, "workers": {"allow_sim": false}, "node_ttl": "30m"}`)
	}
	tests := []struct {
		name    string
		genesis string // file, or "" to test the operator file
		op      string
		bad     string
	}{
		{"genesis", genesis("g1.json", idJSON(op)), "", ""},
		{"genesis without operator", genesis("g2.json", "null"), "", "no operator"},
		{"genesis with an owner as operator", genesis("g3.json", idJSON(owner)), "", "role owner"},
		{"operator key file", "", opKey, ""},
		{"operator identity file", "", opID, ""},
		{"owner identity as operator", "", ownerID, "not an operator"},
		{"operator file missing", "", filepath.Join(dir, "nope"), "nope"},
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var id *party.Identity
			var err error
			if tc.genesis != "" {
				var g orchestrator.Genesis
				g, err = loadOrchGenesis(tc.genesis)
				id = g.Operator
				if err == nil && time.Duration(g.NodeTTL) != 30*time.Minute {
					t.Fatalf("node_ttl %v", time.Duration(g.NodeTTL))
				}
			} else {
				id, err = loadOrchOperator(tc.op, dir, log)
			}
			if tc.bad != "" {
				if err == nil || !strings.Contains(err.Error(), tc.bad) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.bad)
				}
				return
			}
			if err != nil || id.ID() != op.ID() {
				t.Fatalf("operator %v, err %v", id, err)
			}
		})
	}
	// Without --operator, development creates DIR/operator.key once.
	id1, err := loadOrchOperator("", dir, log)
	if err != nil {
		t.Fatal(err)
	}
	id2, _ := loadOrchOperator("", dir, log)
	if id1.ID() != id2.ID() {
		t.Fatal("the development operator key changed between runs")
	}
}
