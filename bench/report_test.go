package bench

import (
	"bytes"
	"encoding/xml"
	"io"
	"strings"
	"testing"
	"time"
)

func testReport() *Report {
	// timed: the sealed runs' codec was timed; sealCPU is the seal
	// CPU-seconds of each sealed run.
	mk := func(q string, noChain bool, sealedCPU, plainCPU float64, timed bool, sealCPU float64, frames int64) *Case {
		c := &Case{Query: q, NoChain: noChain}
		for _, cpu := range []float64{sealedCPU, sealedCPU * 2, sealedCPU / 2} {
			c.Sealed = append(c.Sealed, Summary{Query: q, Events: 1_000_000, Rows: 7, Tasks: 3, Sealed: true, CPUSeconds: cpu, PeakRSSBytes: 40 << 20,
				Frames: frames, SealCPUSeconds: sealCPU, SealTimed: timed})
			c.Plain = append(c.Plain, Summary{Query: q, Events: 1_000_000, Rows: 7, Tasks: 3, CPUSeconds: plainCPU, PeakRSSBytes: 38 << 20, Frames: frames})
		}
		if !noChain {
			c.Pace = 500_000
			c.SealedLatency = &Summary{Query: q, LatencyP50Ms: 1.5, LatencyP99Ms: 40}
			c.PlainLatency = &Summary{Query: q}
		}
		return c
	}
	start := time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC)
	return &Report{
		Options: Options{Events: 1_000_000, Seed: 1, Parallelism: 1, Runs: 3, NoChain: true, LatencySeconds: 12},
		Machine: Machine{CPUs: 2, CPUModel: `AMD <"EPYC">`, LoadAvg: "1.00 2.00 3.00", GoVersion: "go1.26.8", OS: "linux", Arch: "amd64"},
		Started: start, Finished: start.Add(10 * time.Minute),
		// q1 chained: timed, no seal CPU; q1 every edge: seal CPU 0.2 s of
		// 4, 8 and 2 s, shares 5%, 2.5% and 10%; q5& chained: not timed
		// (not measured); q0 chained: no frames exchanged, nothing sealed.
		Cases: []*Case{mk("q1", false, 0.5, 0.4, true, 0, 10), mk("q1", true, 4, 3, true, 0.2, 10), mk("q5&", false, 1, 1, false, 0, 10),
			mk("q0", false, 1, 1, true, 0, 0)},
		RowChecks: 18,
	}
}

func TestMarkdown(t *testing.T) {
	md := testReport().Markdown(MarkdownOptions{Command: "sealflow bench --events 1000000", SVG: "bench.svg", Extra: "### Peers\n\nnotes here"})
	for _, want := range []string{
		"`sealflow bench --events 1000000`",
		"2026-11-26 01:00–01:10 UTC",
		"load average 1.00 2.00 3.00",
		"![events/s per core, sealed vs plaintext, per query](bench.svg)",
		// q1 chained: sealed median CPU 0.5 s → 2.00 M/s per core; plaintext 0.4 s → 2.50 M; ratio 0.8.
		"| q1 | chained | 3 | 7 | 2.00 M | 2.50 M | 0.800 | ≈0 (below resolution) | 1.000 | 0.500 | 0.400 | 40 MiB | 38 MiB |",
		// Median share 5% of the shares 5%, 2.5% and 10%: expected 0.95.
		"| q1 | every edge | 3 | 7 | 250 k | 333 k | 0.750 | 5.0% | 0.950 | 4.000 |",
		"| q5& | chained | 3 | 7 | 1.00 M | 1.00 M | 1.000 | – | – | 1.000 |",
		"| q0 | chained | 3 | 7 | 1.00 M | 1.00 M | 1.000 | no exchange | – | 1.000 |",
		"1.5 / 40 at 500 k/s",
		"no timed rows at 500 k/s",
		"in all 18 runs",
		// q1 chained 0.8, q1 every edge 0.75, q5& and q0 chained 1.0.
		"Target sealed / plaintext ≥ 0.97, end to end (ratio of separate processes' medians): met by 2 of 4. Below: q1 chained 0.80, q1 every edge 0.75.\n",
		"Target sealing's share of CPU ≤ 3% in-run (expected sealed / plaintext ≥ 0.97): chained met by 1 of 2 (no exchange, nothing sealed: q0) (not measured: q5&); every edge met by 0 of 1 (above: q1 5.0%).\n",
		"### Peers\n\nnotes here",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("Markdown lacks %q:\n%s", want, md)
		}
	}
	var tableRows int
	for line := range strings.SplitSeq(md, "\n") {
		if strings.HasPrefix(line, "| q") && !strings.HasPrefix(line, "| query") {
			tableRows++
			if n := strings.Count(line, "|"); n != 17 {
				t.Errorf("table row with %d cells, want 16: %s", n-1, line)
			}
		}
	}
	if tableRows != 4 {
		t.Errorf("%d table rows, want 4", tableRows)
	}
}

// checkSVG parses svg as XML and returns the number of bars (rect elements
// with a title) and the texts.
func checkSVG(t *testing.T, svg []byte) (bars int, texts []string) {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(svg))
	var root bool
	var stack []string
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v\n%s", err, svg)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if len(stack) == 0 {
				if tok.Name.Local != "svg" || tok.Name.Space != "http://www.w3.org/2000/svg" || root {
					t.Fatalf("root element %v, want one svg in the SVG namespace", tok.Name)
				}
				root = true
			}
			if tok.Name.Local == "title" && stack[len(stack)-1] == "rect" {
				bars++
			}
			stack = append(stack, tok.Name.Local)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if len(stack) > 0 && stack[len(stack)-1] == "text" {
				texts = append(texts, string(tok))
			}
		}
	}
	if !root || len(stack) != 0 {
		t.Fatalf("SVG has no root or unclosed elements %v", stack)
	}
	return bars, texts
}

func TestSVG(t *testing.T) {
	r := testReport()
	bars, texts := checkSVG(t, r.SVG())
	if bars != 2*len(r.Cases) {
		t.Errorf("%d bars, want %d (sealed and plaintext per case)", bars, 2*len(r.Cases))
	}
	all := strings.Join(texts, "|")
	for _, want := range []string{"q1 c", "q1 e", "q5& c", "×0.80", "×0.75", "2.50 M"} {
		if !strings.Contains(all, want) {
			t.Errorf("SVG texts lack %q: %s", want, all)
		}
	}
	// An empty report still draws a valid chart.
	if bars, _ := checkSVG(t, (&Report{}).SVG()); bars != 0 {
		t.Errorf("empty report: %d bars", bars)
	}
}

func TestNiceCeil(t *testing.T) {
	for _, tt := range []struct {
		ms   float64
		want string
	}{{0.5, "0.5"}, {1.234, "1.23"}, {99.94, "99.9"}, {2360.4, "2360"}, {12345, "12345"}} {
		if got := millis(tt.ms); got != tt.want {
			t.Errorf("millis(%g) = %q, want %q", tt.ms, got, tt.want)
		}
	}
	for _, tt := range []struct{ x, want float64 }{{0, 1}, {0.3, 0.5}, {1, 1}, {1.2, 2}, {3e6, 5e6}, {7e5, 1e6}} {
		if got := niceCeil(tt.x); got != tt.want {
			t.Errorf("niceCeil(%g) = %g, want %g", tt.x, got, tt.want)
		}
	}
}

func TestReplaceSection(t *testing.T) {
	tests := []struct {
		name, doc, want, wantErr string
	}{
		{"empty doc", "", BeginMarker + "\nnew\n" + EndMarker + "\n", ""},
		{"append", "# B\n\ntext", "# B\n\ntext\n\n" + BeginMarker + "\nnew\n" + EndMarker + "\n", ""},
		{"replace, outside kept", "# B\n" + BeginMarker + "\nold\nlines\n" + EndMarker + "\ntail  \n", "# B\n" + BeginMarker + "\nnew\n" + EndMarker + "\ntail  \n", ""},
		{"begin only", "x " + BeginMarker, "", "want one of each"},
		{"twice", BeginMarker + EndMarker + BeginMarker + EndMarker, "", "want one of each"},
		{"reversed", EndMarker + "x" + BeginMarker, "", "comes before"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReplaceSection([]byte(tt.doc), "  new\n\n")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Fatalf("ReplaceSection = %q, %v; want %q", got, err, tt.want)
			}
			again, err := ReplaceSection(got, "new")
			if err != nil || !bytes.Equal(again, got) {
				t.Errorf("replacing again changed the doc: %q", again)
			}
		})
	}
}
