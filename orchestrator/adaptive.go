package orchestrator

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// Adaptive parallelism: the provider bounds an operator's parallelism
// (job.scale with ScaleRequest.Adaptive) and the machine keeps it at the
// slots available to the operator's task, clamped to the bounds. It
// re-evaluates when a node is admitted, drained, removed or lost (and when
// the caller asks, see Adapt) and rescales exactly like job.scale: the
// task's generation advances and the new run restores its key groups from
// the task's last checkpoint. Every owner's placement policy bounds the
// slots counted: a node the task may not run on offers it none.

// DefaultAdaptiveCooldown is the cool-down of an adaptive operator whose
// bounds set none: the least time between two rescales the machine decides.
const DefaultAdaptiveCooldown = 30 * time.Second

// EntryAdaptiveSet is logged when an operator is made adaptive at the
// parallelism it runs at already (otherwise the job.scaled entry says it).
const EntryAdaptiveSet = "job.adaptive"

// AdaptiveBounds are the bounds the provider sets on an adaptive operator.
type AdaptiveBounds struct {
	// Min and Max bound the parallelism (1 ≤ Min ≤ Max ≤ the job's key
	// groups).
	Min int `json:"min"`
	Max int `json:"max"`
	// Cooldown is the least time between two rescales the machine decides
	// for the operator (DefaultAdaptiveCooldown when zero), so that nodes
	// coming and going do not restart the task over and over.
	Cooldown Duration `json:"cooldown,omitempty"`
}

// cooldown returns the bounds' cool-down, or the default.
func (b AdaptiveBounds) cooldown() time.Duration {
	if b.Cooldown == 0 {
		return DefaultAdaptiveCooldown
	}
	return time.Duration(b.Cooldown)
}

// Adaptive is an adaptive operator's persisted state (Job.Adaptive).
type Adaptive struct {
	AdaptiveBounds
	// Last is when the machine last changed the operator's parallelism
	// (zero before the first change); the next change waits for the
	// cool-down after it.
	Last time.Time `json:"last,omitzero"`
}

// AvailableSlots returns the slots available to task t, which runs on node
// on: the free slots of every candidate node that meets the task's own
// constraints (tier, site) and that check (every input owner's placement
// policy) accepts, plus the slot t holds itself when on is one of them.
// Negative free counts (a node over-committed) count as zero.
func AvailableSlots(t TaskSlot, on string, nodes []Candidate, check PlacementCheck) int {
	n := 0
	for _, c := range nodes {
		if ok, _ := slotFits(t, c); !ok || check(t, c) != nil {
			continue
		}
		n += max(c.Free, 0)
		if c.ID == on {
			n++
		}
	}
	return n
}

// takeSlots takes n slots off the free slots of nodes that task t, which
// runs on node on, may use (as AvailableSlots counts them): first on its own
// node, then on the others in their order, never below zero. An adaptive
// task's operators run at up to their parallelism on the capacity of those
// nodes, so the next adaptive task of a pass must not count it again.
func takeSlots(t TaskSlot, on string, n int, nodes []Candidate, check PlacementCheck) {
	take := func(c *Candidate) {
		if k := min(n, max(c.Free, 0)); k > 0 {
			c.Free -= k
			n -= k
		}
	}
	if i := slices.IndexFunc(nodes, func(c Candidate) bool { return c.ID == on }); i >= 0 {
		take(&nodes[i])
	}
	for i := range nodes {
		if n <= 0 {
			return
		}
		if ok, _ := slotFits(t, nodes[i]); !ok || nodes[i].ID == on || check(t, nodes[i]) != nil {
			continue
		}
		take(&nodes[i])
	}
}

// AdaptiveTarget returns the parallelism an adaptive operator should run at
// when available slots are available to its task: available, clamped to
// [b.Min, b.Max].
func AdaptiveTarget(available int, b AdaptiveBounds) int {
	return min(max(available, b.Min), b.Max)
}

// AdaptDue reports whether an adaptive operator running at cur should be
// rescaled to target at now, given its last rescale and cool-down: only
// when the target differs, and not before cooldown has passed since last.
func AdaptDue(cur, target int, last, now time.Time, cooldown time.Duration) bool {
	if cur == target {
		return false
	}
	return last.IsZero() || now.Sub(last) >= cooldown
}

// adaptiveReason is the logged reason of an adaptive rescale.
func adaptiveReason(why string, available int, b AdaptiveBounds) string {
	return fmt.Sprintf("adaptive: %s; %d slots available to the task, bounds %d..%d", why, available, b.Min, b.Max)
}

// parallelismOf returns the parallelism operator op of task runs at: the
// job's override (job.scale), or its JobSpec's.
func (m *Machine) parallelismOf(job *Job, slot TaskSlot, op string) (int, bool) {
	if p, ok := job.Scale[slot.ID][op]; ok {
		return p, true
	}
	svc := m.jobService(job)
	if svc == nil {
		return 0, false
	}
	r, err := resolveStage(svc.Manifest.StageSpec(&slot))
	if err != nil || r.Nodes[op] == nil {
		return 0, false
	}
	return r.Nodes[op].Node.Parallelism, true
}

// adapt rescales every adaptive operator whose target parallelism (the
// slots available to its task, within its bounds) differs from the one it
// runs at, unless its cool-down has not passed since its last change; why
// says what changed (a node admitted, drained, ...). A task that is not
// placed is left as it is. The tasks share the free slots: they are served
// in job, task id order, and each takes the slots its operators run at after
// the pass (beyond the one it holds) off the free slots the next ones count,
// so two adaptive tasks never count the same free slot. It returns the
// rescales, in job, task, operator order.
func (m *Machine) adapt(now time.Time, why string, out *Output) []*ScaleResult {
	var res []*ScaleResult
	tasks := m.jobTasks(func(j *Job, t string) bool { return len(j.Adaptive[t]) > 0 && j.Tasks[t] != "" })
	if len(tasks) == 0 {
		return nil
	}
	slices.SortStableFunc(tasks, func(a, b jobTask) int {
		if c := cmp.Compare(a.job.ID, b.job.ID); c != 0 {
			return c
		}
		return cmp.Compare(a.task, b.task)
	})
	cands := m.candidates(now)
	for _, jt := range tasks {
		svc := m.jobService(jt.job)
		on, check := string(jt.job.Tasks[jt.task]), m.placementCheck(svc)
		avail := AvailableSlots(jt.slot, on, cands, check)
		held := 1 // the slot the task holds, counted as used already
		ops := make([]string, 0, len(jt.job.Adaptive[jt.task]))
		for op := range jt.job.Adaptive[jt.task] {
			ops = append(ops, op)
		}
		slices.Sort(ops)
		for _, op := range ops {
			a := jt.job.Adaptive[jt.task][op]
			cur, ok := m.parallelismOf(jt.job, jt.slot, op)
			if !ok {
				continue
			}
			target := AdaptiveTarget(avail, a.AdaptiveBounds)
			if !AdaptDue(cur, target, a.Last, now, a.cooldown()) {
				held = max(held, cur)
				continue
			}
			held = max(held, target)
			bounds := a.AdaptiveBounds
			r := m.rescale(now, jt.job, jt.task, op, cur, target, &bounds, avail, adaptiveReason(why, avail, bounds), out)
			a.Last = now.UTC()
			res = append(res, r)
		}
		takeSlots(jt.slot, on, held-1, cands, check)
	}
	return res
}

// AdaptResult is the Output.Result of Adapt.
type AdaptResult struct {
	Rescales []*ScaleResult `json:"rescales,omitempty"`
}

// Adapt re-evaluates every adaptive operator at now, as the machine does
// itself when a node is admitted, drained, removed or lost: a rescale that
// waited for its cool-down happens once the cool-down has passed. Like
// NodeLost it is a trusted input of the orchestrator itself, deterministic
// like Apply; the caller appends the entries and persists the state when
// the result holds rescales. why goes into the logged reason.
func (m *Machine) Adapt(now time.Time, why string) *Output {
	out := &Output{Type: EntryJobScaled}
	out.Result = &AdaptResult{Rescales: m.adapt(now, why, out)}
	return out
}
