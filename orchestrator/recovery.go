package orchestrator

import (
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/policy"
)

// Log entry types written when nodes are lost and tasks move.
const (
	// EntryNodeLost is written when a node is declared lost (NodeLost).
	EntryNodeLost = "node.lost"
	// EntryTaskRescheduled is written for each task of a lost node placed on
	// another node.
	EntryTaskRescheduled = "task.rescheduled"
	// EntryTaskUnplaced is written for each task of a lost node that no
	// admitted node may run; it is placed when a suitable node is admitted.
	EntryTaskUnplaced = "task.unplaced"
	// EntryTaskPlaced is written when an unplaced task is placed on a node
	// admitted later.
	EntryTaskPlaced = "task.placed"
)

// RuleNoNode is the rule naming a task no admitted node may run, when no
// owner's policy refused a node (a site, tier or slot constraint did).
const RuleNoNode = "schedule.no-node"

// admitted reports whether the node may run tasks and sign task statements at
// now: known, not lost and its identity not expired.
func (n *Node) admitted(now time.Time) bool {
	return n != nil && n.Lost.IsZero() && now.Before(n.Expires)
}

// Admitted reports whether node is admitted at now: its attested identity has
// not expired and it was not declared lost since its last admission.
func (m *Machine) Admitted(now time.Time, node party.ID) bool {
	return m.st.Nodes[node].admitted(now)
}

// TaskMove is where a task of a lost node went: To is empty when no admitted
// node may run it, and Rule then names why.
type TaskMove struct {
	Job  string   `json:"job"`
	Task string   `json:"task"`
	From party.ID `json:"from"`
	To   party.ID `json:"to,omitempty"`
	Rule string   `json:"rule,omitempty"`
}

// NodeLostResult is the Output.Result of NodeLost.
type NodeLostResult struct {
	Node party.ID `json:"node"`
	// Already is true when the node had been declared lost before.
	Already bool       `json:"already,omitempty"`
	Moves   []TaskMove `json:"moves,omitempty"`
}

// NodeLost declares an admitted node lost: the orchestrator stopped hearing
// from it (the caller decides when; see api.Config.NodeTimeout). It is a
// trusted input of the orchestrator itself, not a signed statement, and it is
// deterministic like Apply.
//
// The node is no longer admitted: its statements about tasks are refused and
// it must re-attest (a later node.admit of the same identity is a fresh
// admission). Each task placed on it is rescheduled onto another admitted
// node that satisfies the task's constraints and every input owner's
// placement policy, and that node receives the task's keys, as at deploy. A
// task no node may run stays unplaced until a suitable node is admitted.
// Everything is logged: node.lost, then task.rescheduled or task.unplaced
// per task, and key.released per key.
func (m *Machine) NodeLost(now time.Time, node party.ID, reason string) (*Output, error) {
	out := &Output{Type: EntryNodeLost}
	n := m.st.Nodes[node]
	if n == nil {
		return out, refuse("node.unknown", "node %s was never admitted", node.Short())
	}
	if !n.Lost.IsZero() {
		out.Result = &NodeLostResult{Node: node, Already: true}
		return out, nil
	}
	n.Lost = now.UTC()
	held := m.tasksOn(node)
	var names []string
	for _, jt := range held {
		names = append(names, jt.task)
	}
	out.Entries = append(out.Entries, entry(now, EntryNodeLost, []string{"node:" + string(node)},
		map[string]any{"node": node, "reason": reason, "tasks": names}))
	res := &NodeLostResult{Node: node}
	for _, jt := range held {
		mv, rel := m.place(now, jt.job, jt.slot, "node "+node.Short()+" lost: "+reason)
		mv.From = node
		sub := []string{"job:" + jt.job.ID, "service:" + jt.job.Service, "node:" + string(node)}
		if mv.To != "" {
			out.Entries = append(out.Entries, entry(now, EntryTaskRescheduled, append(sub, "node:"+string(mv.To)),
				map[string]any{"job": jt.job.ID, "task": jt.task, "from": node, "to": mv.To, "restore_checkpoint": m.restoreID(jt.job.ID, jt.task)}))
			out.Entries = append(out.Entries, rel.Entries...)
			out.Releases = append(out.Releases, rel.Releases...)
		} else {
			out.Entries = append(out.Entries, entry(now, EntryTaskUnplaced, sub,
				map[string]any{"job": jt.job.ID, "task": jt.task, "from": node, "rule": mv.Rule, "reason": jt.job.Unplaced[jt.task]}))
		}
		res.Moves = append(res.Moves, mv)
	}
	// Adaptive operators follow the slots the node no longer offers.
	m.adapt(now, "node "+node.Short()+" lost", out)
	out.Result = res
	return out, nil
}

func (m *Machine) restoreID(job, task string) any {
	if rp, ok := m.RestorePoint(job, task); ok {
		return rp.Checkpoint
	}
	return nil
}

// jobTask is a task of a job with its (site-pinned) slot.
type jobTask struct {
	job  *Job
	task string
	slot TaskSlot
}

// tasksOn returns the tasks placed on node, by job id then manifest order.
func (m *Machine) tasksOn(node party.ID) []jobTask {
	return m.jobTasks(func(j *Job, task string) bool { return j.Tasks[task] == node })
}

// unplacedTasks returns the tasks no node runs, by job id then manifest order.
func (m *Machine) unplacedTasks() []jobTask {
	return m.jobTasks(func(j *Job, task string) bool { _, ok := j.Unplaced[task]; return ok })
}

func (m *Machine) jobTasks(keep func(*Job, string) bool) []jobTask {
	ids := make([]string, 0, len(m.st.Jobs))
	for id := range m.st.Jobs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var out []jobTask
	for _, id := range ids {
		j := m.st.Jobs[id]
		svc := m.jobService(j)
		if svc == nil {
			continue
		}
		for _, slot := range pinSources(svc.Manifest.Tasks, m.st.Streams) {
			if _, ok := j.Tasks[slot.ID]; ok && keep(j, slot.ID) {
				out = append(out, jobTask{job: j, task: slot.ID, slot: slot})
			}
		}
	}
	return out
}

// place schedules one task of job onto the admitted nodes (its placement
// constraints and every input owner's placement policy, as at deploy) and
// returns the releases of its keys to the chosen node, with their log
// entries. When no node qualifies the task is left unplaced (its node is
// empty, Job.Unplaced says why) and the move names the refusing rule. A
// node the task was relieved from as overloaded less than ReliefHold ago is
// chosen only when no other node qualifies (as in rebalancePreferred, which
// would otherwise be undone by the next node lost, drained or admitted).
func (m *Machine) place(now time.Time, job *Job, slot TaskSlot, reason string) (TaskMove, *Output) {
	mv := TaskMove{Job: job.ID, Task: slot.ID}
	svc := m.jobService(job)
	rules := map[string]string{}
	check := m.placementCheck(svc)
	schedule := func(cands []Candidate) (Placement, error) {
		return Schedule([]TaskSlot{slot}, cands, func(t TaskSlot, c Candidate) error {
			err := check(t, c)
			if err != nil {
				rules[c.ID] = ruleOf(err)
			}
			return err
		}, WithGeo(m.geo(svc)))
	}
	cands := m.candidates(now)
	unheld := slices.DeleteFunc(slices.Clone(cands), func(c Candidate) bool { return job.held(slot.ID, party.ID(c.ID), now) })
	placement, err := schedule(unheld)
	if err != nil && len(unheld) < len(cands) {
		placement, err = schedule(cands)
	}
	if err == nil {
		to := party.ID(placement[slot.ID])
		rel := &Output{}
		if err = m.releaseTask(now, rel, job, svc, slot, to, reason); err == nil {
			job.Tasks[slot.ID] = to
			delete(job.Unplaced, slot.ID)
			mv.To = to
			return mv, rel
		}
	}
	mv.Rule = RuleNoNode
	var se *ScheduleError
	if errors.As(err, &se) {
		ids := make([]string, 0, len(rules))
		for id := range rules {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		if len(ids) > 0 {
			// The first node's refusing policy rule names the refusal.
			mv.Rule = rules[ids[0]]
		}
	} else {
		mv.Rule = ruleOf(err)
	}
	job.Tasks[slot.ID] = ""
	if job.Unplaced == nil {
		job.Unplaced = map[string]string{}
	}
	job.Unplaced[slot.ID] = fmt.Sprintf("%s: %v", mv.Rule, err)
	return mv, nil
}

// placeUnplaced places the tasks left unplaced, if an admitted node now
// qualifies; a task that still cannot be placed stays so, silently (its
// task.unplaced entry was written once).
func (m *Machine) placeUnplaced(now time.Time, reason string, out *Output) {
	for _, jt := range m.unplacedTasks() {
		before := jt.job.Unplaced[jt.task]
		mv, rel := m.place(now, jt.job, jt.slot, reason)
		if mv.To == "" {
			jt.job.Unplaced[jt.task] = before
			continue
		}
		out.Entries = append(out.Entries, entry(now, EntryTaskPlaced, []string{"job:" + jt.job.ID, "service:" + jt.job.Service, "node:" + string(mv.To)},
			map[string]any{"job": jt.job.ID, "task": jt.task, "to": mv.To, "reason": reason, "restore_checkpoint": m.restoreID(jt.job.ID, jt.task)}))
		out.Entries = append(out.Entries, rel.Entries...)
		out.Releases = append(out.Releases, rel.Releases...)
	}
}

// releaseAgain releases again the keys of every task placed on node, for a
// node that re-attested (a restarted worker with the same identity restarts
// its tasks with them).
func (m *Machine) releaseAgain(now time.Time, node party.ID, out *Output) error {
	for _, jt := range m.tasksOn(node) {
		if err := m.releaseTask(now, out, jt.job, m.jobService(jt.job), jt.slot, node, "re-admission"); err != nil {
			return err
		}
	}
	return nil
}

// candidates returns the admitted, not draining nodes with their free slots.
func (m *Machine) candidates(now time.Time) []Candidate {
	used := map[party.ID]int{}
	for _, j := range m.st.Jobs {
		for _, n := range j.Tasks {
			used[n]++
		}
	}
	ids := make([]party.ID, 0, len(m.st.Nodes))
	for id := range m.st.Nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var cands []Candidate
	for _, id := range ids {
		n := m.st.Nodes[id]
		if n.Draining || !n.admitted(now) {
			continue
		}
		cands = append(cands, Candidate{ID: string(id), Tier: n.Location.Tier, Region: n.Location.Region, Site: n.Location.Site, Free: n.Slots - used[id]})
	}
	return cands
}

// placementCheck checks a node against the placement stage of every input
// owner's policy for svc.
func (m *Machine) placementCheck(svc *Service) PlacementCheck {
	sin := ServiceInput(svc)
	return func(t TaskSlot, c Candidate) error {
		n := m.st.Nodes[party.ID(c.ID)]
		in := policy.Input{Service: sin, Node: policy.NodeFromClaims(c.ID, &n.Claims, n.Location)}
		for _, s := range svc.Manifest.Inputs {
			if d := m.policies[s].Evaluate(policy.StagePlacement, in); !d.Allowed {
				return d.Err()
			}
		}
		return nil
	}
}

// releaseTask wraps the keys task t of job needs (its input streams' current
// epochs, the job's exchange and checkpoint keys, its outputs' keys) to node
// and logs each release. A manifest inconsistency is a refusal by
// service.manifest.
func (m *Machine) releaseTask(now time.Time, out *Output, job *Job, svc *Service, t TaskSlot, node party.ID, reason string) error {
	n := m.st.Nodes[node]
	if n == nil {
		return fmt.Errorf("orchestrator: releasing keys to unknown node %s", node.Short())
	}
	subjects := []string{"service:" + svc.Manifest.ID, "job:" + job.ID, "node:" + string(node)}
	for _, in := range svc.Manifest.Inputs {
		subjects = append(subjects, "stream:"+in)
	}
	rel := func(purpose, scope string, epoch uint32, key []byte) error {
		r, err := m.wrapFor(n.Identity, job.ID, t.ID, purpose, scope, epoch, key)
		if err != nil {
			return err
		}
		out.Releases = append(out.Releases, r)
		body := map[string]any{"key": r.KeyID(), "purpose": purpose, "key_digest": keyDigest(key), "node": node, "task": t.ID,
			"measurement": hex.EncodeToString(n.Claims.Measurement), "service_digest": svc.Digest, "policy_digests": m.policyDigests(svc)}
		if reason != "" {
			body["reason"] = reason
		}
		out.Entries = append(out.Entries, entry(now, "key.released", subjects, body))
		return nil
	}
	for _, in := range t.Reads {
		s := m.st.Streams[in]
		if s == nil || !slices.Contains(svc.Manifest.Inputs, in) {
			return refuse("service.manifest", "task %s reads %q, which is not an input of the service", t.ID, in)
		}
		if err := rel("stream", in, s.Epoch, s.Keys[s.Epoch]); err != nil {
			return err
		}
	}
	// Every exchange epoch: a task restored from a checkpoint reads frames
	// its upstream stages sealed before the last move.
	for _, ek := range job.exchangeKeys() {
		if err := rel("exchange", job.ID, ek.Epoch, ek.Key); err != nil {
			return err
		}
	}
	if err := rel("checkpoint", job.ID, 0, job.Keys["checkpoint"]); err != nil {
		return err
	}
	for _, o := range t.Writes {
		k, ok := job.Keys["output:"+o]
		if !ok {
			return refuse("service.manifest", "task %s writes %q, which is not an output of the service", t.ID, o)
		}
		if err := rel("output", o, 0, k); err != nil {
			return err
		}
	}
	// The code key goes only to the nodes of tasks that run modules.
	return m.releaseCode(svc, &t, rel)
}

// RestorePointFor returns the restore point of a task for the node asking:
// only an admitted node the task is placed on may ask. It returns nil and no
// error when the task has no accepted checkpoint yet (it starts fresh).
func (m *Machine) RestorePointFor(now time.Time, node party.ID, job, task string) (*RestorePoint, error) {
	j, ok := m.st.Jobs[job]
	if !ok {
		return nil, refuse("restore.job", "job %q is not deployed", job)
	}
	placed, ok := j.Tasks[task]
	if !ok {
		return nil, refuse("restore.task", "job %s has no task %q", job, task)
	}
	if placed != node {
		return nil, refuse("restore.node", "task %s of job %s is not placed on node %s", task, job, node.Short())
	}
	if !m.st.Nodes[node].admitted(now) {
		return nil, refuse("restore.node", "node %s is not admitted or its identity expired; it must re-attest", node.Short())
	}
	rp, ok := m.RestorePoint(job, task)
	if !ok {
		return nil, nil
	}
	return &rp, nil
}
