package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ScalingOptions configure Scaling.
type ScalingOptions struct {
	// Launch runs sealflow children (required).
	Launch Launcher
	// Events is the base stream length (default 1,000,000); Seed the seed.
	Events, Seed int64
	// Progress, if not nil, receives a line per run.
	Progress io.Writer
}

// scalingStep is one point of a curve.
type scalingStep struct {
	label string
	args  []string
}

// MemoryRuns is how many times the suite runs each point of the "memory as
// the stream grows" curve (interleaved); its table gives medians, since a
// single run's peak RSS varies by several MiB with the garbage collector's
// timing.
const MemoryRuns = 3

// MaxMemoryGrowth is the bound on peak RSS growth from 1× to 10×
// events.
const MaxMemoryGrowth = 0.10

// Scaling measures, sealed and chained, one run per point: throughput
// against parallelism (q1, q5, q7 at 1 and 2), against the number of keys
// (q5 with 100 to 100,000 in-flight auctions), against state size (q3,
// whose unbounded join state grows with the stream, at 0.5–4× Events), and
// peak RSS as the stream grows (q5 and q7 at Events and 10× Events, where
// window state is bounded; MemoryRuns runs each, with the growth of the
// medians against MaxMemoryGrowth). It returns the curves as Markdown.
func Scaling(ctx context.Context, o ScalingOptions) (string, error) {
	if o.Launch == nil {
		return "", fmt.Errorf("bench: ScalingOptions.Launch is nil")
	}
	if o.Events == 0 {
		o.Events = 1_000_000
	}
	if o.Events < 0 {
		return "", fmt.Errorf("bench: scaling events %d, want a positive number", o.Events)
	}
	n := func(x int64) string { return strconv.FormatInt(x, 10) }
	seed := n(o.Seed)
	run := func(q string, events int64, extra ...string) []string {
		return append([]string{"nexmark", "run", "--query", q, "--events", n(events), "--seed", seed, "--out", os.DevNull}, extra...)
	}
	query := func(q string, events int64, extra ...string) []string {
		return append([]string{"bench", "query", "--query", q, "--events", n(events), "--seed", seed}, extra...)
	}
	curves := []struct {
		title, note string
		steps       []scalingStep
		// runs of each step, interleaved (1 if 0); growth: the steps are
		// pairs (1×, 10× events) whose peak RSS growth is checked.
		runs   int
		growth bool
	}{
		{"Throughput vs parallelism", "`sealflow nexmark run --parallelism P`, every operator P tasks", []scalingStep{
			{"q1, P=1", run("q1", o.Events)}, {"q1, P=2", run("q1", o.Events, "--parallelism", "2")},
			{"q5, P=1", run("q5", o.Events)}, {"q5, P=2", run("q5", o.Events, "--parallelism", "2")},
			{"q7, P=1", run("q7", o.Events)}, {"q7, P=2", run("q7", o.Events, "--parallelism", "2")},
		}, 1, false},
		{"Throughput vs number of keys", "q5 counts bids per auction: `sealflow bench query --query q5 --auctions K` sets the generator's in-flight auctions (Nexmark default 100)", []scalingStep{
			{"q5, 100 auctions", query("q5", o.Events, "--auctions", "100")},
			{"q5, 1,000 auctions", query("q5", o.Events, "--auctions", "1000")},
			{"q5, 10,000 auctions", query("q5", o.Events, "--auctions", "10000")},
			{"q5, 100,000 auctions", query("q5", o.Events, "--auctions", "100000")},
		}, 1, false},
		{"Throughput vs state size", "q3's incremental join keeps every person of OR, ID, CA and every category-10 auction: its state grows with the stream", []scalingStep{
			{"q3, ½× events", run("q3", o.Events/2)}, {"q3, 1× events", run("q3", o.Events)},
			{"q3, 2× events", run("q3", 2*o.Events)}, {"q3, 4× events", run("q3", 4*o.Events)},
		}, 1, false},
		{"Memory as the stream grows", fmt.Sprintf("windowed queries keep only open windows: peak RSS should not grow with the stream. Each point ran %d times, interleaved; the figures are medians, with the range of peak RSS", MemoryRuns), []scalingStep{
			{"q5, 1× events", run("q5", o.Events)}, {"q5, 10× events", run("q5", 10*o.Events)},
			{"q7, 1× events", run("q7", o.Events)}, {"q7, 10× events", run("q7", 10*o.Events)},
		}, MemoryRuns, true},
	}
	total := 0
	for _, c := range curves {
		total += len(c.steps) * max(c.runs, 1)
	}
	p := &progress{w: o.Progress, total: total}
	p.start = time.Now()
	var b strings.Builder
	b.WriteString("### Scaling curves (`sealflow bench --scaling`)\n\nSealed, chained, one run per point, each its own process; result rows are discarded (`--out /dev/null`), so rates are higher than the table above, whose runs write JSON rows to a file. *tasks* counts chains; with P each runs as P subtasks.\n")
	for _, c := range curves {
		fmt.Fprintf(&b, "\n**%s**: %s.\n\n| run | events | tasks | events/s per core | CPU-s | wall events/s | peak RSS |\n|---|---|---|---|---|---|---|\n", c.title, c.note)
		runs := max(c.runs, 1)
		got := make([][]Summary, len(c.steps))
		for r := range runs {
			for i, st := range c.steps {
				label := "scaling " + st.label
				if runs > 1 {
					label += fmt.Sprintf(" (run %d of %d)", r+1, runs)
				}
				p.begin(label)
				out, err := o.Launch(ctx, st.args)
				if err != nil {
					return b.String(), err
				}
				s, err := ParseSummary(out)
				if err != nil {
					return b.String(), fmt.Errorf("%w (of %s)", err, strings.Join(st.args, " "))
				}
				got[i] = append(got[i], s)
				p.end(fmt.Sprintf("%s events/s per core, peak RSS %s", rate(s.PerCore()), bytesize(float64(s.PeakRSSBytes))))
			}
		}
		for i, st := range c.steps {
			b.WriteString(scalingRow(st.label, got[i]))
		}
		if c.growth {
			b.WriteString(memoryVerdict(c.steps, got))
		}
	}
	return b.String(), nil
}

// scalingRow formats the runs of one point: medians, and the range of peak
// RSS when there are several runs.
func scalingRow(label string, runs []Summary) string {
	st := statsOf(runs)
	rss := st.PeakRSSBytes
	rssText := bytesize(rss)
	if len(runs) > 1 {
		lo, hi := runs[0].PeakRSSBytes, runs[0].PeakRSSBytes
		for _, s := range runs[1:] {
			lo, hi = min(lo, s.PeakRSSBytes), max(hi, s.PeakRSSBytes)
		}
		rssText = fmt.Sprintf("%.1f MiB (%.1f–%.1f)", rss/(1<<20), float64(lo)/(1<<20), float64(hi)/(1<<20))
	}
	return fmt.Sprintf("| %s | %d | %d | %s | %.2f | %s | %s |\n", label, runs[0].Events, runs[0].Tasks,
		rate(st.PerCore), st.CPUSeconds, rate(st.EventsPerSecond), rssText)
}

// memoryVerdict states, for each pair of steps (1×, 10× events), how much
// the median peak RSS grew, against MaxMemoryGrowth.
func memoryVerdict(steps []scalingStep, runs [][]Summary) string {
	var parts, over []string
	pairs := 0
	for i := 0; i+1 < len(steps); i += 2 {
		a, z := statsOf(runs[i]).PeakRSSBytes, statsOf(runs[i+1]).PeakRSSBytes
		if a <= 0 {
			continue
		}
		pairs++
		q, _, _ := strings.Cut(steps[i].label, ",")
		g := fmt.Sprintf("%s %+.1f%%", q, (z/a-1)*100)
		parts = append(parts, g)
		if z/a-1 > MaxMemoryGrowth {
			over = append(over, g)
		}
	}
	if pairs == 0 {
		return ""
	}
	verdict := fmt.Sprintf("met by %d of %d", pairs-len(over), pairs)
	if len(over) > 0 {
		verdict += " (over: " + strings.Join(over, ", ") + ")"
	}
	return fmt.Sprintf("\nPeak RSS growth from 1× to 10× events (medians): %s. Target ≤ %.0f%%: %s.\n", strings.Join(parts, ", "), MaxMemoryGrowth*100, verdict)
}

// ProfileOptions configure Profiles.
type ProfileOptions struct {
	// Launch runs sealflow children (required).
	Launch Launcher
	// Dir receives QUERY-MODE.cpu.pprof, QUERY-MODE.allocs.pprof and, if the
	// go command is on PATH, QUERY-MODE.top.txt (go tool pprof -top).
	Dir string
	// Queries (default DefaultQueries), Events (default 1,000,000), Seed.
	Queries      []string
	Events, Seed int64
	// Progress, if not nil, receives a line per run.
	Progress io.Writer
}

// Profiles runs each query sealed, chained and with every edge over NATS, in
// a child process ("sealflow bench query --cpuprofile --memprofile") and
// writes its CPU and allocation profiles to Dir. It returns the files written.
func Profiles(ctx context.Context, o ProfileOptions) ([]string, error) {
	if o.Launch == nil || o.Dir == "" {
		return nil, fmt.Errorf("bench: ProfileOptions needs Launch and Dir")
	}
	if len(o.Queries) == 0 {
		o.Queries = DefaultQueries
	}
	if o.Events == 0 {
		o.Events = 1_000_000
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	gobin, _ := exec.LookPath("go")
	p := &progress{w: o.Progress, total: 2 * len(o.Queries), start: time.Now()}
	var files []string
	for _, q := range o.Queries {
		for _, noChain := range []bool{false, true} {
			base := filepath.Join(o.Dir, q+"-"+chainName(noChain))
			cpu, mem := base+".cpu.pprof", base+".allocs.pprof"
			args := []string{"bench", "query", "--query", q, "--events", strconv.FormatInt(o.Events, 10),
				"--seed", strconv.FormatInt(o.Seed, 10), "--cpuprofile", cpu, "--memprofile", mem}
			if noChain {
				args = append(args, "--no-chain")
			}
			p.begin("profile " + q + " " + chainName(noChain))
			out, err := o.Launch(ctx, args)
			if err != nil {
				return files, err
			}
			s, err := ParseSummary(out)
			if err != nil {
				return files, err
			}
			files = append(files, cpu, mem)
			if gobin != "" {
				var top []byte
				for _, f := range []struct{ flag, file string }{{"", cpu}, {"-sample_index=alloc_space", mem}, {"-sample_index=alloc_objects", mem}} {
					args := []string{"tool", "pprof", "-top", "-nodecount=20"}
					if f.flag != "" {
						args = append(args, f.flag)
					}
					t, err := exec.CommandContext(ctx, gobin, append(args, f.file)...).Output()
					if err != nil {
						return files, fmt.Errorf("bench: go tool pprof %s: %w", f.file, err)
					}
					top = append(append(top, "== "+f.file+" "+f.flag+"\n"...), t...)
				}
				if err := os.WriteFile(base+".top.txt", top, 0o644); err != nil {
					return files, err
				}
				files = append(files, base+".top.txt")
			}
			p.end(fmt.Sprintf("%s events/s per core (profiled)", rate(s.PerCore())))
		}
	}
	return files, nil
}
