package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestElasticMovesExactlyOnce moves the running balance job's tasks while
// the gateways publish: the operator migrates the regional task to another
// node, the provider rescales an edge window (1 → 3 → 1 subtasks), the
// operator tries to migrate an edge task to a node in the Netherlands (refused
// by the owner's placement rule, named), drains the node of an edge task and
// removes another node; Nexmark q5 runs meanwhile, migrated and rescaled too.
// Both outputs are exactly the failure-free results.
func TestElasticMovesExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts several processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := newChaosCluster(ctx, t, [2]string{"edge", "be-antwerp"}, [2]string{"edge", "be-ghent"}, [2]string{"edge", "be-antwerp"},
		[2]string{"edge", "nl-rotterdam"}, [2]string{"regional", "be-flanders"}, [2]string{"regional", "be-flanders"})
	b := setupBalance(ctx, t, c, 900)
	q5 := setupQ5(ctx, t, c, b.run, b.grid, b.gridTrust, 12000)
	var pause sync.RWMutex
	wait := b.gateways(ctx, t, 25*time.Millisecond, &pause)     // 900 lines in about 23 s
	waitBids := q5.gateway(ctx, t, 30*time.Millisecond, &pause) // 12000 bids in about 23 s

	opTrust := filepath.Join(c.dir, "operator.trust")
	b.run("verify", "--orchestrator", c.ep.OrchestratorURL, "--measurement", c.ep.OrchestratorMeasurement, "--allow-sim", "--sim-dir", c.ep.SimDir, "--trust", opTrust)
	opKey := filepath.Join(c.dir, "orchestrator", "operator.key")
	infra := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, c.bin, append([]string{"infra"}, args...)...).CombinedOutput()
		return string(out), err
	}
	placementOf := func(jobID string) (tasks map[string]string, names map[string]string) {
		var job struct {
			Tasks map[string]string `json:"tasks"`
		}
		var nodes []struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		}
		nout, err := exec.CommandContext(ctx, c.bin, "infra", "nodes", "--trust", opTrust, "--json").Output()
		if err != nil || json.Unmarshal(nout, &nodes) != nil {
			t.Fatalf("infra nodes: %v", err)
		}
		names = map[string]string{}
		for _, n := range nodes {
			names[n.ID] = n.Name
		}
		jout, err := exec.CommandContext(ctx, c.bin, "service", "status", "--trust", opTrust, "--json", jobID).Output()
		if err != nil || json.Unmarshal(jout, &job) != nil {
			t.Fatalf("service status: %v", err)
		}
		tasks = map[string]string{}
		for task, node := range job.Tasks {
			tasks[task] = names[node]
		}
		return tasks, names
	}
	placement := func() (map[string]string, map[string]string) { return placementOf("balance") }
	time.Sleep(4 * time.Second)
	tasks, _ := placement()
	t.Logf("placement: %v", tasks)

	// Migrate the regional task to the other regional node.
	dest := "regional-be-flanders-5"
	if tasks["balance/regional"] == dest {
		dest = "regional-be-flanders-6"
	}
	out, err := infra("migrate", "--key", opKey, "--trust", opTrust, "--job", "balance", "--task", "balance/regional", "--to", dest)
	if err != nil {
		t.Fatalf("infra migrate: %v\n%s", err, out)
	}
	t.Logf("migrate: %s", strings.TrimSpace(out))
	// A node in the Netherlands: the owner's placement rule refuses it.
	out, err = infra("migrate", "--key", opKey, "--trust", opTrust, "--job", "balance", "--task", "balance/edge-a", "--to", "edge-nl-rotterdam-4", "--wait=false")
	if err == nil || !strings.Contains(out, "policy:meter-a/belgium") {
		t.Fatalf("a migration the policy forbids: %v\n%s", err, out)
	}
	// Rescale edge-a's window operator: its key groups are redistributed
	// from the task's last checkpoint.
	scale := func(p string) {
		out, err := exec.CommandContext(ctx, c.bin, "service", "scale", "--key", b.grid, "--trust", b.gridTrust,
			"--job", "balance", "--task", "balance/edge-a", "--operator", "win", "--parallelism", p).CombinedOutput()
		if err != nil {
			t.Fatalf("service scale to %s: %v\n%s", p, err, out)
		}
		t.Logf("scale: %s", strings.TrimSpace(string(out)))
	}
	scale("3")
	// Nexmark q5 too: its task moves to the other regional node and its
	// sliding-window count runs at parallelism 2 after.
	q5Tasks, _ := placementOf("q5")
	q5Node := "regional-be-flanders-5"
	if q5Tasks["q5/main"] == q5Node {
		q5Node = "regional-be-flanders-6"
	}
	if out, err := infra("migrate", "--key", opKey, "--trust", opTrust, "--job", "q5", "--task", "q5/main", "--to", q5Node); err != nil {
		t.Fatalf("infra migrate q5: %v\n%s", err, out)
	}
	if out, err := exec.CommandContext(ctx, c.bin, "service", "scale", "--key", b.grid, "--trust", b.gridTrust,
		"--job", "q5", "--task", "q5/main", "--operator", "window-aggregate1", "--parallelism", "2").CombinedOutput(); err != nil {
		t.Fatalf("service scale q5: %v\n%s", err, out)
	}
	time.Sleep(2 * time.Second)
	// Drain the node of edge-a, then remove the node edge-b runs on.
	tasks, _ = placement()
	out, err = infra("drain", "--key", opKey, "--trust", opTrust, tasks["balance/edge-a"])
	if err != nil {
		t.Fatalf("infra drain: %v\n%s", err, out)
	}
	t.Logf("drain: %s", strings.TrimSpace(out))
	time.Sleep(3 * time.Second)
	tasks, _ = placement()
	out, err = infra("remove", "--key", opKey, "--trust", opTrust, tasks["balance/edge-b"])
	if err != nil {
		t.Fatalf("infra remove: %v\n%s", err, out)
	}
	t.Logf("remove: %s", strings.TrimSpace(out))
	scale("1")
	tasks, _ = placement()
	for task, node := range tasks {
		if strings.Contains(node, "nl-") {
			t.Errorf("task %s was placed on %s, which the policy forbids", task, node)
		}
	}
	wait()
	waitBids()
	b.checkResults(ctx, t)
	q5.checkResults(ctx, t, b.grid, b.gridTrust)
}
