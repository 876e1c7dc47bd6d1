package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// fakeRun is one call of a fake launcher, parsed from its args.
type fakeRun struct {
	query           string
	events, pace    int64
	sealed, noChain bool
	out             string
}

func parseFakeArgs(t *testing.T, args []string) fakeRun {
	if len(args) < 2 || args[0] != "nexmark" || args[1] != "run" {
		t.Fatalf("launched %q, want nexmark run", args)
	}
	r := fakeRun{sealed: true}
	for i := 2; i < len(args); i++ {
		switch args[i] {
		case "--plaintext":
			r.sealed = false
		case "--no-chain":
			r.noChain = true
		case "--query":
			i++
			r.query = args[i]
		case "--events":
			i++
			r.events, _ = strconv.ParseInt(args[i], 10, 64)
		case "--pace":
			i++
			r.pace, _ = strconv.ParseInt(args[i], 10, 64)
		case "--out":
			i++
			r.out = args[i]
		case "--seed", "--parallelism":
			i++
		default:
			t.Fatalf("unexpected argument %q in %q", args[i], args)
		}
	}
	return r
}

// fakeLauncher answers like "nexmark run": sealed runs take cpuSealed
// CPU-seconds per call in turn, plaintext runs 1 s; rows are written to
// --out, with a different row where bad says so.
func fakeLauncher(t *testing.T, calls *[]fakeRun, cpuSealed []float64, bad func(fakeRun) bool) Launcher {
	n := 0
	return func(ctx context.Context, args []string) ([]byte, error) {
		r := parseFakeArgs(t, args)
		*calls = append(*calls, r)
		rows := fmt.Sprintf("{\"q\":%q,\"n\":1}\n{\"q\":%q,\"n\":2}\n", r.query, r.query)
		if bad != nil && bad(r) {
			rows = fmt.Sprintf("{\"q\":%q,\"n\":2}\n{\"q\":%q,\"n\":3}\n", r.query, r.query)
		} else if len(*calls)%2 == 0 {
			rows = fmt.Sprintf("{\"q\":%q,\"n\":2}\n{\"q\":%q,\"n\":1}\n", r.query, r.query) // other order, same rows
		}
		if r.out != os.DevNull {
			if err := os.WriteFile(r.out, []byte(rows), 0o644); err != nil {
				return nil, err
			}
		}
		s := Summary{Query: r.query, Events: r.events, Rows: 2, Sealed: r.sealed, CPUSeconds: 1, WallSeconds: 0.5,
			EventsPerSecond: float64(r.events) / 0.5, PeakRSSBytes: 1 << 20}
		if r.sealed && r.pace == 0 {
			s.CPUSeconds = cpuSealed[n%len(cpuSealed)]
			n++
		}
		if r.sealed {
			// A twentieth of a sealed run's CPU time goes to sealing.
			s.Frames, s.SealCPUSeconds, s.SealTimed = 10, s.CPUSeconds/20, true
		}
		if r.pace > 0 {
			s.LatencyP50Ms, s.LatencyP99Ms = 3, 9
		}
		b, _ := json.Marshal(s)
		return append([]byte("starting\n"), append(b, '\n')...), nil
	}
}

func TestSuite(t *testing.T) {
	var calls []fakeRun
	o := Options{Queries: []string{"q1", "q5"}, Events: 1000, Runs: 3, NoChain: true, LatencySeconds: 2, Dir: t.TempDir(),
		Launch: fakeLauncher(t, &calls, []float64{2, 4, 1}, nil)}
	r, err := Suite(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	// 2 queries × 2 modes × 3 runs × sealed and plaintext, then 2 latency runs per query.
	if want := 2*2*3*2 + 2*2; len(calls) != want {
		t.Fatalf("%d runs, want %d", len(calls), want)
	}
	// Alternation: run 1 sealed first, run 2 plaintext first, run 3 sealed first.
	var order []bool
	for _, c := range calls[:6] {
		order = append(order, c.sealed)
	}
	if want := []bool{true, false, false, true, true, false}; !slices.Equal(order, want) {
		t.Errorf("sealed order of q1's first runs %v, want %v", order, want)
	}
	if len(r.Cases) != 4 || r.Cases[0].NoChain || !r.Cases[1].NoChain || r.Cases[2].Query != "q5" {
		t.Fatalf("cases %+v, want q1 chained, q1 every edge, q5 chained, q5 every edge", r.Cases)
	}
	c := r.Cases[0]
	// Sealed CPU-seconds 2, 4, 1: median 2, so 500 events/s per core; plaintext 1000.
	if s := c.Stats(true); s.CPUSeconds != 2 || s.PerCore != 500 {
		t.Errorf("sealed stats %+v, want median CPU 2 s, 500 events/s per core", s)
	}
	if got := c.Ratio(); got != 0.5 {
		t.Errorf("ratio %g, want 0.5", got)
	}
	if sh, ok := c.SealShare(); !ok || sh != 0.05 {
		t.Errorf("sealing's share %g (measured %t), want 0.05", sh, ok)
	}
	// Latency runs: chained only, paced at half the median wall rate (2000/s), for 2 s.
	var paced []fakeRun
	for _, cl := range calls {
		if cl.pace > 0 {
			paced = append(paced, cl)
		}
	}
	if len(paced) != 4 || paced[0].pace != 1000 || paced[0].events != 2000 || paced[0].noChain || paced[0].out != os.DevNull {
		t.Errorf("paced runs %+v, want 4 chained at 1000 events/s for 2000 events to %s", paced, os.DevNull)
	}
	if c.SealedLatency == nil || c.SealedLatency.LatencyP99Ms != 9 || r.Cases[1].SealedLatency != nil {
		t.Errorf("latency of chained %+v / every edge %+v", c.SealedLatency, r.Cases[1].SealedLatency)
	}
	if r.RowChecks != 24 || len(r.Mismatches) != 0 {
		t.Errorf("row checks %d, mismatches %v; want 24 and none", r.RowChecks, r.Mismatches)
	}
	if left, _ := os.ReadDir(o.Dir); len(left) != 0 {
		t.Errorf("row files left behind: %v", left)
	}
}

func TestSuiteRowsDiffer(t *testing.T) {
	var calls []fakeRun
	bad := func(r fakeRun) bool { return r.query == "q5" && r.noChain && !r.sealed }
	r, err := Suite(context.Background(), Options{Queries: []string{"q2", "q5"}, Events: 100, Runs: 1, NoChain: true,
		Launch: fakeLauncher(t, &calls, []float64{1}, bad)})
	if !errors.Is(err, ErrRowsDiffer) {
		t.Fatalf("Suite error %v, want ErrRowsDiffer", err)
	}
	if r == nil || len(r.Mismatches) != 1 || !strings.Contains(r.Mismatches[0], "q5 no-chain plaintext") {
		t.Fatalf("mismatches %v, want the one of q5 no-chain plaintext", r.Mismatches)
	}
	if md := r.Markdown(MarkdownOptions{}); !strings.Contains(md, "Rows differed") {
		t.Errorf("Markdown does not report the mismatch:\n%s", md)
	}
}

func TestSuiteRefusesBadOptions(t *testing.T) {
	var calls []fakeRun
	launch := fakeLauncher(t, &calls, []float64{1}, nil)
	for _, o := range []Options{
		{Events: 10},
		{Launch: launch},
		{Launch: launch, Events: 10, Runs: -1},
		{Launch: launch, Events: 10, LatencySeconds: -1},
	} {
		if _, err := Suite(context.Background(), o); err == nil {
			t.Errorf("Suite(%+v) succeeded", o)
		}
	}
	if len(calls) != 0 {
		t.Errorf("refused options still launched %d runs", len(calls))
	}
}

func TestSuiteLaunchError(t *testing.T) {
	launch := func(ctx context.Context, args []string) ([]byte, error) { return []byte("{\"query\":\"q9\"}"), nil }
	_, err := Suite(context.Background(), Options{Launch: launch, Queries: []string{"q1"}, Events: 10, Runs: 1})
	if err == nil || !strings.Contains(err.Error(), "summarized query q9") {
		t.Fatalf("Suite error %v, want one about the summary of another query", err)
	}
}
