// Command beamq runs Nexmark q5 and q7 with the Apache Beam Go SDK on the
// Prism runner, started in this process (loopback workers), over the same
// JSON-lines events file that `sealflow nexmark run --input` reads, and
// writes the rows as JSON lines with sealflow's column names, so that rowcmp
// can check both outputs hold the same rows.
//
//	beamq --query q5 --input events.jsonl --out rows.jsonl
//
// Event time is each bid's dateTime (milliseconds since the epoch); windows
// are epoch-aligned and half-open as in sealflow's nexmark package:
//
//   - q5: sliding windows of 10 s every 2 s; bids per auction per window,
//     then per window every auction whose count is the window's maximum
//     (ties all reported): auction, num, window_start, window_end.
//   - q7: tumbling windows of 10 s; per window every bid whose price is the
//     window's highest (ties all reported): auction, price, bidder,
//     dateTime, extra.
//
// Each row is written once, when the input (bounded) ends and the watermark
// passes the window; the default trigger fires once per window.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/mtime"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/window"
	_ "github.com/apache/beam/sdks/v2/go/pkg/beam/io/filesystem/local"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/io/textio"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/transforms/stats"
)

// Window sizes of sealflow's nexmark q5 and q7 (nexmark.Q5WindowSize,
// Q5WindowSlide, Q7WindowSize), in milliseconds.
const (
	q5Size  = 10_000
	q5Slide = 2_000
	q7Size  = 10_000
)

// Bid is the part of a Nexmark bid event that q5 and q7 read.
type Bid struct {
	Auction  int64  `json:"auction"`
	Bidder   int64  `json:"bidder"`
	Price    int64  `json:"price"`
	DateTime int64  `json:"dateTime"`
	Extra    string `json:"extra"`
}

// AuctionCount is the number of bids of one auction in one q5 window.
type AuctionCount struct {
	Auction int64
	Num     int64
}

// q5Row is one output row of q5.
type q5Row struct {
	Auction     int64 `json:"auction"`
	Num         int64 `json:"num"`
	WindowStart int64 `json:"window_start"`
	WindowEnd   int64 `json:"window_end"`
}

const bidPrefix = `{"type":"bid"`

// parseBid decodes the bid lines of the file (other event kinds are
// skipped) and emits each bid with its dateTime as event time.
func parseBid(line string, emit func(beam.EventTime, Bid)) error {
	if !strings.HasPrefix(line, bidPrefix) {
		return nil
	}
	var b Bid
	if err := json.Unmarshal([]byte(line), &b); err != nil {
		return fmt.Errorf("bid line %q: %w", line, err)
	}
	emit(mtime.FromMilliseconds(b.DateTime), b)
	return nil
}

// bidAuction is q5's projection to the auction id.
func bidAuction(b Bid) int64 { return b.Auction }

// byWindowStart keys a q5 count by the start of the sliding window it was
// counted in, so that the next combine sees each window's counts together.
func byWindowStart(w beam.Window, auction int64, n int) (int64, AuctionCount) {
	return int64(w.(window.IntervalWindow).Start), AuctionCount{Auction: auction, Num: int64(n)}
}

// TopCounts keeps the auctions with the highest count of one window.
type TopCounts struct {
	Num      int64
	Auctions []int64
}

// topCountsFn combines a window's auction counts into the auctions whose
// count is the window's maximum.
type topCountsFn struct{}

func (topCountsFn) CreateAccumulator() TopCounts { return TopCounts{} }

func (topCountsFn) AddInput(a TopCounts, c AuctionCount) TopCounts {
	switch {
	case c.Num > a.Num:
		return TopCounts{Num: c.Num, Auctions: []int64{c.Auction}}
	case c.Num == a.Num:
		a.Auctions = append(a.Auctions, c.Auction)
	}
	return a
}

func (topCountsFn) MergeAccumulators(a, b TopCounts) TopCounts {
	switch {
	case b.Num > a.Num:
		return b
	case b.Num == a.Num:
		a.Auctions = append(a.Auctions, b.Auctions...)
	}
	return a
}

// q5Rows writes one JSON row per top auction of a window.
func q5Rows(start int64, t TopCounts, emit func(string)) error {
	for _, a := range t.Auctions {
		line, err := json.Marshal(q5Row{Auction: a, Num: t.Num, WindowStart: start, WindowEnd: start + q5Size})
		if err != nil {
			return err
		}
		emit(string(line))
	}
	return nil
}

// TopBids keeps the bids with the highest price of one q7 window.
type TopBids struct {
	Price int64
	Bids  []Bid
}

// topBidsFn combines a window's bids into those with its highest price.
type topBidsFn struct{}

func (topBidsFn) CreateAccumulator() TopBids { return TopBids{Price: -1 << 63} }

func (topBidsFn) AddInput(a TopBids, b Bid) TopBids {
	switch {
	case len(a.Bids) == 0 || b.Price > a.Price:
		return TopBids{Price: b.Price, Bids: []Bid{b}}
	case b.Price == a.Price:
		a.Bids = append(a.Bids, b)
	}
	return a
}

func (topBidsFn) MergeAccumulators(a, b TopBids) TopBids {
	switch {
	case len(b.Bids) == 0:
		return a
	case len(a.Bids) == 0 || b.Price > a.Price:
		return b
	case b.Price == a.Price:
		a.Bids = append(a.Bids, b.Bids...)
	}
	return a
}

// q7Rows writes one JSON row per top bid of a window (key is a constant).
func q7Rows(_ int, t TopBids, emit func(string)) error {
	for _, b := range t.Bids {
		line, err := json.Marshal(b)
		if err != nil {
			return err
		}
		emit(string(line))
	}
	return nil
}

// withZeroKey keys every bid by 0, so that the per-key combine is one per
// window (with combiner lifting, partial combines run per bundle first).
func withZeroKey(b Bid) (int, Bid) { return 0, b }

func init() {
	register.Function2x1(parseBid)
	register.Emitter2[beam.EventTime, Bid]()
	register.Function1x1(bidAuction)
	register.Function3x2(byWindowStart)
	register.Combiner2[TopCounts, AuctionCount](&topCountsFn{})
	register.Function3x1(q5Rows)
	register.Combiner2[TopBids, Bid](&topBidsFn{})
	register.Function3x1(q7Rows)
	register.Emitter1[string]()
	register.Function1x2(withZeroKey)
}

// build adds query's transforms, from input to out, to the pipeline.
func build(s beam.Scope, query, input, out string) error {
	lines := textio.Read(s, input)
	bids := beam.ParDo(s, parseBid, lines)
	var rows beam.PCollection
	switch query {
	case "q5":
		w := beam.WindowInto(s, window.NewSlidingWindows(q5Slide*time.Millisecond, q5Size*time.Millisecond), bids)
		counts := stats.Count(s, beam.ParDo(s, bidAuction, w)) // KV<auction, int>
		top := beam.CombinePerKey(s, &topCountsFn{}, beam.ParDo(s, byWindowStart, counts))
		rows = beam.ParDo(s, q5Rows, top)
	case "q7":
		w := beam.WindowInto(s, window.NewFixedWindows(q7Size*time.Millisecond), bids)
		top := beam.CombinePerKey(s, &topBidsFn{}, beam.ParDo(s, withZeroKey, w))
		rows = beam.ParDo(s, q7Rows, top)
	default:
		return fmt.Errorf("unknown query %q (want q5 or q7)", query)
	}
	// textio.Write groups by a fixed key to write one file: in the global
	// window, so that it is written once and not once per window.
	textio.Write(s, out, beam.WindowInto(s, window.NewGlobalWindows(), rows))
	return nil
}

func main() {
	query := flag.String("query", "q7", "Nexmark query: q5 or q7")
	input := flag.String("input", "", "JSON-lines events file (sealflow nexmark gen)")
	out := flag.String("out", "", "JSON-lines output file")
	flag.Parse()
	beam.Init()
	if *input == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: beamq --query q5|q7 --input events.jsonl --out rows.jsonl")
		os.Exit(2)
	}
	p, s := beam.NewPipelineWithRoot()
	if err := build(s, *query, *input, *out); err != nil {
		slog.Error("beamq", "err", err)
		os.Exit(2)
	}
	start := time.Now()
	if _, err := prism.Execute(context.Background(), p); err != nil {
		slog.Error("beamq: pipeline failed", "err", err)
		os.Exit(1)
	}
	slog.Info("beamq: done", "query", *query, "elapsed", time.Since(start))
}
