package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/nexmark"
)

func TestNexmarkGen(t *testing.T) {
	var out bytes.Buffer
	if err := nexmarkGen(context.Background(), []string{"--events", "500", "--seed", "3"}, &out); err != nil {
		t.Fatal(err)
	}
	evs, err := nexmark.ReadEvents(bytes.NewReader(out.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := nexmark.Generate(nexmark.DefaultConfig(3), 500)
	if len(evs) != 500 {
		t.Fatalf("%d events, want 500", len(evs))
	}
	for i := range want {
		if evs[i] != want[i] {
			t.Fatalf("event %d: CLI wrote %+v, generator made %+v", i, evs[i], want[i])
		}
	}
	for _, bad := range [][]string{{"--events", "-1"}, {"extra"}, {"--rate", "-5"}} {
		if err := nexmarkGen(context.Background(), bad, &out); !errors.Is(err, errUsage) {
			t.Errorf("nexmark gen %s: error %v, want a usage error", strings.Join(bad, " "), err)
		}
	}
}

// readRows reads result rows written by nexmark run as a Result of cols;
// numbers in the columns that are floats in like are read as floats.
func readRows(t *testing.T, path string, cols []string, like nexmark.Result) nexmark.Result {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	res := nexmark.Result{Columns: cols}
	for line := range strings.Lines(string(data)) {
		var m map[string]any
		dec := json.NewDecoder(strings.NewReader(line))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("row %q: %v", line, err)
		}
		if len(m) != len(cols) {
			t.Fatalf("row %q has %d columns, want %v", line, len(m), cols)
		}
		var vals []record.Value
		for _, c := range cols {
			switch v := m[c].(type) {
			case json.Number:
				if i, err := v.Int64(); err == nil && like.Rows[0][len(vals)].T == record.TypeInt {
					vals = append(vals, record.Int(i))
				} else {
					f, _ := v.Float64()
					vals = append(vals, record.Float(f))
				}
			case string:
				vals = append(vals, record.String(v))
			default:
				t.Fatalf("row %q: column %q is %T", line, c, v)
			}
		}
		res.Rows = append(res.Rows, vals)
	}
	return res
}

func TestNexmarkRun(t *testing.T) {
	dir := t.TempDir()
	input := filepath.Join(dir, "events.jsonl")
	var gen bytes.Buffer
	if err := nexmarkGen(context.Background(), []string{"--events", "20000", "--seed", "4"}, &gen); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(input, gen.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	events, _ := nexmark.Generate(nexmark.DefaultConfig(4), 20000)
	for _, tc := range []struct {
		query string
		args  []string
	}{
		{"q1", []string{"--events", "20000", "--seed", "4", "--plaintext", "--no-chain"}},
		{"q5", []string{"--input", input, "--parallelism", "2", "--max-out-of-order", "1s"}},
		{"q3", []string{"--events", "20000", "--seed", "4", "--parallelism", "2"}},
		{"q2", []string{"--events", "20000", "--seed", "4", "--pace", "100000"}},
	} {
		out := filepath.Join(dir, tc.query+".jsonl")
		var summary bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := nexmarkRun(ctx, append([]string{"--query", tc.query, "--out", out}, tc.args...), &summary)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", tc.query, err)
		}
		var s map[string]any
		if err := json.Unmarshal(summary.Bytes(), &s); err != nil {
			t.Fatalf("%s: summary %q: %v", tc.query, summary.String(), err)
		}
		for _, k := range []string{"query", "events", "wall_seconds", "cpu_seconds", "events_per_second", "peak_rss_bytes"} {
			if _, ok := s[k]; !ok {
				t.Errorf("%s: summary %s lacks %q", tc.query, summary.String(), k)
			}
		}
		if s["query"] != tc.query || s["events"] != float64(20000) || s["peak_rss_bytes"].(float64) <= 0 || (slices.Contains(tc.args, "--no-chain") && s["frames"].(float64) <= 0) {
			t.Errorf("%s: summary %s", tc.query, summary.String())
		}
		// Sealing's CPU time: timed in sealed runs, none in plaintext.
		timed, _ := s["seal_timed"].(bool)
		if seal, _ := s["seal_cpu_seconds"].(float64); timed == slices.Contains(tc.args, "--plaintext") || (!timed && seal != 0) {
			t.Errorf("%s: summary %s: seal_timed %t, seal_cpu_seconds %g", tc.query, summary.String(), timed, seal)
		}
		if _, ok := s["latency_p99_ms"]; ok != slices.Contains(tc.args, "--pace") {
			t.Errorf("%s: summary %s: latency reported %v, want it only for paced runs", tc.query, summary.String(), ok)
		}
		evs := events
		if slices.Contains(tc.args, "--pace") { // pacing sets the event-time rate
			evs, _ = nexmark.Generate(nexmark.Config{Seed: 4, EventsPerSecond: 100000}, 20000)
		}
		want, _ := nexmark.Reference(tc.query, evs)
		if d := nexmark.Diff(want, readRows(t, out, nexmark.Columns(tc.query), want), 5); d != "" {
			t.Errorf("%s: %s", tc.query, d)
		}
	}
	// A malformed line fails the run with an error naming the file and line.
	bad := filepath.Join(dir, "bad.jsonl")
	if err := os.WriteFile(bad, append(gen.Bytes(), `{"type":"bid","auction":"x"}`+"\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	err := nexmarkRun(context.Background(), []string{"--query", "q0", "--out", filepath.Join(dir, "bad.out"), "--input", bad}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--input "+bad) || !strings.Contains(err.Error(), `line 20001: malformed bid event: field "auction"`) {
		t.Errorf("nexmark run over a malformed line: error %v, want one naming the file, line and field", err)
	}
	if err := nexmarkRun(context.Background(), []string{"--query", "q0", "--out", filepath.Join(dir, "bad.out"), "--input", filepath.Join(dir, "absent")}, io.Discard); err == nil {
		t.Error("nexmark run over a missing --input file succeeded")
	}
	for _, bad := range [][]string{{"--query", "q99", "--out", "x"}, {"--query", "q1"}, {"--query", "q1", "--out", "x", "--parallelism", "0"},
		{"--query", "q1", "--out", "x", "--max-out-of-order", "-1s"},
		{"--query", "q1", "--out", "x", "--pace", "1000", "--input", "f"}} {
		if err := nexmarkRun(context.Background(), bad, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("nexmark run %s: error %v, want a usage error", strings.Join(bad, " "), err)
		}
	}
}
