package api_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
)

// TestUpgradeWhileRescaling: the server signs a statement's result into its
// receipt after releasing its lock, so a job.upgrade's result must not share
// the job's maps that a job.scale submitted at the same time writes (run
// with -race: "concurrent map read and map write" otherwise).
func TestUpgradeWhileRescaling(t *testing.T) {
	clock := &fakeClock{}
	e, op, _, cc := startWithOperator(t, func(c *api.Config) {
		c.Now, c.NodeTimeout, c.OverloadFor, c.AdaptiveEvery = clock.Now, -1, -1, -1
	})
	ctx := context.Background()
	edge, c, owner := edgeAndOwner(t, e, op, cc)
	prov, _ := party.Generate(party.RoleProvider, "grid", nil)
	submit := func(kf *party.KeyFile, typ string, body any) *api.Response {
		t.Helper()
		r, err := c.Submit(ctx, kf, typ, body)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		return r
	}
	submit(prov, orchestrator.TypePartyRegister, orchestrator.RegisterParty{Identity: orchestrator.Identity{Identity: prov.Identity()}})
	sb := jobspec.New("balance").Schema("meter", jobspec.String("house"), jobspec.Float("kwh"), jobspec.Int("ts"))
	sb.Source("meter-a", "meter", jobspec.EventTime("ts", time.Second)).KeyBy("house").Window(jobspec.Tumbling(5*time.Second), jobspec.Sum("kwh", "kwh")).As("win").Sink("balance-out")
	spec, _ := sb.MustBuild().JSON()
	const task = "balance/main"
	version := func(v int64) {
		man := orchestrator.Manifest{ID: "balance", Version: v, Spec: spec, Inputs: []string{"meter-a"}, Outputs: []string{"balance-out"},
			Tasks: []orchestrator.TaskSlot{{ID: task, Tiers: []string{"edge"}, Reads: []string{"meter-a"}, Writes: []string{"balance-out"}}}}
		d := submit(prov, orchestrator.TypeServiceSubmit, man).Result.(map[string]any)["digest"].(string)
		submit(owner, orchestrator.TypeServiceApprove, orchestrator.Approve{Stream: "meter-a", Digest: d})
	}
	version(1)
	submit(prov, orchestrator.TypeJobDeploy, orchestrator.Deploy{Service: "balance"})
	scale := func(p int) *api.Response {
		return submit(prov, orchestrator.TypeJobScale, orchestrator.ScaleRequest{Job: "balance", Task: task, Operator: "win", Parallelism: p})
	}
	gen := uint64(scale(2).Result.(map[string]any)["generation"].(float64))
	digest := sha256.Sum256([]byte("snapshot"))
	submit(edge, orchestrator.TypeCheckpointAck, orchestrator.CheckpointAck{Job: "balance", Checkpoint: 1, Task: task, Version: 1,
		KeyGroups: state.Range{From: 0, To: jobspec.DefaultMaxParallelism}, Digest: hex.EncodeToString(digest[:]), Generation: gen})
	version(2)

	// The rescales run until the upgrade has answered: one lands between
	// the upgrade's release of the lock and its receipt.
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		defer close(done)
		if r, err := c.Submit(ctx, prov, orchestrator.TypeJobUpgrade, orchestrator.UpgradeRequest{Job: "balance"}); err != nil || !r.OK {
			t.Errorf("upgrade: %+v (%v)", r, err)
		}
	})
	for range 3 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				b, err := party.Sign(prov, orchestrator.TypeJobScale, orchestrator.ScaleRequest{Job: "balance", Task: task, Operator: "win", Parallelism: 2 + i%2}, time.Minute, clock.Now())
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := e.srv.Submit(ctx, b); err != nil {
					t.Errorf("rescale: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
}
