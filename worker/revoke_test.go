package worker_test

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/attest/sim"
	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/confidential"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/substrate"
	"github.com/sealflow/sealflow/worker"
)

// TestRevocationStopsRunningTasks: an owner revokes a service whose task is
// running on an unbounded stream; within a bounded time the worker stops the
// task and drops the job's keys, and the frames of the owner's next epoch are
// ones the worker never received a key for.
func TestRevocationStopsRunningTasks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	ns, err := substrate.Start(ctx, substrate.Options{StoreDir: filepath.Join(dir, "nats")})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	nc, err := substrate.Connect(ctx, ns.ClientURL(), "test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	plat, err := sim.LoadOrCreate(filepath.Join(dir, "sim"))
	if err != nil {
		t.Fatal(err)
	}
	meas, _ := sim.ExecutableMeasurement()
	v, _ := sim.NewVerifier(plat.RootCertPEM())
	verifiers := map[attest.TEE]attest.Verifier{attest.TEESim: v}
	op, _ := party.Generate(party.RoleOperator, "op", nil)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := api.New(ctx, api.Config{Genesis: orchestrator.Genesis{Name: "t", Operator: op.Identity(), Workers: attest.ReferenceValues{AllowSim: true,
		Measurements: map[attest.TEE][]string{attest.TEESim: {hex.EncodeToString(meas)}}}},
		Issuer: plat.Issuer(), SealingKey: plat.SealingKey(meas, "s"), Verifiers: verifiers, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	hs := &http.Server{Handler: srv.Handler(nil)}
	go hs.Serve(tls.NewListener(ln, srv.TLSConfig()))
	defer hs.Close()
	go srv.ServeNATS(ctx, nc)
	trust, _, err := client.Verify(ctx, "https://"+ln.Addr().String(), client.VerifyOptions{AllowSim: true, Verifiers: verifiers})
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(trust)

	claims, _ := party.Sign(op, orchestrator.TypeNodeClaims, orchestrator.NodeClaims{Name: "n1", Tier: "edge", Region: "be"}, time.Hour, time.Now())
	w, err := worker.New(worker.Config{Name: "n1", NATS: nc, Orchestrator: trust, Issuer: plat.Issuer(), Claims: claims,
		IO: &worker.JetStreamIO{JS: js}, Logger: quiet, StatusInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	go w.Run(ctx)

	owner, _ := party.Generate(party.RoleOwner, "alice", nil)
	prov, _ := party.Generate(party.RoleProvider, "grid", nil)
	for _, p := range []*party.KeyFile{owner, prov} {
		if err := c.RegisterParty(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	pol, _ := json.Marshal(map[string]any{"stream": "meter", "rules": []map[string]string{{"name": "any", "stage": "placement", "expr": "true"}}})
	key, err := c.RegisterStream(ctx, owner, orchestrator.RegisterStream{Name: "meter", Schema: []orchestrator.Field{{Name: "kwh", Type: "float"}}, Partitions: 1, Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	ring := seal.NewKeyring()
	ring.AddSecret("meter", 1, key)
	schema := &record.Schema{Fields: []record.Field{{Name: "kwh", Type: record.TypeFloat}}}
	pub, err := confidential.NewPublisher(ctx, js, "meter", schema, ring, 1)
	if err != nil {
		t.Fatal(err)
	}
	b := jobspec.New("svc").Schema("m", jobspec.Float("kwh"))
	b.Source("meter", "m").Sink("out")
	spec, _ := b.MustBuild().JSON()
	man := orchestrator.Manifest{ID: "svc", Version: 1, Spec: spec, Inputs: []string{"meter"}, Outputs: []string{"out"},
		Tasks: []orchestrator.TaskSlot{{ID: "svc/t", Reads: []string{"meter"}, Writes: []string{"out"}}}}
	sub, err := c.Submit(ctx, prov, orchestrator.TypeServiceSubmit, man)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(ctx, owner, orchestrator.TypeServiceApprove, orchestrator.Approve{Stream: "meter", Digest: sub.Result.(map[string]any)["digest"].(string)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(ctx, prov, orchestrator.TypeJobDeploy, orchestrator.Deploy{Service: "svc"}); err != nil {
		t.Fatal(err)
	}
	// The stream never ends: the task keeps running.
	batch := &record.Batch{Records: []record.Record{{Values: []record.Value{record.Float(1.5)}}}}
	if err := pub.Publish(ctx, 0, batch); err != nil {
		t.Fatal(err)
	}
	waitTask(t, w, func(s string) bool { return s == "running" })
	began := time.Now()
	if _, err := c.Submit(ctx, owner, orchestrator.TypeServiceRevoke, orchestrator.Revoke{Stream: "meter", Service: "svc"}); err != nil {
		t.Fatal(err)
	}
	waitTask(t, w, func(s string) bool { return strings.HasPrefix(s, "stopped") })
	t.Logf("task stopped %v after the revocation", time.Since(began).Round(time.Millisecond))
	if elapsed := time.Since(began); elapsed > 5*time.Second {
		t.Errorf("revocation took %v, want within a few status intervals", elapsed)
	}
	// The owner's next epoch goes to the orchestrator, never to the service.
	next := make([]byte, 32)
	next[0] = 1
	if err := c.UploadStreamKey(ctx, owner, "meter", 2, next); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(ctx, prov, orchestrator.TypeJobDeploy, orchestrator.Deploy{Service: "svc"}); err == nil {
		t.Fatal("the revoked service was deployed again")
	}
	for _, r := range srv.Releases(w.ID()) {
		if r.Purpose == "stream" && r.Epoch >= 2 {
			t.Fatalf("epoch %d of %s was released to the revoked service's node", r.Epoch, r.Scope)
		}
	}
}

func waitTask(t *testing.T, w *worker.Worker, ok func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, task := range w.Tasks() {
			if ok(task.State()) {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	var states []string
	for _, task := range w.Tasks() {
		states = append(states, task.State())
	}
	t.Fatalf("task states %v never matched", states)
}
