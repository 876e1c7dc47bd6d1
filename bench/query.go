package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/sealflow/sealflow/confidential"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/exchange"
	"github.com/sealflow/sealflow/nexmark"
	"github.com/sealflow/sealflow/substrate"
)

// QueryOptions configure RunQuery.
type QueryOptions struct {
	// Query is q0, q1, ... (nexmark.Queries).
	Query string
	// Events is how many events to generate; Seed seeds the generator.
	Events, Seed int64
	// Parallelism is the number of tasks per operator (default 1).
	Parallelism int
	// Plaintext exchanges frames unsealed (default: sealed under an
	// ephemeral job key, as "sealflow nexmark run" does).
	Plaintext bool
	// NoSealTiming leaves the exchange codec unwrapped, so the summary's
	// SealCPUSeconds is 0 (by default a sealed run's codec is a
	// confidential.TimedCodec).
	NoSealTiming bool
	// NoChain runs every operator in its own task, so every edge crosses a
	// NATS exchange.
	NoChain bool
	// NoPrefilter turns off the maxima pre-filters of keyed exchanges
	// (runtime.Options.DisablePrefilter), to measure what they save.
	NoPrefilter bool
	// NoCombine turns off the count combiners of keyed exchanges into
	// counting windows (runtime.Options.DisableCombine), to measure what
	// they save.
	NoCombine bool
	// InFlightAuctions and ActivePeople override the generator's
	// NumInFlightAuctions (the number of auctions bids go to: the keys of
	// q5) and NumActivePeople; 0 keeps the Nexmark defaults.
	InFlightAuctions, ActivePeople int64
	// CPUProfile and MemProfile, if set, are files to write a CPU profile of
	// the run and an allocation profile (pprof "allocs") after it to.
	CPUProfile, MemProfile string
	// Rows, if not nil, receives the result rows as JSON lines.
	Rows io.Writer
}

// RunQuery runs one Nexmark query in this process on an embedded NATS server,
// like "sealflow nexmark run" but with the generator settings and profiles of
// o, and returns its summary. CPU seconds and peak RSS are the process's, so
// run it in a process of its own ("sealflow bench query") when they matter.
func RunQuery(ctx context.Context, o QueryOptions) (Summary, error) {
	cols := nexmark.Columns(o.Query)
	if cols == nil {
		return Summary{}, fmt.Errorf("bench: query %q is not one of %v", o.Query, nexmark.Queries)
	}
	if o.Parallelism == 0 {
		o.Parallelism = 1
	}
	if o.Parallelism < 0 || o.Events < 0 || o.InFlightAuctions < 0 || o.ActivePeople < 0 {
		return Summary{}, fmt.Errorf("bench: query %s: negative parallelism %d, events %d, auctions %d or people %d",
			o.Query, o.Parallelism, o.Events, o.InFlightAuctions, o.ActivePeople)
	}
	cfg := nexmark.Config{Seed: o.Seed, NumInFlightAuctions: o.InFlightAuctions, NumActivePeople: o.ActivePeople}
	if err := cfg.Validate(); err != nil {
		return Summary{}, fmt.Errorf("bench: query %s: %w", o.Query, err)
	}
	dir, err := os.MkdirTemp("", "sealflow-bench-")
	if err != nil {
		return Summary{}, err
	}
	defer os.RemoveAll(dir)
	srv, err := substrate.Start(ctx, substrate.Options{StoreDir: dir, Sync: substrate.SyncRelaxed})
	if err != nil {
		return Summary{}, err
	}
	defer srv.Shutdown()
	nc, err := substrate.Connect(ctx, srv.ClientURL(), "sealflow-bench")
	if err != nil {
		return Summary{}, err
	}
	defer nc.Close()
	tr, err := exchange.NewNATS(nc, exchange.NATSOptions{})
	if err != nil {
		return Summary{}, err
	}
	var id [8]byte
	rand.Read(id[:])
	jobID := fmt.Sprintf("bench-%s-%x", o.Query, id)
	codec, timed, err := ExchangeCodec(jobID, o.Plaintext, !o.NoSealTiming)
	if err != nil {
		return Summary{}, err
	}
	var bw *bufio.Writer
	if o.Rows != nil {
		bw = bufio.NewWriterSize(o.Rows, 1<<16)
	}
	var rows int64
	buf := make([]byte, 0, 512)
	row := func(_ int64, vals []record.Value) error {
		rows++
		if bw == nil {
			return nil
		}
		buf = append(nexmark.AppendRowJSON(buf[:0], cols, vals), '\n')
		_, err := bw.Write(buf)
		return err
	}

	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
		if err != nil {
			return Summary{}, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return Summary{}, fmt.Errorf("bench: cpu profile %s: %w", o.CPUProfile, err)
		}
	}
	cpu0, _ := Rusage()
	start := time.Now()
	res, err := nexmark.Run(ctx, nexmark.RunOptions{
		Query: o.Query, QueryOptions: nexmark.QueryOptions{Parallelism: o.Parallelism},
		Input:  nexmark.Input{Events: o.Events, Config: cfg},
		Engine: runtime.Options{Transport: tr, Codec: codec, JobID: jobID, DisableChaining: o.NoChain, DisablePrefilter: o.NoPrefilter, DisableCombine: o.NoCombine}, Row: row,
	})
	wall := time.Since(start).Seconds()
	cpu1, rss := Rusage()
	if o.CPUProfile != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return Summary{}, err
	}
	if bw != nil {
		if err := bw.Flush(); err != nil {
			return Summary{}, fmt.Errorf("bench: query %s: writing rows: %w", o.Query, err)
		}
	}
	if o.MemProfile != "" {
		if err := writeProfile(o.MemProfile, "allocs"); err != nil {
			return Summary{}, err
		}
	}
	s := Summary{Query: o.Query, Events: o.Events, Rows: rows, Parallelism: o.Parallelism, Sealed: !o.Plaintext,
		Tasks: res.Tasks, Frames: res.Frames, ExchangeBytes: res.Bytes,
		WallSeconds: wall, CPUSeconds: cpu1 - cpu0, PeakRSSBytes: rss}
	s.SetSeal(timed)
	if wall > 0 {
		s.EventsPerSecond = float64(o.Events) / wall
	}
	return s, nil
}

// SetSeal records the CPU time the run's timed codec spent sealing and
// opening; a nil timed (plaintext, timing off, no thread clock) leaves the
// run unmeasured.
func (s *Summary) SetSeal(timed confidential.TimedCodec) {
	if timed != nil {
		s.SealCPUSeconds, s.SealTimed = timed.Spent().Seconds(), true
	}
}

// ExchangeCodec returns the exchange codec of a benchmark run of job: for a
// sealed run, an ephemeral-key confidential.ExchangeCodec, wrapped in a
// confidential.TimedCodec (also returned, to read the run's seal CPU time)
// if timed and the platform has a thread CPU clock (confidential.ThreadClock);
// for a plaintext run, runtime.IdentityCodec.
func ExchangeCodec(job string, plaintext, timed bool) (runtime.FrameCodec, confidential.TimedCodec, error) {
	if plaintext {
		return runtime.IdentityCodec{}, nil, nil
	}
	c, err := confidential.NewEphemeralExchangeCodec(job)
	if err != nil {
		return nil, nil, err
	}
	if !timed || !confidential.ThreadClock {
		return c, nil, nil
	}
	t := confidential.NewTimedCodec(c)
	return t, t, nil
}

func writeProfile(path, name string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		f.Close()
		return fmt.Errorf("bench: %s profile %s: %w", name, path, err)
	}
	return f.Close()
}

// Rusage returns this process's user+system CPU seconds and peak resident
// set size in bytes (getrusage; Linux reports ru_maxrss in KiB).
func Rusage() (cpuSeconds float64, peakRSS int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime), int64(ru.Maxrss) * 1024
}
