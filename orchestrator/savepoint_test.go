package orchestrator

import (
	"bytes"
	"slices"
	"testing"
)

// TestSavepointStopAndRedeploy takes a savepoint of a running job, stops it
// with another, and deploys it again from the first: the new job has the old
// job's keys and each task starts from the savepoint's restore point, and the
// workers are told which snapshots savepoints hold.
func TestSavepointStopAndRedeploy(t *testing.T) {
	c := newCkptWorld(t)
	src, agg := c.src, c.agg

	// Before every task has a checkpoint, a savepoint is refused.
	c.must(c.on(src), TypeCheckpointAck, ack(src, 1, "s1"))
	if _, err := c.do(c.grid, TypeJobSavepoint, SavepointRequest{Job: "svc"}); ruleOf(err) != "savepoint.incomplete" {
		t.Fatalf("savepoint without every task's checkpoint: %v, want savepoint.incomplete", err)
	}
	c.must(c.on(agg), TypeCheckpointAck, ack(agg, 1, "a1"))

	// Only the job's provider may take one.
	other := c.provider("other")
	if _, err := c.do(other, TypeJobSavepoint, SavepointRequest{Job: "svc"}); ruleOf(err) != "job.owner" {
		t.Fatalf("another provider's savepoint: %v, want job.owner", err)
	}
	out := c.must(c.grid, TypeJobSavepoint, SavepointRequest{Job: "svc", Name: "before-upgrade"})
	v := out.Result.(SavepointView)
	if v.Tasks[src] != 1 || v.Tasks[agg] != 1 || v.Digests[src] != digestOf("s1") {
		t.Fatalf("savepoint view %+v", v)
	}
	if len(c.logged("savepoint.taken")) != 1 {
		t.Fatal("savepoint not logged")
	}
	if _, err := c.do(c.grid, TypeJobSavepoint, SavepointRequest{Job: "svc", Name: "before-upgrade"}); ruleOf(err) != "savepoint.exists" {
		t.Fatalf("a second savepoint of the same name: %v", err)
	}

	// Later checkpoints: the ack tells the worker which snapshot is pinned.
	res := c.must(c.on(src), TypeCheckpointAck, ack(src, 2, "s2")).Result.(*CheckpointAckResult)
	if !slices.Equal(res.Pinned, []uint64{1}) {
		t.Fatalf("pinned checkpoints in the ack result: %v, want [1]", res.Pinned)
	}
	c.must(c.on(agg), TypeCheckpointAck, ack(agg, 2, "a2"))
	oldKeys := cloneKeys(c.m.State().Jobs["svc"].Keys)
	srcNode := c.on(src)

	// Stop with a savepoint: the job, its keys and checkpoints are gone.
	out = c.must(c.grid, TypeJobStop, JobStop{Job: "svc", Savepoint: true})
	if _, ok := c.m.State().Jobs["svc"]; ok {
		t.Fatal("the job still runs after job.stop")
	}
	if _, ok := c.m.RestorePoint("svc", src); ok {
		t.Fatal("a stopped job still has restore points")
	}
	stopSP := out.Result.(map[string]any)["savepoint"].(SavepointView)
	if stopSP.Name != "svc-1" || stopSP.Tasks[src] != 2 {
		t.Fatalf("stop savepoint %+v", stopSP)
	}
	// A stopped job's acks are refused: nothing of it commits.
	if _, err := c.do(srcNode, TypeCheckpointAck, ack(src, 3, "s3")); ruleOf(err) != "checkpoint.job" {
		t.Fatal("an ack of a stopped job was accepted")
	}

	// Redeploy from the first savepoint.
	if _, err := c.do(c.grid, TypeJobDeploy, Deploy{Service: "svc", Job: "other-job", FromSavepoint: "before-upgrade"}); ruleOf(err) != "savepoint.job" {
		t.Fatalf("deploy of another job from the savepoint: %v, want savepoint.job", err)
	}
	if _, err := c.do(c.grid, TypeJobDeploy, Deploy{Service: "svc", FromSavepoint: "nope"}); ruleOf(err) != "savepoint.unknown" {
		t.Fatalf("deploy from an unknown savepoint: %v", err)
	}
	c.must(c.grid, TypeJobDeploy, Deploy{Service: "svc", FromSavepoint: "before-upgrade"})
	job := c.m.State().Jobs["svc"]
	for k, v := range oldKeys {
		if !bytes.Equal(job.Keys[k], v) {
			t.Fatalf("the redeployed job's %s key is not the savepoint's", k)
		}
	}
	for task, want := range map[string]uint64{src: 1, agg: 1} {
		rp, ok := c.m.RestorePoint("svc", task)
		if !ok || rp.Checkpoint != want {
			t.Fatalf("task %s restore point %+v, want checkpoint %d", task, rp, want)
		}
	}
	// The new run acknowledges later checkpoints; another snapshot under
	// the savepoint's checkpoint id is refused.
	if _, err := c.do(c.on(src), TypeCheckpointAck, ack(src, 1, "other")); err == nil {
		t.Fatal("a different snapshot under the savepoint's checkpoint id was accepted")
	}
	c.must(c.on(src), TypeCheckpointAck, ack(src, 5, "s5"))
}

// TestSavepointKeysSurviveRevoke: a revoke clears the stopped job's keys in
// place; the savepoint keeps its own copy.
func TestSavepointKeysSurviveRevoke(t *testing.T) {
	c := newCkptWorld(t)
	c.must(c.on(c.src), TypeCheckpointAck, ack(c.src, 1, "s1"))
	c.must(c.on(c.agg), TypeCheckpointAck, ack(c.agg, 1, "a1"))
	c.must(c.grid, TypeJobSavepoint, SavepointRequest{Job: "svc", Name: "sp"})
	sp, _ := c.m.Savepoint("sp")
	want := cloneKeys(sp.Keys)
	c.m.removeJob(c.m.State().Jobs["svc"])
	for k, v := range want {
		if !bytes.Equal(sp.Keys[k], v) || bytes.Equal(v, make([]byte, len(v))) {
			t.Fatalf("savepoint key %s changed or is zero after the job was removed", k)
		}
	}
}
