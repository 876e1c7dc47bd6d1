package api_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/substrate"
)

// startNATS runs an embedded nats-server on a free loopback port and returns a
// connection to it.
func startNATS(t testing.TB) *nats.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ns, err := substrate.Start(ctx, substrate.Options{StoreDir: t.TempDir(), Sync: substrate.SyncRelaxed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	nc, err := substrate.Connect(ctx, ns.ClientURL(), "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// serveNATS runs srv.ServeNATS on nc until the test ends.
func serveNATS(t testing.TB, srv *api.Server, nc *nats.Conn) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeNATS(ctx, nc) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeNATS: %v", err)
		}
	})
	// ServeNATS subscribes asynchronously: wait until it answers.
	cc := api.NewControlClient(nc, srv.Identity())
	deadline := time.Now().Add(10 * time.Second)
	for {
		rctx, rcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_, err := cc.Nonce(rctx)
		rcancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ServeNATS does not answer: %v", err)
		}
	}
}

// operatorClaims signs node claims as the env's operator.
func (e *env) claims(op *party.KeyFile, name, tier, region string) []byte {
	e.t.Helper()
	c, err := party.Sign(op, orchestrator.TypeNodeClaims, orchestrator.NodeClaims{Name: name, Tier: tier, Region: region, Site: name, Slots: 4}, time.Hour, time.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// newEnvWithOperator is newEnv with the operator's key file at hand.
func newEnvWithOperator(t *testing.T) (*env, *party.KeyFile) {
	e := newEnv(t)
	op, _ := party.Generate(party.RoleOperator, "operator", nil)
	e.genesis.Operator = op.Identity()
	e.store = &api.MemStore{}
	e.start()
	return e, op
}

func TestNATSAdmissionAndReleases(t *testing.T) {
	e, op := newEnvWithOperator(t)
	nc := startNATS(t)
	serveNATS(t, e.srv, nc)
	ctx := context.Background()
	cc := api.NewControlClient(nc, e.srv.Identity())

	// A worker is admitted over NATS.
	worker, _ := party.Generate(party.RoleWorker, "edge-1", nil)
	adm, err := cc.Admit(ctx, worker, e.plat.Issuer(), e.claims(op, "edge-1", "edge", "be"))
	if err != nil {
		t.Fatal(err)
	}
	if adm.Node != worker.ID() || adm.Where.Tier != "edge" || !adm.Expires.After(time.Now()) {
		t.Fatalf("admission %+v", adm)
	}

	// Replaying a signed statement over NATS is refused by rule.
	nonce, err := cc.Nonce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := worker.Identity()
	ev, _ := e.plat.Issuer().Issue(ctx, attest.BindReportData(nonce, id.SigningKey, id.HPKEKey))
	signed, _ := party.Sign(worker, orchestrator.TypeNodeAdmit, orchestrator.Admit{Identity: orchestrator.Identity{Identity: id}, Nonce: nonce, Evidence: *ev, Claims: e.claims(op, "edge-1", "edge", "be")}, time.Minute, time.Now())
	if _, err := cc.Submit(ctx, signed); err != nil {
		t.Fatalf("re-attestation: %v", err)
	}
	var re *api.RefusedError
	if _, err := cc.Submit(ctx, signed); !errors.As(err, &re) || re.Rule != party.RuleReplayed {
		t.Fatalf("replayed statement: err = %v, want a refusal by %s", err, party.RuleReplayed)
	}
	// Garbage is refused as malformed, with a signed receipt.
	if _, err := cc.Submit(ctx, []byte("garbage")); !errors.As(err, &re) || re.Rule != party.RuleMalformed {
		t.Fatalf("garbage statement: err = %v, want %s", err, party.RuleMalformed)
	}
	// A client that verified another orchestrator rejects the receipts.
	other, _ := party.Generate(party.RoleOrchestrator, "other", nil)
	if _, err := api.NewControlClient(nc, other.Identity()).Submit(ctx, []byte("garbage")); err == nil || errors.As(err, &re) {
		t.Fatalf("a receipt by an unverified key was accepted: %v", err)
	}

	// The worker subscribes; a deployment releases keys to it over NATS.
	got := make(chan []orchestrator.Release, 4)
	bad := make(chan error, 4)
	sub, err := cc.SubscribeReleases(worker.ID(), func(rs []orchestrator.Release) { got <- rs }, func(err error) { bad <- err })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	tr, err := e.verify(true)
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(tr)
	owner, _ := party.Generate(party.RoleOwner, "alice", nil)
	streamKey := register(t, c, owner, "meter-a")
	prov, _ := party.Generate(party.RoleProvider, "grid", nil)
	if _, err := c.Submit(ctx, prov, orchestrator.TypePartyRegister, orchestrator.RegisterParty{Identity: orchestrator.Identity{Identity: prov.Identity()}}); err != nil {
		t.Fatal(err)
	}
	sb := jobspec.New("balance").Schema("meter", jobspec.Float("kwh"))
	sb.Source("meter-a", "meter").Sink("balance-out")
	spec, _ := sb.MustBuild().JSON()
	man := orchestrator.Manifest{ID: "balance", Version: 1, Spec: spec, Inputs: []string{"meter-a"}, Outputs: []string{"balance-out"},
		Tasks: []orchestrator.TaskSlot{{ID: "balance/src", Tiers: []string{"edge"}, Reads: []string{"meter-a"}, Writes: []string{"balance-out"}}}}
	r, err := c.Submit(ctx, prov, orchestrator.TypeServiceSubmit, man)
	if err != nil {
		t.Fatal(err)
	}
	digest := r.Result.(map[string]any)["digest"].(string)
	if _, err := c.Submit(ctx, owner, orchestrator.TypeServiceApprove, orchestrator.Approve{Stream: "meter-a", Digest: digest}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(ctx, prov, orchestrator.TypeJobDeploy, orchestrator.Deploy{Service: "balance"}); err != nil {
		t.Fatal(err)
	}
	var pushed []orchestrator.Release
	select {
	case pushed = <-got:
	case err := <-bad:
		t.Fatalf("a genuine release batch was refused: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no release batch published")
	}
	var unwrapped []byte
	for _, rel := range pushed {
		if rel.Purpose == "stream" && rel.Scope == "meter-a" {
			unwrapped, err = worker.Unwrap(orchestrator.WrapInfoFor(rel.Purpose, rel.Scope, rel.Epoch, rel.To).Bytes(), rel.Wrapped)
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if !bytes.Equal(unwrapped, streamKey) {
		t.Fatal("the worker did not receive the owner's stream key over NATS")
	}
	// A late worker fetches the same releases.
	fetched, err := cc.FetchReleases(ctx, worker.ID())
	if err != nil || len(fetched) != len(pushed) {
		t.Fatalf("fetched %d releases (%v), pushed %d", len(fetched), err, len(pushed))
	}

	// A batch signed by anyone else, or for another node, is refused.
	forged, _ := party.Sign(other, api.TypeKeyReleases, api.ReleaseBatch{Node: worker.ID(), Releases: pushed}, time.Minute, time.Now())
	if _, err := cc.OpenReleases(worker.ID(), forged); err == nil {
		t.Fatal("a release batch signed by an unverified key was accepted")
	}
	if _, err := cc.FetchReleases(ctx, other.ID()); err != nil {
		t.Fatalf("fetching the (empty) releases of another node: %v", err)
	}
	if err := nc.Publish(api.ReleaseSubject(worker.ID()), forged); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-bad:
		if !errors.As(err, new(interface{ RefusedBy() string })) {
			t.Fatalf("forged batch refused without a rule: %v", err)
		}
	case rs := <-got:
		t.Fatalf("a forged batch of %d releases was delivered", len(rs))
	case <-time.After(10 * time.Second):
		t.Fatal("the forged batch was neither delivered nor refused")
	}
}

// release wraps a random key to kf as the orchestrator would.
func release(t testing.TB, kf *party.KeyFile) orchestrator.Release {
	t.Helper()
	pub, _ := kf.Identity().HPKEPublicKey()
	w, err := seal.Wrap(pub, orchestrator.WrapInfoFor("exchange", "j", 0, kf.ID()).Bytes(), make([]byte, seal.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return orchestrator.Release{To: kf.ID(), Job: "j", Task: "j/t", Purpose: "exchange", Scope: "j", Wrapped: w}
}

func TestOpenReleasesRefusals(t *testing.T) {
	orch, _ := party.Generate(party.RoleOrchestrator, "orch", nil)
	node, _ := party.Generate(party.RoleWorker, "n", nil)
	other, _ := party.Generate(party.RoleWorker, "m", nil)
	cc := api.NewControlClient(nil, orch.Identity())
	sign := func(kf *party.KeyFile, typ string, body any) []byte {
		b, err := party.Sign(kf, typ, body, time.Minute, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := sign(orch, api.TypeKeyReleases, api.ReleaseBatch{Node: node.ID(), Releases: []orchestrator.Release{release(t, node)}})
	tests := []struct {
		name string
		msg  []byte
		rule string
	}{
		{"genuine", good, ""},
		{"replayed", good, party.RuleReplayed},
		{"other signer", sign(node, api.TypeKeyReleases, api.ReleaseBatch{Node: node.ID()}), party.RuleUnknownParty},
		{"other type", sign(orch, "receipt", api.ReleaseBatch{Node: node.ID()}), "release.type"},
		{"other node", sign(orch, api.TypeKeyReleases, api.ReleaseBatch{Node: other.ID()}), "release.node"},
		{"wrapped to another node", sign(orch, api.TypeKeyReleases, api.ReleaseBatch{Node: node.ID(), Releases: []orchestrator.Release{release(t, other)}}), "release.node"},
		{"garbage", []byte("SFST garbage"), party.RuleMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := cc.OpenReleases(node.ID(), tc.msg)
			if tc.rule == "" {
				if err != nil || len(rs) != 1 {
					t.Fatalf("genuine batch: %d releases, %v", len(rs), err)
				}
				return
			}
			var r interface{ RefusedBy() string }
			if !errors.As(err, &r) || r.RefusedBy() != tc.rule {
				t.Fatalf("err = %v, want a refusal by %s", err, tc.rule)
			}
		})
	}
}

func FuzzOpenReleases(f *testing.F) {
	orch, _ := party.Generate(party.RoleOrchestrator, "orch", nil)
	node, _ := party.Generate(party.RoleWorker, "n", nil)
	good, err := party.Sign(orch, api.TypeKeyReleases, api.ReleaseBatch{Node: node.ID(), Releases: []orchestrator.Release{release(f, node)}}, time.Hour, time.Now())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte("SFST\x01"))
	f.Add(good[:len(good)-1])
	f.Fuzz(func(t *testing.T, msg []byte) {
		cc := api.NewControlClient(nil, orch.Identity())
		rs, err := cc.OpenReleases(node.ID(), msg)
		if err != nil {
			return
		}
		// Only the orchestrator's signature makes a batch acceptable, and
		// then every release is for this node.
		for _, r := range rs {
			if r.To != node.ID() {
				t.Fatalf("accepted a release to %s", r.To)
			}
		}
		if !bytes.Equal(msg, good) {
			t.Fatalf("accepted a batch that the orchestrator did not sign: %q", msg)
		}
	})
}
