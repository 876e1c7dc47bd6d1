package orchestrator

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/attest/sim"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/ledger"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
)

// world is a small deployment for tests: an orchestrator machine, an
// operator, a sim platform, owners and a provider.
type world struct {
	t        testing.TB
	now      time.Time
	m        *Machine
	self     *party.KeyFile
	operator *party.KeyFile
	platform *sim.Platform
	entries  []ledger.Entry
	releases []Release
	owners   map[string]*party.KeyFile
}

// ownerKey returns the key file of the owner registered as name.
func (w *world) ownerKey(name string) *party.KeyFile {
	kf := w.owners[name]
	if kf == nil {
		w.t.Fatalf("no owner %q", name)
	}
	return kf
}

func newWorld(t testing.TB, mutate func(*Genesis)) *world {
	t.Helper()
	self := mustKey(t, party.RoleOrchestrator, "orchestrator")
	op := mustKey(t, party.RoleOperator, "operator")
	plat, err := sim.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	meas, err := sim.ExecutableMeasurement()
	if err != nil {
		t.Fatal(err)
	}
	g := Genesis{Name: "test", Operator: op.Identity(), Workers: attest.ReferenceValues{
		AllowSim:     true,
		Measurements: map[attest.TEE][]string{attest.TEESim: {hex.EncodeToString(meas)}},
	}}
	if mutate != nil {
		mutate(&g)
	}
	v, err := sim.NewVerifier(plat.RootCertPEM())
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMachine(g, self, map[attest.TEE]attest.Verifier{attest.TEESim: v})
	if err != nil {
		t.Fatal(err)
	}
	return &world{t: t, now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC), m: m, self: self, operator: op, platform: plat}
}

func mustKey(t testing.TB, role party.Role, name string) *party.KeyFile {
	t.Helper()
	kf, err := party.Generate(role, name, nil)
	if err != nil {
		t.Fatal(err)
	}
	return kf
}

// do signs and applies a statement, collecting log entries.
func (w *world) do(kf *party.KeyFile, typ string, body any) (*Output, error) {
	w.t.Helper()
	w.now = w.now.Add(time.Second)
	signed, err := party.Sign(kf, typ, body, time.Minute, w.now)
	if err != nil {
		w.t.Fatal(err)
	}
	out, err := w.m.Apply(w.now, signed)
	w.collect(out)
	return out, err
}

// collect keeps an output's log entries and releases.
func (w *world) collect(out *Output) {
	if out != nil {
		w.entries = append(w.entries, out.Entries...)
		w.releases = append(w.releases, out.Releases...)
	}
}

func (w *world) must(kf *party.KeyFile, typ string, body any) *Output {
	w.t.Helper()
	out, err := w.do(kf, typ, body)
	if err != nil {
		w.t.Fatalf("%s by %s: %v", typ, kf.Identity().Name, err)
	}
	return out
}

func (w *world) owner(name, stream, policyRules string) (*party.KeyFile, []byte) {
	w.t.Helper()
	kf := mustKey(w.t, party.RoleOwner, name)
	if w.owners == nil {
		w.owners = map[string]*party.KeyFile{}
	}
	w.owners[name] = kf
	w.must(kf, TypePartyRegister, RegisterParty{Identity: Identity{kf.Identity()}})
	pol := `{"stream": "` + stream + `", "rules": [` + policyRules + `]}`
	w.must(kf, TypeStreamRegister, RegisterStream{Name: stream, Partitions: 1,
		Schema: []Field{{Name: "kwh", Type: "float"}}, Policy: json.RawMessage(pol)})
	key := make([]byte, seal.KeySize)
	rand.Read(key)
	info := seal.WrapInfo{Purpose: "stream-key", KeyID: stream + "/1", Recipient: string(w.self.ID())}
	pub, _ := w.m.Self().HPKEPublicKey()
	wr, err := seal.Wrap(pub, info.Bytes(), key)
	if err != nil {
		w.t.Fatal(err)
	}
	w.must(kf, TypeStreamKey, StreamKey{Stream: stream, Epoch: 1, Wrapped: wr})
	return kf, key
}

func (w *world) provider(name string) *party.KeyFile {
	kf := mustKey(w.t, party.RoleProvider, name)
	w.must(kf, TypePartyRegister, RegisterParty{Identity: Identity{kf.Identity()}})
	return kf
}

// node admits a worker with the given location and issuer options, and 4 slots.
func (w *world) node(name, tier, region string, opts ...sim.IssuerOption) (*party.KeyFile, error) {
	return w.nodeSlots(name, tier, region, 4, opts...)
}

// nodeSlots admits a worker offering the given number of task slots; its site
// is its name.
func (w *world) nodeSlots(name, tier, region string, slots int, opts ...sim.IssuerOption) (*party.KeyFile, error) {
	w.t.Helper()
	kf := mustKey(w.t, party.RoleWorker, name)
	return kf, w.admitAs(kf, name, tier, region, slots, opts...)
}

// admitAs admits (or re-admits) the worker key kf with the given location.
func (w *world) admitAs(kf *party.KeyFile, name, tier, region string, slots int, opts ...sim.IssuerOption) error {
	w.t.Helper()
	claims, err := party.Sign(w.operator, TypeNodeClaims, NodeClaims{Name: name, Tier: tier, Region: region, Site: name, Slots: slots}, time.Hour, w.now)
	if err != nil {
		w.t.Fatal(err)
	}
	nonce := w.m.Nonce(w.now)
	ev, err := w.platform.Issuer(opts...).Issue(context.Background(), attest.BindReportData(nonce, kf.Identity().SigningKey, kf.Identity().HPKEKey))
	if err != nil {
		w.t.Fatal(err)
	}
	_, err = w.do(kf, TypeNodeAdmit, Admit{Identity: Identity{kf.Identity()}, Nonce: nonce, Evidence: *ev, Claims: claims})
	return err
}

func (w *world) logged(typ string) []ledger.Entry {
	var out []ledger.Entry
	for _, e := range w.entries {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

func rule(err error) string {
	var r interface{ RefusedBy() string }
	if errors.As(err, &r) {
		return r.RefusedBy()
	}
	return ""
}

const edgeOnlyBE = `{"name": "edge-be", "stage": "placement", "expr": "node.region == 'be' && !node.debug"}`

func manifest(id string, inputs ...string) Manifest {
	var tasks []TaskSlot
	for _, in := range inputs {
		tasks = append(tasks, TaskSlot{ID: id + "/src-" + in, Tiers: []string{"edge"}, Reads: []string{in}})
	}
	tasks = append(tasks, TaskSlot{ID: id + "/agg", Writes: []string{id + "-out"}})
	b := jobspec.New(id).Schema("meter", jobspec.Float("kwh"))
	var srcs []*jobspec.Stream
	for _, in := range inputs {
		srcs = append(srcs, b.Source(in, "meter"))
	}
	out := srcs[0]
	if len(srcs) > 1 {
		out = srcs[0].Union(srcs[1:]...)
	}
	out.Sink(id + "-out")
	spec, err := b.MustBuild().JSON()
	if err != nil {
		panic(err)
	}
	d, _ := b.MustBuild().Digest()
	return Manifest{ID: id, Version: 1, JobDigest: d, Inputs: inputs, Outputs: []string{id + "-out"}, Tasks: tasks, Spec: spec}
}

func TestSubmitRefusesSpecsThatDoNotTypeCheck(t *testing.T) {
	w := newWorld(t, nil)
	w.owner("alice", "meter-a", edgeOnlyBE)
	grid := w.provider("grid")
	man := manifest("svc", "meter-a")
	man.Spec = json.RawMessage(`{"name": "svc", "nodes": [{"id": "f", "kind": "filter", "inputs": ["nope"], "params": {"expr": "true"}}]}`)
	if _, err := w.do(grid, TypeServiceSubmit, man); err == nil || !strings.HasPrefix(rule(err), "jobspec.") {
		t.Fatalf("bad spec: err = %v (rule %q), want a jobspec refusal", err, rule(err))
	}
	man = manifest("svc", "meter-a")
	man.Tasks[0].Stage = "edge"
	if _, err := w.do(grid, TypeServiceSubmit, man); rule(err) != "service.manifest" {
		t.Fatalf("unknown stage: %v", err)
	}
	if len(w.m.State().Services) != 0 {
		t.Fatal("a refused service was stored")
	}
}

func TestDeployReleasesKeysOnlyWhenEveryOwnerApproves(t *testing.T) {
	w := newWorld(t, nil)
	alice, aliceKey := w.owner("alice", "meter-a", edgeOnlyBE)
	bob, _ := w.owner("bob", "meter-b", edgeOnlyBE)
	grid := w.provider("grid")
	nodeKF, err := w.node("edge-1", "edge", "be")
	if err != nil {
		t.Fatal(err)
	}
	man := manifest("balance", "meter-a", "meter-b")
	sub := w.must(grid, TypeServiceSubmit, man)
	digest := sub.Result.(map[string]any)["digest"].(string)

	// Only alice approves: refused, naming bob's stream, logged, no key.
	w.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: digest})
	out, err := w.do(grid, TypeJobDeploy, Deploy{Service: "balance"})
	if rule(err) != "approval.pending" || !strings.Contains(err.Error(), "meter-b") {
		t.Fatalf("deploy with one approval: err = %v, want approval.pending naming meter-b", err)
	}
	if len(out.Releases) != 0 {
		t.Fatalf("a refused deploy released %d keys", len(out.Releases))
	}
	if len(w.logged("job.refused")) != 1 {
		t.Fatalf("the refusal was not logged: %v", w.entries)
	}

	// Both approve: deployed, keys released and unwrappable by the node only.
	w.must(bob, TypeServiceApprove, Approve{Stream: "meter-b", Digest: digest})
	out = w.must(grid, TypeJobDeploy, Deploy{Service: "balance"})
	// The result is signed after the server's lock is released, while a
	// task may move: it must not share the job's placement map.
	placed := out.Result.(map[string]any)["tasks"].(map[string]party.ID)
	for task, node := range w.m.State().Jobs["balance"].Tasks {
		w.m.State().Jobs["balance"].Tasks[task] = "elsewhere"
		if placed[task] != node {
			t.Fatalf("the deploy result shares the job's placement: moving %s changed it to %q", task, placed[task])
		}
		w.m.State().Jobs["balance"].Tasks[task] = node
	}
	var got []byte
	for _, r := range out.Releases {
		if r.To != nodeKF.ID() {
			t.Fatalf("release to %s, want the admitted node", r.To)
		}
		if r.Purpose == "stream" && r.Scope == "meter-a" {
			k, err := seal.Unwrap(nodeKF.HPKEKey(), WrapInfoFor(r.Purpose, r.Scope, r.Epoch, r.To).Bytes(), r.Wrapped)
			if err != nil {
				t.Fatal(err)
			}
			got = k
		}
		// Another party cannot unwrap it.
		if _, err := seal.Unwrap(alice.HPKEKey(), WrapInfoFor(r.Purpose, r.Scope, r.Epoch, r.To).Bytes(), r.Wrapped); err == nil {
			t.Fatal("a key wrapped to the node unwrapped with another key")
		}
	}
	if !bytes.Equal(got, aliceKey) {
		t.Fatal("the node did not receive alice's stream key")
	}
	if n := len(w.logged("key.released")); n != len(out.Releases) || n == 0 {
		t.Fatalf("%d releases but %d key.released entries", len(out.Releases), n)
	}
}

func TestNoKeyForNodeThatViolatesPolicy(t *testing.T) {
	tests := []struct {
		name     string
		tier     string
		region   string
		opts     []sim.IssuerOption
		wantRule string
	}{
		{"wrong region", "edge", "nl", nil, "policy:meter-a/edge-be"},
		{"wrong tier", "cloud", "be", nil, "schedule.no-node"},
		{"debug", "edge", "be", []sim.IssuerOption{sim.WithDebug(true)}, "policy:meter-a/edge-be"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, func(g *Genesis) { g.Workers.AllowDebug = true })
			alice, _ := w.owner("alice", "meter-a", edgeOnlyBE)
			grid := w.provider("grid")
			if _, err := w.node("n1", tc.tier, tc.region, tc.opts...); err != nil {
				t.Fatal(err)
			}
			sub := w.must(grid, TypeServiceSubmit, manifest("svc", "meter-a"))
			w.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: sub.Result.(map[string]any)["digest"].(string)})
			out, err := w.do(grid, TypeJobDeploy, Deploy{Service: "svc"})
			if err == nil || len(out.Releases) != 0 {
				t.Fatalf("deploy succeeded (%d releases), want a refusal", len(out.Releases))
			}
			if !strings.Contains(err.Error(), tc.wantRule) && rule(err) != tc.wantRule {
				t.Fatalf("err = %v, want rule %s", err, tc.wantRule)
			}
			if len(w.logged("job.refused")) != 1 || len(w.logged("key.released")) != 0 {
				t.Fatal("refusal not logged, or a key release logged")
			}
		})
	}
}

func TestAdmissionRefusals(t *testing.T) {
	tests := []struct {
		name     string
		mutate   func(*Genesis)
		opts     []sim.IssuerOption
		wantRule string
	}{
		{"accepted", nil, nil, ""},
		{"sim not allowed", func(g *Genesis) { g.Workers.AllowSim = false }, nil, "attest.sim-not-allowed"},
		{"debug not allowed", nil, []sim.IssuerOption{sim.WithDebug(true)}, "attest.debug"},
		{"measurement not accepted", nil, []sim.IssuerOption{sim.WithMeasurement(bytes.Repeat([]byte{1}, 48))}, "attest.measurement"},
		{"tcb too low", func(g *Genesis) { g.Workers.MinSVN = map[attest.TEE]uint64{attest.TEESim: 5} }, []sim.IssuerOption{sim.WithSVN(2)}, "attest.min-tcb"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.mutate)
			_, err := w.node("n1", "edge", "be", tc.opts...)
			if rule(err) != tc.wantRule {
				t.Fatalf("admission: err = %v, want rule %q", err, tc.wantRule)
			}
			if tc.wantRule == "" {
				if len(w.m.State().Nodes) != 1 || len(w.logged("node.admitted")) != 1 {
					t.Fatal("node not admitted or not logged")
				}
				return
			}
			if len(w.m.State().Nodes) != 0 || len(w.logged("node.refused")) != 1 {
				t.Fatalf("refused node in state (%d) or refusal not logged", len(w.m.State().Nodes))
			}
		})
	}
}

func TestAdmissionNonceAndClaims(t *testing.T) {
	w := newWorld(t, nil)
	kf := mustKey(t, party.RoleWorker, "n1")
	claims, _ := party.Sign(w.operator, TypeNodeClaims, NodeClaims{Name: "n1", Tier: "edge"}, time.Hour, w.now)
	nonce := w.m.Nonce(w.now)
	ev, _ := w.platform.Issuer().Issue(context.Background(), attest.BindReportData(nonce, kf.Identity().SigningKey, kf.Identity().HPKEKey))
	body := Admit{Identity: Identity{kf.Identity()}, Nonce: nonce, Evidence: *ev, Claims: claims}
	if _, err := w.do(kf, TypeNodeAdmit, body); err != nil {
		t.Fatal(err)
	}
	// The same nonce again (a new statement, so not a statement replay).
	if _, err := w.do(kf, TypeNodeAdmit, body); rule(err) != "attest.nonce-replayed" {
		t.Fatalf("reused nonce: %v", err)
	}
	// An unknown nonce.
	body.Nonce = bytes.Repeat([]byte{7}, 32)
	if _, err := w.do(kf, TypeNodeAdmit, body); rule(err) != "attest.nonce-unknown" {
		t.Fatalf("unknown nonce: %v", err)
	}
	// Evidence bound to other keys (another node's keys).
	other := mustKey(t, party.RoleWorker, "n2")
	body.Nonce = w.m.Nonce(w.now)
	ev2, _ := w.platform.Issuer().Issue(context.Background(), attest.BindReportData(body.Nonce, other.Identity().SigningKey, other.Identity().HPKEKey))
	body.Evidence = *ev2
	if _, err := w.do(kf, TypeNodeAdmit, body); rule(err) != "attest.report-data" {
		t.Fatalf("evidence for other keys: %v", err)
	}
	// Claims not signed by the operator.
	body.Nonce = w.m.Nonce(w.now)
	ev3, _ := w.platform.Issuer().Issue(context.Background(), attest.BindReportData(body.Nonce, kf.Identity().SigningKey, kf.Identity().HPKEKey))
	body.Evidence = *ev3
	fake := mustKey(t, party.RoleOperator, "mallory")
	body.Claims, _ = party.Sign(fake, TypeNodeClaims, NodeClaims{Name: "n1", Tier: "cloud"}, time.Hour, w.now)
	if _, err := w.do(kf, TypeNodeAdmit, body); rule(err) != "node.claims" {
		t.Fatalf("claims by another operator: %v", err)
	}
}

func TestStatementReplayAndAuthority(t *testing.T) {
	w := newWorld(t, nil)
	alice, _ := w.owner("alice", "meter-a", edgeOnlyBE)
	grid := w.provider("grid")
	w.now = w.now.Add(time.Second)
	signed, _ := party.Sign(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: "x"}, time.Minute, w.now)
	if _, err := w.m.Apply(w.now, signed); err != nil {
		t.Fatal(err)
	}
	if _, err := w.m.Apply(w.now, signed); rule(err) != party.RuleReplayed {
		t.Fatalf("replay: %v", err)
	}
	// A provider cannot approve on an owner's behalf; an owner cannot touch
	// another owner's stream.
	if _, err := w.do(grid, TypeServiceApprove, Approve{Stream: "meter-a", Digest: "x"}); rule(err) != "authority.role" {
		t.Fatalf("provider approving: %v", err)
	}
	bob, _ := w.owner("bob", "meter-b", edgeOnlyBE)
	if _, err := w.do(bob, TypeServiceApprove, Approve{Stream: "meter-a", Digest: "x"}); rule(err) != "stream.owner" {
		t.Fatalf("bob approving alice's stream: %v", err)
	}
	// Unknown party, unknown field, bad CEL.
	stranger := mustKey(t, party.RoleOwner, "stranger")
	if _, err := w.do(stranger, TypeServiceApprove, Approve{}); rule(err) != party.RuleUnknownParty {
		t.Fatalf("unknown party: %v", err)
	}
	if _, err := w.do(alice, TypeServiceApprove, map[string]any{"stream": "meter-a", "digets": "x"}); rule(err) != "statement.body" {
		t.Fatalf("unknown field: %v", err)
	}
	before := len(w.m.State().Streams)
	_, err := w.do(alice, TypeStreamRegister, RegisterStream{Name: "s2", Schema: []Field{{Name: "a", Type: "int"}},
		Policy: json.RawMessage(`{"stream": "s2", "rules": [{"name": "r", "stage": "placement", "expr": "node.tier +"}]}`)})
	if rule(err) != "stream.policy" || len(w.m.State().Streams) != before {
		t.Fatalf("bad CEL: %v (streams %d → %d)", err, before, len(w.m.State().Streams))
	}
}

func TestRecipientNeedsEveryOwnersAcceptance(t *testing.T) {
	w := newWorld(t, nil)
	onlyGrid := `{"name": "edge-be", "stage": "placement", "expr": "node.region == 'be'"}, {"name": "grid-only", "stage": "recipient", "expr": "recipient.name == 'grid'"}`
	alice, _ := w.owner("alice", "meter-a", onlyGrid)
	bob, _ := w.owner("bob", "meter-b", edgeOnlyBE)
	grid := w.provider("grid")
	analyst := w.provider("analyst")
	if _, err := w.node("n1", "edge", "be"); err != nil {
		t.Fatal(err)
	}
	man := manifest("balance", "meter-a", "meter-b")
	man.Recipients = []party.ID{grid.ID(), analyst.ID()}
	d := w.must(grid, TypeServiceSubmit, man).Result.(map[string]any)["digest"].(string)
	w.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: d})
	w.must(bob, TypeServiceApprove, Approve{Stream: "meter-b", Digest: d})
	w.must(grid, TypeJobDeploy, Deploy{Service: "balance"})

	out := w.must(grid, TypeOutputRequest, OutputRequest{Job: "balance", Output: "balance-out"})
	if len(out.Releases) != 1 || out.Releases[0].To != grid.ID() {
		t.Fatalf("grid got %v", out.Releases)
	}
	out, err := w.do(analyst, TypeOutputRequest, OutputRequest{Job: "balance", Output: "balance-out"})
	if rule(err) != "policy:meter-a/grid-only" || len(out.Releases) != 0 {
		t.Fatalf("analyst: err %v, releases %d", err, len(out.Releases))
	}
	if len(w.logged("output.refused")) != 1 {
		t.Fatal("output refusal not logged")
	}
}

func TestStateRestore(t *testing.T) {
	w := newWorld(t, nil)
	w.owner("alice", "meter-a", edgeOnlyBE)
	if _, err := w.node("n1", "edge", "be"); err != nil {
		t.Fatal(err)
	}
	data, err := w.m.MarshalState()
	if err != nil {
		t.Fatal(err)
	}
	m2, err := Restore(data, w.self, w.m.verifiers)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := m2.MarshalState()
	if !bytes.Equal(data, again) {
		t.Fatal("restored state differs")
	}
	if _, ok := m2.Policy("meter-a"); !ok {
		t.Fatal("policy not recompiled on restore")
	}
	// The restored machine still refuses a replay of a statement seen before
	// the restart.
	w.now = w.now.Add(time.Second)
	alice := mustKey(t, party.RoleOwner, "alice2")
	signed, _ := party.Sign(alice, TypePartyRegister, RegisterParty{Identity: Identity{alice.Identity()}}, time.Minute, w.now)
	if _, err := w.m.Apply(w.now, signed); err != nil {
		t.Fatal(err)
	}
	data, _ = w.m.MarshalState()
	m3, err := Restore(data, w.self, w.m.verifiers)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m3.Apply(w.now.Add(time.Second), signed); rule(err) != party.RuleReplayed {
		t.Fatalf("replay after restart: %v, want %s", err, party.RuleReplayed)
	}
	// The restored machine accepts statements from the restored parties.
	w.m = m2
	p := mustKey(t, party.RoleProvider, "p")
	w.must(p, TypePartyRegister, RegisterParty{Identity: Identity{p.Identity()}})
	if _, ok := m2.State().Parties[p.ID()]; !ok {
		t.Fatal("registration on the restored machine did not take")
	}
}

func TestRevokeStopsJobsAndWithholdsNewEpochs(t *testing.T) {
	w := newWorld(t, nil)
	alice, _ := w.owner("alice", "meter-a", edgeOnlyBE)
	grid := w.provider("grid")
	if _, err := w.node("n1", "edge", "be"); err != nil {
		t.Fatal(err)
	}
	d := w.must(grid, TypeServiceSubmit, manifest("svc", "meter-a")).Result.(map[string]any)["digest"].(string)
	w.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: d})
	w.must(grid, TypeJobDeploy, Deploy{Service: "svc"})
	out := w.must(alice, TypeServiceRevoke, Revoke{Stream: "meter-a", Service: "svc"})
	if got := out.Result.(map[string]any)["stopped_jobs"]; len(got.([]string)) != 1 {
		t.Fatalf("stopped jobs = %v, want [svc]", got)
	}
	if _, ok := w.m.State().Jobs["svc"]; ok || len(w.logged("job.stopped")) != 1 {
		t.Fatal("the revoked service's job still runs, or its stop was not logged")
	}
	// Alice rotates to epoch 2; the service can never be deployed again.
	key := make([]byte, 32)
	pub, _ := w.m.Self().HPKEPublicKey()
	wr, _ := seal.Wrap(pub, StreamKeyInfo("meter-a", 2, w.self.ID()).Bytes(), key)
	w.must(alice, TypeStreamKey, StreamKey{Stream: "meter-a", Epoch: 2, Wrapped: wr})
	out, err := w.do(grid, TypeJobDeploy, Deploy{Service: "svc"})
	if rule(err) != "approval.pending" || len(out.Releases) != 0 {
		t.Fatalf("redeploy after revocation: %v (%d releases)", err, len(out.Releases))
	}
	// Even a fresh approval of the old digest is not enough while revoked.
	w.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: d})
	if _, err := w.do(grid, TypeJobDeploy, Deploy{Service: "svc"}); rule(err) != "approval.pending" {
		t.Fatalf("redeploy with a re-approved digest while revoked: %v", err)
	}
}

func TestSourcesRunAtTheirStreamsSite(t *testing.T) {
	w := newWorld(t, nil)
	alice, _ := w.owner("alice", "meter-a", edgeOnlyBE)
	// Alice's records enter at site n2 (the world's nodes use their name as site).
	w.must(alice, TypeStreamRegister, RegisterStream{Name: "meter-a", Partitions: 1, Site: "n2",
		Schema: []Field{{Name: "kwh", Type: "float"}}, Policy: json.RawMessage(`{"stream": "meter-a", "rules": [` + edgeOnlyBE + `]}`)})
	grid := w.provider("grid")
	// Without the pin the scheduler would prefer n1, which has more free slots.
	for n, slots := range map[string]int{"n1": 8, "n2": 2} {
		if _, err := w.nodeSlots(n, "edge", "be", slots); err != nil {
			t.Fatal(err)
		}
	}
	d := w.must(grid, TypeServiceSubmit, manifest("svc", "meter-a")).Result.(map[string]any)["digest"].(string)
	w.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: d})
	w.must(grid, TypeJobDeploy, Deploy{Service: "svc"})
	node := w.m.State().Nodes[w.m.State().Jobs["svc"].Tasks["svc/src-meter-a"]]
	if node.Location.Site != "n2" {
		t.Fatalf("the source task runs at site %q, want the stream's site n2", node.Location.Site)
	}
}
