package api_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/attest/sim"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/substrate"
)

// cpuTime returns the CPU time (user and system) the process used so far; on
// a shared machine it says more than wall-clock time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process CPU time per operation since start.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/1e6/float64(b.N), "cpu-ms/op")
}

// benchOrchestrator is an in-process orchestrator with sim evidence.
type benchOrchestrator struct {
	srv  *api.Server
	plat *sim.Platform
	op   *party.KeyFile
}

func newBenchOrchestrator(b *testing.B, store api.Store) *benchOrchestrator {
	b.Helper()
	plat, err := sim.LoadOrCreate(filepath.Join(b.TempDir(), "sim"))
	if err != nil {
		b.Fatal(err)
	}
	op, _ := party.Generate(party.RoleOperator, "operator", nil)
	meas, _ := sim.ExecutableMeasurement()
	v, _ := sim.NewVerifier(plat.RootCertPEM())
	g := orchestrator.Genesis{Name: "bench", Operator: op.Identity(), Workers: attest.ReferenceValues{AllowSim: true,
		Measurements: map[attest.TEE][]string{attest.TEESim: {hex.EncodeToString(meas)}}}}
	srv, err := api.New(context.Background(), api.Config{Genesis: g, Issuer: plat.Issuer(), SealingKey: plat.SealingKey(meas, "orchestrator-state"),
		Verifiers: map[attest.TEE]attest.Verifier{attest.TEESim: v}, Store: store, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	return &benchOrchestrator{srv: srv, plat: plat, op: op}
}

// admitStatement prepares a signed admission of a fresh worker.
func (o *benchOrchestrator) admitStatement(b *testing.B, name string, slots int) (*party.KeyFile, []byte) {
	w, _ := party.Generate(party.RoleWorker, name, nil)
	claims, _ := party.Sign(o.op, orchestrator.TypeNodeClaims, orchestrator.NodeClaims{Name: name, Tier: "edge", Region: "be", Site: name, Slots: slots}, time.Hour, time.Now())
	nonce := o.srv.Nonce()
	id := w.Identity()
	ev, err := o.plat.Issuer().Issue(context.Background(), attest.BindReportData(nonce, id.SigningKey, id.HPKEKey))
	if err != nil {
		b.Fatal(err)
	}
	signed, err := party.Sign(w, orchestrator.TypeNodeAdmit, orchestrator.Admit{Identity: orchestrator.Identity{Identity: id}, Nonce: nonce, Evidence: *ev, Claims: claims}, time.Hour, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	return w, signed
}

func (o *benchOrchestrator) must(b *testing.B, kf *party.KeyFile, typ string, body any) *api.Response {
	b.Helper()
	signed, err := party.Sign(kf, typ, body, time.Hour, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	r, err := o.srv.Submit(context.Background(), signed)
	if err != nil || !r.OK {
		b.Fatalf("%s: %v %s", typ, err, r.Error)
	}
	return r
}

// kvStore returns a Store in a JetStream key-value bucket of an embedded
// nats-server.
func kvStore(b *testing.B) api.Store {
	nc := startNATS(b)
	js, _ := jetstream.New(nc)
	kv, err := substrate.EnsureKeyValue(context.Background(), js, jetstream.KeyValueConfig{Bucket: "sealflow_orchestrator"})
	if err != nil {
		b.Fatal(err)
	}
	return &api.KVStore{KV: kv, Key: "state"}
}

// BenchmarkAdmissions measures node admissions per second on one
// orchestrator: verify the sim evidence and the operator's claims, apply,
// log, persist the sealed state. Evidence is issued before the timer starts.
func BenchmarkAdmissions(b *testing.B) {
	for _, store := range []string{"mem", "kv"} {
		b.Run("store="+store, func(b *testing.B) {
			var st api.Store = &api.MemStore{}
			if store == "kv" {
				st = kvStore(b)
			}
			o := newBenchOrchestrator(b, st)
			stmts := make([][]byte, b.N)
			for i := range stmts {
				_, stmts[i] = o.admitStatement(b, fmt.Sprintf("n%d", i), 4)
			}
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := range b.N {
				r, err := o.srv.Submit(context.Background(), stmts[i])
				if err != nil || !r.OK {
					b.Fatalf("admission %d: %v %s", i, err, r.Error)
				}
			}
			reportCPU(b, cpu0)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "admissions/s")
		})
	}
}

// BenchmarkAdmissionsParallel is BenchmarkAdmissions with 16 concurrent
// workers per core, admitted into a key-value bucket of an embedded
// nats-server: concurrent statements share one save of the sealed state
// (group commit).
func BenchmarkAdmissionsParallel(b *testing.B) {
	o := newBenchOrchestrator(b, kvStore(b))
	stmts := make([][]byte, b.N)
	for i := range stmts {
		_, stmts[i] = o.admitStatement(b, fmt.Sprintf("n%d", i), 4)
	}
	var next atomic.Int64
	b.SetParallelism(16)
	b.ResetTimer()
	cpu0 := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1) - 1
			r, err := o.srv.Submit(context.Background(), stmts[i])
			if err != nil || !r.OK {
				b.Errorf("admission %d: %v %+v", i, err, r)
				return
			}
		}
	})
	reportCPU(b, cpu0)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "admissions/s")
}

// BenchmarkKeyReleases measures keys released per second: each iteration
// deploys a job of one task that reads one stream and writes one output, so
// the orchestrator checks the owner's policy and wraps four keys (stream
// epoch, exchange, checkpoint, output) to the node's HPKE key.
func BenchmarkKeyReleases(b *testing.B) {
	o := newBenchOrchestrator(b, &api.MemStore{})
	_, adm := o.admitStatement(b, "edge-1", 1<<30)
	if r, err := o.srv.Submit(context.Background(), adm); err != nil || !r.OK {
		b.Fatalf("admission: %v %+v", err, r)
	}
	owner, _ := party.Generate(party.RoleOwner, "alice", nil)
	prov, _ := party.Generate(party.RoleProvider, "grid", nil)
	o.must(b, owner, orchestrator.TypePartyRegister, orchestrator.RegisterParty{Identity: orchestrator.Identity{Identity: owner.Identity()}})
	o.must(b, prov, orchestrator.TypePartyRegister, orchestrator.RegisterParty{Identity: orchestrator.Identity{Identity: prov.Identity()}})
	pol := json.RawMessage(`{"stream": "meter-a", "rules": [{"name": "edge", "stage": "placement", "expr": "node.tier == 'edge' && !node.debug"}]}`)
	o.must(b, owner, orchestrator.TypeStreamRegister, orchestrator.RegisterStream{Name: "meter-a", Schema: []orchestrator.Field{{Name: "kwh", Type: "float"}}, Policy: pol})
	pub, _ := o.srv.Identity().HPKEPublicKey()
	w, _ := seal.Wrap(pub, seal.WrapInfo{Purpose: "stream-key", KeyID: "meter-a/1", Recipient: string(o.srv.Identity().ID())}.Bytes(), make([]byte, seal.KeySize))
	o.must(b, owner, orchestrator.TypeStreamKey, orchestrator.StreamKey{Stream: "meter-a", Epoch: 1, Wrapped: w})
	sb := jobspec.New("svc").Schema("meter", jobspec.Float("kwh"))
	sb.Source("meter-a", "meter").Sink("out")
	spec, _ := sb.MustBuild().JSON()
	man := orchestrator.Manifest{ID: "svc", Version: 1, Spec: spec, Inputs: []string{"meter-a"}, Outputs: []string{"out"},
		Tasks: []orchestrator.TaskSlot{{ID: "svc/t", Tiers: []string{"edge"}, Reads: []string{"meter-a"}, Writes: []string{"out"}}}}
	r := o.must(b, prov, orchestrator.TypeServiceSubmit, man)
	o.must(b, owner, orchestrator.TypeServiceApprove, orchestrator.Approve{Stream: "meter-a", Digest: r.Result.(map[string]any)["digest"].(string)})
	stmts := make([][]byte, b.N)
	for i := range stmts {
		stmts[i], _ = party.Sign(prov, orchestrator.TypeJobDeploy, orchestrator.Deploy{Service: "svc", Job: fmt.Sprintf("job-%d", i)}, time.Hour, time.Now())
	}
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := range b.N {
		r, err := o.srv.Submit(context.Background(), stmts[i])
		if err != nil || !r.OK {
			b.Fatalf("deploy %d: %v %s", i, err, r.Error)
		}
	}
	reportCPU(b, cpu0)
	b.ReportMetric(float64(4*b.N)/b.Elapsed().Seconds(), "releases/s")
}

// BenchmarkWorkerStartToAdmitted measures the time from a worker's start
// (fresh keys) to its admitted identity over NATS: nonce request, sim
// evidence, signed admission, receipt check, through an embedded nats-server
// on loopback.
func BenchmarkWorkerStartToAdmitted(b *testing.B) {
	o := newBenchOrchestrator(b, &api.MemStore{})
	nc := startNATS(b)
	serveNATS(b, o.srv, nc)
	cc := api.NewControlClient(nc, o.srv.Identity())
	claims, _ := party.Sign(o.op, orchestrator.TypeNodeClaims, orchestrator.NodeClaims{Name: "edge", Tier: "edge", Region: "be", Site: "s"}, time.Hour, time.Now())
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		w, err := party.Generate(party.RoleWorker, "edge", nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := cc.Admit(context.Background(), w, o.plat.Issuer(), claims); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu0)
	b.ReportMetric(b.Elapsed().Seconds()*1e3/float64(b.N), "ms/admission")
}

// BenchmarkAdmissionsOverNATSParallel measures admissions per second of 16
// concurrent workers per core, each starting fresh and admitted over NATS.
func BenchmarkAdmissionsOverNATSParallel(b *testing.B) {
	o := newBenchOrchestrator(b, &api.MemStore{})
	nc := startNATS(b)
	serveNATS(b, o.srv, nc)
	cc := api.NewControlClient(nc, o.srv.Identity())
	claims, _ := party.Sign(o.op, orchestrator.TypeNodeClaims, orchestrator.NodeClaims{Name: "edge", Tier: "edge", Region: "be", Site: "s"}, time.Hour, time.Now())
	b.SetParallelism(16)
	b.ResetTimer()
	cpu0 := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w, err := party.Generate(party.RoleWorker, "edge", nil)
			if err == nil {
				_, err = cc.Admit(context.Background(), w, o.plat.Issuer(), claims)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportCPU(b, cpu0)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "admissions/s")
}
