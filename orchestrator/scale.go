package orchestrator

import (
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/party"
)

// TypeJobScale changes the parallelism of one operator of a running task.
const TypeJobScale = "job.scale"

// ScaleRequest is the body of a job.scale statement.
type ScaleRequest struct {
	Job  string `json:"job"`
	Task string `json:"task"`
	// Operator is the JobSpec node id; Parallelism its new number of
	// subtasks.
	Operator    string `json:"operator"`
	Parallelism int    `json:"parallelism"`
}

// ScaleResult is the Output.Result of job.scale.
type ScaleResult struct {
	Job         string `json:"job"`
	Task        string `json:"task"`
	Operator    string `json:"operator"`
	From        int    `json:"from"`
	Parallelism int    `json:"parallelism"`
	// Generation is the task's run generation from now on: the run at the
	// old parallelism has its acknowledgements refused, and the run at the
	// new one restores the key groups from the task's last checkpoint.
	Generation uint64 `json:"generation"`
}

func (m *Machine) scale(now time.Time, st *party.Statement, issuer *party.Identity, out *Output) error {
	var b ScaleRequest
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	job, svc, err := m.jobOfProvider(st, issuer, b.Job)
	if err != nil {
		return err
	}
	slot, ok := m.slotOf(job, b.Task)
	if !ok {
		return refuse("scale.task", "job %s has no task %q", b.Job, b.Task)
	}
	r, err := resolveStage(svc.Manifest.StageSpec(&slot))
	if err != nil {
		return refuse("scale.task", "task %s: %v", b.Task, err)
	}
	info := r.Nodes[b.Operator]
	switch {
	case info == nil:
		return refuse("scale.operator", "task %s runs no operator %q", b.Task, b.Operator)
	case info.Node.Kind == jobspec.KindSource || info.Node.Kind == jobspec.KindSink:
		return refuse("scale.operator", "operator %q is a %s: sources and sinks keep their parallelism (it is their streams' partitioning)", b.Operator, info.Node.Kind)
	case b.Parallelism < 1 || b.Parallelism > r.Spec.MaxParallelism || b.Parallelism > state.MaxMaxParallelism:
		return refuse("scale.parallelism", "parallelism %d of operator %q is outside 1..%d (the job's key groups)", b.Parallelism, b.Operator, r.Spec.MaxParallelism)
	}
	from := info.Node.Parallelism
	if p, ok := job.Scale[b.Task][b.Operator]; ok {
		from = p
	}
	if job.Scale == nil {
		job.Scale = map[string]map[string]int{}
	}
	if job.Scale[b.Task] == nil {
		job.Scale[b.Task] = map[string]int{}
	}
	job.Scale[b.Task][b.Operator] = b.Parallelism
	if job.Generations == nil {
		job.Generations = map[string]uint64{}
	}
	job.Generations[b.Task]++
	res := &ScaleResult{Job: job.ID, Task: b.Task, Operator: b.Operator, From: from, Parallelism: b.Parallelism, Generation: job.Generations[b.Task]}
	out.Result = res
	out.Entries = append(out.Entries, entry(now, "job.scaled", []string{"job:" + job.ID, "service:" + job.Service, "node:" + string(job.Tasks[b.Task])}, res))
	return nil
}
