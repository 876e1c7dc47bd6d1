package orchestrator

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/party"
)

func TestAvailableSlots(t *testing.T) {
	nodes := []Candidate{
		{ID: "e1", Tier: "edge", Site: "a", Free: 1},
		{ID: "e2", Tier: "edge", Site: "b", Free: 3},
		{ID: "r1", Tier: "regional", Site: "c", Free: 8},
		{ID: "nl", Tier: "edge", Site: "d", Free: 5},
		{ID: "full", Tier: "edge", Site: "e", Free: -2},
	}
	noNL := func(_ TaskSlot, c Candidate) error {
		if c.ID == "nl" {
			return refuse("policy:alice/belgium", "not in Belgium")
		}
		return nil
	}
	all := func(TaskSlot, Candidate) error { return nil }
	cases := []struct {
		name  string
		slot  TaskSlot
		on    string
		check PlacementCheck
		want  int
	}{
		{"edge task: own slot plus the free edge slots the policy allows", TaskSlot{Tiers: []string{"edge"}}, "e1", noNL, 1 + 1 + 3},
		{"without the policy the refused node counts", TaskSlot{Tiers: []string{"edge"}}, "e1", all, 1 + 1 + 3 + 5},
		{"no tier constraint: every node", TaskSlot{}, "r1", noNL, 1 + 3 + 8 + 1},
		{"site pin: only that site", TaskSlot{Site: "b"}, "e1", noNL, 3},
		{"regional only", TaskSlot{Tiers: []string{"regional"}}, "r1", noNL, 9},
		{"its node is over-committed: counts its own slot only", TaskSlot{Site: "e"}, "full", all, 1},
		{"no node may run it", TaskSlot{Tiers: []string{"cloud"}}, "e1", all, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := AvailableSlots(c.slot, c.on, nodes, c.check); got != c.want {
				t.Fatalf("AvailableSlots = %d, want %d", got, c.want)
			}
		})
	}
}

func TestAdaptiveTargetAndDue(t *testing.T) {
	b := AdaptiveBounds{Min: 2, Max: 5}
	for _, c := range []struct{ avail, want int }{{0, 2}, {1, 2}, {2, 2}, {4, 4}, {5, 5}, {9, 5}} {
		if got := AdaptiveTarget(c.avail, b); got != c.want {
			t.Errorf("AdaptiveTarget(%d, 2..5) = %d, want %d", c.avail, got, c.want)
		}
	}
	t0 := time.Date(2026, 11, 26, 4, 0, 0, 0, time.UTC)
	cases := []struct {
		name        string
		cur, target int
		last, now   time.Time
		want        bool
	}{
		{"same target: nothing to do", 3, 3, time.Time{}, t0, false},
		{"never rescaled: act", 3, 4, time.Time{}, t0, true},
		{"within the cool-down: wait", 3, 4, t0, t0.Add(9 * time.Second), false},
		{"cool-down passed: act", 3, 4, t0, t0.Add(10 * time.Second), true},
		{"shrinking within the cool-down waits too", 4, 1, t0, t0.Add(time.Second), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := AdaptDue(c.cur, c.target, c.last, c.now, 10*time.Second); got != c.want {
				t.Fatalf("AdaptDue = %v, want %v", got, c.want)
			}
		})
	}
}

// adaptiveManifest is a one-task service whose task runs at the edge and
// sums readings per household in a keyed window ("win").
func adaptiveManifest(id, in string) Manifest {
	b := jobspec.New(id).Schema("meter", jobspec.String("house"), jobspec.Float("kwh"), jobspec.Int("ts"))
	b.Source(in, "meter", jobspec.EventTime("ts", time.Second)).KeyBy("house").Window(jobspec.Tumbling(5*time.Second), jobspec.Sum("kwh", "kwh")).As("win").Sink(id + "-out")
	spec, err := b.MustBuild().JSON()
	if err != nil {
		panic(err)
	}
	d, _ := b.MustBuild().Digest()
	return Manifest{ID: id, Version: 1, JobDigest: d, Inputs: []string{in}, Outputs: []string{id + "-out"},
		Tasks: []TaskSlot{{ID: id + "/main", Tiers: []string{"edge"}, Reads: []string{in}, Writes: []string{id + "-out"}}}, Spec: spec}
}

// TestAdaptiveParallelismFollowsNodes walks an adaptive operator through
// node admissions, a drain, a loss and a removal: its parallelism follows
// the slots available to its task under the owner's placement policy, within
// the bounds, at most once per cool-down, with each change logged with its
// reason; a fixed parallelism ends the adaptive mode.
func TestAdaptiveParallelismFollowsNodes(t *testing.T) {
	w := newWorld(t, nil)
	alice, _ := w.owner("alice", "meter-a", edgeOnlyBE)
	grid := w.provider("grid")
	if _, err := w.nodeSlots("edge-1", "edge", "be", 2); err != nil {
		t.Fatal(err)
	}
	d := w.must(grid, TypeServiceSubmit, adaptiveManifest("svc", "meter-a")).Result.(map[string]any)["digest"].(string)
	w.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: d})
	w.must(grid, TypeJobDeploy, Deploy{Service: "svc"})
	const task = "svc/main"
	job := w.m.State().Jobs["svc"]
	adaptive := func(lo, hi int) func() (*Output, error) {
		return func() (*Output, error) {
			return w.do(grid, TypeJobScale, ScaleRequest{Job: "svc", Task: task, Operator: "win",
				Adaptive: &AdaptiveBounds{Min: lo, Max: hi, Cooldown: Duration(10 * time.Second)}})
		}
	}
	admit := func(name, tier, region string, slots int) func() (*Output, error) {
		return func() (*Output, error) {
			_, err := w.nodeSlots(name, tier, region, slots)
			return nil, err
		}
	}
	nodeID := func(name string) party.ID {
		for id, n := range w.m.State().Nodes {
			if n.Identity.Name == name {
				return id
			}
		}
		t.Fatalf("no node %s", name)
		return ""
	}
	op := func(typ, name string) func() (*Output, error) {
		return func() (*Output, error) { return w.do(w.operator, typ, NodeRequest{Node: nodeID(name)}) }
	}
	tick := func() (*Output, error) {
		out := w.m.Adapt(w.now, "periodic check")
		w.collect(out)
		return out, nil
	}
	lose := func(name string) func() (*Output, error) {
		return func() (*Output, error) { return w.lose(nodeID(name)), nil }
	}
	steps := []struct {
		name    string
		wait    time.Duration // before the step
		do      func() (*Output, error)
		rule    string // the refusing rule, if refused
		want    int    // the operator's parallelism after the step
		rescale bool   // whether the step rescales (advances the generation)
		reason  string // in the logged reason when it rescales
	}{
		{name: "min above max is refused", do: adaptive(3, 2), rule: "scale.adaptive", want: 1},
		{name: "max beyond the key groups is refused", do: adaptive(1, 1000), rule: "scale.adaptive", want: 1},
		{name: "both a parallelism and bounds are refused", do: func() (*Output, error) {
			return w.do(grid, TypeJobScale, ScaleRequest{Job: "svc", Task: task, Operator: "win", Parallelism: 2, Adaptive: &AdaptiveBounds{Min: 1, Max: 2}})
		}, rule: "scale.parallelism", want: 1},
		{name: "a source cannot be adaptive", do: func() (*Output, error) {
			return w.do(grid, TypeJobScale, ScaleRequest{Job: "svc", Task: task, Operator: "source1", Adaptive: &AdaptiveBounds{Min: 1, Max: 2}})
		}, rule: "scale.operator", want: 1},
		// edge-1 offers 2 slots, the task holds one: 2 available.
		{name: "bounds set: the operator takes the 2 available slots", do: adaptive(1, 8), want: 2, rescale: true, reason: "bounds set by the provider"},
		{name: "an edge node admitted within the cool-down: wait", do: admit("edge-2", "edge", "be", 2), want: 2},
		{name: "a periodic check within the cool-down: still wait", do: tick, want: 2},
		{name: "the cool-down passed: 4 slots", wait: 10 * time.Second, do: tick, want: 4, rescale: true, reason: "periodic check; 4 slots available"},
		{name: "a node the owner's policy refuses adds nothing", wait: 10 * time.Second, do: admit("edge-nl", "edge", "nl", 4), want: 4},
		{name: "a node of a tier the task may not use adds nothing", do: admit("regional-1", "regional", "be", 4), want: 4},
		{name: "a second edge node", wait: 10 * time.Second, do: admit("edge-3", "edge", "be", 4), want: 8, rescale: true, reason: "admitted; 8 slots available"},
		{name: "another edge node: capped at max", wait: 10 * time.Second, do: admit("edge-4", "edge", "be", 2), want: 8},
		{name: "edge-3 drained", wait: 10 * time.Second, do: op(TypeNodeDrain, "edge-3"), want: 6, rescale: true, reason: "drained by the operator; 6 slots available"},
		{name: "edge-4 lost", wait: 10 * time.Second, do: lose("edge-4"), want: 4, rescale: true, reason: "lost; 4 slots available"},
		{name: "edge-2 removed", wait: 10 * time.Second, do: op(TypeNodeRemove, "edge-2"), want: 2, rescale: true, reason: "removed by the operator; 2 slots available"},
		{name: "same bounds again: nothing to change", do: adaptive(1, 8), want: 2},
		{name: "narrower bounds: the minimum wins", do: adaptive(3, 8), want: 3, rescale: true, reason: "bounds set"},
		{name: "a fixed parallelism ends the adaptive mode", do: func() (*Output, error) {
			return w.do(grid, TypeJobScale, ScaleRequest{Job: "svc", Task: task, Operator: "win", Parallelism: 1})
		}, want: 1, rescale: true, reason: "set by the provider"},
		{name: "no longer adaptive: a new node changes nothing", wait: 10 * time.Second, do: admit("edge-5", "edge", "be", 4), want: 1},
	}
	for _, s := range steps {
		w.now = w.now.Add(s.wait)
		gen := job.Generations[task]
		logged := len(w.logged(EntryJobScaled))
		_, err := s.do()
		if s.rule != "" {
			if rule(err) != s.rule {
				t.Fatalf("%s: err %v, want rule %s", s.name, err, s.rule)
			}
		} else if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		got, _ := w.m.parallelismOf(job, TaskSlot{ID: task}, "win")
		if p, ok := job.Scale[task]["win"]; ok {
			got = p
		}
		if got != s.want {
			t.Fatalf("%s: parallelism %d, want %d", s.name, got, s.want)
		}
		if moved := job.Generations[task] != gen; moved != s.rescale {
			t.Fatalf("%s: generation %d → %d, want a rescale: %v", s.name, gen, job.Generations[task], s.rescale)
		}
		entries := w.logged(EntryJobScaled)
		if !s.rescale {
			if len(entries) != logged {
				t.Fatalf("%s: logged a rescale: %s", s.name, entries[len(entries)-1].Body)
			}
			continue
		}
		if len(entries) != logged+1 {
			t.Fatalf("%s: %d job.scaled entries logged, want 1", s.name, len(entries)-logged)
		}
		var res ScaleResult
		if err := json.Unmarshal(entries[len(entries)-1].Body, &res); err != nil {
			t.Fatal(err)
		}
		if res.Parallelism != s.want || res.Generation != job.Generations[task] || !strings.Contains(res.Reason, s.reason) {
			t.Fatalf("%s: logged %+v, want parallelism %d, generation %d, reason containing %q", s.name, res, s.want, job.Generations[task], s.reason)
		}
	}
	if len(job.Adaptive) != 0 {
		t.Fatalf("adaptive operators left after a fixed parallelism: %v", job.Adaptive)
	}
}

// TestAdaptiveStateSurvivesRestore: the bounds and the last change are
// persisted with the job, so a restarted orchestrator keeps the cool-down.
func TestAdaptiveStateSurvivesRestore(t *testing.T) {
	w := newWorld(t, nil)
	alice, _ := w.owner("alice", "meter-a", edgeOnlyBE)
	grid := w.provider("grid")
	if _, err := w.nodeSlots("edge-1", "edge", "be", 2); err != nil {
		t.Fatal(err)
	}
	d := w.must(grid, TypeServiceSubmit, adaptiveManifest("svc", "meter-a")).Result.(map[string]any)["digest"].(string)
	w.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: d})
	w.must(grid, TypeJobDeploy, Deploy{Service: "svc"})
	w.must(grid, TypeJobScale, ScaleRequest{Job: "svc", Task: "svc/main", Operator: "win", Adaptive: &AdaptiveBounds{Min: 1, Max: 4, Cooldown: Duration(time.Minute)}})
	data, err := w.m.MarshalState()
	if err != nil {
		t.Fatal(err)
	}
	m, err := Restore(data, w.self, w.m.verifiers)
	if err != nil {
		t.Fatal(err)
	}
	a := m.State().Jobs["svc"].Adaptive["svc/main"]["win"]
	if a == nil || a.Min != 1 || a.Max != 4 || time.Duration(a.Cooldown) != time.Minute || !a.Last.Equal(w.now) {
		t.Fatalf("restored adaptive state %+v", a)
	}
}

// TestAdaptiveTasksShareFreeSlots: adaptive tasks that count the same free
// slots share them, in job.scale as in a pass (served in job, task id
// order, not the manifest's): each counts the free slots less those the
// other adaptive tasks' operators run at.
func TestAdaptiveTasksShareFreeSlots(t *testing.T) {
	twoTasks := adaptiveManifest("svc", "meter-a")
	twoTasks.Tasks = []TaskSlot{
		{ID: "svc/z", Tiers: []string{"edge"}, Reads: []string{"meter-a"}, Writes: []string{"svc-out"}},
		{ID: "svc/a", Tiers: []string{"edge"}, Reads: []string{"meter-a"}, Writes: []string{"svc-out"}},
	}
	type jt struct{ job, task string }
	cases := []struct {
		name   string
		slots  int
		mans   []Manifest
		bounds AdaptiveBounds
		want   map[jt]int // the window's parallelism after the pass
	}{
		// 4 slots, 2 held by the tasks: 2 free. svc-a takes both.
		{name: "two jobs on one node: the first job takes the free slots", slots: 4,
			mans: []Manifest{adaptiveManifest("svc-b", "meter-a"), adaptiveManifest("svc-a", "meter-a")}, bounds: AdaptiveBounds{Min: 1, Max: 8},
			want: map[jt]int{{"svc-a", "svc-a/main"}: 3, {"svc-b", "svc-b/main"}: 1}},
		{name: "two tasks of a job: served by task id, not manifest order", slots: 4,
			mans: []Manifest{twoTasks}, bounds: AdaptiveBounds{Min: 1, Max: 8},
			want: map[jt]int{{"svc", "svc/a"}: 3, {"svc", "svc/z"}: 1}},
		// 8 slots, 6 free: svc-a takes 2 (max 3), svc-b still finds 4.
		{name: "enough slots for both", slots: 8,
			mans: []Manifest{adaptiveManifest("svc-a", "meter-a"), adaptiveManifest("svc-b", "meter-a")}, bounds: AdaptiveBounds{Min: 1, Max: 3},
			want: map[jt]int{{"svc-a", "svc-a/main"}: 3, {"svc-b", "svc-b/main"}: 3}},
		{name: "the minimum holds even without free slots", slots: 3,
			mans: []Manifest{adaptiveManifest("svc-a", "meter-a"), adaptiveManifest("svc-b", "meter-a")}, bounds: AdaptiveBounds{Min: 2, Max: 8},
			want: map[jt]int{{"svc-a", "svc-a/main"}: 2, {"svc-b", "svc-b/main"}: 2}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t, nil)
			alice, _ := w.owner("alice", "meter-a", edgeOnlyBE)
			grid := w.provider("grid")
			if _, err := w.nodeSlots("edge-1", "edge", "be", c.slots); err != nil {
				t.Fatal(err)
			}
			for _, man := range c.mans {
				d := w.must(grid, TypeServiceSubmit, man).Result.(map[string]any)["digest"].(string)
				w.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: d})
				w.must(grid, TypeJobDeploy, Deploy{Service: man.ID})
			}
			b := c.bounds
			b.Cooldown = Duration(10 * time.Second)
			keys := slices.SortedFunc(maps.Keys(c.want), func(a, b jt) int { return strings.Compare(a.job+" "+a.task, b.job+" "+b.task) })
			check := func(when string) {
				t.Helper()
				total := 0
				for k, want := range c.want {
					job := w.m.State().Jobs[k.job]
					got, _ := w.m.parallelismOf(job, TaskSlot{ID: k.task}, "win")
					if p, ok := job.Scale[k.task]["win"]; ok {
						got = p
					}
					if got != want {
						t.Errorf("%s: %s %s: parallelism %d, want %d", when, k.job, k.task, got, want)
					}
					total += got
				}
				if total > max(c.slots, len(c.want)*c.bounds.Min) {
					t.Errorf("%s: the adaptive tasks run %d subtasks on %d slots", when, total, c.slots)
				}
			}
			// job.scale counts the slots the adaptive tasks set before use,
			// as a pass does: no wait for the next pass after the cool-down.
			for _, k := range keys {
				w.must(grid, TypeJobScale, ScaleRequest{Job: k.job, Task: k.task, Operator: "win", Adaptive: &b})
			}
			check("after job.scale")
			w.now = w.now.Add(10 * time.Second)
			w.collect(w.m.Adapt(w.now, "periodic check"))
			check("after the pass")
		})
	}
}
