package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSavepointStopAndDeployAgain stops the running balance job with a
// savepoint while the gateways publish, and deploys it again from the
// savepoint: the tasks restore their state and positions, and the output is
// exactly the failure-free result (nothing the stopped run produced after its
// last accepted checkpoint is committed; nothing is lost).
func TestSavepointStopAndDeployAgain(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts several processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := newChaosCluster(ctx, t, [2]string{"edge", "be-antwerp"}, [2]string{"edge", "be-ghent"}, [2]string{"regional", "be-flanders"})
	b := setupBalance(ctx, t, c, 600)
	var pause sync.RWMutex
	wait := b.gateways(ctx, t, 20*time.Millisecond, &pause) // 600 lines in about 12 s

	time.Sleep(4 * time.Second)
	// A savepoint needs every task's first accepted checkpoint.
	var stopOut []byte
	if err := waitUntil(ctx, 30*time.Second, func() bool {
		out, err := exec.CommandContext(ctx, c.bin, "service", "stop", "--key", b.grid, "--trust", b.gridTrust, "--json", "--savepoint", "--name", "mid-run", "balance").CombinedOutput()
		stopOut = out
		return err == nil
	}); err != nil {
		t.Fatalf("service stop --savepoint: %s", stopOut)
	}
	var stopped struct {
		Result struct {
			Savepoint struct {
				Name  string            `json:"name"`
				Tasks map[string]uint64 `json:"tasks"`
			} `json:"savepoint"`
		} `json:"result"`
	}
	if err := json.Unmarshal(stopOut, &stopped); err != nil || stopped.Result.Savepoint.Name != "mid-run" || len(stopped.Result.Savepoint.Tasks) != 3 {
		t.Fatalf("stop result: %v %s", err, stopOut)
	}
	t.Logf("stopped with savepoint %+v", stopped.Result.Savepoint)
	list := b.run("service", "savepoints", "--trust", b.gridTrust)
	if !strings.Contains(list, "mid-run") {
		t.Fatalf("service savepoints does not list mid-run:\n%s", list)
	}
	// The job is gone; the gateways keep publishing meanwhile.
	time.Sleep(3 * time.Second)
	b.run("service", "deploy", "--key", b.grid, "--trust", b.gridTrust, "--service", "balance", "--from-savepoint", "mid-run", "--wait=false")
	wait()
	b.checkResults(ctx, t)
}
