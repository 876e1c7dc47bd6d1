package orchestrator

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/party"
)

// submitVersion submits svc's manifest at version v (a new digest, the same
// JobSpec) and returns its digest.
func submitVersion(w *world, grid *party.KeyFile, v int64, mutate func(*Manifest)) string {
	man := manifest("svc", "meter-a")
	man.Version = v
	if mutate != nil {
		mutate(&man)
	}
	return w.must(grid, TypeServiceSubmit, man).Result.(map[string]any)["digest"].(string)
}

// TestUpgradeWaitsForOwnersAndCarriesState: a new version runs only once
// every owner approved it (until then the old keeps running and the refusal
// names who is pending); the upgrade takes a savepoint, keeps the job's keys
// and starts every task from its restore point; rollback returns to the old
// version and that savepoint.
func TestUpgradeWaitsForOwnersAndCarriesState(t *testing.T) {
	c := newCkptWorld(t)
	c.must(c.on(c.src), TypeCheckpointAck, ack(c.src, 4, "s4"))
	c.must(c.on(c.agg), TypeCheckpointAck, ack(c.agg, 4, "a4"))
	v1 := c.m.State().Jobs["svc"].Digest
	keys := cloneKeys(c.m.State().Jobs["svc"].Keys)

	v2 := submitVersion(c.world, c.grid, 2, nil)
	if c.m.State().Jobs["svc"].Digest != v1 {
		t.Fatal("submitting version 2 changed the running job")
	}
	out, err := c.do(c.grid, TypeJobUpgrade, UpgradeRequest{Job: "svc"})
	if ruleOf(err) != "approval.pending" {
		t.Fatalf("upgrade before the owner approved: %v, want approval.pending", err)
	}
	if p, _ := out.Result.(map[string]any)["pending"].([]string); len(p) != 1 || p[0] != "meter-a" {
		t.Fatalf("the refusal names pending %v, want [meter-a]", out.Result)
	}
	if job := c.m.State().Jobs["svc"]; job.Digest != v1 || len(c.logged("job.upgrade.refused")) != 1 {
		t.Fatal("a refused upgrade changed the job or was not logged")
	}
	// An older version is refused; so is an upgrade to the running one.
	if _, err := c.do(c.grid, TypeJobUpgrade, UpgradeRequest{Job: "svc", Digest: v1}); ruleOf(err) != "upgrade.version" {
		t.Fatalf("upgrade to the running version: %v", err)
	}

	alice := c.ownerKey("alice")
	c.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: v2})
	res := c.must(c.grid, TypeJobUpgrade, UpgradeRequest{Job: "svc"}).Result.(*UpgradeResult)
	job := c.m.State().Jobs["svc"]
	if job.Digest != v2 || res.FromVersion != 1 || res.ToVersion != 2 || job.Previous == nil || job.Previous.Digest != v1 {
		t.Fatalf("after the upgrade: job digest %s, result %+v, previous %+v", short(job.Digest), res, job.Previous)
	}
	for k, v := range keys {
		if !bytes.Equal(job.Keys[k], v) {
			t.Fatalf("the upgraded job's %s key changed", k)
		}
	}
	for _, task := range []string{c.src, c.agg} {
		if rp, ok := c.m.RestorePoint("svc", task); !ok || rp.Checkpoint != 4 || rp.Version != 1 {
			t.Fatalf("task %s restores from %+v, want checkpoint 4 of version 1", task, rp)
		}
	}
	if len(c.logged("job.upgraded")) != 1 {
		t.Fatal("the upgrade is not logged")
	}
	// The new version checkpoints on; then the provider rolls back.
	c.must(c.on(c.src), TypeCheckpointAck, ack(c.src, 9, "s9"))
	res = c.must(c.grid, TypeJobRollback, RollbackRequest{Job: "svc"}).Result.(*UpgradeResult)
	job = c.m.State().Jobs["svc"]
	if job.Digest != v1 || res.ToVersion != 1 || res.Savepoint == "" {
		t.Fatalf("after the rollback: job digest %s, result %+v", short(job.Digest), res)
	}
	if rp, _ := c.m.RestorePoint("svc", c.src); rp.Checkpoint != 4 {
		t.Fatalf("the rollback restores task %s from checkpoint %d, want the upgrade's savepoint (4)", c.src, rp.Checkpoint)
	}
	if _, err := c.do(c.grid, TypeJobRollback, RollbackRequest{Job: "svc"}); ruleOf(err) != "rollback.none" {
		t.Fatalf("a second rollback: %v, want rollback.none", err)
	}
}

// TestUpgradeRefusesIncompatibleState: a version whose stateful node changes
// (here the source's parallelism) cannot take the running state.
func TestUpgradeRefusesIncompatibleState(t *testing.T) {
	c := newCkptWorld(t)
	c.must(c.on(c.src), TypeCheckpointAck, ack(c.src, 4, "s4"))
	c.must(c.on(c.agg), TypeCheckpointAck, ack(c.agg, 4, "a4"))
	v3 := submitVersion(c.world, c.grid, 3, func(m *Manifest) {
		b := jobspec.New("svc").Schema("meter", jobspec.Float("kwh"))
		b.Source("meter-a", "meter").Filter("kwh > 0").Sink("svc-out")
		spec, err := b.MustBuild().JSON()
		if err != nil {
			t.Fatal(err)
		}
		// The same node ids as version 1, but the source runs two
		// subtasks: its positions do not carry over.
		var s jobspec.Spec
		if err := json.Unmarshal(spec, &s); err != nil {
			t.Fatal(err)
		}
		for i := range s.Nodes {
			if s.Nodes[i].Kind == jobspec.KindSource {
				s.Nodes[i].Parallelism = 2
			}
		}
		m.Spec, _ = json.Marshal(&s)
	})
	c.must(c.ownerKey("alice"), TypeServiceApprove, Approve{Stream: "meter-a", Digest: v3})
	if _, err := c.do(c.grid, TypeJobUpgrade, UpgradeRequest{Job: "svc"}); ruleOf(err) != "upgrade.state" {
		t.Fatalf("an upgrade whose state does not carry over: %v, want upgrade.state", err)
	}
}

// TestUpgradeApprovedByPolicy: an owner whose policy admits the provider's
// newer versions needs to approve nothing.
func TestUpgradeApprovedByPolicy(t *testing.T) {
	w := newWorld(t, nil)
	w.owner("alice", "meter-a", edgeOnlyBE+`, {"name": "grid-v2", "stage": "service", "expr": "service.version >= 2"}`)
	grid := w.provider("grid")
	nodes := map[party.ID]*party.KeyFile{}
	for _, name := range []string{"edge-1", "edge-2"} {
		kf, err := w.node(name, "edge", "be")
		if err != nil {
			t.Fatal(err)
		}
		nodes[kf.ID()] = kf
	}
	d := w.must(grid, TypeServiceSubmit, manifest("svc", "meter-a")).Result.(map[string]any)["digest"].(string)
	w.must(w.ownerKey("alice"), TypeServiceApprove, Approve{Stream: "meter-a", Digest: d})
	w.must(grid, TypeJobDeploy, Deploy{Service: "svc"})
	v2 := submitVersion(w, grid, 2, nil)
	// No task has a checkpoint yet: no savepoint can be taken.
	if _, err := w.do(grid, TypeJobUpgrade, UpgradeRequest{Job: "svc"}); ruleOf(err) != "savepoint.incomplete" {
		t.Fatalf("upgrade without checkpoints: %v, want savepoint.incomplete", err)
	}
	for task, node := range w.m.State().Jobs["svc"].Tasks {
		w.must(nodes[node], TypeCheckpointAck, ack(task, 2, task))
	}
	w.must(grid, TypeJobUpgrade, UpgradeRequest{Job: "svc"})
	if got := w.m.State().Jobs["svc"].Digest; got != v2 {
		t.Fatalf("the job runs %s after an upgrade the policy approves, want %s", short(got), short(v2))
	}
}

// TestOlderStateKeepsRunningVersion: a state saved before every version was
// kept (Versions lacks the running one) still reads a job with the version
// it runs after a newer one is submitted.
func TestOlderStateKeepsRunningVersion(t *testing.T) {
	w := newWorld(t, nil)
	w.owner("alice", "meter-a", edgeOnlyBE)
	grid := w.provider("grid")
	if _, err := w.node("edge-1", "edge", "be"); err != nil {
		t.Fatal(err)
	}
	d1 := w.must(grid, TypeServiceSubmit, manifest("svc", "meter-a")).Result.(map[string]any)["digest"].(string)
	w.must(w.ownerKey("alice"), TypeServiceApprove, Approve{Stream: "meter-a", Digest: d1})
	w.must(grid, TypeJobDeploy, Deploy{Service: "svc"})
	delete(w.m.st.Versions, d1) // as a state saved before versions were kept
	submitVersion(w, grid, 2, nil)
	if got := w.m.jobService(w.m.State().Jobs["svc"]); got == nil || got.Digest != d1 {
		t.Fatalf("the job running version 1 reads %+v after version 2 was submitted", got)
	}
}

// overrideManifest is a one-task service at the edge whose task filters
// readings (a stateless "f", when filter is set) and sums them per household
// in a keyed window ("win"), at version v.
func overrideManifest(v int64, filter bool) Manifest {
	b := jobspec.New("svc").Schema("meter", jobspec.String("house"), jobspec.Float("kwh"), jobspec.Int("ts"))
	s := b.Source("meter-a", "meter", jobspec.EventTime("ts", time.Second))
	if filter {
		s = s.Filter("kwh > 0").As("f")
	}
	s.KeyBy("house").Window(jobspec.Tumbling(5*time.Second), jobspec.Sum("kwh", "kwh")).As("win").Sink("svc-out")
	spec, err := b.MustBuild().JSON()
	if err != nil {
		panic(err)
	}
	d, _ := b.MustBuild().Digest()
	return Manifest{ID: "svc", Version: v, JobDigest: d, Inputs: []string{"meter-a"}, Outputs: []string{"svc-out"},
		Tasks: []TaskSlot{{ID: "svc/main", Tiers: []string{"edge"}, Reads: []string{"meter-a"}, Writes: []string{"svc-out"}}}, Spec: spec}
}

// TestUpgradeCarriesOverrides: the operator overrides set by job.scale (a
// fixed parallelism, adaptive bounds) carry into the new version when it
// still runs the operator in the same task; one it no longer runs is dropped
// and the logged upgrade says why; a rollback restores the overrides the
// old version had.
func TestUpgradeCarriesOverrides(t *testing.T) {
	const task = "svc/main"
	fixed := func(op string, p int) ScaleRequest {
		return ScaleRequest{Job: "svc", Task: task, Operator: op, Parallelism: p}
	}
	adaptive := func(op string, lo, hi int) ScaleRequest {
		return ScaleRequest{Job: "svc", Task: task, Operator: op, Adaptive: &AdaptiveBounds{Min: lo, Max: hi}}
	}
	cases := []struct {
		name         string
		set          []ScaleRequest // on version 1
		keepFilter   bool           // whether version 2 still runs "f"
		wantScale    map[string]int // after the upgrade
		wantAdaptive []string       // adaptive operators after the upgrade
		wantDropped  []string       // operators dropped, with a reason
		wantBefore   map[string]int // the overrides of version 1, back after the rollback
	}{
		{name: "fixed parallelism carries", set: []ScaleRequest{fixed("win", 3), fixed("f", 2)}, keepFilter: true,
			wantScale: map[string]int{"win": 3, "f": 2}, wantBefore: map[string]int{"win": 3, "f": 2}},
		// edge-1 offers 4 slots: bounds 1..2 run the window at 2.
		{name: "adaptive bounds carry", set: []ScaleRequest{adaptive("win", 1, 2)}, keepFilter: true,
			wantScale: map[string]int{"win": 2}, wantAdaptive: []string{"win"}, wantBefore: map[string]int{"win": 2}},
		{name: "an operator the new version does not run is dropped", set: []ScaleRequest{fixed("win", 3), adaptive("f", 1, 2)}, keepFilter: false,
			wantScale: map[string]int{"win": 3}, wantDropped: []string{"f"}, wantBefore: map[string]int{"win": 3, "f": 2}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t, nil)
			alice, _ := w.owner("alice", "meter-a", edgeOnlyBE)
			grid := w.provider("grid")
			edge, err := w.nodeSlots("edge-1", "edge", "be", 4)
			if err != nil {
				t.Fatal(err)
			}
			d := w.must(grid, TypeServiceSubmit, overrideManifest(1, true)).Result.(map[string]any)["digest"].(string)
			w.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: d})
			w.must(grid, TypeJobDeploy, Deploy{Service: "svc"})
			for _, s := range c.set {
				w.must(grid, TypeJobScale, s)
			}
			before := w.m.State().Jobs["svc"]
			bounds := map[string]*Adaptive{}
			for op, a := range before.Adaptive[task] {
				c := *a
				bounds[op] = &c
			}
			a := ack(task, 3, "m3")
			a.Generation = before.Generations[task]
			w.must(edge, TypeCheckpointAck, a)
			d2 := w.must(grid, TypeServiceSubmit, overrideManifest(2, c.keepFilter)).Result.(map[string]any)["digest"].(string)
			w.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: d2})
			res := w.must(grid, TypeJobUpgrade, UpgradeRequest{Job: "svc"}).Result.(*UpgradeResult)
			job := w.m.State().Jobs["svc"]
			if job.Digest != d2 {
				t.Fatalf("the job runs %s, want version 2", short(job.Digest))
			}
			if !maps.Equal(job.Scale[task], c.wantScale) || !maps.Equal(res.Scale[task], c.wantScale) {
				t.Fatalf("after the upgrade: scale %v (result %v), want %v", job.Scale[task], res.Scale[task], c.wantScale)
			}
			// The result is signed after the machine's lock is released, while a
			// rescale may write the job's maps: it must hold copies.
			node, p := job.Tasks[task], job.Scale[task]["win"]
			job.Tasks[task], job.Scale[task]["win"] = "elsewhere", p+5
			if res.Tasks[task] != node || res.Scale[task]["win"] != p {
				t.Fatalf("the result shares the job's maps: a rescale changed its tasks %v and scale %v", res.Tasks, res.Scale)
			}
			job.Tasks[task], job.Scale[task]["win"] = node, p
			if got := slices.Sorted(maps.Keys(job.Adaptive[task])); !slices.Equal(got, c.wantAdaptive) {
				t.Fatalf("after the upgrade: adaptive operators %v, want %v", got, c.wantAdaptive)
			}
			for _, op := range c.wantAdaptive {
				if got, want := job.Adaptive[task][op], bounds[op]; got == nil || got.AdaptiveBounds != want.AdaptiveBounds || !got.Last.Equal(want.Last) {
					t.Fatalf("after the upgrade: adaptive %s is %+v, want %+v (its bounds and last change)", op, got, want)
				}
			}
			var dropped []string
			for _, dr := range res.Dropped {
				if !strings.Contains(dr.Reason, "runs no operator") {
					t.Fatalf("dropped %+v: the reason does not say the operator is gone", dr)
				}
				dropped = append(dropped, dr.Operator)
			}
			if !slices.Equal(dropped, c.wantDropped) {
				t.Fatalf("dropped %v, want %v", dropped, c.wantDropped)
			}
			logged := w.logged("job.upgraded")
			if len(logged) != 1 {
				t.Fatalf("%d job.upgraded entries, want 1", len(logged))
			}
			var body UpgradeResult
			if err := json.Unmarshal(logged[0].Body, &body); err != nil || len(body.Dropped) != len(c.wantDropped) {
				t.Fatalf("the logged upgrade names dropped overrides %+v (%v), want %v", body.Dropped, err, c.wantDropped)
			}
			// The rollback restores what version 1 ran with.
			w.must(grid, TypeJobRollback, RollbackRequest{Job: "svc"})
			job = w.m.State().Jobs["svc"]
			if job.Digest != d || !maps.Equal(job.Scale[task], c.wantBefore) {
				t.Fatalf("after the rollback: digest %s, scale %v, want version 1 with %v", short(job.Digest), job.Scale[task], c.wantBefore)
			}
			for op, want := range bounds {
				if got := job.Adaptive[task][op]; got == nil || got.AdaptiveBounds != want.AdaptiveBounds {
					t.Fatalf("after the rollback: adaptive %s is %+v, want %+v", op, got, want)
				}
			}
			if len(job.Adaptive[task]) != len(bounds) {
				t.Fatalf("after the rollback: adaptive operators %v, want %v", job.Adaptive[task], bounds)
			}
		})
	}
}

// TestUpgradeKeepsReliefHold: an upgrade (and a rollback) carries the relief
// hold of a task the new version still has, and places it off the node it
// was relieved from though that node is of its preferred tier, so the task
// does not go back there before ReliefHold has passed; the hold of a task
// the version no longer has is dropped.
func TestUpgradeKeepsReliefHold(t *testing.T) {
	const task = "svc/main"
	w := newWorld(t, nil)
	alice, _ := w.owner("alice", "meter-a", edgeOnlyBE)
	grid := w.provider("grid")
	nodes := map[party.ID]*party.KeyFile{}
	for _, n := range []struct{ name, tier string }{{"edge-1", "edge"}, {"reg-1", "regional"}} {
		kf, err := w.node(n.name, n.tier, "be")
		if err != nil {
			t.Fatal(err)
		}
		nodes[kf.ID()] = kf
	}
	submit := func(v int64) string {
		man := overrideManifest(v, true)
		man.Tasks[0].Tiers = []string{"edge", "regional"}
		d := w.must(grid, TypeServiceSubmit, man).Result.(map[string]any)["digest"].(string)
		w.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: d})
		return d
	}
	submit(1)
	w.must(grid, TypeJobDeploy, Deploy{Service: "svc"})
	edge := w.m.State().Jobs["svc"].Tasks[task]
	out, err := w.m.RelieveTask(w.now, "svc", task, "backpressure 0.97")
	if err != nil {
		t.Fatal(err)
	}
	w.collect(out)
	job := w.m.State().Jobs["svc"]
	at := job.Relieved[task][edge]
	if at.IsZero() {
		t.Fatalf("relieving %s from %s holds %v", task, edge.Short(), job.Relieved)
	}
	// A hold of a task version 2 does not run (left by an older version).
	job.Relieved["svc/gone"] = map[party.ID]time.Time{edge: at}
	a := ack(task, 3, "m3")
	a.Generation = job.Generations[task]
	w.must(nodes[job.Tasks[task]], TypeCheckpointAck, a)
	submit(2)
	w.now = w.now.Add(time.Minute)
	w.must(grid, TypeJobUpgrade, UpgradeRequest{Job: "svc"})
	for _, step := range []string{"upgrade", "rollback"} {
		job = w.m.State().Jobs["svc"]
		if got := job.Relieved[task][edge]; !got.Equal(at) || len(job.Relieved) != 1 {
			t.Fatalf("after the %s: relief holds %v, want %s held from %s since %s only", step, job.Relieved, task, edge.Short(), at)
		}
		if !job.held(task, edge, w.now) || job.Tasks[task] == edge {
			t.Fatalf("after the %s: %s runs on %s, held from %s: %v", step, task, job.Tasks[task].Short(), edge.Short(), job.held(task, edge, w.now))
		}
		if step == "upgrade" {
			w.must(grid, TypeJobRollback, RollbackRequest{Job: "svc"})
		}
	}
}
