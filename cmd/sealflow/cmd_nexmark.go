package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sealflow/sealflow/bench"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/exchange"
	"github.com/sealflow/sealflow/nexmark"
	"github.com/sealflow/sealflow/substrate"
)

func init() {
	register("nexmark gen", "write Nexmark events as JSON lines to stdout", func(ctx context.Context, args []string) error {
		return nexmarkGen(ctx, args, os.Stdout)
	})
	register("nexmark run", "run a Nexmark query on the engine over NATS exchanges and print a JSON summary", func(ctx context.Context, args []string) error {
		return nexmarkRun(ctx, args, os.Stdout)
	})
}

// nexmarkGen implements "sealflow nexmark gen", writing to w.
func nexmarkGen(ctx context.Context, args []string, w io.Writer) error {
	fs := newFlags("nexmark gen")
	events := fs.Int64("events", 1000, "number of events to generate")
	seed := fs.Int64("seed", 1, "random seed; equal seeds give equal events")
	rate := fs.Int64("rate", 10000, "events per second of event time")
	base := fs.Int64("base-time", 0, "event time of the first event, epoch ms (0: 2024-01-01T00:00:00Z)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	if *events < 0 {
		return fmt.Errorf("%w: --events is %d, want 0 or more", errUsage, *events)
	}
	g, err := nexmark.NewGenerator(nexmark.Config{Seed: *seed, EventsPerSecond: *rate, BaseTime: *base})
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return nexmark.WriteEvents(ctx, w, g, *events)
}

// nexmarkSummary is the one-line JSON summary "nexmark run" prints: the
// latency figures only for paced runs and rows timed within the input.
type nexmarkSummary = bench.Summary

// nexmarkRun implements "sealflow nexmark run": it runs a query on the engine
// with NATS exchanges on an embedded server (or --nats URL), writes the rows
// to --out and the summary to w.
func nexmarkRun(ctx context.Context, args []string, w io.Writer) error {
	fs := newFlags("nexmark run")
	query := fs.String("query", "", "query to run: "+strings.Join(nexmark.Queries, ", "))
	events := fs.Int64("events", 1_000_000, "number of events to generate (ignored with --input)")
	seed := fs.Int64("seed", 1, "generator seed")
	rate := fs.Int64("rate", 10000, "events per second of event time of the generator")
	input := fs.String("input", "", "stream events from this JSON-lines file (as written by nexmark gen) instead of generating them; a malformed line fails the run naming the line (rows already written stay in --out)")
	out := fs.String("out", "", "write result rows as JSON lines to this file (required; - for stdout)")
	par := fs.Int("parallelism", 1, "tasks per operator")
	plaintext := fs.Bool("plaintext", false, "exchange frames in plaintext instead of sealing them (AES-256-GCM seal frames under an ephemeral job key); for measuring the cost of sealing only")
	natsURL := fs.String("nats", "", "URL of an external NATS server (default: start an embedded one)")
	batch := fs.Int("batch", 512, "records per batch and frame")
	ooo := fs.Duration("max-out-of-order", 0, "how far event time may go backwards in a source partition before records are late (for --input files not in time order)")
	pace := fs.Int64("pace", 0, "emit generated events at this many events per second of wall-clock time (also the event-time rate) and report result latency; 0: as fast as possible")
	noChain := fs.Bool("no-chain", false, "run every operator in its own task, so every edge crosses a NATS exchange")
	sealTiming := fs.Bool("seal-timing", true, sealTimingHelp)
	noPrefilter := fs.Bool("no-prefilter", false, "send every record through keyed exchanges into max-rows windows (q5, q7), without the sending side's maxima pre-filter")
	noCombine := fs.Bool("no-combine", false, noCombineHelp)
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	case nexmark.Columns(*query) == nil:
		return fmt.Errorf("%w: --query %q is not one of %s", errUsage, *query, strings.Join(nexmark.Queries, ", "))
	case *out == "":
		return fmt.Errorf("%w: --out FILE is required", errUsage)
	case *ooo < 0 || *ooo%time.Millisecond != 0:
		return fmt.Errorf("%w: --max-out-of-order %s is not a non-negative whole number of milliseconds", errUsage, *ooo)
	case *pace < 0 || (*pace > 0 && *input != ""):
		return fmt.Errorf("%w: --pace %d: want a positive rate, for generated events only", errUsage, *pace)
	case *par < 1:
		return fmt.Errorf("%w: --parallelism is %d, want 1 or more", errUsage, *par)
	case *input == "" && *events < 0:
		return fmt.Errorf("%w: --events is %d, want 0 or more", errUsage, *events)
	}
	in := nexmark.Input{Events: *events, Config: nexmark.Config{Seed: *seed, EventsPerSecond: *rate}, Pace: *pace}
	if *pace > 0 {
		in.Config.EventsPerSecond = *pace
	}
	if err := in.Config.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if *input != "" {
		// Fail early on a missing file; the sources stream it themselves.
		f, err := os.Open(*input)
		if err != nil {
			return err
		}
		f.Close()
		in.Open = nexmark.FileOpener(*input)
		in.Read = new(atomic.Int64)
	}

	url := *natsURL
	if url == "" {
		dir, err := os.MkdirTemp("", "sealflow-nexmark-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		// Exchanges use core NATS only; nothing of record is stored here.
		srv, err := substrate.Start(ctx, substrate.Options{StoreDir: dir, Sync: substrate.SyncRelaxed})
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		url = srv.ClientURL()
	}
	nc, err := substrate.Connect(ctx, url, "sealflow-nexmark")
	if err != nil {
		return err
	}
	defer nc.Close()
	tr, err := exchange.NewNATS(nc, exchange.NATSOptions{})
	if err != nil {
		return err
	}
	// The generated events play an owner's stream: exchanges are sealed
	// like any job's (seal.KindExchange frames, per-channel sequences), with
	// a job exchange key from an ephemeral key set that lives only in this
	// process. --plaintext turns sealing off to measure what it costs.
	var runID [8]byte
	rand.Read(runID[:])
	jobID := fmt.Sprintf("nexmark-%s-%x", *query, runID)
	codec, timed, err := bench.ExchangeCodec(jobID, *plaintext, *sealTiming)
	if err != nil {
		return err
	}

	var dst io.Writer = w
	if *out != "-" {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer f.Close()
		dst = f
	}
	bw := bufio.NewWriterSize(dst, 1<<16)
	cols := nexmark.Columns(*query)
	var rows int64
	buf := make([]byte, 0, 512)
	// Rows timed after the last event are fired by the end of input, not by
	// time passing: they have no meaningful latency.
	var latencies []float64
	lastTime := int64(math.MaxInt64)
	if *pace > 0 && *events > 0 {
		g, err := nexmark.NewGenerator(in.Config)
		if err != nil {
			return err
		}
		lastTime = g.TimeOf(*events - 1)
	}
	row := func(t int64, vals []record.Value) error {
		rows++
		if *pace > 0 && t <= lastTime {
			latencies = append(latencies, float64(time.Since(in.DueTime(t)))/float64(time.Millisecond))
		}
		buf = nexmark.AppendRowJSON(buf[:0], cols, vals)
		buf = append(buf, '\n')
		_, err := bw.Write(buf)
		return err
	}

	cpu0, _ := bench.Rusage()
	start := time.Now()
	in.Start = start
	res, err := nexmark.Run(ctx, nexmark.RunOptions{
		Query: *query, QueryOptions: nexmark.QueryOptions{Parallelism: *par, MaxOutOfOrderness: *ooo}, Input: in,
		Engine: runtime.Options{Transport: tr, Codec: codec, JobID: jobID, BatchSize: *batch, DisableChaining: *noChain, DisablePrefilter: *noPrefilter, DisableCombine: *noCombine}, Row: row,
	})
	wall := time.Since(start).Seconds()
	cpu1, rss := bench.Rusage()
	if err != nil {
		if *input != "" {
			return fmt.Errorf("--input %s: %w", *input, err)
		}
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("--out %s: %w", *out, err)
	}
	if f, ok := dst.(*os.File); ok && *out != "-" {
		if err := f.Close(); err != nil {
			return fmt.Errorf("--out %s: %w", *out, err)
		}
	}
	s := nexmarkSummary{Query: *query, Events: in.Len(), Rows: rows, Parallelism: *par, Sealed: !*plaintext,
		Tasks: res.Tasks, Frames: res.Frames, ExchangeBytes: res.Bytes,
		WallSeconds: wall, CPUSeconds: cpu1 - cpu0, PeakRSSBytes: rss}
	s.SetSeal(timed)
	if wall > 0 {
		s.EventsPerSecond = float64(s.Events) / wall
	}
	if len(latencies) > 0 {
		slices.Sort(latencies)
		s.LatencyP50Ms = latencies[len(latencies)/2]
		s.LatencyP99Ms = latencies[len(latencies)*99/100]
	}
	line, err := json.Marshal(s)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", line)
	return err
}
