package api_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/attest/sim"
	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/ledger"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
)

type env struct {
	t        *testing.T
	plat     *sim.Platform
	genesis  orchestrator.Genesis
	store    *api.MemStore
	srv      *api.Server
	http     *httptest.Server
	verifier attest.Verifier
	// cfg, when set, adjusts the server's configuration at start.
	cfg func(*api.Config)
}

func newEnv(t *testing.T) *env {
	t.Helper()
	plat, err := sim.LoadOrCreate(filepath.Join(t.TempDir(), "sim"))
	if err != nil {
		t.Fatal(err)
	}
	op, _ := party.Generate(party.RoleOperator, "operator", nil)
	meas, _ := sim.ExecutableMeasurement()
	v, err := sim.NewVerifier(plat.RootCertPEM())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, plat: plat, store: &api.MemStore{}, verifier: v,
		genesis: orchestrator.Genesis{Name: "t", Operator: op.Identity(), Workers: attest.ReferenceValues{AllowSim: true,
			Measurements: map[attest.TEE][]string{attest.TEESim: {hex.EncodeToString(meas)}}}}}
	e.start()
	return e
}

func (e *env) start() {
	e.t.Helper()
	meas, _ := sim.ExecutableMeasurement()
	cfg := api.Config{Genesis: e.genesis, Issuer: e.plat.Issuer(),
		SealingKey: e.plat.SealingKey(meas, "orchestrator-state"), Verifiers: map[attest.TEE]attest.Verifier{attest.TEESim: e.verifier}, Store: e.store}
	if e.cfg != nil {
		e.cfg(&cfg)
	}
	srv, err := api.New(context.Background(), cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	if e.http != nil {
		e.http.Close()
	}
	hs := httptest.NewUnstartedServer(srv.Handler(nil))
	hs.TLS = srv.TLSConfig()
	hs.StartTLS()
	e.t.Cleanup(hs.Close)
	e.srv, e.http = srv, hs
}

func (e *env) verify(allowSim bool) (*client.Trust, error) {
	tr, _, err := client.Verify(context.Background(), e.http.URL, client.VerifyOptions{AllowSim: allowSim,
		Verifiers: map[attest.TEE]attest.Verifier{attest.TEESim: e.verifier}})
	return tr, err
}

func TestVerifyPinsAndRefusesSim(t *testing.T) {
	e := newEnv(t)
	if _, err := e.verify(false); err == nil {
		t.Fatal("sim evidence accepted without --allow-sim")
	}
	tr, err := e.verify(true)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Identity.ID() != e.srv.Identity().ID() || tr.GenesisDigest != e.genesis.Digest() {
		t.Fatal("pinned the wrong identity or genesis")
	}
	// A client pinned to another TLS key refuses to talk.
	bad := *tr
	bad.TLSKeySHA256 = hex.EncodeToString(make([]byte, 32))
	var nodes []api.NodeView
	if err := client.New(&bad).Get(context.Background(), "/v1/nodes", &nodes); err == nil {
		t.Fatal("a connection to an unpinned TLS key succeeded")
	}
	if err := client.New(tr).Get(context.Background(), "/v1/nodes", &nodes); err != nil {
		t.Fatal(err)
	}
}

func register(t *testing.T, c *client.Client, kf *party.KeyFile, stream string) []byte {
	t.Helper()
	ctx := context.Background()
	if _, err := c.Submit(ctx, kf, orchestrator.TypePartyRegister, orchestrator.RegisterParty{Identity: orchestrator.Identity{Identity: kf.Identity()}}); err != nil {
		t.Fatal(err)
	}
	pol := json.RawMessage(`{"stream": "` + stream + `", "rules": [{"name": "edge", "stage": "placement", "expr": "node.tier == 'edge'"}]}`)
	if _, err := c.Submit(ctx, kf, orchestrator.TypeStreamRegister, orchestrator.RegisterStream{Name: stream, Schema: []orchestrator.Field{{Name: "kwh", Type: "float"}}, Policy: pol}); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	pub, _ := c.Trust.Identity.HPKEPublicKey()
	w, err := seal.Wrap(pub, seal.WrapInfo{Purpose: "stream-key", KeyID: stream + "/1", Recipient: string(c.Trust.Identity.ID())}.Bytes(), key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(ctx, kf, orchestrator.TypeStreamKey, orchestrator.StreamKey{Stream: stream, Epoch: 1, Wrapped: w}); err != nil {
		t.Fatal(err)
	}
	return key
}

func TestRestartRestoresStateAndStoreHoldsNoKeys(t *testing.T) {
	e := newEnv(t)
	tr, err := e.verify(true)
	if err != nil {
		t.Fatal(err)
	}
	owner, _ := party.Generate(party.RoleOwner, "alice", nil)
	key := register(t, client.New(tr), owner, "meter-a")
	if bytes.Contains(e.store.Blob, key) || bytes.Contains(e.store.Blob, []byte("meter-a")) {
		t.Fatal("the stored state holds a stream key or a stream name in clear")
	}
	e.start() // restart over the same store
	if e.srv.Identity().ID() != tr.Identity.ID() {
		t.Fatal("the orchestrator's identity changed across a restart")
	}
	tr2, err := e.verify(true)
	if err != nil || tr2.TLSKeySHA256 != tr.TLSKeySHA256 {
		t.Fatalf("after restart: %v (TLS key kept: %v)", err, err == nil && tr2.TLSKeySHA256 == tr.TLSKeySHA256)
	}
	var streams []api.StreamView
	tr.URL = e.http.URL
	if err := client.New(tr).Get(context.Background(), "/v1/streams", &streams); err != nil || len(streams) != 1 || streams[0].Epoch != 1 {
		t.Fatalf("streams after restart: %v %+v", err, streams)
	}
	// A modified blob does not restore.
	e.store.Blob[len(e.store.Blob)-1] ^= 1
	if _, err := api.New(context.Background(), api.Config{Genesis: e.genesis, Issuer: e.plat.Issuer(), SealingKey: [32]byte{}, Store: e.store}); err == nil {
		t.Fatal("a modified sealed state restored")
	}
}

func TestAuditDetectsRollback(t *testing.T) {
	e := newEnv(t)
	tr, err := e.verify(true)
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(tr)
	owner, _ := party.Generate(party.RoleOwner, "alice", nil)
	register(t, c, owner, "meter-a")
	old := append([]byte(nil), e.store.Blob...)
	ctx := context.Background()
	if _, err := c.Submit(ctx, owner, orchestrator.TypeServiceApprove, orchestrator.Approve{Stream: "meter-a", Digest: "abc"}); err != nil {
		t.Fatal(err)
	}
	checker, _ := ledger.NewChecker(tr.LogKey)
	w, err := ledger.OpenWitness(checker, filepath.Join(t.TempDir(), "witness.json"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.Audit(ctx, "stream:meter-a", w)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Entries) != 3 { // registered, key, approved
		t.Fatalf("audit found %d entries about meter-a, want 3: %+v", len(a.Entries), a.Entries)
	}
	// Grow, audit again: consistent.
	if _, err := c.Submit(ctx, owner, orchestrator.TypeServiceApprove, orchestrator.Approve{Stream: "meter-a", Digest: "def"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Audit(ctx, "stream:meter-a", w); err != nil {
		t.Fatalf("consistent growth refused: %v", err)
	}
	// The infrastructure rolls the key-value state back to an older revision.
	e.store.Blob = old
	e.start()
	tr.URL = e.http.URL
	_, err = c.Audit(ctx, "stream:meter-a", w)
	if !errors.Is(err, ledger.ErrRollback) {
		t.Fatalf("rolled-back orchestrator: audit err = %v, want ErrRollback", err)
	}
}

func TestRefusalsAreAnsweredWithTheRule(t *testing.T) {
	e := newEnv(t)
	tr, _ := e.verify(true)
	c := client.New(tr)
	stranger, _ := party.Generate(party.RoleOwner, "x", nil)
	_, err := c.Submit(context.Background(), stranger, orchestrator.TypeServiceApprove, orchestrator.Approve{Stream: "s"})
	var re *client.RefusedError
	if !errors.As(err, &re) || re.Rule != party.RuleUnknownParty {
		t.Fatalf("err = %v, want a refusal by %s", err, party.RuleUnknownParty)
	}
	// Garbage bytes: malformed.
	if _, err := c.SubmitSigned(context.Background(), []byte("not a statement")); !errors.As(err, &re) || re.Rule != party.RuleMalformed {
		t.Fatalf("garbage: %v", err)
	}
}

// TestVerifyAgainstSignedReferenceValues: clients accept the orchestrator by a
// release's reference values (as loaded from a signed file) and refuse it when
// its measurement is not among them, naming the rule.
func TestVerifyAgainstSignedReferenceValues(t *testing.T) {
	e := newEnv(t)
	meas, _ := sim.ExecutableMeasurement()
	verify := func(rv attest.ReferenceValues) error {
		_, _, err := client.Verify(context.Background(), e.http.URL, client.VerifyOptions{Reference: &rv,
			Verifiers: map[attest.TEE]attest.Verifier{attest.TEESim: e.verifier}})
		return err
	}
	good := attest.ReferenceValues{AllowSim: true, Measurements: map[attest.TEE][]string{attest.TEESim: {hex.EncodeToString(meas)}}}
	if err := verify(good); err != nil {
		t.Fatal(err)
	}
	other := attest.ReferenceValues{AllowSim: true, Measurements: map[attest.TEE][]string{attest.TEESim: {hex.EncodeToString(make([]byte, 48))}}}
	var r *attest.Refusal
	if err := verify(other); !errors.As(err, &r) || r.Rule != "attest.measurement" {
		t.Fatalf("another release's values: %v, want attest.measurement", err)
	}
	noSim := good
	noSim.AllowSim = false
	if err := verify(noSim); !errors.As(err, &r) || r.Rule != "attest.sim-not-allowed" {
		t.Fatalf("values without sim: %v, want attest.sim-not-allowed", err)
	}
}
