package demo

import (
	"context"
	"testing"
	"time"
)

// TestSmartGrid runs the whole scenario in one process: attestation,
// approvals and a refusal, sealed ingest, two stages on two attested workers,
// results for the accepted recipient only, a plaintext scan of NATS and the
// owners' audits. Every check must hold.
func TestSmartGrid(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{Dir: t.TempDir(), Readings: 60})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"orchestrator verified before use", "workers admitted by attestation", "balance deployed on nodes every policy allows",
		"unapproved service refused", "results equal a direct computation", "a recipient the owners did not accept gets no output key",
		"infrastructure sees no plaintext", "an injected frame is refused and logged", "alice's audit (meter-h1)", "bob's audit (meter-h2)", "carol's audit (meter-h3)",
	}
	got := map[string]Check{}
	for _, c := range rep.Checks {
		got[c.Name] = c
		if !c.OK {
			t.Errorf("check %q failed: %s", c.Name, c.Detail)
		}
	}
	for _, name := range want {
		if _, ok := got[name]; !ok {
			t.Errorf("check %q was not made", name)
		}
	}
	if !rep.OK {
		t.Error("report not OK")
	}
	if n, _ := rep.Results["feeder_windows"].(int); n != 2*12 {
		t.Errorf("feeder windows = %v, want 24 (2 feeders × 60 s / 5 s)", rep.Results["feeder_windows"])
	}
}
