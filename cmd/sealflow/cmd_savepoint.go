package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/sealflow/sealflow/orchestrator"
)

func init() {
	register("service savepoint", "retain a job's current state (every task's last accepted checkpoint) under a name, for a later deploy --from-savepoint", runServiceSavepoint)
	register("service stop", "stop a job (with --savepoint: retain its state first)", runServiceStop)
	register("service savepoints", "list the savepoints", runServiceSavepoints)
}

// runServiceSavepoint implements `sealflow service savepoint JOB [--name N]`.
func runServiceSavepoint(ctx context.Context, args []string) error {
	fs := newFlags("service savepoint")
	pf := addPartyFlags(fs)
	name := fs.String("name", "", "the savepoint's name (default: JOB-<n>)")
	jobFlag := fs.String("job", "", "the job (or give it as the argument after the flags)")
	if err := parseParty(fs, args, 1); err != nil {
		return err
	}
	c, kf, err := pf.signer()
	if err != nil {
		return err
	}
	job, err := jobArg(fs, *jobFlag)
	if err != nil {
		return err
	}
	progress := stepLogger(pf.json)
	progress("asking the orchestrator for a savepoint of job %s", job)
	r, err := submitStatement(ctx, c, kf, orchestrator.TypeJobSavepoint, orchestrator.SavepointRequest{Job: job, Name: *name})
	if err != nil {
		return err
	}
	var v orchestrator.SavepointView
	if err := decodeResult(r, &v); err != nil {
		return err
	}
	return pf.emit(r, func(w io.Writer) { printSavepoint(w, "took savepoint", v) })
}

// runServiceStop implements `sealflow service stop JOB [--savepoint [--name N]]`.
func runServiceStop(ctx context.Context, args []string) error {
	fs := newFlags("service stop")
	pf := addPartyFlags(fs)
	withSP := fs.Bool("savepoint", false, "take a savepoint before the job stops (deploy it again with --from-savepoint)")
	name := fs.String("name", "", "with --savepoint: the savepoint's name (default: JOB-<n>)")
	jobFlag := fs.String("job", "", "the job (or give it as the argument after the flags)")
	if err := parseParty(fs, args, 1); err != nil {
		return err
	}
	if *name != "" && !*withSP {
		return fmt.Errorf("%w: --name needs --savepoint", errUsage)
	}
	c, kf, err := pf.signer()
	if err != nil {
		return err
	}
	job, err := jobArg(fs, *jobFlag)
	if err != nil {
		return err
	}
	progress := stepLogger(pf.json)
	if *withSP {
		progress("stopping job %s after a savepoint", job)
	} else {
		progress("stopping job %s", job)
	}
	r, err := submitStatement(ctx, c, kf, orchestrator.TypeJobStop, orchestrator.JobStop{Job: job, Savepoint: *withSP, Name: *name})
	if err != nil {
		return err
	}
	var res struct {
		Job       string                      `json:"job"`
		Savepoint *orchestrator.SavepointView `json:"savepoint"`
	}
	if err := decodeResult(r, &res); err != nil {
		return err
	}
	return pf.emit(r, func(w io.Writer) {
		if res.Savepoint != nil {
			printSavepoint(w, "took savepoint", *res.Savepoint)
		}
		fmt.Fprintf(w, "stopped job %s: its workers stop its tasks within a status interval; output after each task's last accepted checkpoint is never committed\n", res.Job)
	})
}

// runServiceSavepoints implements `sealflow service savepoints`.
func runServiceSavepoints(ctx context.Context, args []string) error {
	fs := newFlags("service savepoints")
	pf := addPartyFlags(fs)
	if err := parseParty(fs, args, 0); err != nil {
		return err
	}
	c, err := pf.client()
	if err != nil {
		return err
	}
	var vs []orchestrator.SavepointView
	if err := c.Get(ctx, "/v1/savepoints", &vs); err != nil {
		return fmt.Errorf("listing savepoints: %w", err)
	}
	if vs == nil {
		vs = []orchestrator.SavepointView{}
	}
	return pf.emit(vs, func(w io.Writer) {
		for _, v := range vs {
			printSavepoint(w, "savepoint", v)
		}
		fmt.Fprintf(w, "%d savepoints\n", len(vs))
	})
}

func printSavepoint(w io.Writer, what string, v orchestrator.SavepointView) {
	fmt.Fprintf(w, "%s %s of job %s (service %s v%d) at %s\n", what, v.Name, v.Job, v.Service, v.Version, v.Taken.Format("2006-01-02 15:04:05.000Z07:00"))
	tasks := make([]string, 0, len(v.Tasks))
	for t := range v.Tasks {
		tasks = append(tasks, t)
	}
	slices.Sort(tasks)
	for _, t := range tasks {
		d := v.Digests[t]
		if len(d) > 16 {
			d = d[:16]
		}
		fmt.Fprintf(w, "  task %-24s checkpoint %d snapshot %s\n", t, v.Tasks[t], d)
	}
}

// jobArg returns the job named by --job or by the one argument.
func jobArg(fs *flag.FlagSet, flagValue string) (string, error) {
	switch {
	case flagValue != "" && fs.NArg() == 0:
		return flagValue, nil
	case flagValue == "" && fs.NArg() == 1:
		return fs.Arg(0), nil
	}
	return "", fmt.Errorf("%w: name the job once, with --job or as the argument after the flags", errUsage)
}

// stepLogger returns a function printing one progress line per step to
// standard error, with the time since the first; silent with --json.
func stepLogger(quiet bool) func(format string, args ...any) {
	start := time.Now()
	return func(format string, args ...any) {
		if quiet {
			return
		}
		fmt.Fprintf(os.Stderr, "[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
}
