package api_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
)

// fakeClock runs at the real clock's pace plus an offset the test advances,
// so statements signed with the real clock stay valid.
type fakeClock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *fakeClock) advance(d time.Duration) time.Time {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
	return c.Now()
}

// startWithOperator starts an orchestrator whose genesis names a fresh
// operator, with an in-memory store and cfg applied, serving NATS.
func startWithOperator(t *testing.T, cfg func(*api.Config)) (*env, *party.KeyFile, *nats.Conn, *api.ControlClient) {
	t.Helper()
	e := newEnv(t)
	op, _ := party.Generate(party.RoleOperator, "operator", nil)
	e.genesis.Operator = op.Identity()
	e.store = &api.MemStore{}
	e.cfg = cfg
	e.start()
	nc := startNATS(t)
	serveNATS(t, e.srv, nc)
	return e, op, nc, api.NewControlClient(nc, e.srv.Identity())
}

// deployOneTask registers a provider and deploys job "balance": one task
// reading owner's stream meter-a into balance-out, on the given tiers (most
// preferred first), approved by owner.
func deployOneTask(t *testing.T, c *client.Client, owner *party.KeyFile, task string, tiers ...string) {
	t.Helper()
	ctx := context.Background()
	prov, _ := party.Generate(party.RoleProvider, "grid", nil)
	if _, err := c.Submit(ctx, prov, orchestrator.TypePartyRegister, orchestrator.RegisterParty{Identity: orchestrator.Identity{Identity: prov.Identity()}}); err != nil {
		t.Fatal(err)
	}
	sb := jobspec.New("balance").Schema("meter", jobspec.Float("kwh"))
	sb.Source("meter-a", "meter").Sink("balance-out")
	spec, _ := sb.MustBuild().JSON()
	man := orchestrator.Manifest{ID: "balance", Version: 1, Spec: spec, Inputs: []string{"meter-a"}, Outputs: []string{"balance-out"},
		Tasks: []orchestrator.TaskSlot{{ID: task, Tiers: tiers, Reads: []string{"meter-a"}, Writes: []string{"balance-out"}}}}
	r, err := c.Submit(ctx, prov, orchestrator.TypeServiceSubmit, man)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(ctx, owner, orchestrator.TypeServiceApprove, orchestrator.Approve{Stream: "meter-a", Digest: r.Result.(map[string]any)["digest"].(string)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(ctx, prov, orchestrator.TypeJobDeploy, orchestrator.Deploy{Service: "balance"}); err != nil {
		t.Fatal(err)
	}
}

// heartbeat publishes kf's signed (empty) status report every 50 ms until the
// returned function is called.
func heartbeat(t *testing.T, nc *nats.Conn, kf *party.KeyFile) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				b, err := party.Sign(kf, api.TypeTaskStatus, api.StatusReport{Tasks: []api.TaskReport{}}, time.Minute, time.Now())
				if err == nil {
					_ = nc.Publish(api.StatusSubject(kf.ID()), b)
				}
			}
		}
	})
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// heardAfter waits until the server heard from node after t.
func heardAfter(t *testing.T, srv *api.Server, node party.ID, at time.Time) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !srv.LastHeard(node).After(at) {
		if time.Now().After(deadline) {
			t.Fatalf("node %s not heard from after %v", node.Short(), at)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func placedOn(t *testing.T, srv *api.Server, job, task string) party.ID {
	t.Helper()
	ts, ok := srv.JobStatus(job)
	if !ok {
		t.Fatalf("job %s not deployed", job)
	}
	for _, s := range ts {
		if s.Task == task {
			return s.Node
		}
	}
	t.Fatalf("job %s has no task %s", job, task)
	return ""
}

func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// TestSilentWorkerIsLostAndItsTaskRestoresElsewhere runs the recovery path
// end to end over NATS: a worker holding a task stops reporting, the
// orchestrator declares it lost after NodeTimeout (on an injected clock),
// moves the task to the other admitted worker with fresh keys, serves that
// worker the task's signed restore point, refuses it to the lost worker, and
// fences the lost worker's checkpoint acknowledgements.
func TestSilentWorkerIsLostAndItsTaskRestoresElsewhere(t *testing.T) {
	clock := &fakeClock{}
	reg := prometheus.NewRegistry()
	e, op, nc, cc := startWithOperator(t, func(c *api.Config) { c.Now, c.Registerer = clock.Now, reg })
	ctx := context.Background()

	// Worker A is admitted; the job's only task is deployed on it; then
	// worker B is admitted.
	a, _ := party.Generate(party.RoleWorker, "edge-a", nil)
	if _, err := cc.Admit(ctx, a, e.plat.Issuer(), e.claims(op, "edge-a", "edge", "be")); err != nil {
		t.Fatal(err)
	}
	tr, err := e.verify(true)
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(tr)
	owner, _ := party.Generate(party.RoleOwner, "alice", nil)
	streamKey := register(t, c, owner, "meter-a")
	const task = "balance/src"
	deployOneTask(t, c, owner, task, "edge")
	b, _ := party.Generate(party.RoleWorker, "edge-b", nil)
	if _, err := cc.Admit(ctx, b, e.plat.Issuer(), e.claims(op, "edge-b", "edge", "be")); err != nil {
		t.Fatal(err)
	}
	if got := placedOn(t, e.srv, "balance", task); got != a.ID() {
		t.Fatalf("task deployed on %s, want worker A", got.Short())
	}
	got := make(chan []orchestrator.Release, 4)
	sub, err := cc.SubscribeReleases(b.ID(), func(rs []orchestrator.Release) { got <- rs }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	// A acknowledges checkpoint 1 (a clear, typed answer), then a retry.
	ack := orchestrator.CheckpointAck{Job: "balance", Checkpoint: 1, Task: task, Version: 1,
		KeyGroups: state.Range{From: 0, To: 128}, Digest: "a1" + string(bytes.Repeat([]byte("0"), 62)),
		Positions: map[string]map[uint32]orchestrator.SourcePosition{"meter-a": {0: {StreamSeq: 7, Next: 3}}}}
	if res, err := cc.AckCheckpoint(ctx, a, ack); err != nil || !res.Complete || res.Already {
		t.Fatalf("A's acknowledgement: %+v, %v", res, err)
	}
	if res, err := cc.AckCheckpoint(ctx, a, ack); err != nil || !res.Already {
		t.Fatalf("A's retried acknowledgement: %+v, %v", res, err)
	}

	// While both report, time passes well beyond NodeTimeout: nobody is lost.
	stopA := heartbeat(t, nc, a)
	heartbeat(t, nc, b)
	for range 4 {
		at := clock.advance(3 * time.Second)
		heardAfter(t, e.srv, a.ID(), at)
		heardAfter(t, e.srv, b.ID(), at)
	}
	if lost, err := e.srv.CheckLiveness(ctx); err != nil || len(lost) != 0 {
		t.Fatalf("nodes lost while reporting: %v, %v", lost, err)
	}
	if placedOn(t, e.srv, "balance", task) != a.ID() {
		t.Fatal("the task moved away from a node that reports")
	}

	// A falls silent: after NodeTimeout its task moves to B, by the
	// server's own liveness loop or this explicit check.
	stopA()
	for range 3 {
		at := clock.advance(3 * time.Second)
		heardAfter(t, e.srv, b.ID(), at)
	}
	if _, err := e.srv.CheckLiveness(ctx); err != nil {
		t.Fatal(err)
	}
	if got := placedOn(t, e.srv, "balance", task); got != b.ID() {
		t.Fatalf("after A fell silent the task is on %s, want worker B", got.Short())
	}
	if n := counter(t, reg, "sealflow_orchestrator_nodes_lost_total"); n != 1 {
		t.Fatalf("nodes_lost_total = %v, want 1", n)
	}
	select {
	case rs := <-got:
		var unwrapped []byte
		for _, rel := range rs {
			if rel.To != b.ID() || rel.Task != task {
				t.Fatalf("release %s to %s for %s", rel.KeyID(), rel.To.Short(), rel.Task)
			}
			if rel.Purpose == "stream" {
				if unwrapped, err = b.Unwrap(orchestrator.WrapInfoFor(rel.Purpose, rel.Scope, rel.Epoch, rel.To).Bytes(), rel.Wrapped); err != nil {
					t.Fatal(err)
				}
			}
		}
		if !bytes.Equal(unwrapped, streamKey) {
			t.Fatal("worker B did not receive the stream key of the task it took over")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no release batch published to worker B")
	}
	if rs, err := cc.FetchReleases(ctx, a.ID()); err != nil || len(rs) != 0 {
		t.Fatalf("the lost worker is still served %d releases (%v)", len(rs), err)
	}

	// B asks for the task's restore point: A's snapshot, signed.
	rp, err := cc.RestorePoint(ctx, b, "balance", task)
	if err != nil {
		t.Fatal(err)
	}
	if rp == nil || rp.Checkpoint != 1 || rp.Digest != ack.Digest || rp.Node != a.ID() || rp.Positions["meter-a"][0] != (orchestrator.SourcePosition{StreamSeq: 7, Next: 3}) {
		t.Fatalf("restore point %+v", rp)
	}
	refusals := []struct {
		name string
		by   *party.KeyFile
		job  string
		rule string
	}{
		{"the lost worker", a, "balance", "restore.node"},
		{"an unknown job", b, "nope", "restore.job"},
	}
	for _, tc := range refusals {
		var re *api.RefusedError
		if _, err := cc.RestorePoint(ctx, tc.by, tc.job, task); !errors.As(err, &re) || re.Rule != tc.rule {
			t.Fatalf("restore point for %s: %v, want a refusal by %s", tc.name, err, tc.rule)
		}
	}
	// An answer is bound to its request: replayed to another request (an
	// old restore point fed back), it is refused.
	req1, _ := party.Sign(b, api.TypeRestoreRequest, api.RestoreRequest{Job: "balance", Task: task}, time.Minute, time.Now())
	req2, _ := party.Sign(b, api.TypeRestoreRequest, api.RestoreRequest{Job: "balance", Task: task}, time.Minute, time.Now())
	msg, err := nc.Request(api.SubjectRestore, req1, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cc.OpenRestorePoint(b.ID(), req1, msg.Data); err != nil {
		t.Fatalf("the genuine answer: %v", err)
	}
	var r2 interface{ RefusedBy() string }
	if _, err := cc.OpenRestorePoint(b.ID(), req2, msg.Data); !errors.As(err, &r2) || r2.RefusedBy() != "restore.request" {
		t.Fatalf("an answer replayed to another request: %v, want restore.request", err)
	}
	if _, err := api.NewControlClient(nc, op.Identity()).OpenRestorePoint(b.ID(), req1, msg.Data); err == nil {
		t.Fatal("an answer accepted from a key other than the verified orchestrator's")
	}

	// The zombie A cannot acknowledge (so its sink never commits); B goes on
	// after the restore point.
	acks := []struct {
		name string
		by   *party.KeyFile
		ckpt uint64
		rule string
	}{
		{"the lost worker", a, 2, "checkpoint.node"},
		{"the new worker, the restored checkpoint", b, 1, "checkpoint.stale"},
		{"the new worker, the next checkpoint", b, 2, ""},
	}
	for _, tc := range acks {
		next := ack
		next.Checkpoint, next.Digest = tc.ckpt, "b2"+string(bytes.Repeat([]byte("0"), 62))
		res, err := cc.AckCheckpoint(ctx, tc.by, next)
		if tc.rule == "" {
			if err != nil || res.Checkpoint != tc.ckpt || !res.Complete {
				t.Fatalf("%s: %+v, %v", tc.name, res, err)
			}
			continue
		}
		var re *api.RefusedError
		if !errors.As(err, &re) || re.Rule != tc.rule {
			t.Fatalf("%s: %v, want a refusal by %s", tc.name, err, tc.rule)
		}
	}
	if rp, err := cc.RestorePoint(ctx, b, "balance", task); err != nil || rp.Checkpoint != 2 || rp.Node != b.ID() {
		t.Fatalf("restore point after B's acknowledgement: %+v, %v", rp, err)
	}
}
