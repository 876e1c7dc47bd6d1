package orchestrator

import (
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/party"
)

// TypeJobScale changes the parallelism of one operator of a running task, or
// makes it adaptive (ScaleRequest.Adaptive).
const TypeJobScale = "job.scale"

// EntryJobScaled is the log entry of a rescale, asked by the provider or
// decided by the machine for an adaptive operator (its body is a
// ScaleResult, with the reason).
const EntryJobScaled = "job.scaled"

// ScaleRequest is the body of a job.scale statement: either a fixed
// Parallelism, or Adaptive bounds the operator's parallelism then follows
// the available slots within (see adaptive.go).
type ScaleRequest struct {
	Job  string `json:"job"`
	Task string `json:"task"`
	// Operator is the JobSpec node id; Parallelism its new number of
	// subtasks (zero when Adaptive is set).
	Operator    string `json:"operator"`
	Parallelism int    `json:"parallelism,omitempty"`
	// Adaptive, when set, makes the operator adaptive within these bounds;
	// a later statement with a fixed Parallelism ends that.
	Adaptive *AdaptiveBounds `json:"adaptive,omitempty"`
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
	// new one restores the key groups from the task's last checkpoint. It
	// is unchanged when the parallelism is (an adaptive statement whose
	// target is the current parallelism).
	Generation uint64 `json:"generation"`
	// Adaptive holds the operator's bounds when it is adaptive.
	Adaptive *AdaptiveBounds `json:"adaptive,omitempty"`
	// Available is, for an adaptive operator, the slots available to its
	// task that the parallelism was computed from.
	Available int `json:"available,omitempty"`
	// Reason says why the parallelism changed.
	Reason string `json:"reason,omitempty"`
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
	maxP, err := scalable(r, b.Task, b.Operator)
	if err != nil {
		return err
	}
	info := r.Nodes[b.Operator]
	switch {
	case b.Adaptive != nil && b.Parallelism != 0:
		return refuse("scale.parallelism", "a job.scale statement sets either a parallelism or adaptive bounds, not both")
	case b.Adaptive != nil && (b.Adaptive.Min < 1 || b.Adaptive.Max < b.Adaptive.Min || b.Adaptive.Max > maxP):
		return refuse("scale.adaptive", "adaptive bounds %d..%d of operator %q are not within 1..%d (the job's key groups) with min ≤ max", b.Adaptive.Min, b.Adaptive.Max, b.Operator, maxP)
	case b.Adaptive != nil && b.Adaptive.Cooldown < 0:
		return refuse("scale.adaptive", "adaptive cool-down %v is negative", time.Duration(b.Adaptive.Cooldown))
	case b.Adaptive == nil && (b.Parallelism < 1 || b.Parallelism > maxP):
		return refuse("scale.parallelism", "parallelism %d of operator %q is outside 1..%d (the job's key groups)", b.Parallelism, b.Operator, maxP)
	}
	from := info.Node.Parallelism
	if p, ok := job.Scale[b.Task][b.Operator]; ok {
		from = p
	}
	if b.Adaptive == nil {
		// A fixed parallelism ends adaptive mode for the operator.
		if a := job.Adaptive[b.Task]; a != nil {
			delete(a, b.Operator)
			if len(a) == 0 {
				delete(job.Adaptive, b.Task)
			}
		}
		out.Result = m.rescale(now, job, b.Task, b.Operator, from, b.Parallelism, nil, 0, "set by the provider", out)
		return nil
	}
	a := &Adaptive{AdaptiveBounds: *b.Adaptive}
	if job.Adaptive == nil {
		job.Adaptive = map[string]map[string]*Adaptive{}
	}
	if job.Adaptive[b.Task] == nil {
		job.Adaptive[b.Task] = map[string]*Adaptive{}
	}
	job.Adaptive[b.Task][b.Operator] = a
	avail := 0
	if node := job.Tasks[b.Task]; node != "" {
		avail = AvailableSlots(slot, string(node), m.adaptiveCandidates(now, job, b.Task), m.placementCheck(svc))
	}
	target := AdaptiveTarget(avail, a.AdaptiveBounds)
	if target == from {
		out.Result = &ScaleResult{Job: job.ID, Task: b.Task, Operator: b.Operator, From: from, Parallelism: from,
			Generation: job.Generations[b.Task], Adaptive: b.Adaptive, Available: avail, Reason: "adaptive bounds set by the provider; the parallelism already fits"}
		out.Entries = append(out.Entries, entry(now, EntryAdaptiveSet, []string{"job:" + job.ID, "service:" + job.Service}, out.Result))
		return nil
	}
	out.Result = m.rescale(now, job, b.Task, b.Operator, from, target, b.Adaptive, avail, "adaptive bounds set by the provider", out)
	a.Last = now.UTC()
	return nil
}

// scalable checks that operator op of task (whose JobSpec resolved to r)
// may be rescaled, refusing by scale.operator when the task runs no such
// operator or it is a source or a sink, and returns the largest parallelism
// it may run at (the job's key groups).
func scalable(r *jobspec.Resolved, task, op string) (int, error) {
	info := r.Nodes[op]
	switch {
	case info == nil:
		return 0, refuse("scale.operator", "task %s runs no operator %q", task, op)
	case info.Node.Kind == jobspec.KindSource || info.Node.Kind == jobspec.KindSink:
		return 0, refuse("scale.operator", "operator %q is a %s: sources and sinks keep their parallelism (it is their streams' partitioning)", op, info.Node.Kind)
	}
	return min(r.Spec.MaxParallelism, state.MaxMaxParallelism), nil
}

// rescale sets the parallelism of operator op of task to p (from from),
// advances the task's generation (the run at the old parallelism has its
// acks refused; the new one restores its key groups from the task's last
// checkpoint) and logs job.scaled with the reason (and, for an adaptive
// operator, its bounds and the slots available).
func (m *Machine) rescale(now time.Time, job *Job, task, op string, from, p int, adaptive *AdaptiveBounds, avail int, reason string, out *Output) *ScaleResult {
	if job.Scale == nil {
		job.Scale = map[string]map[string]int{}
	}
	if job.Scale[task] == nil {
		job.Scale[task] = map[string]int{}
	}
	job.Scale[task][op] = p
	if job.Generations == nil {
		job.Generations = map[string]uint64{}
	}
	job.Generations[task]++
	res := &ScaleResult{Job: job.ID, Task: task, Operator: op, From: from, Parallelism: p, Generation: job.Generations[task],
		Adaptive: adaptive, Available: avail, Reason: reason}
	out.Entries = append(out.Entries, entry(now, EntryJobScaled, []string{"job:" + job.ID, "service:" + job.Service, "node:" + string(job.Tasks[task])}, res))
	return res
}
