package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Launcher runs the sealflow binary with args (for example "nexmark",
// "run", ...) as a process of its own and returns its standard output.
type Launcher func(ctx context.Context, args []string) ([]byte, error)

// ExecLauncher returns a Launcher that runs argv[0] with argv[1:] followed by
// the run's args, with env added to this process's environment. Standard
// error of a failed run is quoted in the error.
func ExecLauncher(argv, env []string) Launcher {
	return func(ctx context.Context, args []string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, argv[0], append(append([]string(nil), argv[1:]...), args...)...)
		cmd.Env = append(os.Environ(), env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			msg := strings.TrimSpace(stderr.String())
			if len(msg) > 2000 {
				msg = "…" + msg[len(msg)-2000:]
			}
			return out, fmt.Errorf("%s %s: %w: %s", filepath.Base(argv[0]), strings.Join(args, " "), err, msg)
		}
		return out, nil
	}
}

// Options configure Suite.
type Options struct {
	// Launch runs "sealflow nexmark run" children (required).
	Launch Launcher
	// Queries to run (default DefaultQueries).
	Queries []string
	// Events per run and the generator seed: every run of the suite is over
	// the same events.
	Events, Seed int64
	// Parallelism is the tasks per operator (default 1).
	Parallelism int
	// Runs is how many times each query runs sealed and plaintext in each
	// exchange mode; figures are medians (default 3).
	Runs int
	// NoChain also runs every query with --no-chain, every edge through a
	// NATS exchange, so the cost of sealing exchanged frames shows.
	NoChain bool
	// LatencySeconds is the length of the paced run that measures latency,
	// at half the median rate of the query's chained runs; 0 skips it.
	// Windowed queries (10 s windows of event time) need more than 10.
	LatencySeconds float64
	// Dir is where runs write their rows (a temporary directory if empty);
	// each row file is digested and removed.
	Dir string
	// Progress, if not nil, receives a line per run with an ETA.
	Progress io.Writer
}

// DefaultQueries are the queries "sealflow bench" runs by default.
var DefaultQueries = []string{"q0", "q1", "q2", "q3", "q5", "q7", "q8"}

// Case is one query in one exchange mode: its runs sealed and plaintext.
type Case struct {
	Query string
	// NoChain: every edge crossed a NATS exchange.
	NoChain bool
	// Sealed and Plain are the summaries of the runs.
	Sealed, Plain []Summary
	// Pace is the rate of the latency runs (events/s of wall-clock time);
	// SealedLatency and PlainLatency their summaries (nil if not run).
	Pace                        int64
	SealedLatency, PlainLatency *Summary
}

// Stats are the medians of a case's runs in one mode.
type Stats struct {
	PerCore, CPUSeconds, WallSeconds float64
	// EventsPerSecond is the median wall-clock rate.
	EventsPerSecond float64
	PeakRSSBytes    float64
	Rows            int64
	Tasks           int
	ExchangeBytes   float64
}

// Stats returns the medians of the sealed (or plaintext) runs.
func (c *Case) Stats(sealed bool) Stats {
	if sealed {
		return statsOf(c.Sealed)
	}
	return statsOf(c.Plain)
}

// statsOf returns the medians of runs (rows and tasks of the last).
func statsOf(runs []Summary) Stats {
	var pc, cpu, wall, eps, rss, xb []float64
	var st Stats
	for _, s := range runs {
		pc = append(pc, s.PerCore())
		cpu = append(cpu, s.CPUSeconds)
		wall = append(wall, s.WallSeconds)
		eps = append(eps, s.EventsPerSecond)
		rss = append(rss, float64(s.PeakRSSBytes))
		xb = append(xb, float64(s.ExchangeBytes))
		st.Rows, st.Tasks = s.Rows, s.Tasks
	}
	st.PerCore, st.CPUSeconds, st.WallSeconds, st.EventsPerSecond = median(pc), median(cpu), median(wall), median(eps)
	st.PeakRSSBytes, st.ExchangeBytes = median(rss), median(xb)
	return st
}

// Ratio is the sealed/plaintext ratio of median events/s per core (0 if
// either is missing).
func (c *Case) Ratio() float64 {
	s, p := c.Stats(true).PerCore, c.Stats(false).PerCore
	if s == 0 || p == 0 {
		return 0
	}
	return s / p
}

// SealShare returns sealing's share of CPU measured within the runs: the
// median over the sealed runs of Summary.SealShare (the CPU time spent in
// the exchange codec ÷ the run's CPU time), which is what sealing costs the
// run, 1 − SealShare its expected sealed/plaintext ratio. Only runs whose
// codec was timed (Summary.SealTimed) count; ok is false if there were none.
func (c *Case) SealShare() (share float64, ok bool) {
	var xs []float64
	for _, s := range c.Sealed {
		if s.SealTimed {
			xs = append(xs, s.SealShare())
		}
	}
	if len(xs) == 0 {
		return 0, false
	}
	return median(xs), true
}

// Exchanges reports whether the sealed runs sent any frame between tasks:
// a case that exchanges nothing seals nothing, so its in-run share says
// nothing about the target.
func (c *Case) Exchanges() bool {
	for _, s := range c.Sealed {
		if s.Frames > 0 {
			return true
		}
	}
	return false
}

// MaxSealShare is the in-run target: sealing at most 3% of a sealed run's
// CPU time, so sealed/plaintext ≥ 0.97.
const MaxSealShare = 0.03

// Report is the outcome of a Suite run.
type Report struct {
	// Options are the suite's options (Launch and Progress aside).
	Options Options
	// Machine is where it ran, read at the start.
	Machine Machine
	// Started and Finished bound the run.
	Started, Finished time.Time
	// Cases in run order.
	Cases []*Case
	// Mismatches name runs whose rows differed from the query's first run.
	Mismatches []string
	// RowChecks counts the runs whose rows were compared.
	RowChecks int
}

// ErrRowsDiffer is returned (wrapped) by Suite when runs of a query produced
// different rows.
var ErrRowsDiffer = errors.New("bench: runs of a query produced different rows")

// Suite runs each query sealed and plaintext on the same events, alternating
// and repeating, chained and (with NoChain) with every edge through NATS,
// then a paced latency run of each; it checks all runs of a query produced
// the same rows. The report is returned even when rows differed (with
// ErrRowsDiffer).
func Suite(ctx context.Context, o Options) (*Report, error) {
	if o.Launch == nil {
		return nil, fmt.Errorf("bench: Options.Launch is nil")
	}
	if len(o.Queries) == 0 {
		o.Queries = DefaultQueries
	}
	if o.Runs == 0 {
		o.Runs = 3
	}
	if o.Parallelism == 0 {
		o.Parallelism = 1
	}
	if o.Events <= 0 || o.Runs < 0 || o.Parallelism < 0 || o.LatencySeconds < 0 || !finite(o.LatencySeconds) {
		return nil, fmt.Errorf("bench: events %d, runs %d, parallelism %d and latency seconds %g must be positive",
			o.Events, o.Runs, o.Parallelism, o.LatencySeconds)
	}
	if o.Dir == "" {
		dir, err := os.MkdirTemp("", "sealflow-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		o.Dir = dir
	}
	modes := []bool{false}
	if o.NoChain {
		modes = append(modes, true)
	}
	r := &Report{Options: o, Machine: ReadMachine(), Started: time.Now()}
	r.Options.Launch, r.Options.Progress = nil, nil
	p := &progress{w: o.Progress, start: r.Started,
		total: len(o.Queries) * len(modes) * o.Runs * 2}
	if o.LatencySeconds > 0 {
		p.total += 2 * len(o.Queries)
	}
	for _, q := range o.Queries {
		var ref *RowDigest
		var refName string
		for _, noChain := range modes {
			c := &Case{Query: q, NoChain: noChain}
			r.Cases = append(r.Cases, c)
			for run := range o.Runs {
				order := []bool{true, false}
				if run%2 == 1 {
					order = []bool{false, true}
				}
				for _, sealed := range order {
					name := fmt.Sprintf("%s %s %s run %d of %d", q, chainName(noChain), sealName(sealed), run+1, o.Runs)
					p.begin(name)
					rows := filepath.Join(o.Dir, fmt.Sprintf("%s-%d.jsonl", q, p.done))
					s, err := runOne(ctx, o, q, o.Events, 0, sealed, noChain, rows)
					if err != nil {
						return r, err
					}
					d, err := digestFile(rows)
					if err != nil {
						return r, err
					}
					r.RowChecks++
					if ref == nil {
						ref, refName = &d, name
					} else if d != *ref {
						r.Mismatches = append(r.Mismatches, fmt.Sprintf("%s: %s, but %s: %s", name, d, refName, ref))
					}
					if sealed {
						c.Sealed = append(c.Sealed, s)
					} else {
						c.Plain = append(c.Plain, s)
					}
					p.end(fmt.Sprintf("%.3g M events/s per core, %.2f CPU-s, %d rows", s.PerCore()/1e6, s.CPUSeconds, s.Rows))
				}
			}
			if noChain || o.LatencySeconds == 0 {
				continue
			}
			// Half the slower mode's median wall-clock rate.
			rate := min(statsOf(c.Sealed).EventsPerSecond, statsOf(c.Plain).EventsPerSecond)
			c.Pace = max(int64(rate/2), 1)
			events := max(int64(float64(c.Pace)*o.LatencySeconds), 1)
			for _, sealed := range []bool{true, false} {
				p.begin(fmt.Sprintf("%s latency %s at %d events/s for %.3gs", q, sealName(sealed), c.Pace, o.LatencySeconds))
				s, err := runOne(ctx, o, q, events, c.Pace, sealed, false, os.DevNull)
				if err != nil {
					return r, err
				}
				if sealed {
					c.SealedLatency = &s
				} else {
					c.PlainLatency = &s
				}
				p.end(fmt.Sprintf("p50 %.3g ms, p99 %.3g ms", s.LatencyP50Ms, s.LatencyP99Ms))
			}
		}
	}
	r.Finished = time.Now()
	if len(r.Mismatches) > 0 {
		return r, fmt.Errorf("%w: %s", ErrRowsDiffer, strings.Join(r.Mismatches, "; "))
	}
	return r, nil
}

func runOne(ctx context.Context, o Options, q string, events, pace int64, sealed, noChain bool, out string) (Summary, error) {
	args := []string{"nexmark", "run", "--query", q, "--events", strconv.FormatInt(events, 10),
		"--seed", strconv.FormatInt(o.Seed, 10), "--parallelism", strconv.Itoa(o.Parallelism), "--out", out}
	if !sealed {
		args = append(args, "--plaintext")
	}
	if noChain {
		args = append(args, "--no-chain")
	}
	if pace > 0 {
		args = append(args, "--pace", strconv.FormatInt(pace, 10))
	}
	stdout, err := o.Launch(ctx, args)
	if err != nil {
		return Summary{}, err
	}
	s, err := ParseSummary(stdout)
	if err != nil {
		return Summary{}, fmt.Errorf("%w (of nexmark run %s)", err, strings.Join(args[2:], " "))
	}
	if s.Query != q || s.Sealed != sealed || s.Events != events {
		return Summary{}, fmt.Errorf("bench: nexmark run %s summarized query %s, sealed %t, %d events", strings.Join(args[2:], " "), s.Query, s.Sealed, s.Events)
	}
	return s, nil
}

func digestFile(path string) (RowDigest, error) {
	f, err := os.Open(path)
	if err != nil {
		return RowDigest{}, err
	}
	defer os.Remove(path)
	defer f.Close()
	d, err := DigestRows(f)
	if err != nil {
		return RowDigest{}, fmt.Errorf("bench: reading rows %s: %w", path, err)
	}
	return d, nil
}

func chainName(noChain bool) string {
	if noChain {
		return "no-chain"
	}
	return "chained"
}

func sealName(sealed bool) string {
	if sealed {
		return "sealed"
	}
	return "plaintext"
}

// progress writes a line per step with an estimate of the time left.
type progress struct {
	w           io.Writer
	start       time.Time
	done, total int
	stepStart   time.Time
	name        string
}

func (p *progress) begin(name string) {
	p.name, p.stepStart = name, time.Now()
}

func (p *progress) end(result string) {
	p.done++
	if p.w == nil {
		return
	}
	elapsed := time.Since(p.start)
	eta := time.Duration(float64(elapsed) / float64(p.done) * float64(p.total-p.done)).Round(time.Second)
	fmt.Fprintf(p.w, "bench [%d/%d] %s: %s (%.1fs; ETA %s)\n", p.done, p.total, p.name, result,
		time.Since(p.stepStart).Seconds(), eta)
}

// Machine describes where the suite ran.
type Machine struct {
	CPUs      int
	CPUModel  string
	LoadAvg   string // 1, 5 and 15 minute load averages at the start
	GoVersion string
	OS, Arch  string
}

// ReadMachine reads the machine's CPU count, CPU model (/proc/cpuinfo) and
// load average (/proc/loadavg); what cannot be read is left empty.
func ReadMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	return m
}
