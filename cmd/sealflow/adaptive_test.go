package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// startWorkerSlots is chaosCluster.startWorker for a node offering slots
// task slots.
func (c *chaosCluster) startWorkerSlots(tier, region string, slots int) string {
	c.t.Helper()
	c.mu.Lock()
	c.seq++
	name := fmt.Sprintf("%s-%s-%d", tier, region, c.seq)
	c.mu.Unlock()
	cmd := exec.Command(c.bin, "worker", "--nats", c.nats.ClientURL(), "--orchestrator", c.ep.OrchestratorURL, "--measurement", c.ep.OrchestratorMeasurement,
		"--allow-sim", "--sim-dir", c.ep.SimDir, "--name", name, "--tier", tier, "--region", region, "--site", name,
		"--operator-key", filepath.Join(c.dir, "orchestrator", "operator.key"), "--checkpoint-interval", "500ms", "--slots", fmt.Sprint(slots))
	logf := c.logFile(name)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.workers[name] = &chaosWorker{name: name, tier: tier, region: region, cmd: cmd}
	c.mu.Unlock()
	return name
}

// TestAdaptiveParallelismFollowsWorkers runs the balance job with edge-a's
// window adaptive within 1..4 subtasks while the gateways publish: with one
// edge node of 2 slots (both edge tasks on it) one slot is available to the
// task; admitting a second edge node of 2 slots grows the window to 3
// subtasks, and removing that node shrinks it back to 1. An edge node in the
// Netherlands, which the owners' placement rule refuses, adds nothing. The
// output is exactly the failure-free result.
func TestAdaptiveParallelismFollowsWorkers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts several processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := newChaosCluster(ctx, t)
	c.startWorkerSlots("edge", "be-antwerp", 2)
	c.startWorkerSlots("regional", "be-flanders", 2)
	run := sealflowRunner(ctx, t, c.bin)
	opTrust := filepath.Join(c.dir, "operator.trust")
	run("verify", "--orchestrator", c.ep.OrchestratorURL, "--measurement", c.ep.OrchestratorMeasurement, "--allow-sim", "--sim-dir", c.ep.SimDir, "--trust", opTrust)
	nodes := func() map[string]string {
		var ns []struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		}
		out, err := exec.CommandContext(ctx, c.bin, "infra", "nodes", "--trust", opTrust, "--json").Output()
		if err != nil || json.Unmarshal(out, &ns) != nil {
			t.Fatalf("infra nodes: %v", err)
		}
		byName := map[string]string{}
		for _, n := range ns {
			byName[n.Name] = n.ID
		}
		return byName
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s: timed out", what)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	waitFor("two admitted nodes", func() bool { return len(nodes()) == 2 })
	b := setupBalance(ctx, t, c, 700)
	var pause sync.RWMutex
	wait := b.gateways(ctx, t, 25*time.Millisecond, &pause) // 700 lines in about 18 s

	type jobView struct {
		Scale       map[string]map[string]int `json:"scale"`
		Generations map[string]uint64         `json:"generations"`
	}
	job := func() jobView {
		var j jobView
		out, err := exec.CommandContext(ctx, c.bin, "service", "status", "--trust", b.gridTrust, "--json", "balance").Output()
		if err != nil || json.Unmarshal(out, &j) != nil {
			t.Fatalf("service status: %v", err)
		}
		return j
	}
	parallelism := func() int {
		if p, ok := job().Scale["balance/edge-a"]["win"]; ok {
			return p
		}
		return 1
	}
	out, err := exec.CommandContext(ctx, c.bin, "service", "scale", "balance", "--key", b.grid, "--trust", b.gridTrust,
		"--task", "balance/edge-a", "--operator", "win", "--adaptive", "--min", "1", "--max", "4", "--cooldown", "1s").CombinedOutput()
	if err != nil {
		t.Fatalf("service scale --adaptive: %v\n%s", err, out)
	}
	t.Logf("scale: %s", strings.TrimSpace(string(out)))
	if !strings.Contains(string(out), "keeps its 1 subtasks") {
		t.Fatalf("with one free slot the window should keep 1 subtask:\n%s", out)
	}
	time.Sleep(2 * time.Second)
	// A node the owners' placement rule refuses offers the task nothing.
	c.startWorkerSlots("edge", "nl-rotterdam", 2)
	waitFor("the Dutch node admitted", func() bool { return len(nodes()) == 3 })
	time.Sleep(1500 * time.Millisecond)
	if p, gen := parallelism(), job().Generations["balance/edge-a"]; p != 1 || gen != 0 {
		t.Fatalf("a node the policy refuses rescaled the window to %d (generation %d)", p, gen)
	}
	// A Belgian edge node of 2 slots: 3 slots available.
	extra := c.startWorkerSlots("edge", "be-ghent", 2)
	waitFor("the window at 3 subtasks", func() bool { return parallelism() == 3 })
	t.Logf("admitted %s: the window runs 3 subtasks", extra)
	time.Sleep(4 * time.Second)
	out, err = exec.CommandContext(ctx, c.bin, "infra", "remove", "--key", filepath.Join(c.dir, "orchestrator", "operator.key"), "--trust", opTrust, extra).CombinedOutput()
	if err != nil {
		t.Fatalf("infra remove: %v\n%s", err, out)
	}
	waitFor("the window back at 1 subtask", func() bool { return parallelism() == 1 })
	if gen := job().Generations["balance/edge-a"]; gen != 2 {
		t.Fatalf("edge-a's generation %d after two adaptive rescales, want 2", gen)
	}
	orchLog, _ := os.ReadFile(filepath.Join(c.dir, "logs", "orchestrator.log"))
	if n := strings.Count(string(orchLog), "adaptive rescale"); n != 2 {
		t.Errorf("the orchestrator logged %d adaptive rescales, want 2", n)
	}
	wait()
	b.checkResults(ctx, t)
}
