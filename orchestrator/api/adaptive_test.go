package api_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
)

// syncBuffer is a bytes.Buffer safe for the server's concurrent logging.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAdaptiveRescaleDeferredByCooldown: an adaptive operator follows a node
// admitted over the API; when the admission comes within the cool-down the
// rescale waits, and CheckAdaptive performs it once the cool-down passed,
// logged with its reason; a further check changes nothing.
func TestAdaptiveRescaleDeferredByCooldown(t *testing.T) {
	clock := &fakeClock{}
	logs := &syncBuffer{}
	e, op, _, cc := startWithOperator(t, func(c *api.Config) {
		c.Now, c.NodeTimeout, c.OverloadFor, c.AdaptiveEvery = clock.Now, -1, -1, -1
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	ctx := context.Background()
	_, c, owner := edgeAndOwner(t, e, op, cc)
	prov, _ := party.Generate(party.RoleProvider, "grid", nil)
	if _, err := c.Submit(ctx, prov, orchestrator.TypePartyRegister, orchestrator.RegisterParty{Identity: orchestrator.Identity{Identity: prov.Identity()}}); err != nil {
		t.Fatal(err)
	}
	sb := jobspec.New("balance").Schema("meter", jobspec.String("house"), jobspec.Float("kwh"), jobspec.Int("ts"))
	sb.Source("meter-a", "meter", jobspec.EventTime("ts", time.Second)).KeyBy("house").Window(jobspec.Tumbling(5*time.Second), jobspec.Sum("kwh", "kwh")).As("win").Sink("balance-out")
	spec, _ := sb.MustBuild().JSON()
	const task = "balance/main"
	man := orchestrator.Manifest{ID: "balance", Version: 1, Spec: spec, Inputs: []string{"meter-a"}, Outputs: []string{"balance-out"},
		Tasks: []orchestrator.TaskSlot{{ID: task, Tiers: []string{"edge"}, Reads: []string{"meter-a"}, Writes: []string{"balance-out"}}}}
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
	// edge-a offers 4 slots, the task holds one of them.
	resp, err := c.Submit(ctx, prov, orchestrator.TypeJobScale, orchestrator.ScaleRequest{Job: "balance", Task: task, Operator: "win",
		Adaptive: &orchestrator.AdaptiveBounds{Min: 1, Max: 8, Cooldown: orchestrator.Duration(10 * time.Second)}})
	if err != nil {
		t.Fatal(err)
	}
	if p := resp.Result.(map[string]any)["parallelism"]; p != float64(4) {
		t.Fatalf("adaptive bounds set: parallelism %v, want 4", p)
	}
	var jobs []api.JobView
	if err := c.Get(ctx, "/v1/jobs", &jobs); err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 || jobs[0].Adaptive[task]["win"] == nil || jobs[0].Adaptive[task]["win"].Max != 8 {
		t.Fatalf("/v1/jobs does not show the adaptive bounds: %+v", jobs)
	}
	// Within the cool-down: the admission changes nothing yet.
	edgeB, _ := party.Generate(party.RoleWorker, "edge-b", nil)
	if _, err := cc.Admit(ctx, edgeB, e.plat.Issuer(), e.claims(op, "edge-b", "edge", "be")); err != nil {
		t.Fatal(err)
	}
	if res, err := e.srv.CheckAdaptive(ctx); err != nil || len(res) != 0 {
		t.Fatalf("within the cool-down: rescales %v (%v)", res, err)
	}
	clock.advance(11 * time.Second)
	res, err := e.srv.CheckAdaptive(ctx)
	if err != nil || len(res) != 1 || res[0].From != 4 || res[0].Parallelism != 8 || res[0].Available != 8 {
		t.Fatalf("after the cool-down: rescales %+v (%v), want 4 → 8", res, err)
	}
	if !strings.Contains(logs.String(), "adaptive rescale") || !strings.Contains(logs.String(), "periodic check of the available slots") {
		t.Fatalf("the rescale is not logged with its reason:\n%s", logs.String())
	}
	clock.advance(11 * time.Second)
	if res, err := e.srv.CheckAdaptive(ctx); err != nil || len(res) != 0 {
		t.Fatalf("nothing changed, yet rescales %v (%v)", res, err)
	}
}
