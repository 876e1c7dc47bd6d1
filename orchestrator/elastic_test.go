package orchestrator

import (
	"testing"
	"time"

	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
)

// releasedTo returns the exchange epochs out released to node.
func releasedTo(out *Output, node party.ID) []uint32 {
	var e []uint32
	for _, r := range out.Releases {
		if r.To == node && r.Purpose == "exchange" {
			e = append(e, r.Epoch)
		}
	}
	return e
}

// TestMigrateTask moves a task by the operator's statement: a node the
// owner's policy forbids is refused with the policy's rule and logged; an
// allowed node gets the task's keys, the job's exchange key advances, and the
// node the task left never receives the new epoch, so it cannot open what the
// job's stages seal from now on.
func TestMigrateTask(t *testing.T) {
	c := newCkptWorld(t)
	src := c.src
	from := c.on(src)
	to := c.off(src)
	// A node in another region: alice's placement rule refuses it.
	nl, err := c.node("edge-nl", "edge", "nl")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.do(c.grid, TypeTaskMigrate, MigrateRequest{Job: "svc", Task: src, To: to.ID()}); ruleOf(err) != "operator.only" {
		t.Fatalf("a provider's migration: %v, want operator.only", err)
	}
	_, err = c.do(c.operator, TypeTaskMigrate, MigrateRequest{Job: "svc", Task: src, To: nl.ID()})
	if ruleOf(err) != "policy:meter-a/edge-be" {
		t.Fatalf("migration to a node the policy forbids: %v, want policy:meter-a/edge-be", err)
	}
	if refused := c.logged(EntryMoveRefused); len(refused) != 1 {
		t.Fatalf("%d refused moves logged, want 1", len(refused))
	}
	if c.m.State().Jobs["svc"].Tasks[src] != from.ID() {
		t.Fatal("a refused migration moved the task")
	}
	// A zombie check: the source's ack is accepted before the move...
	c.must(from, TypeCheckpointAck, ack(src, 1, "s1"))
	out := c.must(c.operator, TypeTaskMigrate, MigrateRequest{Job: "svc", Task: src, To: to.ID()})
	res := out.Result.(*MoveResult)
	if len(res.Moves) != 1 || res.Moves[0].To != to.ID() || res.ExchangeEpochs["svc"] != 1 {
		t.Fatalf("migration result %+v", res)
	}
	if c.m.State().Jobs["svc"].Tasks[src] != to.ID() {
		t.Fatal("the task did not move")
	}
	// ... and refused after: the source can no longer commit.
	if _, err := c.do(from, TypeCheckpointAck, ack(src, 2, "s2")); ruleOf(err) != "checkpoint.node" {
		t.Fatalf("the old node's ack after the move: %v, want checkpoint.node", err)
	}
	// The destination restores from the source's last accepted checkpoint.
	if rp, ok := c.m.RestorePoint("svc", src); !ok || rp.Checkpoint != 1 {
		t.Fatalf("restore point %+v", rp)
	}
	if len(c.logged(EntryTaskMigrated)) != 1 || len(c.logged(EntryExchangeEpoch)) != 1 {
		t.Fatal("the migration or the new exchange epoch is not logged")
	}
	// Epochs: the destination got both (it may read frames sealed before
	// the move), the source neither the new one nor anything else.
	if got := releasedTo(out, to.ID()); len(got) < 2 || got[0] != 0 || got[len(got)-1] != 1 {
		t.Fatalf("exchange epochs released to the destination: %v, want 0 and 1", got)
	}
	if got := releasedTo(out, from.ID()); len(got) != 0 {
		t.Fatalf("exchange epochs released to the node the task left: %v", got)
	}
	// What the job's stages seal under the new epoch does not open with the
	// keys the old node holds.
	job := c.m.State().Jobs["svc"]
	newer, old := seal.NewKeyring(), seal.NewKeyring()
	if _, err := newer.AddSecret("x", 1, job.Keys[exchangeScope(1)]); err != nil {
		t.Fatal(err)
	}
	if _, err := old.AddSecret("x", 0, job.Keys[exchangeScope(0)]); err != nil {
		t.Fatal(err)
	}
	s, err := seal.NewSealer(newer, seal.KindIngest, "x", 0)
	if err != nil {
		t.Fatal(err)
	}
	frame, err := s.Seal(nil, []byte("after the move"), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	op, err := seal.NewOpener(old, seal.KindIngest, []string{"x"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := op.Open(nil, frame); seal.ReasonOf(err) != seal.ReasonUnknownEpoch {
		t.Fatalf("the old node opening a frame of the new epoch: %v, want unknown-epoch", err)
	}
}

// TestDrainAndRemove drains a node (its tasks move to nodes the policies
// allow; no new task lands on it) and removes one (its admission ends).
func TestDrainAndRemove(t *testing.T) {
	c := newCkptWorld(t)
	src := c.src
	from := c.on(src)
	out := c.must(c.operator, TypeNodeDrain, NodeRequest{Node: from.ID()})
	res := out.Result.(*MoveResult)
	if len(res.Moves) == 0 {
		t.Fatal("draining moved nothing")
	}
	for _, mv := range res.Moves {
		if mv.To == "" || mv.To == from.ID() {
			t.Fatalf("move %+v", mv)
		}
	}
	if !c.m.State().Nodes[from.ID()].Draining || !c.m.Admitted(c.now, from.ID()) {
		t.Fatal("a drained node must stay admitted and draining")
	}
	for task, n := range c.m.State().Jobs["svc"].Tasks {
		if n == from.ID() {
			t.Fatalf("task %s is still on the drained node", task)
		}
	}
	// Draining the only other edge node leaves the source task unplaced
	// (no edge node in region be is left), with the rule named.
	other := c.m.State().Jobs["svc"].Tasks[src]
	out = c.must(c.operator, TypeNodeRemove, NodeRequest{Node: other})
	if c.m.Admitted(c.now, other) {
		t.Fatal("a removed node is still admitted")
	}
	var unplaced bool
	for _, mv := range out.Result.(*MoveResult).Moves {
		if mv.Task == src && mv.To == "" && mv.Rule != "" {
			unplaced = true
		}
	}
	if !unplaced {
		t.Fatalf("the source task was not left unplaced with a rule: %+v", out.Result)
	}
}

// TestTasksMoveUpATierAndBack: a task that may run at the edge or, failing
// that, in the regional cloud moves up when its edge node is overloaded or
// lost, and comes back to the edge when an edge node is admitted again; a
// task that may run only at the edge cannot be relieved.
func TestTasksMoveUpATierAndBack(t *testing.T) {
	w := newWorld(t, nil)
	w.owner("alice", "meter-a", edgeOnlyBE)
	grid := w.provider("grid")
	if _, err := w.node("edge-1", "edge", "be"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.node("reg-1", "regional", "be"); err != nil {
		t.Fatal(err)
	}
	man := manifest("svc", "meter-a")
	man.Tasks[0].Tiers = []string{"edge", "regional"}
	src := man.Tasks[0].ID
	d := w.must(grid, TypeServiceSubmit, man).Result.(map[string]any)["digest"].(string)
	w.must(w.ownerKey("alice"), TypeServiceApprove, Approve{Stream: "meter-a", Digest: d})
	w.must(grid, TypeJobDeploy, Deploy{Service: "svc"})
	tier := func() string {
		return w.m.State().Nodes[w.m.State().Jobs["svc"].Tasks[src]].Location.Tier
	}
	if tier() != "edge" {
		t.Fatalf("the source runs on tier %s, want its first choice, edge", tier())
	}
	out, err := w.m.RelieveTask(w.now, "svc", src, "backpressure 0.97 for 30 s")
	if err != nil {
		t.Fatal(err)
	}
	w.collect(out)
	if tier() != "regional" {
		t.Fatalf("a relieved task runs on tier %s, want regional", tier())
	}
	if len(w.logged(EntryTaskMigrated)) != 1 || len(w.logged(EntryExchangeEpoch)) != 1 {
		t.Fatal("the move up is not logged with a new exchange epoch")
	}
	// Capacity returns at the edge: the task comes back.
	if _, err := w.node("edge-2", "edge", "be"); err != nil {
		t.Fatal(err)
	}
	if tier() != "edge" {
		t.Fatalf("after an edge node was admitted the task runs on tier %s, want edge", tier())
	}
	// Once edge-1's relief hold has passed (within it, a lost node's task
	// goes elsewhere first: TestPlacedAwayFromRelievedNode), the edge node
	// it runs on is lost: it goes to the other edge node, its first choice
	// still; when that is lost too, up to the regional node.
	w.now = w.now.Add(ReliefHold)
	for _, want := range []string{"edge", "regional"} {
		out, err = w.m.NodeLost(w.now, w.m.State().Jobs["svc"].Tasks[src], "silent")
		if err != nil {
			t.Fatal(err)
		}
		w.collect(out)
		if got := tier(); got != want {
			t.Fatalf("after its node was lost the task runs on tier %q, want %q", got, want)
		}
	}
	// A task allowed only at the edge cannot be relieved.
	if _, err := w.node("edge-3", "edge", "be"); err != nil {
		t.Fatal(err)
	}
	man2 := manifest("edgeonly", "meter-a")
	d2 := w.must(grid, TypeServiceSubmit, man2).Result.(map[string]any)["digest"].(string)
	w.must(w.ownerKey("alice"), TypeServiceApprove, Approve{Stream: "meter-a", Digest: d2})
	w.must(grid, TypeJobDeploy, Deploy{Service: "edgeonly"})
	if _, err := w.m.RelieveTask(w.now, "edgeonly", man2.Tasks[0].ID, "overloaded"); ruleOf(err) != "relieve.no-tier" {
		t.Fatalf("relieving an edge-only task: %v, want relieve.no-tier", err)
	}
}

// TestRelievedTaskNotBackOnItsOverloadedNode: a task relieved from an
// overloaded edge node does not move back to that node when a node is
// admitted (the node it left has a free slot of its preferred tier) until
// ReliefHold has passed; another edge node takes it meanwhile, and the hold
// survives a restart of the machine.
func TestRelievedTaskNotBackOnItsOverloadedNode(t *testing.T) {
	w := newWorld(t, nil)
	w.owner("alice", "meter-a", edgeOnlyBE)
	grid := w.provider("grid")
	ids := map[string]party.ID{}
	admit := func(name, tier, region string) {
		kf, err := w.node(name, tier, region)
		if err != nil {
			t.Fatal(err)
		}
		ids[name] = kf.ID()
	}
	admit("edge-1", "edge", "be")
	admit("reg-1", "regional", "be")
	man := manifest("svc", "meter-a")
	man.Tasks[0].Tiers = []string{"edge", "regional"}
	src := man.Tasks[0].ID
	d := w.must(grid, TypeServiceSubmit, man).Result.(map[string]any)["digest"].(string)
	w.must(w.ownerKey("alice"), TypeServiceApprove, Approve{Stream: "meter-a", Digest: d})
	w.must(grid, TypeJobDeploy, Deploy{Service: "svc"})
	relieve := func() {
		out, err := w.m.RelieveTask(w.now, "svc", src, "backpressure 0.97")
		if err != nil {
			t.Fatal(err)
		}
		w.collect(out)
	}
	restart := func() {
		data, err := w.m.MarshalState()
		if err != nil {
			t.Fatal(err)
		}
		if w.m, err = Restore(data, w.self, w.m.verifiers); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name string
		wait time.Duration // before the step
		do   func()
		want string // the node the task runs on after the step ("regional": any regional node)
	}{
		{name: "deployed at the edge", do: func() {}, want: "edge-1"},
		{name: "relieved up to the regional node", do: relieve, want: "regional"},
		{name: "a node admitted within the hold: not back to edge-1", wait: time.Minute, do: func() { admit("edge-nl", "edge", "nl") }, want: "regional"},
		{name: "after a restart, still held", do: func() { restart(); admit("reg-2", "regional", "be") }, want: "regional"},
		{name: "another edge node within the hold takes it", do: func() { admit("edge-2", "edge", "be") }, want: "edge-2"},
		{name: "relieved from edge-2 too", do: relieve, want: "regional"},
		// edge-1 was relieved a minute (and a few statements) before
		// edge-2: its hold passes first.
		{name: "both edge nodes held", wait: ReliefHold - 3*time.Minute, do: func() { admit("reg-3", "regional", "be") }, want: "regional"},
		{name: "edge-1's hold passed, edge-2's not: back to edge-1", wait: 2 * time.Minute, do: func() { admit("reg-4", "regional", "be") }, want: "edge-1"},
	}
	for _, s := range steps {
		w.now = w.now.Add(s.wait)
		s.do()
		got := w.m.State().Jobs["svc"].Tasks[src]
		if ok := got == ids[s.want] || s.want == "regional" && w.m.State().Nodes[got].Location.Tier == "regional"; !ok {
			t.Fatalf("%s: the task runs on %s (%s), want %s", s.name, got.Short(), w.m.State().Nodes[got].Location.Tier, s.want)
		}
	}
}

// TestPlacedAwayFromRelievedNode: a task relieved from an overloaded edge
// node and then displaced from the regional node it moved to (the node lost
// or drained) is placed on another node while the hold lasts, though the
// node it left has a free slot of its preferred tier; the held node takes it
// only when no other node qualifies.
func TestPlacedAwayFromRelievedNode(t *testing.T) {
	cases := []struct {
		name   string
		remove func(w *world, node party.ID)
	}{
		{name: "node lost", remove: func(w *world, node party.ID) { w.lose(node) }},
		{name: "node drained", remove: func(w *world, node party.ID) {
			w.must(w.operator, TypeNodeDrain, NodeRequest{Node: node})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t, nil)
			w.owner("alice", "meter-a", edgeOnlyBE)
			grid := w.provider("grid")
			ids := map[party.ID]string{}
			for _, n := range []struct{ name, tier string }{{"edge-1", "edge"}, {"reg-1", "regional"}, {"reg-2", "regional"}} {
				kf, err := w.node(n.name, n.tier, "be")
				if err != nil {
					t.Fatal(err)
				}
				ids[kf.ID()] = n.name
			}
			man := manifest("svc", "meter-a")
			man.Tasks[0].Tiers = []string{"edge", "regional"}
			src := man.Tasks[0].ID
			d := w.must(grid, TypeServiceSubmit, man).Result.(map[string]any)["digest"].(string)
			w.must(w.ownerKey("alice"), TypeServiceApprove, Approve{Stream: "meter-a", Digest: d})
			w.must(grid, TypeJobDeploy, Deploy{Service: "svc"})
			on := func() string { return ids[w.m.State().Jobs["svc"].Tasks[src]] }
			if on() != "edge-1" {
				t.Fatalf("deployed on %s, want edge-1", on())
			}
			out, err := w.m.RelieveTask(w.now, "svc", src, "backpressure 0.97")
			if err != nil {
				t.Fatal(err)
			}
			w.collect(out)
			first := on()
			w.now = w.now.Add(time.Minute)
			c.remove(w, w.m.State().Jobs["svc"].Tasks[src])
			if got := on(); got == "edge-1" || got == first || got == "" {
				t.Fatalf("%s removed within the hold: the task runs on %q, want the other regional node", first, got)
			}
			c.remove(w, w.m.State().Jobs["svc"].Tasks[src])
			if got := on(); got != "edge-1" {
				t.Fatalf("both regional nodes removed: the task runs on %q, want the held edge-1 (no other node qualifies)", got)
			}
		})
	}
}
