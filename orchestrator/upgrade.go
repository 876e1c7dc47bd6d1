package orchestrator

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/party"
)

// Statement types of versioned upgrades.
const (
	// TypeJobUpgrade moves a running job to a newer submitted version of its
	// service, carrying its state across through a savepoint.
	TypeJobUpgrade = "job.upgrade"
	// TypeJobRollback returns an upgraded job to the version it ran before
	// and the savepoint taken at the upgrade.
	TypeJobRollback = "job.rollback"
)

// UpgradeRequest is the body of a job.upgrade statement.
type UpgradeRequest struct {
	Job string `json:"job"`
	// Digest is the version to run; the service's latest when empty.
	Digest string `json:"digest,omitempty"`
}

// RollbackRequest is the body of a job.rollback statement.
type RollbackRequest struct {
	Job string `json:"job"`
}

// Previous records what a job ran before its last upgrade.
type Previous struct {
	Digest    string `json:"digest"`
	Version   int64  `json:"version"`
	Savepoint string `json:"savepoint"`
	// Scale and Adaptive are the operator overrides (job.scale) the job
	// had at the upgrade: a rollback restores them with the version.
	Scale    map[string]map[string]int       `json:"scale,omitempty"`
	Adaptive map[string]map[string]*Adaptive `json:"adaptive,omitempty"`
}

// DroppedOverride is an operator override (job.scale) that did not carry
// into the version a job moved to, and why.
type DroppedOverride struct {
	Task     string `json:"task"`
	Operator string `json:"operator"`
	// Parallelism is the fixed parallelism dropped (zero when the operator
	// had none); Adaptive the adaptive bounds dropped, if any.
	Parallelism int             `json:"parallelism,omitempty"`
	Adaptive    *AdaptiveBounds `json:"adaptive,omitempty"`
	Reason      string          `json:"reason"`
}

// UpgradeResult is the Output.Result of job.upgrade and job.rollback.
type UpgradeResult struct {
	Job         string              `json:"job"`
	FromVersion int64               `json:"from_version"`
	ToVersion   int64               `json:"to_version"`
	FromDigest  string              `json:"from_digest"`
	ToDigest    string              `json:"to_digest"`
	Savepoint   string              `json:"savepoint"`
	Tasks       map[string]party.ID `json:"tasks"`
	// Scale and Adaptive are the operator overrides (job.scale) the job
	// runs with in the new version: those of the version it left whose task
	// and operator the new version still has (for a rollback, those the
	// version had before the upgrade). Dropped are the others, each with
	// its reason.
	Scale    map[string]map[string]int            `json:"scale,omitempty"`
	Adaptive map[string]map[string]AdaptiveBounds `json:"adaptive,omitempty"`
	Dropped  []DroppedOverride                    `json:"dropped_overrides,omitempty"`
}

// stateful reports whether nodes of kind keep state a savepoint carries
// (sources and sinks keep positions and pending output).
func stateful(k jobspec.Kind) bool {
	switch k {
	case jobspec.KindSource, jobspec.KindSink, jobspec.KindWindowAggregate, jobspec.KindTopN,
		jobspec.KindWindowJoin, jobspec.KindIntervalJoin, jobspec.KindJoin:
		return true
	}
	return false
}

// checkStateCompatible checks that every task of the running version that
// has state keeps it readable in the new version: the same task, and for each
// node with state (sources, sinks, windows, joins) a node of the same id and
// kind, parameters, parallelism and input schemas. It refuses by
// upgrade.state, naming the first difference.
func checkStateCompatible(from, to *Service, points map[string]*RestorePoint) error {
	newTasks := map[string]*TaskSlot{}
	for i := range to.Manifest.Tasks {
		newTasks[to.Manifest.Tasks[i].ID] = &to.Manifest.Tasks[i]
	}
	for i := range from.Manifest.Tasks {
		ot := &from.Manifest.Tasks[i]
		if points[ot.ID] == nil {
			continue
		}
		nt := newTasks[ot.ID]
		if nt == nil {
			return refuse("upgrade.state", "task %s holds state, but version %d has no task %s", ot.ID, to.Manifest.Version, ot.ID)
		}
		oldR, err := resolveStage(from.Manifest.StageSpec(ot))
		if err != nil {
			return refuse("upgrade.state", "task %s of version %d: %v", ot.ID, from.Manifest.Version, err)
		}
		newR, err := resolveStage(to.Manifest.StageSpec(nt))
		if err != nil {
			return refuse("upgrade.state", "task %s of version %d: %v", nt.ID, to.Manifest.Version, err)
		}
		for _, id := range oldR.Order {
			on := oldR.Nodes[id]
			if !stateful(on.Node.Kind) {
				continue
			}
			nn := newR.Nodes[id]
			if nn == nil {
				return refuse("upgrade.state", "task %s: node %q (%s) holds state, but version %d has no node %q", ot.ID, id, on.Node.Kind, to.Manifest.Version, id)
			}
			if nn.Node.Kind != on.Node.Kind {
				return refuse("upgrade.state", "task %s: node %q is a %s, version %d makes it a %s", ot.ID, id, on.Node.Kind, to.Manifest.Version, nn.Node.Kind)
			}
			if on.Node.Parallelism != nn.Node.Parallelism {
				return refuse("upgrade.state", "task %s: node %q runs %d subtasks, version %d runs %d (rescaling across an upgrade is not supported)", ot.ID, id, on.Node.Parallelism, to.Manifest.Version, nn.Node.Parallelism)
			}
			op, _ := json.Marshal(on.Node.Params)
			np, _ := json.Marshal(nn.Node.Params)
			if !bytes.Equal(op, np) {
				return refuse("upgrade.state", "task %s: node %q changes its parameters (%s → %s), so its state would not decode", ot.ID, id, op, np)
			}
			oi, _ := json.Marshal(on.In)
			ni, _ := json.Marshal(nn.In)
			if !bytes.Equal(oi, ni) {
				return refuse("upgrade.state", "task %s: node %q receives records of another schema in version %d", ot.ID, id, to.Manifest.Version)
			}
		}
	}
	return nil
}

func resolveStage(raw json.RawMessage) (*jobspec.Resolved, error) {
	spec, err := jobspec.Parse(raw)
	if err != nil {
		return nil, err
	}
	return spec.Resolve()
}

func (m *Machine) upgrade(now time.Time, st *party.Statement, issuer *party.Identity, out *Output) error {
	var b UpgradeRequest
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	job, from, err := m.jobOfProvider(st, issuer, b.Job)
	if err != nil {
		return err
	}
	to := m.st.Services[job.Service]
	if b.Digest != "" {
		to = m.st.Versions[b.Digest]
	}
	switch {
	case to == nil || to.Manifest.ID != job.Service:
		return refuse("upgrade.version", "service %s has no submitted version with digest %q", job.Service, b.Digest)
	case to.Digest == job.Digest:
		return refuse("upgrade.version", "job %s already runs version %d (digest %s)", job.ID, to.Manifest.Version, short(to.Digest))
	case to.Manifest.Version <= from.Manifest.Version:
		return refuse("upgrade.version", "version %d is not newer than the running version %d; use job.rollback to go back", to.Manifest.Version, from.Manifest.Version)
	}
	subjects := []string{"job:" + job.ID, "service:" + job.Service}
	logRefusal := func(err error) error {
		out.Entries = append(out.Entries, entry(now, "job.upgrade.refused", subjects,
			map[string]any{"job": job.ID, "from_version": from.Manifest.Version, "to_version": to.Manifest.Version, "to_digest": to.Digest, "rule": ruleOf(err), "reason": err.Error()}))
		return err
	}
	// Every owner decides: an explicit approval of the new digest, or a
	// service rule of its policy that admits it. Until then the old version
	// keeps running.
	if pending := m.pendingOwners(to); len(pending) > 0 {
		out.Result = map[string]any{"pending": pending, "digest": to.Digest, "running_version": from.Manifest.Version}
		return logRefusal(refuse("approval.pending", "version %d of service %s (digest %s) is not approved by the owners of %v; version %d keeps running", to.Manifest.Version, to.Manifest.ID, short(to.Digest), pending, from.Manifest.Version))
	}
	if err := checkStateCompatible(from, to, m.st.Checkpoints[job.ID].latestAll()); err != nil {
		return logRefusal(err)
	}
	name := fmt.Sprintf("%s-v%d-upgrade-%d", job.ID, from.Manifest.Version, now.UnixMilli())
	res, err := m.switchVersion(now, job, from, to, name, true, out)
	if err != nil {
		return logRefusal(err)
	}
	out.Result = res
	out.Entries = append(out.Entries, entry(now, "job.upgraded", subjects, res))
	return nil
}

func (m *Machine) rollback(now time.Time, st *party.Statement, issuer *party.Identity, out *Output) error {
	var b RollbackRequest
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	job, from, err := m.jobOfProvider(st, issuer, b.Job)
	if err != nil {
		return err
	}
	if job.Previous == nil {
		return refuse("rollback.none", "job %s was not upgraded; there is nothing to roll back to", job.ID)
	}
	to := m.st.Versions[job.Previous.Digest]
	if to == nil {
		return refuse("rollback.none", "the version job %s ran before (digest %s) is no longer known", job.ID, short(job.Previous.Digest))
	}
	if pending := m.pendingOwners(to); len(pending) > 0 {
		out.Result = map[string]any{"pending": pending, "digest": to.Digest}
		return refuse("approval.pending", "version %d of service %s is no longer approved by the owners of %v", to.Manifest.Version, to.Manifest.ID, pending)
	}
	res, err := m.switchVersion(now, job, from, to, job.Previous.Savepoint, false, out)
	if err != nil {
		return err
	}
	out.Result = res
	out.Entries = append(out.Entries, entry(now, "job.rolled-back", []string{"job:" + job.ID, "service:" + job.Service}, res))
	return nil
}

// switchVersion stops job (running from) and deploys to in its place from
// savepoint spName, which it takes first when take is set. Nothing changes
// when it fails.
func (m *Machine) switchVersion(now time.Time, job *Job, from, to *Service, spName string, take bool, out *Output) (*UpgradeResult, error) {
	logged := len(out.Entries)
	if take {
		if _, err := m.takeSavepoint(now, job, from, spName, out); err != nil {
			return nil, err
		}
	}
	delete(m.st.Jobs, job.ID)
	sub := &Output{}
	if err := m.startJob(now, to, Deploy{Service: to.Manifest.ID, Job: job.ID, FromSavepoint: spName}, job.Relieved, sub); err != nil {
		m.st.Jobs[job.ID] = job
		if take {
			delete(m.st.Savepoints, spName)
			out.Entries = out.Entries[:logged] // what the savepoint logged
		}
		return nil, err
	}
	for k := range job.Keys {
		clear(job.Keys[k])
	}
	next := m.st.Jobs[job.ID]
	// The operator overrides: an upgrade carries the running ones, a
	// rollback restores those the version had before the upgrade.
	scale, adaptive := job.Scale, job.Adaptive
	if take {
		next.Previous = &Previous{Digest: from.Digest, Version: from.Manifest.Version, Savepoint: spName, Scale: job.Scale, Adaptive: job.Adaptive}
	} else {
		scale, adaptive = job.Previous.Scale, job.Previous.Adaptive
	}
	var dropped []DroppedOverride
	next.Scale, next.Adaptive, dropped = carryOverrides(scale, adaptive, to)
	// A relief hold is about the task and the node, not the version: it
	// carries for the tasks the new version still has (startJob placed them
	// off their held nodes where it could).
	for task, nodes := range job.Relieved {
		if _, ok := next.Tasks[task]; !ok {
			continue
		}
		if next.Relieved == nil {
			next.Relieved = map[string]map[party.ID]time.Time{}
		}
		next.Relieved[task] = maps.Clone(nodes)
	}
	out.Entries = append(out.Entries, sub.Entries...)
	out.Releases = append(out.Releases, sub.Releases...)
	// The result is read (signed into the receipt) after the machine's lock
	// is released, while a rescale may write the job's maps: it gets copies.
	res := &UpgradeResult{Job: job.ID, FromVersion: from.Manifest.Version, ToVersion: to.Manifest.Version, FromDigest: from.Digest,
		ToDigest: to.Digest, Savepoint: spName, Tasks: maps.Clone(next.Tasks), Dropped: dropped}
	for task, ops := range next.Scale {
		if res.Scale == nil {
			res.Scale = map[string]map[string]int{}
		}
		res.Scale[task] = maps.Clone(ops)
	}
	for task, ops := range next.Adaptive {
		if res.Adaptive == nil {
			res.Adaptive = map[string]map[string]AdaptiveBounds{}
		}
		res.Adaptive[task] = map[string]AdaptiveBounds{}
		for op, a := range ops {
			res.Adaptive[task][op] = a.AdaptiveBounds
		}
	}
	return res, nil
}

// carryOverrides returns the operator overrides (job.scale: fixed
// parallelism and adaptive bounds, by task then operator) that carry into
// version to: those whose task the new version still has, running an
// operator of the same id that job.scale may rescale (not a source or a
// sink), within the new version's key groups. The others are returned as
// dropped, with the reason, in task then operator order. The maps returned
// are new; an adaptive operator keeps its last change, so its cool-down
// goes on.
func carryOverrides(scale map[string]map[string]int, adaptive map[string]map[string]*Adaptive, to *Service) (map[string]map[string]int, map[string]map[string]*Adaptive, []DroppedOverride) {
	type key struct{ task, op string }
	var keys []key
	seen := map[key]bool{}
	add := func(task, op string) {
		if k := (key{task, op}); !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	for task, ops := range scale {
		for op := range ops {
			add(task, op)
		}
	}
	for task, ops := range adaptive {
		for op := range ops {
			add(task, op)
		}
	}
	slices.SortFunc(keys, func(a, b key) int {
		if c := cmp.Compare(a.task, b.task); c != 0 {
			return c
		}
		return cmp.Compare(a.op, b.op)
	})
	slots := map[string]*TaskSlot{}
	for i := range to.Manifest.Tasks {
		slots[to.Manifest.Tasks[i].ID] = &to.Manifest.Tasks[i]
	}
	var (
		newScale    map[string]map[string]int
		newAdaptive map[string]map[string]*Adaptive
		dropped     []DroppedOverride
	)
	for _, k := range keys {
		p, fixed := scale[k.task][k.op]
		a := adaptive[k.task][k.op]
		why := ""
		if slot := slots[k.task]; slot == nil {
			why = fmt.Sprintf("version %d has no task %s", to.Manifest.Version, k.task)
		} else if r, err := resolveStage(to.Manifest.StageSpec(slot)); err != nil {
			why = fmt.Sprintf("task %s of version %d: %v", k.task, to.Manifest.Version, err)
		} else if maxP, err := scalable(r, k.task, k.op); err != nil {
			why = fmt.Sprintf("in version %d: %v", to.Manifest.Version, err)
		} else if fixed && p > maxP {
			why = fmt.Sprintf("parallelism %d is beyond the %d key groups of version %d", p, maxP, to.Manifest.Version)
		} else if a != nil && a.Max > maxP {
			why = fmt.Sprintf("adaptive bounds %d..%d reach beyond the %d key groups of version %d", a.Min, a.Max, maxP, to.Manifest.Version)
		}
		if why != "" {
			d := DroppedOverride{Task: k.task, Operator: k.op, Parallelism: p, Reason: why}
			if a != nil {
				b := a.AdaptiveBounds
				d.Adaptive = &b
			}
			dropped = append(dropped, d)
			continue
		}
		if fixed {
			if newScale == nil {
				newScale = map[string]map[string]int{}
			}
			if newScale[k.task] == nil {
				newScale[k.task] = map[string]int{}
			}
			newScale[k.task][k.op] = p
		}
		if a != nil {
			if newAdaptive == nil {
				newAdaptive = map[string]map[string]*Adaptive{}
			}
			if newAdaptive[k.task] == nil {
				newAdaptive[k.task] = map[string]*Adaptive{}
			}
			c := *a
			newAdaptive[k.task][k.op] = &c
		}
	}
	return newScale, newAdaptive, dropped
}

// latestAll returns every task's restore point.
func (c *JobCheckpoints) latestAll() map[string]*RestorePoint {
	if c == nil {
		return nil
	}
	return c.Latest
}
