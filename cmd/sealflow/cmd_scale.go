package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/party"
)

func init() {
	register("service scale", "change the parallelism of one operator of a running job's task; its keyed state is redistributed by key group from the last checkpoint", runServiceScale)
}

// runServiceScale implements `sealflow service scale --key F --job J --task
// T --operator OP --parallelism N`.
func runServiceScale(ctx context.Context, args []string) error {
	fs := newFlags("service scale")
	pf := addPartyFlags(fs)
	job := fs.String("job", "", "the job")
	task := fs.String("task", "", "the task running the operator")
	op := fs.String("operator", "", "the operator (JobSpec node id)")
	par := fs.Int("parallelism", 0, "its new number of subtasks")
	wf := addWaitFlags(fs)
	if err := parseParty(fs, args, 0); err != nil {
		return err
	}
	if *job == "" || *task == "" || *op == "" || *par <= 0 {
		return fmt.Errorf("%w: --job, --task, --operator and --parallelism are required", errUsage)
	}
	c, kf, err := pf.signer()
	if err != nil {
		return err
	}
	p := newProgress(pf.json)
	p.Step("rescaling operator %s of task %s to %d subtasks", *op, *task, *par)
	start := time.Now()
	r, err := submitStatement(ctx, c, kf, orchestrator.TypeJobScale, orchestrator.ScaleRequest{Job: *job, Task: *task, Operator: *op, Parallelism: *par})
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
	if wf.wait && node != "" {
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
		fmt.Fprintf(w, "operator %s of task %s: %d → %d subtasks (task generation %d); it restores its key groups from its last checkpoint\n", res.Operator, res.Task, res.From, res.Parallelism, res.Generation)
		if took > 0 {
			fmt.Fprintf(w, "task %s runs again %v after the rescale was accepted\n", res.Task, took.Round(time.Millisecond))
		}
	})
}
