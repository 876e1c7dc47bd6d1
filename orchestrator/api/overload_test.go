package api_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"testing"
	"time"

	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
)

// TestOverloadedTaskMovesUpATier: a task whose signed status reports show
// backpressure above the threshold for OverloadFor moves from its edge node
// to a regional one its slot allows; a short burst does not move it.
func TestOverloadedTaskMovesUpATier(t *testing.T) {
	clock := &fakeClock{}
	e, op, nc, cc := startWithOperator(t, func(c *api.Config) { c.Now, c.OverloadFor, c.NodeTimeout = clock.Now, 10*time.Second, -1 })
	ctx := context.Background()
	edge, c, owner := edgeAndOwner(t, e, op, cc)
	const task = "balance/src"
	deployOneTask(t, c, owner, task, "edge", "regional")
	reg, _ := party.Generate(party.RoleWorker, "regional-a", nil)
	if _, err := cc.Admit(ctx, reg, e.plat.Issuer(), e.claims(op, "regional-a", "regional", "be")); err != nil {
		t.Fatal(err)
	}
	if placedOn(t, e.srv, "balance", task) != edge.ID() {
		t.Fatal("the task does not start at the edge")
	}
	report := func(bp float64) time.Time {
		at := clock.advance(2 * time.Second)
		b, err := party.Sign(edge, api.TypeTaskStatus, api.StatusReport{Tasks: []api.TaskReport{{Job: "balance", Task: task, State: "running", Backpressure: bp}}}, time.Minute, at)
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(api.StatusSubject(edge.ID()), b); err != nil {
			t.Fatal(err)
		}
		heardAfter(t, e.srv, edge.ID(), at)
		return at
	}
	// A burst: high, then low before OverloadFor passed.
	report(0.95)
	report(0.97)
	report(0.2)
	report(0.95)
	if moved, err := e.srv.CheckOverload(ctx); err != nil || len(moved) != 0 {
		t.Fatalf("a burst moved %v (%v)", moved, err)
	}
	// Sustained: 6 reports 2 s apart above the threshold.
	for range 6 {
		report(0.96)
	}
	// ServeNATS checks on its own ticker too: either moves the task, and
	// the regional node receives its keys. The ticker's check may have
	// moved it and still be persisting or delivering the keys when this
	// one finds nothing left to move, so the release is waited for.
	moved, err := e.srv.CheckOverload(ctx)
	if err != nil || len(moved) > 1 || len(moved) == 1 && moved[0] != task {
		t.Fatalf("sustained overload moved %v (%v), want [%s] or nothing (the server's own check moved it)", moved, err, task)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !releasedTask(e.srv, reg.ID(), task) {
		if time.Now().After(deadline) {
			t.Fatalf("sustained overload: the keys of %s were not released to the regional node (this check moved %v)", task, moved)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// releasedTask reports whether srv released keys of task to node.
func releasedTask(srv *api.Server, node party.ID, task string) bool {
	for _, r := range srv.Releases(node) {
		if r.Task == task {
			return true
		}
	}
	return false
}

// edgeAndOwner admits worker edge-a (tier edge, region be), verifies the
// orchestrator for a client, and registers owner alice with stream meter-a,
// whose policy places it only in region be.
func edgeAndOwner(t *testing.T, e *env, op *party.KeyFile, cc *api.ControlClient) (*party.KeyFile, *client.Client, *party.KeyFile) {
	t.Helper()
	edge, _ := party.Generate(party.RoleWorker, "edge-a", nil)
	if _, err := cc.Admit(context.Background(), edge, e.plat.Issuer(), e.claims(op, "edge-a", "edge", "be")); err != nil {
		t.Fatal(err)
	}
	tr, err := e.verify(true)
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(tr)
	owner, _ := party.Generate(party.RoleOwner, "alice", nil)
	registerWith(t, c, owner, "meter-a", `{"name": "belgium", "stage": "placement", "expr": "node.region == 'be'"}`)
	return edge, c, owner
}

// registerWith registers kf and its stream with the given placement rules
// and uploads a key epoch.
func registerWith(t *testing.T, c *client.Client, kf *party.KeyFile, stream, rules string) {
	t.Helper()
	ctx := context.Background()
	if _, err := c.Submit(ctx, kf, orchestrator.TypePartyRegister, orchestrator.RegisterParty{Identity: orchestrator.Identity{Identity: kf.Identity()}}); err != nil {
		t.Fatal(err)
	}
	pol := json.RawMessage(`{"stream": "` + stream + `", "rules": [` + rules + `]}`)
	if _, err := c.Submit(ctx, kf, orchestrator.TypeStreamRegister, orchestrator.RegisterStream{Name: stream, Schema: []orchestrator.Field{{Name: "kwh", Type: "float"}}, Policy: pol}); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	if err := c.UploadStreamKey(ctx, kf, stream, 1, key); err != nil {
		t.Fatal(err)
	}
}

// TestOverloadReliefRunsWithoutLiveness: ServeNATS relieves an overloaded
// task on its own ticker, whichever other periodic checks are turned off
// (the overload check ran on the liveness ticker, so a negative NodeTimeout
// turned it off too).
func TestOverloadReliefRunsWithoutLiveness(t *testing.T) {
	cases := []struct {
		name      string
		nodeTO    time.Duration
		adaptEach time.Duration
	}{
		{"liveness off", -1, 0},
		{"liveness and adaptive checks off", -1, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			clock := &fakeClock{}
			e, op, nc, cc := startWithOperator(t, func(cfg *api.Config) {
				cfg.Now, cfg.OverloadFor, cfg.NodeTimeout, cfg.AdaptiveEvery = clock.Now, 40*time.Millisecond, c.nodeTO, c.adaptEach
			})
			ctx := context.Background()
			edge, cl, owner := edgeAndOwner(t, e, op, cc)
			const task = "balance/src"
			deployOneTask(t, cl, owner, task, "edge", "regional")
			reg, _ := party.Generate(party.RoleWorker, "regional-a", nil)
			if _, err := cc.Admit(ctx, reg, e.plat.Issuer(), e.claims(op, "regional-a", "regional", "be")); err != nil {
				t.Fatal(err)
			}
			// Two reports 2 s apart (on the reporting worker's clock)
			// above the threshold: overloaded for longer than OverloadFor.
			for range 2 {
				at := clock.advance(2 * time.Second)
				b, err := party.Sign(edge, api.TypeTaskStatus, api.StatusReport{Tasks: []api.TaskReport{{Job: "balance", Task: task, State: "running", Backpressure: 0.96}}}, time.Minute, at)
				if err != nil {
					t.Fatal(err)
				}
				if err := nc.Publish(api.StatusSubject(edge.ID()), b); err != nil {
					t.Fatal(err)
				}
				heardAfter(t, e.srv, edge.ID(), at)
			}
			deadline := time.Now().Add(5 * time.Second)
			for !releasedTask(e.srv, reg.ID(), task) {
				if time.Now().After(deadline) {
					t.Fatal("the overloaded task was not moved by the server's periodic check")
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}
