// Command benthosq runs a Nexmark query (q0, q1 or q2) on Benthos over a
// JSON-lines file of events, as written by "sealflow nexmark gen", writes the
// result rows as JSON lines and prints a one-line JSON summary with the CPU
// seconds the run took (getrusage, user+system, of this process, around the
// stream only).
//
//	benthosq --query q1 --input events.jsonl --out rows.jsonl
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"syscall"
	"time"

	_ "github.com/redpanda-data/benthos/v4/public/components/io"
	_ "github.com/redpanda-data/benthos/v4/public/components/pure"
	"github.com/redpanda-data/benthos/v4/public/service"
)

// mappings are the Nexmark queries as bloblang mappings over one event a
// message; events that are not bids, or bids filtered out, are deleted.
var mappings = map[string]string{
	"q0": `root = if this.type == "bid" { this.without("type") } else { deleted() }`,
	"q1": `root = if this.type == "bid" { {"auction": this.auction, "bidder": this.bidder, "price": this.price * 0.908, "dateTime": this.dateTime, "extra": this.extra} } else { deleted() }`,
	"q2": `root = if this.type == "bid" && this.auction % 123 == 0 { {"auction": this.auction, "price": this.price} } else { deleted() }`,
}

// summary is the one-line JSON summary benthosq prints.
type summary struct {
	Engine      string  `json:"engine"`
	Query       string  `json:"query"`
	Threads     int     `json:"threads"`
	WallSeconds float64 `json:"wall_seconds"`
	CPUSeconds  float64 `json:"cpu_seconds"`
	PeakRSS     int64   `json:"peak_rss_bytes"`
}

func main() {
	query := flag.String("query", "q1", "query: q0, q1 or q2")
	input := flag.String("input", "", "JSON-lines events file (sealflow nexmark gen)")
	out := flag.String("out", "", "file to write result rows to, as JSON lines")
	threads := flag.Int("threads", -1, "Benthos pipeline threads (-1: one per CPU)")
	flag.Parse()
	if err := run(context.Background(), *query, *input, *out, *threads); err != nil {
		fmt.Fprintf(os.Stderr, "benthosq: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, query, input, out string, threads int) error {
	mapping, ok := mappings[query]
	switch {
	case !ok:
		return fmt.Errorf("--query %q: want q0, q1 or q2", query)
	case input == "" || out == "":
		return fmt.Errorf("--input and --out are required")
	}
	cfg := map[string]any{
		"input": map[string]any{"file": map[string]any{
			"paths": []string{input}, "scanner": map[string]any{"lines": map[string]any{"max_buffer_size": 1 << 20}},
		}},
		"pipeline": map[string]any{"threads": threads, "processors": []any{map[string]any{"mapping": mapping}}},
		"output":   map[string]any{"file": map[string]any{"path": out, "codec": "lines"}},
		"logger":   map[string]any{"level": "WARN"},
		"http":     map[string]any{"enabled": false},
	}
	yaml, err := json.Marshal(cfg) // JSON is YAML
	if err != nil {
		return err
	}
	b := service.NewStreamBuilder()
	if err := b.SetYAML(string(yaml)); err != nil {
		return fmt.Errorf("benthos config: %w", err)
	}
	stream, err := b.Build()
	if err != nil {
		return fmt.Errorf("benthos build: %w", err)
	}
	cpu0, _ := rusage()
	start := time.Now()
	if err := stream.Run(ctx); err != nil {
		return fmt.Errorf("benthos run: %w", err)
	}
	wall := time.Since(start).Seconds()
	cpu1, rss := rusage()
	if threads < 1 {
		threads = runtime.NumCPU()
	}
	line, _ := json.Marshal(summary{Engine: "benthos v4.60.0", Query: query, Threads: threads, WallSeconds: wall, CPUSeconds: cpu1 - cpu0, PeakRSS: rss})
	slog.Debug("done", "query", query)
	fmt.Println(string(line))
	return nil
}

// rusage returns this process's user+system CPU seconds and peak RSS bytes.
func rusage() (float64, int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime), ru.Maxrss * 1024
}
