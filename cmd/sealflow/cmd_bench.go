package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/sealflow/sealflow/confidential"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/sealflow/sealflow/bench"
	"github.com/sealflow/sealflow/nexmark"
)

// noCombineHelp is the help of --no-combine, shared by bench query and
// nexmark run.
const noCombineHelp = "send every record through keyed exchanges into windows that count (q5), without the sending side's count combiner"

// sealTimingHelp is the help of --seal-timing, shared by bench query and
// nexmark run.
var sealTimingHelp = fmt.Sprintf("estimate the CPU time spent sealing and opening exchange frames (seal_cpu_seconds in the summary; sampled, 1 call in %d); --seal-timing=false to run the codec unwrapped", confidential.TimedEvery)

func init() {
	register("bench", "run the Nexmark benchmark suite, sealed vs plaintext, and write docs/benchmarks.md's generated section", func(ctx context.Context, args []string) error {
		return benchSuite(ctx, args, os.Stderr)
	})
	register("bench query", "run one Nexmark query in this process with generator settings and profiles (a child of sealflow bench)", func(ctx context.Context, args []string) error {
		return benchQuery(ctx, args, os.Stdout)
	})
}

// benchChild returns the argv prefix that runs this binary as a child of
// "sealflow bench"; tests replace it to run their own test binary.
var benchChild = func() ([]string, []string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, fmt.Errorf("finding this binary to run its children: %w", err)
	}
	return []string{exe}, nil, nil
}

// benchSuite implements "sealflow bench", reporting progress to progress.
func benchSuite(ctx context.Context, args []string, progress io.Writer) error {
	fs := newFlags("bench")
	events := fs.Int64("events", 1_000_000, "events per run (every run of the suite is over the same events)")
	seed := fs.Int64("seed", 1, "generator seed")
	queries := fs.String("queries", strings.Join(bench.DefaultQueries, ","), "comma-separated queries to run")
	par := fs.Int("parallelism", 1, "tasks per operator")
	runs := fs.Int("runs", 3, "runs of each query sealed and plaintext per exchange mode; figures are medians")
	noChain := fs.Bool("no-chain-runs", true, "also run every query with every edge through a NATS exchange (--no-chain)")
	latency := fs.Float64("latency-seconds", 12, "length of each paced latency run (at half the measured rate); 0 skips latency")
	out := fs.String("out", "docs/benchmarks.md", "Markdown file whose section between "+bench.BeginMarker+" and "+bench.EndMarker+" is replaced (appended if absent)")
	svg := fs.String("svg", "", "where to write the SVG plot (default: bench.svg beside --out)")
	quick := fs.Bool("quick", false, "tiny inputs for a smoke test: 20,000 events, one run, 0.5 s latency runs (unless set)")
	profile := fs.String("profile", "", "also write CPU and allocation profiles of each query to this directory")
	scaling := fs.Bool("scaling", false, "also measure scaling curves (parallelism, keys, state size, memory at 10× events); slow")
	notes := fs.String("notes", "", "Markdown file to include at the end of the generated section (peers' results, for example)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		if !set["events"] {
			*events = 20_000
		}
		if !set["runs"] {
			*runs = 1
		}
		if !set["latency-seconds"] {
			*latency = 0.5
		}
	}
	qs := strings.Split(*queries, ",")
	for _, q := range qs {
		if nexmark.Columns(q) == nil {
			return fmt.Errorf("%w: --queries: %q is not one of %s", errUsage, q, strings.Join(nexmark.Queries, ", "))
		}
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	case *events < 1 || *runs < 1 || *par < 1:
		return fmt.Errorf("%w: --events %d, --runs %d and --parallelism %d must be 1 or more", errUsage, *events, *runs, *par)
	case *latency < 0:
		return fmt.Errorf("%w: --latency-seconds %g is negative", errUsage, *latency)
	case *out == "":
		return fmt.Errorf("%w: --out FILE is required", errUsage)
	}
	if *svg == "" {
		*svg = filepath.Join(filepath.Dir(*out), "bench.svg")
	}
	if *notes != "" {
		if _, err := os.Stat(*notes); err != nil {
			return fmt.Errorf("--notes: %w", err)
		}
	}
	argv, env, err := benchChild()
	if err != nil {
		return err
	}
	launch := bench.ExecLauncher(argv, env)
	command := "sealflow bench " + strings.Join(args, " ")

	report, suiteErr := bench.Suite(ctx, bench.Options{Launch: launch, Queries: qs, Events: *events, Seed: *seed,
		Parallelism: *par, Runs: *runs, NoChain: *noChain, LatencySeconds: *latency, Progress: progress})
	if suiteErr != nil && !errors.Is(suiteErr, bench.ErrRowsDiffer) {
		return suiteErr
	}
	if *profile != "" {
		files, err := bench.Profiles(ctx, bench.ProfileOptions{Launch: launch, Dir: *profile, Queries: qs, Events: *events, Seed: *seed, Progress: progress})
		if err != nil {
			return err
		}
		fmt.Fprintf(progress, "bench: profiles: %s\n", strings.Join(files, " "))
	}
	var extra string
	if *scaling {
		md, err := bench.Scaling(ctx, bench.ScalingOptions{Launch: launch, Events: *events, Seed: *seed, Progress: progress})
		if err != nil {
			return err
		}
		extra = md + "\n"
	}
	// The notes are read last, so they may be written while the suite runs.
	if *notes != "" {
		b, err := os.ReadFile(*notes)
		if err != nil {
			return fmt.Errorf("--notes: %w", err)
		}
		extra += string(b)
	}
	rel, err := filepath.Rel(filepath.Dir(*out), *svg)
	if err != nil {
		rel = *svg
	}
	section := report.Markdown(bench.MarkdownOptions{Command: command, SVG: filepath.ToSlash(rel), Extra: extra})
	doc, err := os.ReadFile(*out)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	doc, err = bench.ReplaceSection(doc, section)
	if err != nil {
		return fmt.Errorf("--out %s: %w", *out, err)
	}
	if err := os.WriteFile(*svg, report.SVG(), 0o644); err != nil {
		return fmt.Errorf("--svg: %w", err)
	}
	if err := os.WriteFile(*out, doc, 0o644); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	fmt.Fprintf(progress, "bench: wrote %s and %s\n", *out, *svg)
	return suiteErr
}

// benchQuery implements "sealflow bench query": one query in this process,
// printing the same JSON summary as "nexmark run".
func benchQuery(ctx context.Context, args []string, w io.Writer) error {
	fs := newFlags("bench query")
	var o bench.QueryOptions
	fs.StringVar(&o.Query, "query", "", "query to run: "+strings.Join(nexmark.Queries, ", "))
	fs.Int64Var(&o.Events, "events", 1_000_000, "number of events to generate")
	fs.Int64Var(&o.Seed, "seed", 1, "generator seed")
	fs.IntVar(&o.Parallelism, "parallelism", 1, "tasks per operator")
	fs.BoolVar(&o.Plaintext, "plaintext", false, "exchange frames unsealed")
	sealTiming := fs.Bool("seal-timing", true, sealTimingHelp)
	fs.BoolVar(&o.NoChain, "no-chain", false, "run every operator in its own task")
	fs.BoolVar(&o.NoPrefilter, "no-prefilter", false, "send every record through keyed exchanges into max-rows windows (q5, q7), without the sending side's maxima pre-filter")
	fs.BoolVar(&o.NoCombine, "no-combine", false, noCombineHelp)
	fs.Int64Var(&o.InFlightAuctions, "auctions", 0, "generator's in-flight auctions (the keys of q5; 0: Nexmark default 100)")
	fs.Int64Var(&o.ActivePeople, "people", 0, "generator's active people (0: Nexmark default 1000)")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile of the run to this file")
	fs.StringVar(&o.MemProfile, "memprofile", "", "write an allocation profile to this file after the run")
	out := fs.String("out", "", "write result rows as JSON lines to this file (default: discard)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.NoSealTiming = !*sealTiming
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	case nexmark.Columns(o.Query) == nil:
		return fmt.Errorf("%w: --query %q is not one of %s", errUsage, o.Query, strings.Join(nexmark.Queries, ", "))
	case o.Events < 0 || o.Parallelism < 1 || o.InFlightAuctions < 0 || o.ActivePeople < 0:
		return fmt.Errorf("%w: --events %d, --parallelism %d, --auctions %d, --people %d: want non-negative (parallelism ≥ 1)", errUsage, o.Events, o.Parallelism, o.InFlightAuctions, o.ActivePeople)
	}
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer f.Close()
		o.Rows = f
	}
	s, err := bench.RunQuery(ctx, o)
	if err != nil {
		return err
	}
	line, err := json.Marshal(s)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", line)
	return err
}
