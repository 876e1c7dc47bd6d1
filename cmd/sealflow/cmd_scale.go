package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/party"
)

func init() {
	register("service scale", "change the parallelism of one operator of a running job's task (or make it follow the available slots within bounds); its keyed state is redistributed by key group from the last checkpoint", runServiceScale)
}

// runServiceScale implements `sealflow service scale --key F --job J --task
// T --operator OP --parallelism N`, and `... --adaptive --min A --max B
// [--cooldown D]`: the orchestrator then keeps the operator's parallelism at
// the slots available to its task (the free slots of the nodes every
// owner's policy lets it run on), within [A, B], rescaling at most once per
// cool-down. The job may also be the only argument.
func runServiceScale(ctx context.Context, args []string) error {
	fs := newFlags("service scale")
	pf := addPartyFlags(fs)
	job := fs.String("job", "", "the job")
	task := fs.String("task", "", "the task running the operator")
	op := fs.String("operator", "", "the operator (JobSpec node id)")
	par := fs.Int("parallelism", 0, "its new number of subtasks")
	adaptive := fs.Bool("adaptive", false, "let its parallelism follow the slots available to the task, within --min and --max")
	lo := fs.Int("min", 1, "with --adaptive: the least parallelism")
	hi := fs.Int("max", 0, "with --adaptive: the largest parallelism")
	cooldown := fs.Duration("cooldown", 0, "with --adaptive: the least time between two rescales the orchestrator decides (default 30s)")
	wf := addWaitFlags(fs)
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		// `service scale JOB --operator ...`: the flags follow the job.
		args = append(slices.Clone(args[1:]), args[0])
	}
	if err := parseParty(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() == 1 {
		if *job != "" && *job != fs.Arg(0) {
			return fmt.Errorf("%w: the job is named twice (%q and --job %q)", errUsage, fs.Arg(0), *job)
		}
		*job = fs.Arg(0)
	}
	req := orchestrator.ScaleRequest{Job: *job, Task: *task, Operator: *op, Parallelism: *par}
	switch {
	case *job == "" || *task == "" || *op == "":
		return fmt.Errorf("%w: --job, --task and --operator are required", errUsage)
	case *adaptive && (*par != 0 || *hi <= 0):
		return fmt.Errorf("%w: --adaptive takes --min and --max, not --parallelism", errUsage)
	case !*adaptive && *par <= 0:
		return fmt.Errorf("%w: --parallelism (or --adaptive with --min and --max) is required", errUsage)
	case *adaptive:
		req.Adaptive = &orchestrator.AdaptiveBounds{Min: *lo, Max: *hi, Cooldown: orchestrator.Duration(*cooldown)}
	}
	c, kf, err := pf.signer()
	if err != nil {
		return err
	}
	p := newProgress(pf.json)
	if *adaptive {
		p.Step("making operator %s of task %s adaptive within %d..%d subtasks", *op, *task, *lo, *hi)
	} else {
		p.Step("rescaling operator %s of task %s to %d subtasks", *op, *task, *par)
	}
	start := time.Now()
	r, err := submitStatement(ctx, c, kf, orchestrator.TypeJobScale, req)
	p.Stop()
	if err != nil {
		return err
	}
	var res orchestrator.ScaleResult
	if err := decodeResult(r, &res); err != nil {
		return err
	}
	var node party.ID
	var views []struct {
		ID    string              `json:"id"`
		Tasks map[string]party.ID `json:"tasks"`
	}
	if err := c.Get(ctx, "/v1/jobs", &views); err == nil {
		for _, v := range views {
			if v.ID == *job {
				node = v.Tasks[*task]
			}
		}
	}
	var took time.Duration
	if wf.wait && node != "" && res.From != res.Parallelism {
		// The worker stops the task right after its next status report (at
		// most one 2 s interval) and runs it again at the new parallelism:
		// a running report received after that is the new run's.
		after := start.Add(2200 * time.Millisecond)
		if took, err = waitTaskOn(ctx, newProgress(pf.json), c, *job, *task, node, after, wf.timeout); err != nil {
			return err
		}
		took += after.Sub(start)
	}
	return pf.emit(r, func(w io.Writer) {
		if res.Adaptive != nil {
			fmt.Fprintf(w, "operator %s of task %s is adaptive: %d..%d subtasks following the slots available to the task (%d now)\n", res.Operator, res.Task, res.Adaptive.Min, res.Adaptive.Max, res.Available)
		}
		if res.From == res.Parallelism {
			fmt.Fprintf(w, "operator %s of task %s keeps its %d subtasks\n", res.Operator, res.Task, res.Parallelism)
			return
		}
		fmt.Fprintf(w, "operator %s of task %s: %d → %d subtasks (task generation %d); it restores its key groups from its last checkpoint\n", res.Operator, res.Task, res.From, res.Parallelism, res.Generation)
		if took > 0 {
			fmt.Fprintf(w, "task %s runs again %v after the rescale was accepted\n", res.Task, took.Round(time.Millisecond))
		}
	})
}
