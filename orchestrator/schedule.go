package orchestrator

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// TaskSlot is one task the scheduler must place: a parallel subtask of a chain of
// operators of a job.
type TaskSlot struct {
	// ID is the task id, "<job>/<chain>/<subtask>".
	ID string `json:"id"`
	// Tiers, when not empty, lists the tiers the task may run on, most preferred
	// first (from the JobSpec's placement hints).
	Tiers []string `json:"tiers,omitempty"`
	// Site, when set, pins the task to a site (sources are placed at their
	// owner's site).
	Site string `json:"site,omitempty"`
	// Stage names the manifest stage (JobSpec) the task runs; empty for the
	// manifest's single Spec.
	Stage string `json:"stage,omitempty"`
	// Reads are the input streams the task reads (it receives their keys).
	Reads []string `json:"reads,omitempty"`
	// Writes are the output streams the task writes (it receives their keys).
	Writes []string `json:"writes,omitempty"`
	// Selectivity, when above zero, declares the bytes the task writes per
	// byte it reads, for placement (EstimateFlows): below 1 for a task that
	// pre-aggregates. When zero it is estimated from the task's JobSpec.
	Selectivity float64 `json:"selectivity,omitempty"`
}

// Candidate is an admitted node the scheduler may use.
type Candidate struct {
	ID     string
	Tier   string
	Region string
	Site   string
	// Free is the number of task slots still free on the node.
	Free int
}

// PlacementCheck decides whether a task may run on a node. It returns nil or a
// refusal naming the rule (an owner's policy rule, typically).
type PlacementCheck func(task TaskSlot, node Candidate) error

// Placement is the outcome of scheduling: where each task runs.
type Placement map[string]string // task id → node id

// ScheduleError explains why some task could not be placed: for each node the
// rule that refused it (or that it had no free slot).
type ScheduleError struct {
	Task    string
	Refused map[string]string // node id → reason
}

// Error implements error.
func (e *ScheduleError) Error() string {
	if len(e.Refused) == 0 {
		return fmt.Sprintf("task %s: no admitted node to run it on", e.Task)
	}
	ids := make([]string, 0, len(e.Refused))
	for id := range e.Refused {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var b strings.Builder
	fmt.Fprintf(&b, "task %s cannot be placed on any admitted node:", e.Task)
	for _, id := range ids {
		fmt.Fprintf(&b, " %s: %s;", id, e.Refused[id])
	}
	return strings.TrimSuffix(b.String(), ";")
}

// RefusedBy returns the rule that refused the first node, so that a schedule
// failure caused by a policy names it.
func (e *ScheduleError) RefusedBy() string { return "schedule.no-node" }

// ScheduleOption adjusts Schedule.
type ScheduleOption func(*scheduleConfig)

type scheduleConfig struct {
	geo *Geo
}

// WithGeo makes Schedule prefer, among the nodes a task may run on, those
// whose site sends the fewest estimated bytes over WAN links (Geo.WANCost).
func WithGeo(g *Geo) ScheduleOption { return func(c *scheduleConfig) { c.geo = g } }

// Schedule places tasks on candidates. It is deterministic: tasks are placed in
// the order given; for each task, the nodes allowed by check are ranked by
// estimated WAN bytes (WithGeo; all equal without it), then by tier
// preference, then by most free slots, then by id. A node's free slots shrink
// as tasks are placed on it. The candidates slice is not modified.
func Schedule(tasks []TaskSlot, nodes []Candidate, check PlacementCheck, opts ...ScheduleOption) (Placement, error) {
	var cfg scheduleConfig
	for _, o := range opts {
		o(&cfg)
	}
	geo := cfg.geo.withHub(nodes)
	free := make(map[string]int, len(nodes))
	for _, n := range nodes {
		free[n.ID] = n.Free
	}
	out := make(Placement, len(tasks))
	for _, t := range tasks {
		refused := map[string]string{}
		var ok []Candidate
		for _, n := range nodes {
			switch {
			case t.Site != "" && n.Site != t.Site:
				refused[n.ID] = fmt.Sprintf("task is pinned to site %q, node is at %q", t.Site, n.Site)
			case len(t.Tiers) > 0 && !slices.Contains(t.Tiers, n.Tier):
				refused[n.ID] = fmt.Sprintf("task allows tiers %v, node is %q", t.Tiers, n.Tier)
			case free[n.ID] <= 0:
				refused[n.ID] = "no free slot"
			default:
				if err := check(t, n); err != nil {
					refused[n.ID] = err.Error()
					continue
				}
				ok = append(ok, n)
			}
		}
		if len(ok) == 0 {
			return nil, &ScheduleError{Task: t.ID, Refused: refused}
		}
		rank := func(n Candidate) int {
			if i := slices.Index(t.Tiers, n.Tier); i >= 0 {
				return i
			}
			return 0
		}
		cost := make(map[string]float64, len(ok))
		for _, n := range ok {
			cost[n.ID] = geo.WANCost(t.ID, n.Site)
		}
		best := slices.MinFunc(ok, func(a, b Candidate) int {
			if c := cmp.Compare(cost[a.ID], cost[b.ID]); c != 0 {
				return c
			}
			if c := cmp.Compare(rank(a), rank(b)); c != 0 {
				return c
			}
			if c := cmp.Compare(free[b.ID], free[a.ID]); c != 0 {
				return c
			}
			return cmp.Compare(a.ID, b.ID)
		})
		out[t.ID] = best.ID
		free[best.ID]--
	}
	return out, nil
}
