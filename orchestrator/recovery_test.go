package orchestrator

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/sealflow/sealflow/ledger"
	"github.com/sealflow/sealflow/party"
)

// lose declares node lost and collects the output.
func (w *world) lose(node party.ID) *Output {
	w.t.Helper()
	w.now = w.now.Add(w.m.State().Genesis.nodeTTL() / 1000)
	out, err := w.m.NodeLost(w.now, node, "silent for 6s")
	if err != nil {
		w.t.Fatalf("NodeLost(%s): %v", node.Short(), err)
	}
	w.collect(out)
	return out
}

func entryTypes(es []ledger.Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Type)
	}
	return out
}

func TestRestorePointIsTheTasksOwnLatestAck(t *testing.T) {
	c := newCkptWorld(t)
	if _, ok := c.m.RestorePoint("svc", c.src); ok {
		t.Fatal("a restore point before any acknowledgement")
	}
	c.must(c.on(c.src), TypeCheckpointAck, ack(c.src, 1, "src-1"))
	c.must(c.on(c.src), TypeCheckpointAck, ack(c.src, 2, "src-2"))
	// The job's checkpoint 2 is not complete (agg never acknowledged), yet
	// the source restores from its own snapshot 2.
	if _, ok := c.m.LastCheckpoint("svc"); ok {
		t.Fatal("a complete checkpoint without the aggregation's acknowledgement")
	}
	rp, ok := c.m.RestorePoint("svc", c.src)
	want := RestorePoint{Job: "svc", Task: c.src, Checkpoint: 2, Version: 1, KeyGroups: ack(c.src, 2, "").KeyGroups,
		Digest: digestOf("src-2"), Node: c.on(c.src).ID(), Positions: ack(c.src, 2, "").Positions}
	if !ok || rp.Accepted.IsZero() {
		t.Fatalf("restore point %+v, %v", rp, ok)
	}
	rp.Accepted = want.Accepted
	if a, b := mustJSON(t, rp), mustJSON(t, want); a != b {
		t.Fatalf("restore point\n%s\nwant\n%s", a, b)
	}
	if _, ok := c.m.RestorePoint("svc", c.agg); ok {
		t.Fatal("the aggregation has a restore point without an acknowledgement")
	}
	// Callers cannot alter the machine's record through the copy.
	rp.Positions["meter-a"][0] = SourcePosition{}
	if again, _ := c.m.RestorePoint("svc", c.src); again.Positions["meter-a"][0] == (SourcePosition{}) {
		t.Fatal("RestorePoint returned the machine's own positions map")
	}
	// It survives a restart.
	data, err := c.m.MarshalState()
	if err != nil {
		t.Fatal(err)
	}
	m2, err := Restore(data, c.self, c.m.verifiers)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := m2.RestorePoint("svc", c.src); !ok || got.Checkpoint != 2 || got.Digest != digestOf("src-2") {
		t.Fatalf("restored restore point %+v, %v", got, ok)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestNodeLostReschedulesAndFencesTheZombie(t *testing.T) {
	c := newCkptWorld(t)
	old, next := c.on(c.src), c.on(c.agg)
	if old.ID() == next.ID() {
		t.Fatal("the source and the aggregation share a node; the test needs them apart")
	}
	c.must(old, TypeCheckpointAck, ack(c.src, 1, "src-1"))
	logged := len(c.entries)

	out := c.lose(old.ID())

	if got := c.m.State().Jobs["svc"].Tasks[c.src]; got != next.ID() {
		t.Fatalf("source moved to %s, want the other eligible node %s", got.Short(), next.ID().Short())
	}
	if c.m.Admitted(c.now, old.ID()) {
		t.Fatal("the lost node is still admitted")
	}
	res := out.Result.(*NodeLostResult)
	if len(res.Moves) != 1 || res.Moves[0] != (TaskMove{Job: "svc", Task: c.src, From: old.ID(), To: next.ID()}) {
		t.Fatalf("moves %+v", res.Moves)
	}
	// The keys the source needs, to the new node only.
	var purposes []string
	for _, r := range out.Releases {
		if r.To != next.ID() || r.Task != c.src || r.Job != "svc" {
			t.Fatalf("release %s to %s for task %s, want only the source's keys to the new node", r.KeyID(), r.To.Short(), r.Task)
		}
		purposes = append(purposes, r.Purpose)
	}
	slices.Sort(purposes)
	if !slices.Equal(purposes, []string{"checkpoint", "exchange", "stream"}) {
		t.Fatalf("released %v, want the source's stream, exchange and checkpoint keys", purposes)
	}
	if got, want := entryTypes(c.entries[logged:]), []string{EntryNodeLost, EntryTaskRescheduled, "key.released", "key.released", "key.released"}; !slices.Equal(got, want) {
		t.Fatalf("logged %v, want %v", got, want)
	}
	var moved struct {
		From    party.ID `json:"from"`
		To      party.ID `json:"to"`
		Restore uint64   `json:"restore_checkpoint"`
	}
	if err := json.Unmarshal(c.logged(EntryTaskRescheduled)[0].Body, &moved); err != nil || moved.From != old.ID() || moved.To != next.ID() || moved.Restore != 1 {
		t.Fatalf("task.rescheduled entry %s (%v)", c.logged(EntryTaskRescheduled)[0].Body, err)
	}

	// The restore point is for the node the task runs on now, not the lost one.
	if _, err := c.m.RestorePointFor(c.now, old.ID(), "svc", c.src); rule(err) != "restore.node" {
		t.Fatalf("restore point asked by the lost node: %v, want restore.node", err)
	}
	rp, err := c.m.RestorePointFor(c.now, next.ID(), "svc", c.src)
	if err != nil || rp == nil || rp.Checkpoint != 1 || rp.Node != old.ID() || rp.Digest != digestOf("src-1") {
		t.Fatalf("restore point for the new node: %+v, %v", rp, err)
	}

	// The zombie's acknowledgement is refused and logged, so its sink never
	// commits; the new node continues after the restore point.
	steps := []struct {
		name     string
		by       *party.KeyFile
		ckpt     uint64
		wantRule string
	}{
		{"the lost node acknowledges a newer checkpoint", old, 2, "checkpoint.node"},
		{"the new node acknowledges the restored checkpoint again", next, 1, "checkpoint.stale"},
		{"the new node acknowledges the next checkpoint", next, 2, ""},
	}
	for _, s := range steps {
		n := len(c.entries)
		_, err := c.do(s.by, TypeCheckpointAck, ack(c.src, s.ckpt, "src-next"))
		if rule(err) != s.wantRule {
			t.Fatalf("%s: err = %v, want rule %q", s.name, err, s.wantRule)
		}
		if s.wantRule != "" && !slices.Equal(entryTypes(c.entries[n:]), []string{"checkpoint.refused"}) {
			t.Fatalf("%s: logged %v, want checkpoint.refused", s.name, entryTypes(c.entries[n:]))
		}
	}
	if rp, _ := c.m.RestorePoint("svc", c.src); rp.Checkpoint != 2 || rp.Node != next.ID() {
		t.Fatalf("restore point after the new node's acknowledgement: %+v", rp)
	}

	// Declaring it lost again changes nothing; an unknown node is refused.
	n := len(c.entries)
	if out := c.lose(old.ID()); !out.Result.(*NodeLostResult).Already || len(c.entries) != n || len(out.Releases) != 0 {
		t.Fatalf("losing a lost node again: %+v", out.Result)
	}
	if _, err := c.m.NodeLost(c.now, party.ID("ab"), "x"); rule(err) != "node.unknown" {
		t.Fatalf("losing an unknown node: %v, want node.unknown", err)
	}
}

func TestNodeLostWithoutEligibleNodeLeavesTheTaskUnplaced(t *testing.T) {
	w := newWorld(t, nil)
	alice, _ := w.owner("alice", "meter-a", edgeOnlyBE)
	grid := w.provider("grid")
	be, err := w.node("edge-be", "edge", "be")
	if err != nil {
		t.Fatal(err)
	}
	// A node in France: alice's policy forbids it.
	if _, err := w.node("edge-fr", "edge", "fr"); err != nil {
		t.Fatal(err)
	}
	d := w.must(grid, TypeServiceSubmit, manifest("svc", "meter-a")).Result.(map[string]any)["digest"].(string)
	w.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: d})
	w.must(grid, TypeJobDeploy, Deploy{Service: "svc"})
	job := w.m.State().Jobs["svc"]
	for task, n := range job.Tasks {
		if n != be.ID() {
			t.Fatalf("task %s deployed on %s, want the Belgian node", task, n.Short())
		}
	}

	logged := len(w.entries)
	out := w.lose(be.ID())
	if len(out.Releases) != 0 {
		t.Fatalf("%d keys released with no eligible node", len(out.Releases))
	}
	if got, want := entryTypes(w.entries[logged:]), []string{EntryNodeLost, EntryTaskUnplaced, EntryTaskUnplaced}; !slices.Equal(got, want) {
		t.Fatalf("logged %v, want %v", got, want)
	}
	for _, e := range w.logged(EntryTaskUnplaced) {
		var b struct {
			Rule string `json:"rule"`
		}
		if err := json.Unmarshal(e.Body, &b); err != nil || b.Rule != "policy:meter-a/edge-be" {
			t.Fatalf("task.unplaced %s: want the refusing policy rule", e.Body)
		}
	}
	for task, n := range job.Tasks {
		if n != "" || job.Unplaced[task] == "" {
			t.Fatalf("task %s on %q (unplaced: %q), want unplaced with a reason", task, n.Short(), job.Unplaced[task])
		}
	}

	// Unplaced tasks survive a restart.
	data, _ := w.m.MarshalState()
	m2, err := Restore(data, w.self, w.m.verifiers)
	if err != nil || len(m2.State().Jobs["svc"].Unplaced) != 2 || m2.State().Nodes[be.ID()].Lost.IsZero() {
		t.Fatalf("restored state lost the unplaced tasks or the lost mark (%v)", err)
	}

	// Another forbidden node changes nothing and logs no new placement.
	logged, released := len(w.entries), len(w.releases)
	if _, err := w.node("edge-fr-2", "edge", "fr"); err != nil {
		t.Fatal(err)
	}
	if got := entryTypes(w.entries[logged:]); !slices.Equal(got, []string{"node.admitted"}) || len(w.releases) != released {
		t.Fatalf("admitting a forbidden node logged %v and released %d keys", got, len(w.releases)-released)
	}

	// An eligible node is admitted: both tasks are placed on it, with keys.
	logged, released = len(w.entries), len(w.releases)
	be2, err := w.node("edge-be-2", "edge", "be")
	if err != nil {
		t.Fatal(err)
	}
	for task, n := range job.Tasks {
		if n != be2.ID() {
			t.Fatalf("task %s placed on %s, want the new Belgian node", task, n.Short())
		}
	}
	if len(job.Unplaced) != 0 {
		t.Fatalf("still unplaced: %v", job.Unplaced)
	}
	if len(w.releases) == released {
		t.Fatal("no keys released to the node the tasks were placed on")
	}
	for _, r := range w.releases[released:] {
		if r.To != be2.ID() {
			t.Fatalf("release to %s, want the new node", r.To.Short())
		}
	}
	if n := len(w.logged(EntryTaskPlaced)); n != 2 || w.entries[logged].Type != "node.admitted" {
		t.Fatalf("%d task.placed entries after %s, want 2 after node.admitted", n, w.entries[logged].Type)
	}
}

func TestReadmissionReleasesKeysAgain(t *testing.T) {
	tests := []struct {
		name string
		// setup returns the node that re-attests.
		setup        func(c *ckptWorld) *party.KeyFile
		wantReleases int
		wantFresh    bool
	}{
		{"a node with a task re-attests", func(c *ckptWorld) *party.KeyFile { return c.on(c.src) }, 3, false},
		{"a node without tasks re-attests", func(c *ckptWorld) *party.KeyFile {
			kf, err := c.node("edge-3", "edge", "be")
			if err != nil {
				c.t.Fatal(err)
			}
			return kf
		}, 0, false},
		{"a lost node re-attests: a fresh admission", func(c *ckptWorld) *party.KeyFile {
			kf := c.on(c.src)
			c.lose(kf.ID())
			return kf
		}, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCkptWorld(t)
			kf := tc.setup(c)
			name := kf.Identity().Name
			before := *c.m.State().Nodes[kf.ID()]
			released := len(c.releases)
			if err := c.admitAs(kf, name, "edge", "be", 4); err != nil {
				t.Fatal(err)
			}
			rs := c.releases[released:]
			if len(rs) != tc.wantReleases {
				t.Fatalf("%d releases on re-admission, want %d", len(rs), tc.wantReleases)
			}
			for _, r := range rs {
				if r.To != kf.ID() || c.m.State().Jobs[r.Job].Tasks[r.Task] != kf.ID() {
					t.Fatalf("release %s to %s for task %s", r.KeyID(), r.To.Short(), r.Task)
				}
			}
			n := c.m.State().Nodes[kf.ID()]
			if !c.m.Admitted(c.now, kf.ID()) {
				t.Fatal("not admitted after re-attesting")
			}
			if fresh := n.AdmittedAt.Equal(c.now); fresh != tc.wantFresh || (!tc.wantFresh && !n.AdmittedAt.Equal(before.AdmittedAt)) {
				t.Fatalf("admitted at %v (before %v, now %v), want fresh %v", n.AdmittedAt, before.AdmittedAt, c.now, tc.wantFresh)
			}
		})
	}
}
