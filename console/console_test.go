package console_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/attest/sim"
	"github.com/sealflow/sealflow/console"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
)

// deployment is an in-process orchestrator served over HTTPS, with the
// parties of a small scenario.
type deployment struct {
	t        *testing.T
	srv      *api.Server
	http     *httptest.Server
	client   *http.Client
	reg      *prometheus.Registry
	plat     *sim.Platform
	operator *party.KeyFile
	parties  map[string]*party.KeyFile
	nodes    map[string]*party.KeyFile
}

func newDeployment(t *testing.T) *deployment {
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
	g := orchestrator.Genesis{Name: "console-test", Operator: op.Identity(), Workers: attest.ReferenceValues{AllowSim: true,
		Measurements: map[attest.TEE][]string{attest.TEESim: {hex.EncodeToString(meas)}}}}
	reg := prometheus.NewRegistry()
	srv, err := api.New(context.Background(), api.Config{Genesis: g, Issuer: plat.Issuer(), SealingKey: plat.SealingKey(meas, "orchestrator-state"),
		Verifiers: map[attest.TEE]attest.Verifier{attest.TEESim: v}, Registerer: reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler(reg))
	hs.TLS = srv.TLSConfig()
	hs.StartTLS()
	t.Cleanup(hs.Close)
	// Clients trust exactly the orchestrator's certificate (the key its
	// evidence binds).
	roots := x509.NewCertPool()
	roots.AddCert(srv.TLSCertificate().Leaf)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}}}
	t.Cleanup(client.CloseIdleConnections)
	return &deployment{t: t, srv: srv, http: hs, client: client, reg: reg, plat: plat, operator: op, parties: map[string]*party.KeyFile{}, nodes: map[string]*party.KeyFile{}}
}

// submit signs and applies a statement; it fails the test on a refusal
// unless wantRule names the expected rule.
func (d *deployment) submit(kf *party.KeyFile, typ string, body any, wantRule string) *api.Response {
	d.t.Helper()
	signed, err := party.Sign(kf, typ, body, time.Minute, time.Now())
	if err != nil {
		d.t.Fatal(err)
	}
	resp, err := d.srv.Submit(context.Background(), signed)
	if err != nil {
		d.t.Fatal(err)
	}
	if resp.Rule != wantRule {
		d.t.Fatalf("%s by %s: rule %q (%s), want %q", typ, kf.Identity().Name, resp.Rule, resp.Error, wantRule)
	}
	return resp
}

func (d *deployment) party(role party.Role, name string) *party.KeyFile {
	d.t.Helper()
	kf, err := party.Generate(role, name, nil)
	if err != nil {
		d.t.Fatal(err)
	}
	d.submit(kf, orchestrator.TypePartyRegister, orchestrator.RegisterParty{Identity: orchestrator.Identity{Identity: kf.Identity()}}, "")
	d.parties[name] = kf
	return kf
}

// owner registers an owner with one stream whose policy places tasks on
// edge nodes only and sends outputs to the party named grid only.
func (d *deployment) owner(name, stream string) *party.KeyFile {
	d.t.Helper()
	kf := d.party(party.RoleOwner, name)
	pol := `{"stream": "` + stream + `", "rules": [{"name": "edge", "stage": "placement", "expr": "node.tier == 'edge'"},
		{"name": "grid-only", "stage": "recipient", "expr": "recipient.name == 'grid'"}]}`
	d.submit(kf, orchestrator.TypeStreamRegister, orchestrator.RegisterStream{Name: stream, Partitions: 1,
		Schema: []orchestrator.Field{{Name: "kwh", Type: "float"}}, Policy: json.RawMessage(pol)}, "")
	key := make([]byte, seal.KeySize)
	rand.Read(key)
	id := d.srv.Identity()
	pub, _ := id.HPKEPublicKey()
	w, err := seal.Wrap(pub, seal.WrapInfo{Purpose: "stream-key", KeyID: stream + "/1", Recipient: string(id.ID())}.Bytes(), key)
	if err != nil {
		d.t.Fatal(err)
	}
	d.submit(kf, orchestrator.TypeStreamKey, orchestrator.StreamKey{Stream: stream, Epoch: 1, Wrapped: w}, "")
	return kf
}

// node admits a worker with one slot.
func (d *deployment) node(name, tier string) {
	d.t.Helper()
	kf, _ := party.Generate(party.RoleWorker, name, nil)
	claims, err := party.Sign(d.operator, orchestrator.TypeNodeClaims, orchestrator.NodeClaims{Name: name, Tier: tier, Region: "be", Site: name, Slots: 1}, time.Hour, time.Now())
	if err != nil {
		d.t.Fatal(err)
	}
	nonce := d.srv.Nonce()
	ev, err := d.plat.Issuer().Issue(context.Background(), attest.BindReportData(nonce, kf.Identity().SigningKey, kf.Identity().HPKEKey))
	if err != nil {
		d.t.Fatal(err)
	}
	d.submit(kf, orchestrator.TypeNodeAdmit, orchestrator.Admit{Identity: orchestrator.Identity{Identity: kf.Identity()}, Nonce: nonce, Evidence: *ev, Claims: claims}, "")
	d.nodes[name] = kf
}

// manifest is a service reading inputs on one edge task each and writing one
// output from an aggregating task.
func manifest(id string, recipients []party.ID, inputs ...string) orchestrator.Manifest {
	var tasks []orchestrator.TaskSlot
	for _, in := range inputs {
		tasks = append(tasks, orchestrator.TaskSlot{ID: id + "/src-" + in, Tiers: []string{"edge"}, Reads: []string{in}})
	}
	tasks = append(tasks, orchestrator.TaskSlot{ID: id + "/agg", Writes: []string{id + "-out"}})
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
	dg, _ := b.MustBuild().Digest()
	return orchestrator.Manifest{ID: id, Version: 1, JobDigest: dg, Inputs: inputs, Outputs: []string{id + "-out"}, Recipients: recipients, Tasks: tasks, Spec: spec}
}

func (d *deployment) deploy(provider *party.KeyFile, man orchestrator.Manifest, approvers map[string]*party.KeyFile) {
	d.t.Helper()
	sub := d.submit(provider, orchestrator.TypeServiceSubmit, man, "")
	digest := sub.Result.(map[string]any)["digest"].(string)
	for stream, kf := range approvers {
		d.submit(kf, orchestrator.TypeServiceApprove, orchestrator.Approve{Stream: stream, Digest: digest}, "")
	}
	d.submit(provider, orchestrator.TypeJobDeploy, orchestrator.Deploy{Service: man.ID}, "")
}

func (d *deployment) get(path string, v any) int {
	d.t.Helper()
	resp, err := d.client.Get(d.http.URL + path)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			d.t.Fatalf("GET %s: %v\n%s", path, err, body)
		}
	}
	return resp.StatusCode
}

// scenario: alice (meter-a) and bob (meter-b) feed "balance"; bob alone
// feeds "profile"; carol (meter-c) registered but nothing reads her stream.
// Six edge nodes with one slot each, so every task has its own node.
func scenario(t *testing.T) *deployment {
	d := newDeployment(t)
	alice := d.owner("alice", "meter-a")
	bob := d.owner("bob", "meter-b")
	d.owner("carol", "meter-c")
	grid := d.party(party.RoleProvider, "grid")
	adcorp := d.party(party.RoleProvider, "adcorp")
	for _, n := range []string{"edge-1", "edge-2", "edge-3", "edge-4", "edge-5", "edge-6"} {
		d.node(n, "edge")
	}
	d.deploy(grid, manifest("balance", []party.ID{grid.ID(), adcorp.ID()}, "meter-a", "meter-b"), map[string]*party.KeyFile{"meter-a": alice, "meter-b": bob})
	d.deploy(grid, manifest("profile", []party.ID{grid.ID()}, "meter-b"), map[string]*party.KeyFile{"meter-b": bob})
	d.submit(grid, orchestrator.TypeOutputRequest, orchestrator.OutputRequest{Job: "balance", Output: "balance-out"}, "")
	// adcorp is named by the manifest but refused by the owners' recipient rule.
	d.submit(adcorp, orchestrator.TypeOutputRequest, orchestrator.OutputRequest{Job: "balance", Output: "balance-out"}, "policy:meter-a/grid-only")
	return d
}

// TestOwnerViewMatchesPlacement checks that the owner view highlights exactly
// the nodes that received the owner's keys: every node running a task of a
// job that reads the owner's streams (taken from /v1/jobs and the manifests,
// not from the log), marked direct exactly when the task reads one of the
// owner's streams itself; and the recipients that got an output key.
func TestOwnerViewMatchesPlacement(t *testing.T) {
	d := scenario(t)
	var jobs []api.JobView
	d.get("/v1/jobs", &jobs)
	reads := map[string][]string{} // task → streams it reads
	for _, man := range []orchestrator.Manifest{manifest("balance", nil, "meter-a", "meter-b"), manifest("profile", nil, "meter-b")} {
		for _, ts := range man.Tasks {
			reads[ts.ID] = ts.Reads
		}
	}
	jobInputs := map[string][]string{"balance": {"meter-a", "meter-b"}, "profile": {"meter-b"}}
	tests := []struct {
		owner      string
		streams    []string
		recipients []string
	}{
		{"alice", []string{"meter-a"}, []string{"grid"}},
		{"bob", []string{"meter-b"}, []string{"grid"}},
		{"carol", []string{"meter-c"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.owner, func(t *testing.T) {
			wantNodes, wantDirect := map[string]bool{}, map[string]bool{}
			for _, j := range jobs {
				if !slices.ContainsFunc(jobInputs[j.ID], func(s string) bool { return slices.Contains(tt.streams, s) }) {
					continue
				}
				for task, node := range j.Tasks {
					wantNodes[string(node)] = true
					if slices.ContainsFunc(reads[task], func(s string) bool { return slices.Contains(tt.streams, s) }) {
						wantDirect[string(node)] = true
					}
				}
			}
			var v console.OwnerView
			if code := d.get("/console/api/owner?owner="+string(d.parties[tt.owner].ID()), &v); code != http.StatusOK {
				t.Fatalf("owner view: HTTP %d", code)
			}
			if !slices.Equal(v.Streams, tt.streams) {
				t.Errorf("streams = %v, want %v", v.Streams, tt.streams)
			}
			got := map[string]bool{}
			for _, n := range v.Nodes {
				got[n.Node] = true
				if n.Direct != wantDirect[n.Node] {
					t.Errorf("node %s: direct = %v, want %v (tasks %v)", n.Node[:12], n.Direct, wantDirect[n.Node], n.Tasks)
				}
				if len(n.Keys) == 0 {
					t.Errorf("node %s highlighted without a key release", n.Node[:12])
				}
			}
			if len(got) != len(wantNodes) {
				t.Errorf("highlighted %d nodes, want %d: got %v want %v", len(got), len(wantNodes), got, wantNodes)
			}
			for n := range wantNodes {
				if !got[n] {
					t.Errorf("node %s holds a key but is not highlighted", n[:12])
				}
			}
			var gotRecips []string
			for _, r := range v.Recipients {
				gotRecips = append(gotRecips, r.Recipient)
			}
			var wantRecips []string
			for _, name := range tt.recipients {
				wantRecips = append(wantRecips, string(d.parties[name].ID()))
			}
			if !slices.Equal(gotRecips, wantRecips) {
				t.Errorf("recipients = %v, want %v", gotRecips, wantRecips)
			}
			// By stream: the same nodes.
			var bs console.OwnerView
			d.get("/console/api/owner?stream="+url.QueryEscape(tt.streams[0]), &bs)
			if !slices.Equal(bs.NodeIDs(), v.NodeIDs()) {
				t.Errorf("by stream: nodes %v, by owner %v", bs.NodeIDs(), v.NodeIDs())
			}
		})
	}
}

func TestOwnerEndpointRefusesBadQueries(t *testing.T) {
	d := newDeployment(t)
	d.owner("alice", "meter-a")
	tests := []struct {
		query    string
		wantCode int
		wantErr  string
	}{
		{"", http.StatusBadRequest, "give owner"},
		{"owner=xyz", http.StatusBadRequest, "not a party id"},
		{"owner=" + strings.Repeat("A", 64), http.StatusBadRequest, "not a party id"},
		{"owner=" + string(d.parties["alice"].ID()) + "&stream=meter-a", http.StatusBadRequest, "not both"},
		{"owner=" + strings.Repeat("0", 64), http.StatusNotFound, "registered no streams"},
		{"stream=nope", http.StatusNotFound, "no entry about stream"},
		{"stream=" + strings.Repeat("s", console.MaxStreamName+1), http.StatusBadRequest, "longer than"},
		{"stream=meter-a", http.StatusOK, ""},
	}
	for _, tt := range tests {
		var body map[string]any
		code := d.get("/console/api/owner?"+tt.query, &body)
		if code != tt.wantCode {
			t.Errorf("%q: HTTP %d, want %d (%v)", tt.query, code, tt.wantCode, body)
			continue
		}
		if msg, _ := body["error"].(string); !strings.Contains(msg, tt.wantErr) {
			t.Errorf("%q: error %q, want it to say %q", tt.query, msg, tt.wantErr)
		}
	}
}

func TestConsoleServesPageWithStrictHeaders(t *testing.T) {
	d := newDeployment(t)
	tests := []struct {
		path, wantType, wantBody string
	}{
		{"/console/", "text/html", `<script src="app.js" defer></script>`},
		{"/console/app.js", "javascript", "function runRecordProof"},
		{"/console/style.css", "text/css", ".node.holds-key.direct"},
	}
	for _, tt := range tests {
		resp, err := d.client.Get(d.http.URL + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), tt.wantType) || !strings.Contains(string(body), tt.wantBody) {
			t.Errorf("GET %s: HTTP %d, type %q, body lacks %q", tt.path, resp.StatusCode, resp.Header.Get("Content-Type"), tt.wantBody)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy %q does not restrict scripts", tt.path, csp)
		}
	}
	if code := d.get("/console/nope.js", nil); code != http.StatusNotFound {
		t.Errorf("GET /console/nope.js: HTTP %d, want 404", code)
	}
	// The console rides on the attested TLS listener: the certificate is the
	// orchestrator's.
	resp, err := d.client.Get(d.http.URL + "/console/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !resp.TLS.PeerCertificates[0].Equal(d.srv.TLSCertificate().Leaf) {
		t.Error("the console is not served with the orchestrator's attested TLS certificate")
	}
}

// TestOrchestratorMetrics checks the admissions and policy-refusal counters
// the Grafana dashboard reads.
func TestOrchestratorMetrics(t *testing.T) {
	d := scenario(t)
	if got := counter(t, d.reg, "sealflow_orchestrator_admissions_total", map[string]string{"outcome": "admitted"}); got != 6 {
		t.Errorf("admissions{admitted} = %v, want 6", got)
	}
	if got := counter(t, d.reg, "sealflow_orchestrator_policy_refusals_total", map[string]string{"rule": "policy:meter-a/grid-only"}); got != 1 {
		t.Errorf("policy refusals{policy:meter-a/grid-only} = %v, want 1", got)
	}
	// A refused admission (claims signed by someone other than the operator).
	kf, _ := party.Generate(party.RoleWorker, "rogue", nil)
	claims, _ := party.Sign(kf, orchestrator.TypeNodeClaims, orchestrator.NodeClaims{Name: "rogue", Tier: "edge", Slots: 1}, time.Hour, time.Now())
	nonce := d.srv.Nonce()
	ev, _ := d.plat.Issuer().Issue(context.Background(), attest.BindReportData(nonce, kf.Identity().SigningKey, kf.Identity().HPKEKey))
	d.submit(kf, orchestrator.TypeNodeAdmit, orchestrator.Admit{Identity: orchestrator.Identity{Identity: kf.Identity()}, Nonce: nonce, Evidence: *ev, Claims: claims}, "node.claims")
	if got := counter(t, d.reg, "sealflow_orchestrator_admissions_total", map[string]string{"outcome": "refused"}); got != 1 {
		t.Errorf("admissions{refused} = %v, want 1", got)
	}
}

// counter returns the value of one labelled series of a registered counter
// vector, failing the test when there is none.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue series
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}
