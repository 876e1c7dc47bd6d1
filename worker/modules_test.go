package worker_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
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
	"github.com/sealflow/sealflow/udf"
	"github.com/sealflow/sealflow/udf/examples/anomaly/model"
	"github.com/sealflow/sealflow/worker"
)

var (
	meterSchema = &record.Schema{Fields: []record.Field{{Name: "meter", Type: record.TypeString}, {Name: "kwh", Type: record.TypeFloat}}}
	anomalyOut  = &record.Schema{Fields: []record.Field{{Name: "meter", Type: record.TypeString}, {Name: "kwh", Type: record.TypeFloat},
		{Name: "p", Type: record.TypeFloat}, {Name: "anomaly", Type: record.TypeBool}}}
)

// codeHarness is a deployment in one process: NATS, an orchestrator, an
// owner and a provider, and a spy recording everything published on NATS
// from the start.
type codeHarness struct {
	t      *testing.T
	ctx    context.Context
	dir    string
	nc     *nats.Conn
	js     jetstream.JetStream
	srv    *api.Server
	trust  *client.Trust
	c      *client.Client
	plat   *sim.Platform
	op     *party.KeyFile
	owner  *party.KeyFile
	prov   *party.KeyFile
	quiet  *slog.Logger
	spyMu  sync.Mutex
	spied  [][]byte
	spySub []string
}

func newCodeHarness(t *testing.T) *codeHarness {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	h := &codeHarness{t: t, ctx: ctx, dir: t.TempDir(), quiet: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ns, err := substrate.Start(ctx, substrate.Options{StoreDir: filepath.Join(h.dir, "nats")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	// Everything published on NATS is recorded, as the infrastructure could.
	spy, err := substrate.Connect(ctx, ns.ClientURL(), "spy")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(spy.Close)
	for _, subj := range []string{">", "$O.>", "$JS.>"} {
		if _, err := spy.Subscribe(subj, func(m *nats.Msg) {
			h.spyMu.Lock()
			h.spied = append(h.spied, append([]byte(m.Subject+" "), m.Data...))
			h.spySub = append(h.spySub, m.Subject)
			h.spyMu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	if h.nc, err = substrate.Connect(ctx, ns.ClientURL(), "test"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.nc.Close)
	h.js, _ = jetstream.New(h.nc)
	if h.plat, err = sim.LoadOrCreate(filepath.Join(h.dir, "sim")); err != nil {
		t.Fatal(err)
	}
	meas, _ := sim.ExecutableMeasurement()
	v, _ := sim.NewVerifier(h.plat.RootCertPEM())
	verifiers := map[attest.TEE]attest.Verifier{attest.TEESim: v}
	h.op, _ = party.Generate(party.RoleOperator, "op", nil)
	h.srv, err = api.New(ctx, api.Config{Genesis: orchestrator.Genesis{Name: "t", Operator: h.op.Identity(), Workers: attest.ReferenceValues{AllowSim: true,
		Measurements: map[attest.TEE][]string{attest.TEESim: {hex.EncodeToString(meas)}}}},
		Issuer: h.plat.Issuer(), SealingKey: h.plat.SealingKey(meas, "s"), Verifiers: verifiers, Logger: h.quiet})
	if err != nil {
		t.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	hs := &http.Server{Handler: h.srv.Handler(nil)}
	go hs.Serve(tls.NewListener(ln, h.srv.TLSConfig()))
	t.Cleanup(func() { hs.Close() })
	go h.srv.ServeNATS(ctx, h.nc)
	if h.trust, _, err = client.Verify(ctx, "https://"+ln.Addr().String(), client.VerifyOptions{AllowSim: true, Verifiers: verifiers}); err != nil {
		t.Fatal(err)
	}
	h.c = client.New(h.trust)
	h.owner, _ = party.Generate(party.RoleOwner, "alice", nil)
	h.prov, _ = party.Generate(party.RoleProvider, "grid", nil)
	for _, p := range []*party.KeyFile{h.owner, h.prov} {
		if err := h.c.RegisterParty(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// worker starts a worker whose location is tier; it stops with the test.
func (h *codeHarness) worker(name, tier string) *worker.Worker {
	return h.workerUDF(name, tier, udf.Config{})
}

// workerUDF starts a worker with the given UDF limits.
func (h *codeHarness) workerUDF(name, tier string, limits udf.Config) *worker.Worker {
	h.t.Helper()
	claims, _ := party.Sign(h.op, orchestrator.TypeNodeClaims, orchestrator.NodeClaims{Name: name, Tier: tier, Region: "be", Slots: 8}, time.Hour, time.Now())
	w, err := worker.New(worker.Config{Name: name, NATS: h.nc, Orchestrator: h.trust, Issuer: h.plat.Issuer(), Claims: claims,
		IO: &worker.JetStreamIO{JS: h.js}, Logger: h.quiet, StatusInterval: 200 * time.Millisecond, UDF: limits})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(h.ctx)
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	h.t.Cleanup(func() { cancel(); <-done })
	// Admitted once the orchestrator lists it.
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var nodes []api.NodeView
		if h.c.Get(h.ctx, "/v1/nodes", &nodes) == nil {
			for _, n := range nodes {
				if n.ID == w.ID() {
					return w
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.t.Fatalf("worker %s was not admitted", name)
	return nil
}

// stream registers an owner's stream, publishes recs to it and ends it.
func (h *codeHarness) stream(name string, recs []record.Record) {
	h.t.Helper()
	pol, _ := json.Marshal(map[string]any{"stream": name, "rules": []map[string]string{
		{"name": "cloud", "stage": "placement", "expr": "node.tier == 'cloud'"},
		{"name": "any", "stage": "recipient", "expr": "true"}}})
	key, err := h.c.RegisterStream(h.ctx, h.owner, orchestrator.RegisterStream{Name: name, Schema: []orchestrator.Field{{Name: "meter", Type: "string"}, {Name: "kwh", Type: "float"}}, Partitions: 1, Policy: pol})
	if err != nil {
		h.t.Fatal(err)
	}
	ring := seal.NewKeyring()
	ring.AddSecret(name, 1, key)
	pub, err := confidential.NewPublisher(h.ctx, h.js, name, meterSchema, ring, 1)
	if err != nil {
		h.t.Fatal(err)
	}
	for i := 0; i < len(recs); i += 100 {
		if err := pub.Publish(h.ctx, 0, &record.Batch{Records: recs[i:min(i+100, len(recs))]}); err != nil {
			h.t.Fatal(err)
		}
	}
	if err := pub.Close(h.ctx); err != nil {
		h.t.Fatal(err)
	}
}

// udfService submits (with its module encrypted), approves and deploys a
// service reading stream through function fn of wasm into output "<id>-out".
func (h *codeHarness) udfService(id, stream string, wasm []byte, fn string, out *record.Schema) {
	h.t.Helper()
	b := jobspec.New(id).SchemaOf("m", meterSchema)
	b.Source(stream, "m").UDF(client.ModuleDigest(wasm), fn, jobspec.FieldsOf(out)).Sink(id + "-out")
	spec, err := b.MustBuild().JSON()
	if err != nil {
		h.t.Fatal(err)
	}
	man := orchestrator.Manifest{ID: id, Version: 1, Spec: spec, Inputs: []string{stream}, Outputs: []string{id + "-out"},
		Recipients: []party.ID{h.prov.ID()}, Tasks: []orchestrator.TaskSlot{{ID: id + "/t", Reads: []string{stream}, Writes: []string{id + "-out"}}}}
	body, err := client.PrepareCode(h.ctx, h.js, h.trust, man, map[string][]byte{fn: wasm})
	if err != nil {
		h.t.Fatal(err)
	}
	sub, err := h.c.Submit(h.ctx, h.prov, orchestrator.TypeServiceSubmit, body)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.c.Submit(h.ctx, h.owner, orchestrator.TypeServiceApprove, orchestrator.Approve{Stream: stream, Digest: sub.Result.(map[string]any)["digest"].(string)}); err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.c.Submit(h.ctx, h.prov, orchestrator.TypeJobDeploy, orchestrator.Deploy{Service: id}); err != nil {
		h.t.Fatal(err)
	}
}

// output reads a finished job's output as its recipient, the provider.
func (h *codeHarness) output(job string, schema *record.Schema) []record.Record {
	h.t.Helper()
	r, err := h.c.Submit(h.ctx, h.prov, orchestrator.TypeOutputRequest, orchestrator.OutputRequest{Job: job, Output: job + "-out"})
	if err != nil {
		h.t.Fatal(err)
	}
	var rel orchestrator.Release
	raw, _ := json.Marshal(r.Result)
	if err := json.Unmarshal(raw, &rel); err != nil {
		h.t.Fatal(err)
	}
	key, err := h.prov.Unwrap(orchestrator.WrapInfoFor(rel.Purpose, rel.Scope, rel.Epoch, h.prov.ID()).Bytes(), rel.Wrapped)
	if err != nil {
		h.t.Fatal(err)
	}
	ring := seal.NewKeyring()
	ring.AddSecret(job+"-out", rel.Epoch, key)
	recs, err := confidential.ReadOutput(h.ctx, h.js, job+"-out", schema, ring)
	if err != nil {
		h.t.Fatal(err)
	}
	return recs
}

// taskState waits until the state of task id on w satisfies ok.
func taskState(t *testing.T, w *worker.Worker, id string, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		for _, task := range w.Tasks() {
			if task.ID == id {
				if last = task.State(); ok(last) {
					return last
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("task %s: state %q never matched", id, last)
	return ""
}

func finished(s string) bool { return s == "finished" || strings.HasPrefix(s, "failed") }

func exampleModule(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "udf", "examples", "testdata", name+".wasm"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readings(n int) []record.Record {
	out := make([]record.Record, n)
	for i := range out {
		kwh := 1 + 0.1*float64(i%7) + 0.05*float64(i%3)
		if i%37 == 36 {
			kwh *= 6
		}
		out[i] = record.Record{Time: int64(i) * 60_000, Values: []record.Value{record.String(fmt.Sprintf("m%d", i%3)), record.Float(kwh)}}
	}
	return out
}

// TestConfidentialUDFService deploys the anomaly model as a service with
// confidential code: the output is the model's; the module's plaintext (any
// 64-byte window of it, or its embedded weights) is never in the object
// store or on NATS; the code key reaches only the node running the task.
func TestConfidentialUDFService(t *testing.T) {
	h := newCodeHarness(t)
	cloud := h.worker("cloud-1", "cloud")
	edge := h.worker("edge-1", "edge") // runs nothing of the service
	wasm := exampleModule(t, "anomaly")
	recs := readings(740)
	h.stream("meter", recs)
	h.udfService("anomaly", "meter", wasm, "detect", anomalyOut)
	if s := taskState(t, cloud, "anomaly/t", finished); s != "finished" {
		t.Fatalf("task ended %q", s)
	}
	got := h.output("anomaly", anomalyOut)
	if len(got) != len(recs) {
		t.Fatalf("%d output records for %d inputs", len(got), len(recs))
	}
	ref := model.NewDetector()
	flagged := 0
	for i, in := range recs {
		p, anomalous := ref.Observe(in.Values[0].S, in.Values[1].F)
		g := got[i].Values
		if g[0].S != in.Values[0].S || g[1].F != in.Values[1].F || math.Abs(g[2].F-p) > 1e-12*math.Max(1, math.Abs(p)) || (g[3].I == 1) != anomalous {
			t.Fatalf("record %d: got %v, want p=%v anomaly=%v", i, g, p, anomalous)
		}
		if anomalous {
			flagged++
		}
	}
	if flagged == 0 {
		t.Fatal("the model flagged no spike")
	}

	// The code key went to the node of the task, never to the other.
	codeReleases := func(w *worker.Worker) int {
		n := 0
		for _, r := range h.srv.Releases(w.ID()) {
			if r.Purpose == orchestrator.PurposeCode {
				n++
			}
		}
		return n
	}
	if codeReleases(cloud) != 1 || codeReleases(edge) != 0 {
		t.Fatalf("code key releases: %d to the task's node, %d to the other node; want 1 and 0", codeReleases(cloud), codeReleases(edge))
	}

	// Only ciphertext: the object store's chunks and every NATS message.
	windows := plaintextWindows(wasm)
	weights := modelWeights()
	if !bytes.Contains(wasm, weights) {
		t.Fatal("the module does not embed the weights as expected; the test cannot look for them")
	}
	leak := func(where string, data []byte) {
		t.Helper()
		if bytes.Contains(data, weights) {
			t.Fatalf("%s holds the model's weights in clear", where)
		}
		for i := 0; i+64 <= len(data); i++ {
			if _, ok := windows[string(data[i:i+64])]; ok {
				t.Fatalf("%s holds plaintext of the module at byte %d", where, i)
			}
		}
	}
	stream, err := h.js.Stream(h.ctx, "OBJ_"+orchestrator.ModuleBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := stream.Info(h.ctx)
	var stored int
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := stream.GetMsg(h.ctx, seq)
		if err != nil {
			continue
		}
		stored += len(m.Data)
		leak("object store message "+m.Subject, m.Data)
	}
	if stored < len(wasm) {
		t.Fatalf("the object store holds %d bytes, less than the %d-byte module", stored, len(wasm))
	}
	h.spyMu.Lock()
	defer h.spyMu.Unlock()
	chunks, total := 0, 0
	for i, m := range h.spied {
		total += len(m)
		if strings.HasPrefix(h.spySub[i], "$O."+orchestrator.ModuleBucket+".C.") {
			chunks += len(m)
		}
		leak("NATS message on "+h.spySub[i], m)
	}
	if chunks < len(wasm) {
		t.Fatalf("the spy saw %d bytes of module chunks, less than the module: it did not see the upload", chunks)
	}
	t.Logf("checked %d NATS messages (%d bytes) and %d stored bytes against %d plaintext windows", len(h.spied), total, stored, len(windows))
}

// plaintextWindows returns the module's 64-byte windows at multiples of 64
// that are not runs of few byte values (zero padding, which ciphertext or
// any message may hold too). Any 127 contiguous bytes of the plaintext hold
// one of them.
func plaintextWindows(wasm []byte) map[string]struct{} {
	out := map[string]struct{}{}
	for i := 0; i+64 <= len(wasm); i += 64 {
		w := wasm[i : i+64]
		distinct := map[byte]bool{}
		for _, c := range w {
			distinct[c] = true
		}
		if len(distinct) >= 16 {
			out[string(w)] = struct{}{}
		}
	}
	return out
}

// modelWeights returns the anomaly model's weights as they are laid out in
// the module's data (four little-endian float64).
func modelWeights() []byte {
	var b []byte
	for _, w := range []float64{1.9, 2.6, -0.8, 1.1} {
		b = append(b, leFloat(w)...)
	}
	return b
}

func leFloat(f float64) []byte {
	u := math.Float64bits(f)
	b := make([]byte, 8)
	for i := range b {
		b[i] = byte(u >> (8 * i))
	}
	return b
}

// pathOpenModule is a minimal module that imports WASI's path_open (the
// filesystem).
func pathOpenModule() []byte {
	m := []byte{0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}
	m = append(m, 0x01, 0x06, 0x01, 0x60, 0x01, 0x7f, 0x01, 0x7f) // type (i32) -> i32
	imp := []byte{0x01, 22}
	imp = append(imp, "wasi_snapshot_preview1"...)
	imp = append(imp, 9)
	imp = append(imp, "path_open"...)
	imp = append(imp, 0x00, 0x00)
	m = append(m, 0x02, byte(len(imp)))
	return append(m, imp...)
}

// TestHostileModulesFailTheirTaskOnly: a module importing the filesystem, an
// infinite loop and a memory blow-up each fail their task with an error
// naming the cause, and the worker then runs another service's task to its
// end.
func TestHostileModulesFailTheirTaskOnly(t *testing.T) {
	h := newCodeHarness(t)
	w := h.workerUDF("cloud-1", "cloud", udf.Config{BatchTimeout: 3 * time.Second, MemoryLimitPages: 256})
	hostile := exampleModule(t, "hostile")
	bad := append(readings(10), record.Record{Time: 1, Values: []record.Value{record.String("m0"), record.Float(-1)}})
	tests := []struct {
		id   string
		wasm []byte
		fn   string
		want string
	}{
		{"fs", pathOpenModule(), "f", "refused by rule udf-import"},
		{"spin", hostile, "spin", "exceeded the CPU time limit of 3s"},
		{"hog", hostile, "hog", "memory limit reached: memory is at"}, // "… 248 of the 256 pages (16 MiB) allowed"
	}
	for _, tc := range tests {
		h.stream("in-"+tc.id, bad)
		h.udfService(tc.id, "in-"+tc.id, tc.wasm, tc.fn, meterSchema)
		s := taskState(t, w, tc.id+"/t", finished)
		if !strings.HasPrefix(s, "failed") || !strings.Contains(s, tc.want) {
			t.Fatalf("%s: task state %q, want a failure naming %q", tc.id, s, tc.want)
		}
		t.Logf("%s: %s", tc.id, s)
	}
	recs := readings(100)
	h.stream("meter", recs)
	h.udfService("anomaly", "meter", exampleModule(t, "anomaly"), "detect", anomalyOut)
	if s := taskState(t, w, "anomaly/t", finished); s != "finished" {
		t.Fatalf("the worker did not run a good task after the hostile ones: %q", s)
	}
	if got := h.output("anomaly", anomalyOut); len(got) != len(recs) {
		t.Fatalf("%d output records for %d inputs", len(got), len(recs))
	}
}

// TestAlteredModuleIsRefused: ciphertext the storage altered, or replaced by
// another module's, is refused by rule and the task fails before running.
func TestAlteredModuleIsRefused(t *testing.T) {
	tests := []struct {
		name  string
		alter func(ct, other []byte) []byte
		want  string
	}{
		{"a flipped byte", func(ct, _ []byte) []byte { ct[len(ct)/3] ^= 0x40; return ct }, client.RuleModuleCiphertext},
		{"truncated", func(ct, _ []byte) []byte { return ct[:len(ct)/2] }, client.RuleModuleCiphertext},
		{"another module's ciphertext", func(_, other []byte) []byte { return other }, client.RuleModuleCiphertext},
	}
	h := newCodeHarness(t)
	w := h.worker("cloud-1", "cloud")
	store, err := client.ModuleBucket(h.ctx, h.js, true)
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A module of its own per case: the worker compiles a digest once.
			wasm := append(pathOpenModule(), 0x00, 0x03, 0x01, 'x', byte(i)) // a custom section
			id := fmt.Sprintf("alt%d", i)
			// Upload and deploy only after the store was altered: fence
			// the deployment with a stream that is not yet published.
			b := jobspec.New(id).SchemaOf("m", meterSchema)
			b.Source("in-"+id, "m").UDF(client.ModuleDigest(wasm), "f", jobspec.FieldsOf(meterSchema)).Sink(id + "-out")
			spec, _ := b.MustBuild().JSON()
			man := orchestrator.Manifest{ID: id, Version: 1, Spec: spec, Inputs: []string{"in-" + id}, Outputs: []string{id + "-out"},
				Tasks: []orchestrator.TaskSlot{{ID: id + "/t", Reads: []string{"in-" + id}, Writes: []string{id + "-out"}}}}
			h.stream("in-"+id, readings(5))
			body, err := client.PrepareCode(h.ctx, h.js, h.trust, man, map[string][]byte{"f": wasm})
			if err != nil {
				t.Fatal(err)
			}
			name := orchestrator.ModuleObject(id, 1, client.ModuleDigest(wasm))
			ct, err := store.GetBytes(h.ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			_, other, _ := client.SealModule(client.NewCodeKey(), id, 1, wasm)
			if _, err := store.PutBytes(h.ctx, name, tc.alter(ct, other)); err != nil {
				t.Fatal(err)
			}
			sub, err := h.c.Submit(h.ctx, h.prov, orchestrator.TypeServiceSubmit, body)
			if err != nil {
				t.Fatal(err)
			}
			h.c.Submit(h.ctx, h.owner, orchestrator.TypeServiceApprove, orchestrator.Approve{Stream: "in-" + id, Digest: sub.Result.(map[string]any)["digest"].(string)})
			if _, err := h.c.Submit(h.ctx, h.prov, orchestrator.TypeJobDeploy, orchestrator.Deploy{Service: id}); err != nil {
				t.Fatal(err)
			}
			s := taskState(t, w, id+"/t", finished)
			if !strings.Contains(s, "refused by rule "+tc.want) && !strings.Contains(s, tc.want+":") {
				t.Fatalf("task state %q, want a refusal by %s", s, tc.want)
			}
			t.Logf("%s", s)
		})
	}
}
