package api_test

import (
	"context"
	"testing"
	"time"

	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
)

// TestJobsChangedHint: the orchestrator publishes the jobs-changed hint after
// a statement that changes where or how tasks run (a deploy, a rescale), and
// not after one that does not (a party registered) or that was refused.
func TestJobsChangedHint(t *testing.T) {
	e, op, nc, cc := startWithOperator(t, func(c *api.Config) { c.NodeTimeout, c.OverloadFor, c.AdaptiveEvery = -1, -1, -1 })
	sub, err := nc.SubscribeSync(api.SubjectJobsChanged)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	hinted := func(want bool, after string) {
		t.Helper()
		wait := 2 * time.Second
		if !want {
			wait = 300 * time.Millisecond
		}
		_, err := sub.NextMsg(wait)
		if got := err == nil; got != want {
			t.Fatalf("after %s: hinted %v, want %v", after, got, want)
		}
	}
	ctx := context.Background()
	_, c, owner := edgeAndOwner(t, e, op, cc)
	hinted(false, "registering a stream")
	deployOneTask(t, c, owner, "balance/main", "edge")
	hinted(true, "a deploy")
	hinted(false, "nothing more")
	prov, _ := party.Generate(party.RoleProvider, "stranger", nil)
	if _, err := c.Submit(ctx, prov, orchestrator.TypeJobDeploy, orchestrator.Deploy{Service: "balance"}); err == nil {
		t.Fatal("an unregistered party deployed a job")
	}
	hinted(false, "a refused deploy")
}
