package orchestrator

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
)

const testModule = "sha256:" + "ab0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"

// codeManifest is a two-stage service: stage "pre" copies meter-a to an
// intermediate stream, stage "score" runs a udf of testModule over it.
func codeManifest(t *testing.T, id string) Manifest {
	t.Helper()
	pre := jobspec.New(id+"-pre").Schema("meter", jobspec.Float("kwh"))
	pre.Source("meter-a", "meter").Sink(id + "-mid")
	score := jobspec.New(id+"-score").Schema("meter", jobspec.Float("kwh"))
	score.Source(id+"-mid", "meter").UDF(testModule, "detect", []jobspec.Field{jobspec.Float("kwh"), jobspec.Bool("anomaly")}).Sink(id + "-out")
	stages := map[string]json.RawMessage{}
	for name, b := range map[string]*jobspec.Builder{"pre": pre, "score": score} {
		raw, err := b.MustBuild().JSON()
		if err != nil {
			t.Fatal(err)
		}
		stages[name] = raw
	}
	return Manifest{ID: id, Version: 3, Inputs: []string{"meter-a"}, Outputs: []string{id + "-out"}, CodeDigests: []string{testModule},
		Stages: stages, Tasks: []TaskSlot{
			{ID: id + "/pre", Stage: "pre", Tiers: []string{"edge"}, Reads: []string{"meter-a"}},
			{ID: id + "/score", Stage: "score", Tiers: []string{"cloud"}, Writes: []string{id + "-out"}},
		}}
}

func (w *world) wrapCode(service string, version int64, key []byte) *seal.Wrapped {
	w.t.Helper()
	pub, _ := w.m.Self().HPKEPublicKey()
	wr, err := seal.Wrap(pub, CodeKeyInfo(service, version, w.self.ID()).Bytes(), key)
	if err != nil {
		w.t.Fatal(err)
	}
	return &wr
}

func TestSubmitChecksTheCodeKey(t *testing.T) {
	key := bytes.Repeat([]byte{7}, seal.KeySize)
	tests := []struct {
		name   string
		body   func(w *world) SubmitService
		rule   string
		stored bool
	}{
		{"code digests and their key", func(w *world) SubmitService {
			return SubmitService{Manifest: codeManifest(t, "svc"), CodeKey: w.wrapCode("svc", 3, key)}
		}, "", true},
		{"code digests without a key", func(w *world) SubmitService {
			return SubmitService{Manifest: codeManifest(t, "svc")}
		}, RuleCodeKey, false},
		{"a key without code digests", func(w *world) SubmitService {
			return SubmitService{Manifest: manifest("svc", "meter-a"), CodeKey: w.wrapCode("svc", 1, key)}
		}, RuleCodeKey, false},
		{"a key wrapped for another version", func(w *world) SubmitService {
			return SubmitService{Manifest: codeManifest(t, "svc"), CodeKey: w.wrapCode("svc", 2, key)}
		}, RuleCodeKey, false},
		{"a key wrapped for another service", func(w *world) SubmitService {
			return SubmitService{Manifest: codeManifest(t, "svc"), CodeKey: w.wrapCode("other", 3, key)}
		}, RuleCodeKey, false},
		{"a short key", func(w *world) SubmitService {
			return SubmitService{Manifest: codeManifest(t, "svc"), CodeKey: w.wrapCode("svc", 3, key[:16])}
		}, RuleCodeKey, false},
		{"code digests that are not the modules that run", func(w *world) SubmitService {
			man := codeManifest(t, "svc")
			man.CodeDigests = []string{"sha256:" + strings.Repeat("0", 64)}
			return SubmitService{Manifest: man, CodeKey: w.wrapCode("svc", 3, key)}
		}, RuleCodeDigests, false},
		{"modules that run without code digests", func(w *world) SubmitService {
			man := codeManifest(t, "svc")
			man.CodeDigests = nil
			return SubmitService{Manifest: man}
		}, RuleCodeDigests, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, nil)
			w.owner("alice", "meter-a", edgeOnlyBE)
			grid := w.provider("grid")
			_, err := w.do(grid, TypeServiceSubmit, tc.body(w))
			if rule(err) != tc.rule {
				t.Fatalf("submit: err = %v (rule %q), want rule %q", err, rule(err), tc.rule)
			}
			if _, ok := w.m.State().Services["svc"]; ok != tc.stored {
				t.Fatalf("service stored = %v, want %v", ok, tc.stored)
			}
			if _, ok := w.m.State().CodeKeys["svc"]; ok != (tc.stored && tc.rule == "" && tc.name == "code digests and their key") {
				t.Fatalf("code key stored = %v", ok)
			}
		})
	}
}

// TestCodeKeyReleasedOnlyToTasksRunningModules: at deploy, on rescheduling
// and on re-admission the code key goes only to the node of the task that
// runs the modules, re-wrapped to it, and each release is logged; nodes
// running other tasks, or none, never receive it.
func TestCodeKeyReleasedOnlyToTasksRunningModules(t *testing.T) {
	w := newWorld(t, nil)
	alice, _ := w.owner("alice", "meter-a", `{"name": "any", "stage": "placement", "expr": "true"}`)
	grid := w.provider("grid")
	edge, err := w.node("edge-1", "edge", "be")
	if err != nil {
		t.Fatal(err)
	}
	cloud1, err := w.node("cloud-1", "cloud", "be")
	if err != nil {
		t.Fatal(err)
	}
	idle, err := w.node("edge-2", "edge", "be")
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, seal.KeySize)
	rand.Read(key)
	sub := w.must(grid, TypeServiceSubmit, SubmitService{Manifest: codeManifest(t, "svc"), CodeKey: w.wrapCode("svc", 3, key)})
	digest := sub.Result.(map[string]any)["digest"].(string)
	if want := digestJSON(codeManifest(t, "svc")); digest != want {
		t.Fatalf("service digest %s covers more than the manifest (%s)", digest, want)
	}
	w.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: digest})
	out := w.must(grid, TypeJobDeploy, Deploy{Service: "svc"})
	job := w.m.State().Jobs["svc"]
	if job.Tasks["svc/score"] != cloud1.ID() {
		t.Fatalf("score task on %s, want cloud-1", job.Tasks["svc/score"].Short())
	}
	codeTo := func(rs []Release) []party.ID {
		var to []party.ID
		for _, r := range rs {
			if r.Purpose == PurposeCode {
				to = append(to, r.To)
			}
		}
		return to
	}
	checkRelease := func(rs []Release, node *party.KeyFile) {
		t.Helper()
		got := codeTo(rs)
		if len(got) != 1 || got[0] != node.ID() {
			t.Fatalf("code key released to %v, want only %s", got, node.ID().Short())
		}
		for _, r := range rs {
			if r.Purpose != PurposeCode {
				continue
			}
			if r.Task != "svc/score" || r.Scope != "svc" || r.Epoch != 3 {
				t.Fatalf("code release %+v", r)
			}
			k, err := seal.Unwrap(node.HPKEKey(), CodeKeyInfo("svc", 3, node.ID()).Bytes(), r.Wrapped)
			if err != nil || !bytes.Equal(k, key) {
				t.Fatalf("the node cannot unwrap the code key: %v", err)
			}
			for _, other := range []*party.KeyFile{edge, idle} {
				if _, err := seal.Unwrap(other.HPKEKey(), CodeKeyInfo("svc", 3, other.ID()).Bytes(), r.Wrapped); err == nil {
					t.Fatal("another node unwrapped the code key")
				}
			}
		}
	}
	checkRelease(out.Releases, cloud1)
	logged := 0
	for _, e := range w.logged("key.released") {
		var b map[string]any
		json.Unmarshal(e.Body, &b)
		if b["purpose"] == PurposeCode {
			logged++
			if b["node"] != string(cloud1.ID()) || b["key"] != "svc/3" {
				t.Fatalf("code release logged as %v", b)
			}
		}
	}
	if logged != 1 {
		t.Fatalf("%d code releases logged, want 1", logged)
	}

	// Re-admission: the key again, to the same node only.
	n := len(w.releases)
	if err := w.admitAs(cloud1, "cloud-1", "cloud", "be", 4); err != nil {
		t.Fatal(err)
	}
	checkRelease(w.releases[n:], cloud1)

	// The node is lost: the task moves to another cloud node, which gets
	// the key; the edge nodes still never do.
	cloud2, err := w.node("cloud-2", "cloud", "be")
	if err != nil {
		t.Fatal(err)
	}
	w.now = w.now.Add(1)
	lost, err := w.m.NodeLost(w.now, cloud1.ID(), "silent")
	if err != nil {
		t.Fatal(err)
	}
	w.collect(lost)
	checkRelease(lost.Releases, cloud2)
	for _, r := range w.releases {
		if r.Purpose == PurposeCode && (r.To == edge.ID() || r.To == idle.ID()) {
			t.Fatalf("the code key was released to %s, which runs no module", r.To.Short())
		}
	}
}
