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
		if !usable(t, c, check) {
			continue
		}
		n += max(c.Free, 0)
		if c.ID == on {
			n++
		}
	}
	return n
}

// usable reports whether task t may use the slots of node c: c meets the
// task's own constraints and check accepts it.
func usable(t TaskSlot, c Candidate, check PlacementCheck) bool {
	ok, _ := slotFits(t, c)
	return ok && check(t, c) == nil
}

// takeSlots takes n slots off the free slots of the nodes that task t,
// which runs on node on, may use (those AvailableSlots counts): first on its
// own node, then on the others in their order, never below zero.
func takeSlots(t TaskSlot, on string, n int, nodes []Candidate, check PlacementCheck) {
	for _, own := range []bool{true, false} {
		for i := range nodes {
			if n <= 0 {
				return
			}
			if (nodes[i].ID == on) != own || !usable(t, nodes[i], check) {
				continue
			}
			if k := min(n, max(nodes[i].Free, 0)); k > 0 {
				nodes[i].Free -= k
				n -= k
			}
		}
	}
}

// adaptiveTasks returns the placed tasks with an adaptive operator, in job,
// task id order.
func (m *Machine) adaptiveTasks() []jobTask {
	tasks := m.jobTasks(func(j *Job, t string) bool { return len(j.Adaptive[t]) > 0 && j.Tasks[t] != "" })
	slices.SortStableFunc(tasks, func(a, b jobTask) int {
		if c := cmp.Compare(a.job.ID, b.job.ID); c != 0 {
			return c
		}
		return cmp.Compare(a.task, b.task)
	})
	return tasks
}

// adaptiveCandidates returns the candidate nodes (candidates) with the
// slots the other adaptive tasks use taken off their free slots: the nodes
// and free slots an adaptive rescale of task of job counts (adapt and
// job.scale both), so that no two adaptive tasks count the same free slot.
// Each placed adaptive task other than task of job holds one slot (which
// candidates counts already) and its adaptive operators run at up to their
// parallelism: that parallelism less one is taken off the nodes it may use
// (takeSlots), the tasks taken in job, task id order. The task's own use is
// left in its free slots, since it is the task's to count again.
func (m *Machine) adaptiveCandidates(now time.Time, job *Job, task string) []Candidate {
	cands := m.candidates(now)
	for _, jt := range m.adaptiveTasks() {
		if jt.job == job && jt.task == task {
			continue
		}
		p := 1
		for op := range jt.job.Adaptive[jt.task] {
			if cur, ok := m.parallelismOf(jt.job, jt.slot, op); ok {
				p = max(p, cur)
			}
		}
		takeSlots(jt.slot, string(jt.job.Tasks[jt.task]), p-1, cands, m.placementCheck(m.jobService(jt.job)))
	}
	return cands
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
// placed is left as it is. The tasks share the free slots: each counts them
// less those the other adaptive tasks' operators run at
// (adaptiveCandidates), served in job, task id order, each seeing the
// rescales of those before it, so two adaptive tasks never count the same
// free slot. It returns the rescales, in job, task, operator order.
func (m *Machine) adapt(now time.Time, why string, out *Output) []*ScaleResult {
	var res []*ScaleResult
	for _, jt := range m.adaptiveTasks() {
		svc := m.jobService(jt.job)
		on := string(jt.job.Tasks[jt.task])
		avail := AvailableSlots(jt.slot, on, m.adaptiveCandidates(now, jt.job, jt.task), m.placementCheck(svc))
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
				continue
			}
			bounds := a.AdaptiveBounds
			r := m.rescale(now, jt.job, jt.task, op, cur, target, &bounds, avail, adaptiveReason(why, avail, bounds), out)
			a.Last = now.UTC()
			res = append(res, r)
		}
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
