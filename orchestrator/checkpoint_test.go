package orchestrator

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/party"
)

// ckptWorld is a deployed job "svc" with a source task on an edge node and an
// aggregation task, plus a second admitted node that runs neither.
type ckptWorld struct {
	*world
	grid     *party.KeyFile
	nodes    map[party.ID]*party.KeyFile
	src, agg string
}

func newCkptWorld(t *testing.T) *ckptWorld {
	t.Helper()
	w := newWorld(t, nil)
	alice, _ := w.owner("alice", "meter-a", edgeOnlyBE)
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
	w.must(alice, TypeServiceApprove, Approve{Stream: "meter-a", Digest: d})
	w.must(grid, TypeJobDeploy, Deploy{Service: "svc"})
	return &ckptWorld{world: w, grid: grid, nodes: nodes, src: "svc/src-meter-a", agg: "svc/agg"}
}

// on returns the key file of the node task runs on; off one it does not run on.
func (c *ckptWorld) on(task string) *party.KeyFile {
	return c.nodes[c.m.State().Jobs["svc"].Tasks[task]]
}

func (c *ckptWorld) off(task string) *party.KeyFile {
	for id, kf := range c.nodes {
		if id != c.m.State().Jobs["svc"].Tasks[task] {
			return kf
		}
	}
	c.t.Fatal("no node without the task")
	return nil
}

func digestOf(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

func ack(task string, ckpt uint64, snap string) CheckpointAck {
	a := CheckpointAck{Job: "svc", Checkpoint: ckpt, Task: task, Version: 1,
		KeyGroups: state.Range{From: 0, To: 128}, Digest: digestOf(snap)}
	if strings.Contains(task, "src") {
		a.Positions = map[string]map[uint32]SourcePosition{"meter-a": {0: {StreamSeq: 10 * ckpt, Next: 5 * ckpt}}}
	}
	return a
}

func TestCheckpointAcks(t *testing.T) {
	c := newCkptWorld(t)
	src, agg := c.src, c.agg
	steps := []struct {
		name         string
		by           func() *party.KeyFile
		ack          func() CheckpointAck
		wantRule     string
		wantComplete bool
		wantAlready  bool
		wantLogged   string // a log entry type the step must append
	}{
		{name: "source acknowledges checkpoint 1", by: func() *party.KeyFile { return c.on(src) },
			ack: func() CheckpointAck { return ack(src, 1, "src-1") }},
		{name: "the same acknowledgement again is idempotent", by: func() *party.KeyFile { return c.on(src) },
			ack: func() CheckpointAck { return ack(src, 1, "src-1") }, wantAlready: true},
		{name: "another digest for the same snapshot", by: func() *party.KeyFile { return c.on(src) },
			ack: func() CheckpointAck { return ack(src, 1, "src-1-substituted") }, wantRule: "checkpoint.duplicate", wantLogged: "checkpoint.refused"},
		{name: "other positions for the same snapshot", by: func() *party.KeyFile { return c.on(src) },
			ack: func() CheckpointAck {
				a := ack(src, 1, "src-1")
				a.Positions["meter-a"][0] = SourcePosition{StreamSeq: 1}
				return a
			}, wantRule: "checkpoint.duplicate", wantLogged: "checkpoint.refused"},
		{name: "unknown job", by: func() *party.KeyFile { return c.on(src) },
			ack: func() CheckpointAck { a := ack(src, 1, "x"); a.Job = "nope"; return a }, wantRule: "checkpoint.job"},
		{name: "unknown task", by: func() *party.KeyFile { return c.on(src) },
			ack: func() CheckpointAck { return ack("svc/sink", 1, "x") }, wantRule: "checkpoint.task"},
		{name: "from a node the task is not placed on", by: func() *party.KeyFile { return c.off(agg) },
			ack: func() CheckpointAck { return ack(agg, 1, "agg-1") }, wantRule: "checkpoint.node", wantLogged: "checkpoint.refused"},
		{name: "signed by a provider", by: func() *party.KeyFile { return c.grid },
			ack: func() CheckpointAck { return ack(agg, 1, "agg-1") }, wantRule: "authority.role"},
		{name: "digest not a SHA-256", by: func() *party.KeyFile { return c.on(agg) },
			ack: func() CheckpointAck { a := ack(agg, 1, "agg-1"); a.Digest = "abc"; return a }, wantRule: "checkpoint.digest"},
		{name: "empty key-group range", by: func() *party.KeyFile { return c.on(agg) },
			ack: func() CheckpointAck { a := ack(agg, 1, "agg-1"); a.KeyGroups.To = 0; return a }, wantRule: "checkpoint.key-groups"},
		{name: "positions of a stream the task does not read", by: func() *party.KeyFile { return c.on(agg) },
			ack: func() CheckpointAck {
				a := ack(agg, 1, "agg-1")
				a.Positions = map[string]map[uint32]SourcePosition{"meter-a": {0: {StreamSeq: 3}}}
				return a
			}, wantRule: "checkpoint.positions"},
		{name: "a partition the stream does not have", by: func() *party.KeyFile { return c.on(src) },
			ack: func() CheckpointAck {
				a := ack(src, 2, "src-2")
				a.Positions["meter-a"][1] = SourcePosition{StreamSeq: 3}
				return a
			}, wantRule: "checkpoint.positions"},
		{name: "another version than the other tasks", by: func() *party.KeyFile { return c.on(agg) },
			ack: func() CheckpointAck { a := ack(agg, 1, "agg-1"); a.Version = 2; return a }, wantRule: "checkpoint.version", wantLogged: "checkpoint.refused"},
		{name: "the last task completes checkpoint 1", by: func() *party.KeyFile { return c.on(agg) },
			ack: func() CheckpointAck { return ack(agg, 1, "agg-1") }, wantComplete: true, wantLogged: EntryCheckpointComplete},
		{name: "a retry of the acknowledgement that completed checkpoint 1", by: func() *party.KeyFile { return c.on(agg) },
			ack: func() CheckpointAck { return ack(agg, 1, "agg-1") }, wantComplete: true, wantAlready: true},
		{name: "another snapshot for the complete checkpoint", by: func() *party.KeyFile { return c.on(src) },
			ack: func() CheckpointAck { return ack(src, 1, "src-1b") }, wantRule: "checkpoint.duplicate", wantLogged: "checkpoint.refused"},
		{name: "an older checkpoint", by: func() *party.KeyFile { return c.on(src) },
			ack: func() CheckpointAck { return ack(src, 0, "src-0") }, wantRule: "checkpoint.stale", wantLogged: "checkpoint.refused"},
		{name: "checkpoint 2 started", by: func() *party.KeyFile { return c.on(src) },
			ack: func() CheckpointAck { return ack(src, 2, "src-2") }},
		{name: "checkpoint 3 from the source", by: func() *party.KeyFile { return c.on(src) },
			ack: func() CheckpointAck { return ack(src, 3, "src-3") }},
		{name: "the source goes back to checkpoint 2 after 3: not newer than its restore point", by: func() *party.KeyFile { return c.on(src) },
			ack: func() CheckpointAck { return ack(src, 2, "src-2") }, wantRule: "checkpoint.stale", wantLogged: "checkpoint.refused"},
		{name: "checkpoint 3 completes before 2", by: func() *party.KeyFile { return c.on(agg) },
			ack: func() CheckpointAck { return ack(agg, 3, "agg-3") }, wantComplete: true, wantLogged: EntryCheckpointComplete},
		{name: "checkpoint 2 is now stale", by: func() *party.KeyFile { return c.on(agg) },
			ack: func() CheckpointAck { return ack(agg, 2, "agg-2") }, wantRule: "checkpoint.stale", wantLogged: "checkpoint.refused"},
	}
	for _, s := range steps {
		before, _ := json.Marshal(c.m.State().Checkpoints)
		logged := len(c.entries)
		out, err := c.do(s.by(), TypeCheckpointAck, s.ack())
		if s.wantRule != "" {
			if rule(err) != s.wantRule {
				t.Fatalf("%s: err = %v, want rule %s", s.name, err, s.wantRule)
			}
			if after, _ := json.Marshal(c.m.State().Checkpoints); !bytes.Equal(before, after) {
				t.Fatalf("%s: a refused acknowledgement changed the checkpoint state", s.name)
			}
		} else {
			if err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			if got := out.Result.(*CheckpointAckResult); got.Complete != s.wantComplete || got.Already != s.wantAlready {
				t.Fatalf("%s: result %+v, want complete %v, already %v", s.name, got, s.wantComplete, s.wantAlready)
			}
		}
		var types []string
		for _, e := range c.entries[logged:] {
			types = append(types, e.Type)
		}
		if s.wantLogged != "" && (len(types) != 1 || types[0] != s.wantLogged) {
			t.Fatalf("%s: logged %v, want one %s", s.name, types, s.wantLogged)
		}
		if s.wantLogged == "" && len(types) != 0 {
			t.Fatalf("%s: logged %v, want nothing", s.name, types)
		}
	}

	last, ok := c.m.LastCheckpoint("svc")
	if !ok || last.ID != 3 {
		t.Fatalf("last complete checkpoint = %+v, want 3", last)
	}
	if s, _ := last.Snapshot(agg); s.Digest != digestOf("agg-3") || s.Node != c.on(agg).ID() {
		t.Fatalf("agg snapshot recorded as %+v", s)
	}
	if s, _ := last.Snapshot(src); s.Digest != digestOf("src-3") {
		t.Fatalf("src snapshot recorded as %+v", s)
	}
	if p := last.Positions["meter-a"][0]; p != (SourcePosition{StreamSeq: 30, Next: 15}) {
		t.Fatalf("positions recorded as %+v", last.Positions)
	}
	if n := len(c.m.State().Checkpoints["svc"].Pending); n != 0 {
		t.Fatalf("%d checkpoints still pending after checkpoint 3 completed, want 0 (2 is superseded)", n)
	}
	done := c.logged(EntryCheckpointComplete)
	var body struct {
		Checkpoint uint64                        `json:"checkpoint"`
		Snapshots  map[string]CheckpointSnapshot `json:"snapshots"`
	}
	if err := json.Unmarshal(done[len(done)-1].Body, &body); err != nil || body.Checkpoint != 3 || body.Snapshots[src].Digest != digestOf("src-3") {
		t.Fatalf("completion entry %s (%v) does not record checkpoint 3's digests", done[len(done)-1].Body, err)
	}
	if !strings.Contains(strings.Join(done[0].Subjects, ","), "job:svc") {
		t.Fatalf("completion entry subjects %v do not name the job", done[0].Subjects)
	}

	// The record survives a restart of the orchestrator.
	data, err := c.m.MarshalState()
	if err != nil {
		t.Fatal(err)
	}
	m2, err := Restore(data, c.self, c.m.verifiers)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := m2.LastCheckpoint("svc"); !ok || r.ID != 3 || r.Snapshots[agg].Digest != digestOf("agg-3") {
		t.Fatalf("restored machine's last checkpoint = %+v", r)
	}
}

func TestCheckpointPendingBound(t *testing.T) {
	c := newCkptWorld(t)
	by := c.on(c.src)
	for i := range uint64(MaxPendingCheckpoints + 2) {
		c.must(by, TypeCheckpointAck, ack(c.src, 10+i, "src"))
	}
	pending := c.m.State().Checkpoints["svc"].Pending
	if len(pending) != MaxPendingCheckpoints {
		t.Fatalf("%d checkpoints pending, want the bound %d", len(pending), MaxPendingCheckpoints)
	}
	if pending[10] != nil || pending[11] != nil || pending[12] == nil {
		t.Fatal("the oldest pending checkpoints were not the ones evicted")
	}
	if _, err := c.do(by, TypeCheckpointAck, ack(c.src, 5, "src")); rule(err) != "checkpoint.stale" {
		t.Fatalf("an ack older than every pending checkpoint: %v, want checkpoint.stale", err)
	}
	// An evicted checkpoint can no longer complete; a pending one can.
	c.must(c.on(c.agg), TypeCheckpointAck, ack(c.agg, 12, "agg"))
	if last, ok := c.m.LastCheckpoint("svc"); !ok || last.ID != 12 {
		t.Fatalf("last checkpoint %+v, want 12", last)
	}
}

// TestCheckpointLaggingTask: a task cut off for a while (a WAN outage) acks
// a checkpoint older than the job's last complete one and than every pending
// one, but newer than its own latest: it is accepted as the task's restore
// point (each task restores from its own), without reopening the job's
// bookkeeping.
func TestCheckpointLaggingTask(t *testing.T) {
	c := newCkptWorld(t)
	src, agg := c.src, c.agg
	c.must(c.on(src), TypeCheckpointAck, ack(src, 1, "s1"))
	c.must(c.on(agg), TypeCheckpointAck, ack(agg, 1, "a1"))
	// The aggregation task goes on alone past the pending limit.
	for id := uint64(10); id < 10+MaxPendingCheckpoints+2; id++ {
		c.must(c.on(agg), TypeCheckpointAck, ack(agg, id, fmt.Sprint("a", id)))
	}
	res := c.must(c.on(src), TypeCheckpointAck, ack(src, 5, "s5")).Result.(*CheckpointAckResult)
	if res.Complete {
		t.Fatal("a lagging task's ack completed a checkpoint")
	}
	if rp, ok := c.m.RestorePoint("svc", src); !ok || rp.Checkpoint != 5 {
		t.Fatalf("restore point of the lagging task: %+v", rp)
	}
	if _, err := c.do(c.on(src), TypeCheckpointAck, ack(src, 4, "s4")); ruleOf(err) != "checkpoint.stale" {
		t.Fatalf("an ack older than the task's own latest: %v, want checkpoint.stale", err)
	}
}
