package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/substrate"
)

// TestServiceSubmitEncryptsModules: `sealflow service submit` with a
// manifest listing a module stores only its ciphertext in the module store,
// submits its digest as the service's code digest, and refuses a manifest
// whose JobSpec runs a module it does not list.
func TestServiceSubmitEncryptsModules(t *testing.T) {
	dir := t.TempDir()
	o := startOrchestrator(t, filepath.Join(dir, "orch"))
	trust := filepath.Join(dir, "trust.json")
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
	alice, grid := key(party.RoleOwner, "alice"), key(party.RoleProvider, "grid")
	with := func(args ...string) []string { return append([]string{"--trust", trust}, args...) }
	mustCLI(t, runVerify, with("--orchestrator", o.ep.OrchestratorURL, "--allow-sim", "--sim-dir", o.ep.SimDir)...)
	for _, k := range []string{alice, grid} {
		mustCLI(t, runOwnerRegister, with("--key", k)...)
	}
	pol := writeTestFile(t, filepath.Join(dir, "meter.policy.yaml"), "stream: meter\nrules:\n  - {name: any, stage: placement, expr: \"true\"}\n")
	mustCLI(t, runOwnerRegisterStream, with("--key", alice, "--stream", "meter", "--schema", "meter:string,kwh:float", "--policy", pol)...)

	wasmPath, err := filepath.Abs(filepath.Join("..", "..", "udf", "examples", "testdata", "anomaly.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	wasm, err := os.ReadFile(wasmPath)
	if err != nil {
		t.Fatal(err)
	}
	digest := client.ModuleDigest(wasm)
	manifest := func(modules string) string {
		return `id: anomaly
version: 2
inputs: [meter]
outputs: [alerts]
tasks:
  - {id: anomaly/t, reads: [meter], writes: [alerts]}
` + modules + `job:
  name: anomaly
  schemas:
    m: [{name: meter, type: string}, {name: kwh, type: float}]
  nodes:
    - {id: src, kind: source, params: {stream: meter, schema: m}}
    - {id: detect, kind: udf, inputs: [src], params: {udf: {module: "` + digest + `", function: detect, output: [{name: meter, type: string}, {name: kwh, type: float}, {name: p, type: float}, {name: anomaly, type: bool}]}}}
    - {id: out, kind: sink, inputs: [detect], params: {stream: alerts}}
`
	}

	// A JobSpec running a module the manifest does not list: refused before
	// anything is uploaded or submitted.
	bare := writeTestFile(t, filepath.Join(dir, "bare.yaml"), manifest(""))
	if _, err := runCLI(t, runServiceSubmit, with("--key", grid, "--nats", o.ep.NATSURL, bare)...); err == nil || !strings.Contains(err.Error(), "modules:") {
		t.Fatalf("submit without modules: %v, want an error naming modules:", err)
	}

	man := writeTestFile(t, filepath.Join(dir, "anomaly.yaml"), manifest("modules: {model: "+wasmPath+"}\n"))
	out := mustCLI(t, runServiceSubmit, with("--key", grid, "--nats", o.ep.NATSURL, man)...)
	if !strings.Contains(out, "code:       "+digest) {
		t.Fatalf("submit does not show the code digest:\n%s", out)
	}
	tr, err := client.LoadTrust(trust)
	if err != nil {
		t.Fatal(err)
	}
	var svcs []*orchestrator.Service
	if err := client.New(tr).Get(context.Background(), "/v1/services", &svcs); err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 1 || !slices.Equal(svcs[0].Manifest.CodeDigests, []string{digest}) {
		t.Fatalf("submitted services %+v, want anomaly with code digest %s", svcs, digest)
	}

	nc, err := substrate.Connect(context.Background(), o.ep.NATSURL, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	store, err := client.ModuleBucket(context.Background(), js, false)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := store.GetBytes(context.Background(), orchestrator.ModuleObject("anomaly", 2, digest))
	if err != nil {
		t.Fatal(err)
	}
	if len(ct) < len(wasm) {
		t.Fatalf("stored %d bytes for a %d-byte module", len(ct), len(wasm))
	}
	for i := 0; i+64 <= len(wasm); i += 4096 {
		if w := wasm[i : i+64]; bytes.Count(w, w[:1]) < 64 && bytes.Contains(ct, w) {
			t.Fatalf("the stored module holds plaintext at %d", i)
		}
	}
}
