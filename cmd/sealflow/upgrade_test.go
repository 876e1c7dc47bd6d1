package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestUpgradeCarriesStateExactly upgrades the running balance job to version
// 2 (a stateless step added in the regional stage) while the gateways
// publish: before the owners approve, the upgrade is refused naming them and
// version 1 keeps running; after, the job switches through a savepoint and
// the output is exactly the failure-free result (window sums carried across).
func TestUpgradeCarriesStateExactly(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts several processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := newChaosCluster(ctx, t, [2]string{"edge", "be-antwerp"}, [2]string{"edge", "be-ghent"}, [2]string{"regional", "be-flanders"})
	b := setupBalance(ctx, t, c, 900)
	var pause sync.RWMutex
	wait := b.gateways(ctx, t, 25*time.Millisecond, &pause)

	v1, err := os.ReadFile(exampleFile(t, "smartgrid/balance.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	v2 := strings.Replace(string(v1), "version: 1", "version: 2", 1)
	v2 = strings.Replace(v2, "        - {id: out, kind: sink, inputs: [w], params: {stream: balance-out}}",
		"        - {id: same, kind: map, inputs: [w], params: {fields: [{name: window_start}, {name: window_end}, {name: kwh, expr: \"kwh * 1.0\"}]}}\n"+
			"        - {id: out, kind: sink, inputs: [same], params: {stream: balance-out}}", 1)
	if v2 == string(v1) || !strings.Contains(v2, "id: same") {
		t.Fatal("could not derive version 2 from the example manifest")
	}
	v2File := filepath.Join(c.dir, "balance-v2.yaml")
	if err := os.WriteFile(v2File, []byte(v2), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	upgrade := func() ([]byte, error) {
		return exec.CommandContext(ctx, c.bin, "service", "upgrade", "--key", b.grid, "--trust", b.gridTrust, "--json", "--wait=false", "--nats", c.nats.ClientURL(), v2File).Output()
	}
	out, err := upgrade()
	var pending struct {
		Rule    string `json:"rule"`
		Digest  string `json:"digest"`
		Pending []struct {
			Stream string `json:"stream"`
		} `json:"pending"`
	}
	if err == nil || json.Unmarshal(out, &pending) != nil || pending.Rule != "approval.pending" || len(pending.Pending) != 2 || pending.Digest == "" {
		t.Fatalf("upgrade before the owners approved: %v\n%s", err, out)
	}
	status := func() string {
		var st struct {
			Digest string `json:"digest"`
		}
		o, err := exec.CommandContext(ctx, c.bin, "service", "status", "--trust", b.gridTrust, "--json", "balance").Output()
		if err != nil || json.Unmarshal(o, &st) != nil {
			t.Fatalf("service status: %v", err)
		}
		return st.Digest
	}
	if status() == pending.Digest {
		t.Fatal("version 2 runs before its owners approved it")
	}
	for _, o := range b.owners {
		b.run("owner", "approve", "--key", o.key, "--trust", o.trust, "--stream", "meter-"+o.id, "--service", pending.Digest)
	}
	out, err = upgrade()
	if err != nil {
		t.Fatalf("upgrade after the approvals: %v\n%s", err, out)
	}
	if status() != pending.Digest {
		t.Fatal("the job does not run version 2 after the upgrade")
	}
	t.Logf("upgraded: %s", out)
	wait()
	b.checkResults(ctx, t)
}
