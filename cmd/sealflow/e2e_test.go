package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestEndToEndAcrossProcesses runs the product as a user would: `sealflow up`
// starts NATS, the orchestrator and three workers as separate processes; the
// parties use only the CLI: keygen, verify, register, publish sealed records,
// submit a two-stage service, approve, deploy, fetch and decrypt the results,
// and audit the log.
func TestEndToEndAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts five processes")
	}
	dir := t.TempDir()
	bin := sealflowBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ep := startUp(ctx, t, bin, dir, "--workers", "3")
	run := sealflowRunner(ctx, t, bin)
	file := func(name, content string) string { return writeTestFile(t, filepath.Join(dir, name), content) }
	party := func(role, name string) (key, trust string) { return registerPartyCLI(run, ep, dir, role, name) }

	grid, gridTrust := party("provider", "grid-operator")
	type owner struct{ id, key, trust string }
	var owners []owner
	want := map[string]float64{} // window start → kWh
	start := int64(1764057600000)
	for i, id := range []string{"a", "b"} {
		k, tr := party("owner", "owner-"+id)
		owners = append(owners, owner{id, k, tr})
		pol := file("policy-"+id+".yaml", fmt.Sprintf(`stream: meter-%s
rules:
  - name: belgium
    stage: placement
    expr: "node.region.startsWith('be-')"
  - name: grid-only
    stage: recipient
    expr: "recipient.name == 'grid-operator'"
`, id))
		run("owner", "register-stream", "--key", k, "--trust", tr, "--stream", "meter-"+id, "--schema", "household:string,kwh:float,ts:int", "--policy", pol)
		var lines strings.Builder
		for j := 0; j < 40; j++ {
			ts := start + int64(j)*1000
			kwh := float64((i+1)*(j%7+1)) / 8
			want[fmt.Sprint(ts-ts%5000)] += kwh
			fmt.Fprintf(&lines, `{"household": "house-%s", "kwh": %g, "ts": %d}`+"\n", id, kwh, ts)
		}
		run("owner", "publish", "--key", k, "--trust", tr, "--stream", "meter-"+id, "--input", file("meter-"+id+".jsonl", lines.String()), "--time-field", "ts", "--nats", ep.NATSURL, "--pad", "4096")
	}

	manifest := exampleFile(t, "smartgrid/balance.yaml")
	var sub struct {
		Result struct {
			Digest string `json:"digest"`
		} `json:"result"`
	}
	if err := json.Unmarshal([]byte(run("service", "submit", "--key", grid, "--trust", gridTrust, "--json", manifest)), &sub); err != nil || sub.Result.Digest == "" {
		t.Fatalf("service submit: %v %+v", err, sub)
	}
	for _, o := range owners {
		run("owner", "approve", "--key", o.key, "--trust", o.trust, "--stream", "meter-"+o.id, "--service", sub.Result.Digest)
	}
	run("service", "deploy", "--key", grid, "--trust", gridTrust, "--service", "balance")

	// Results appear once the tasks have drained the sealed streams.
	var out string
	deadline := time.Now().Add(2 * time.Minute)
	for {
		c := exec.CommandContext(ctx, bin, "service", "results", "--key", grid, "--trust", gridTrust, "--job", "balance", "--nats", ep.NATSURL)
		b, err := c.Output()
		if err == nil {
			out = string(b)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no complete results: %v", err)
		}
		time.Sleep(time.Second)
	}
	got := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var row struct {
			WindowStart int64   `json:"window_start"`
			KWh         float64 `json:"kwh"`
		}
		if err := json.Unmarshal(sc.Bytes(), &row); err != nil {
			t.Fatalf("result line %q: %v", sc.Text(), err)
		}
		got[fmt.Sprint(row.WindowStart)] += row.KWh
	}
	if len(got) != len(want) {
		t.Fatalf("got %d windows, want %d:\n%s", len(got), len(want), out)
	}
	for w, v := range want {
		if math.Abs(got[w]-v) > 1e-9 {
			t.Errorf("window %s: got %v kWh, want %v", w, got[w], v)
		}
	}
	// The workers' signed status reports: every task finished, with records.
	var st struct {
		Status []struct {
			Task      string `json:"task"`
			State     string `json:"state"`
			RecordsIn int64  `json:"records_in"`
		} `json:"status"`
	}
	if err := waitUntil(ctx, 30*time.Second, func() bool {
		if json.Unmarshal([]byte(run("service", "status", "--trust", gridTrust, "--json", "balance")), &st) != nil || len(st.Status) != 3 {
			return false
		}
		for _, t := range st.Status {
			if t.State != "finished" || t.RecordsIn == 0 {
				return false
			}
		}
		return true
	}); err != nil {
		t.Errorf("service status never showed 3 finished tasks with records: %+v", st)
	}
	// Another provider is not a recipient: no key, no results.
	other, otherTrust := party("provider", "adcorp")
	c := exec.CommandContext(ctx, bin, "service", "results", "--key", other, "--trust", otherTrust, "--job", "balance", "--nats", ep.NATSURL)
	if b, err := c.CombinedOutput(); err == nil || !strings.Contains(string(b), "refused") {
		t.Errorf("a party that is no recipient got results or no refusal: %v\n%s", err, b)
	}
	audit := run("audit", "--key", owners[0].key, "--trust", owners[0].trust, "--stream", "meter-a")
	if !strings.Contains(audit, "key.released") || !strings.Contains(audit, "proof ok") {
		t.Errorf("audit output lacks proven key releases:\n%s", audit)
	}
}

func waitUntil(ctx context.Context, d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not after %v", d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}
