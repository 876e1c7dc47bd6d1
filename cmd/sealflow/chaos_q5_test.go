package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/nexmark"
)

// q5Run is Nexmark q5 (hot items: bids per auction over 10 s sliding windows,
// then each window's top auctions) deployed as a service over an owner's
// stream of bids, with the rows a failure-free run gives.
type q5Run struct {
	c     *chaosCluster
	key   string
	trust string
	lines []string
	want  []string // canonical JSON rows, sorted
}

const q5BidSchema = "auction:int,bidder:int,price:int,channel:string,url:string,dateTime:int,extra:string"

// setupQ5 registers a bids stream for a new owner, submits and deploys q5
// reading it (provider grid), and computes the expected output by running the
// same JobSpec in this process on the same bids.
func setupQ5(ctx context.Context, t *testing.T, c *chaosCluster, run func(...string) string, grid, gridTrust string, bids int) *q5Run {
	t.Helper()
	q := &q5Run{c: c}
	q.key, q.trust = registerPartyCLI(run, c.ep, c.dir, "owner", "bidding-house")
	pol := writeTestFile(t, filepath.Join(c.dir, "policy-bids.yaml"), "stream: bids\nrules:\n  - name: belgium\n    stage: placement\n    expr: \"node.region.startsWith('be-')\"\n  - name: grid-only\n    stage: recipient\n    expr: \"recipient.name == 'grid-operator'\"\n")
	run("owner", "register-stream", "--key", q.key, "--trust", q.trust, "--stream", "bids", "--schema", q5BidSchema, "--policy", pol)

	spec, err := nexmark.JobSpec("q5", nexmark.QueryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec.Name = "q5"
	for i := range spec.Nodes {
		switch spec.Nodes[i].Params.Stream {
		case nexmark.BidStream:
			spec.Nodes[i].Params.Stream = "bids"
		case nexmark.OutputStream:
			spec.Nodes[i].Params.Stream = "q5-out"
		}
	}
	// The bids: the generator's bid events, in event-time order.
	g, err := nexmark.NewGenerator(nexmark.DefaultConfig(7))
	if err != nil {
		t.Fatal(err)
	}
	enc := record.NewJSONEncoder(nexmark.Schema(nexmark.KindBid))
	var recs []record.Record
	var ev nexmark.Event
	for len(recs) < bids {
		g.Next(&ev)
		if ev.Kind != nexmark.KindBid {
			continue
		}
		var r record.Record
		ev.Record(&r)
		recs = append(recs, r)
		q.lines = append(q.lines, string(enc.Append(nil, &r)))
	}
	var out runtime.Collector
	if _, err := runtime.Run(ctx, spec, runtime.Options{Sources: map[string]runtime.Source{"bids": runtime.SliceSource(recs, 64)},
		Sinks: map[string]runtime.Sink{"q5-out": out.Sink()}}); err != nil {
		t.Fatal(err)
	}
	res, err := spec.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	outEnc := record.NewJSONEncoder(res.Nodes[spec.Nodes[len(spec.Nodes)-1].ID].Out)
	for _, r := range out.Records() {
		q.want = append(q.want, canonicalJSON(t, enc2(outEnc, r)))
	}
	slices.Sort(q.want)
	if len(q.want) == 0 {
		t.Fatal("q5 gives no rows on these bids")
	}

	specJSON, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	var specMap any
	if err := json.Unmarshal(specJSON, &specMap); err != nil {
		t.Fatal(err)
	}
	manifest := map[string]any{
		"id": "q5", "version": 1, "inputs": []string{"bids"}, "outputs": []string{"q5-out"}, "recipients": []string{"grid-operator"},
		"tasks":  []map[string]any{{"id": "q5/main", "stage": "main", "tiers": []string{"regional"}, "reads": []string{"bids"}, "writes": []string{"q5-out"}}},
		"stages": map[string]any{"main": specMap},
	}
	mb, _ := json.Marshal(manifest)
	mf := writeTestFile(t, filepath.Join(c.dir, "q5.yaml"), string(mb))
	var sub struct {
		Result struct {
			Digest string `json:"digest"`
		} `json:"result"`
	}
	if err := json.Unmarshal([]byte(run("service", "submit", "--key", grid, "--trust", gridTrust, "--json", mf)), &sub); err != nil || sub.Result.Digest == "" {
		t.Fatalf("q5 submit: %v %+v", err, sub)
	}
	run("owner", "approve", "--key", q.key, "--trust", q.trust, "--stream", "bids", "--service", sub.Result.Digest)
	run("service", "deploy", "--key", grid, "--trust", gridTrust, "--service", "q5", "--wait=false")
	return q
}

func enc2(e *record.JSONEncoder, r record.Record) []byte { return e.Append(nil, &r) }

// canonicalJSON re-encodes a JSON object with sorted keys.
func canonicalJSON(t *testing.T, b []byte) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("row %s: %v", b, err)
	}
	out, _ := json.Marshal(m)
	return string(out)
}

// gateway publishes the bids through one long-lived `owner publish`, a batch
// of 16 every pace, while pause is not held.
func (q *q5Run) gateway(ctx context.Context, t *testing.T, pace time.Duration, pause *sync.RWMutex) func() {
	t.Helper()
	cmd := exec.CommandContext(ctx, q.c.bin, "owner", "publish", "--key", q.key, "--trust", q.trust, "--stream", "bids",
		"--input", "-", "--time-field", "dateTime", "--nats", q.c.nats.ClientURL(), "--batch", "16")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	logf := q.c.logFile("publish-bids")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		w := bufio.NewWriter(stdin)
		for j, l := range q.lines {
			pause.RLock()
			fmt.Fprintln(w, l)
			if j%16 == 15 {
				_ = w.Flush()
				pause.RUnlock()
				time.Sleep(pace)
				continue
			}
			pause.RUnlock()
		}
		_ = w.Flush()
		_ = stdin.Close()
	})
	return func() {
		wg.Wait()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("owner publish of bids failed: %v", err)
		}
	}
}

// checkResults waits for q5's complete output and compares it row by row
// with the failure-free run's.
func (q *q5Run) checkResults(ctx context.Context, t *testing.T, grid, gridTrust string) {
	t.Helper()
	var out string
	deadline := time.Now().Add(3 * time.Minute)
	for {
		o, err := exec.CommandContext(ctx, q.c.bin, "service", "results", "--key", grid, "--trust", gridTrust, "--job", "q5", "--nats", q.c.nats.ClientURL()).Output()
		if err == nil {
			out = string(o)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no complete q5 results: %v", err)
		}
		time.Sleep(time.Second)
	}
	var got []string
	for l := range strings.Lines(out) {
		if l = strings.TrimSpace(l); l != "" {
			got = append(got, canonicalJSON(t, []byte(l)))
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, q.want) {
		missing, extra := diffSorted(q.want, got)
		t.Errorf("q5 output differs from the failure-free run: %d rows, want %d; %d missing (e.g. %v), %d extra (e.g. %v)", len(got), len(q.want), len(missing), head(missing), len(extra), head(extra))
	}
}

// diffSorted returns what a has and b lacks, and what b has and a lacks, as
// multisets of sorted slices.
func diffSorted(a, b []string) (onlyA, onlyB []string) {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || i < len(a) && a[i] < b[j]:
			onlyA = append(onlyA, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			onlyB = append(onlyB, b[j])
			j++
		default:
			i++
			j++
		}
	}
	return onlyA, onlyB
}

func head(s []string) []string { return s[:min(len(s), 3)] }
