package orchestrator

import (
	"fmt"
	"slices"
	"strconv"
	"time"

	"crypto/rand"

	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
)

// Statement types the infrastructure operator signs to move work. The
// operator offers and withdraws resources; every owner's policy still
// decides where a task may run, and a move a policy forbids is refused, with
// the rule named and logged, whoever asks.
const (
	// TypeNodeDrain moves every task off a node and places none there any
	// more; the node stays admitted.
	TypeNodeDrain = "node.drain"
	// TypeNodeRemove drains a node and ends its admission.
	TypeNodeRemove = "node.remove"
	// TypeTaskMigrate moves one task to a named node.
	TypeTaskMigrate = "task.migrate"
)

// Log entry types of moves.
const (
	EntryTaskMigrated  = "task.migrated"
	EntryMoveRefused   = "task.migrate.refused"
	EntryNodeDrained   = "node.drained"
	EntryNodeRemoved   = "node.removed"
	EntryExchangeEpoch = "job.exchange-epoch"
)

// NodeRequest is the body of node.drain and node.remove statements.
type NodeRequest struct {
	Node party.ID `json:"node"`
}

// MigrateRequest is the body of a task.migrate statement.
type MigrateRequest struct {
	Job  string   `json:"job"`
	Task string   `json:"task"`
	To   party.ID `json:"to"`
}

// MoveResult is the Output.Result of the operator's moves: where each task
// went (To empty and Rule set when no node may run it).
type MoveResult struct {
	Node  party.ID   `json:"node,omitempty"`
	Moves []TaskMove `json:"moves"`
	// ExchangeEpochs holds, per job whose tasks moved, the exchange key
	// epoch the job's intermediate streams are sealed with from now on.
	ExchangeEpochs map[string]uint32 `json:"exchange_epochs,omitempty"`
}

func (m *Machine) requireOperator(st *party.Statement) error {
	if op := m.st.Genesis.Operator; op == nil || st.Issuer != op.ID() {
		return refuse("operator.only", "only the infrastructure operator named in the genesis may move work between nodes")
	}
	return nil
}

// exchangeScope names the exchange key of a job at epoch e in Job.Keys:
// "exchange" for epoch 0, "exchange/<e>" after.
func exchangeScope(e uint32) string {
	if e == 0 {
		return "exchange"
	}
	return "exchange/" + strconv.FormatUint(uint64(e), 10)
}

// exchangeKeys returns the job's exchange keys, epoch by epoch.
func (j *Job) exchangeKeys() []struct {
	Epoch uint32
	Key   []byte
} {
	var out []struct {
		Epoch uint32
		Key   []byte
	}
	for e := uint32(0); e <= j.ExchangeEpoch; e++ {
		if k := j.Keys[exchangeScope(e)]; k != nil {
			out = append(out, struct {
				Epoch uint32
				Key   []byte
			}{e, k})
		}
	}
	return out
}

// advanceExchange gives the job a new exchange key epoch and releases it to
// the nodes that run the job's tasks now: a node a task moved away from (and
// that runs none of the job's other tasks) never receives it, so it cannot
// open what the job's stages write from now on.
func (m *Machine) advanceExchange(now time.Time, job *Job, reason string, out *Output) error {
	job.ExchangeEpoch++
	k := make([]byte, seal.KeySize)
	rand.Read(k)
	job.Keys[exchangeScope(job.ExchangeEpoch)] = k
	svc := m.jobService(job)
	released := map[party.ID]bool{}
	tasks := make([]string, 0, len(job.Tasks))
	for t := range job.Tasks {
		tasks = append(tasks, t)
	}
	slices.Sort(tasks)
	var nodes []party.ID
	for _, t := range tasks {
		node := job.Tasks[t]
		if node == "" || released[node] {
			continue
		}
		released[node] = true
		nodes = append(nodes, node)
		n := m.st.Nodes[node]
		r, err := m.wrapFor(n.Identity, job.ID, t, "exchange", job.ID, job.ExchangeEpoch, k)
		if err != nil {
			return err
		}
		out.Releases = append(out.Releases, r)
		out.Entries = append(out.Entries, entry(now, "key.released", []string{"service:" + job.Service, "job:" + job.ID, "node:" + string(node)},
			map[string]any{"key": r.KeyID(), "purpose": "exchange", "key_digest": keyDigest(k), "node": node, "task": t,
				"measurement": fmt.Sprintf("%x", n.Claims.Measurement), "service_digest": svc.Digest, "reason": reason}))
	}
	out.Entries = append(out.Entries, entry(now, EntryExchangeEpoch, []string{"job:" + job.ID, "service:" + job.Service},
		map[string]any{"job": job.ID, "epoch": job.ExchangeEpoch, "nodes": nodes, "reason": reason}))
	return nil
}

// moveTask moves one task of job to node to (any admitted node satisfying the
// task and every owner's policy when to is empty). A move a policy forbids
// is refused and logged with the rule. The destination receives the task's
// keys; the source's acknowledgements are refused from now on (its output
// after its last accepted checkpoint is never committed), its worker stops
// the task, and the destination restores it from that checkpoint.
func (m *Machine) moveTask(now time.Time, job *Job, slot TaskSlot, to party.ID, reason string, out *Output) (TaskMove, error) {
	from := job.Tasks[slot.ID]
	mv := TaskMove{Job: job.ID, Task: slot.ID, From: from}
	svc := m.jobService(job)
	subjects := []string{"job:" + job.ID, "service:" + job.Service, "node:" + string(from)}
	if to != "" {
		n := m.st.Nodes[to]
		var err error
		switch {
		case n == nil || !n.admitted(now):
			err = refuse("migrate.node", "node %s is not admitted", to.Short())
		case n.Draining:
			err = refuse("migrate.draining", "node %s is draining", to.Short())
		case to == from:
			err = refuse("migrate.same", "task %s already runs on node %s", slot.ID, to.Short())
		default:
			cands := m.candidates(now)
			i := slices.IndexFunc(cands, func(c Candidate) bool { return c.ID == string(to) })
			if i < 0 {
				err = refuse("migrate.node", "node %s is not a candidate", to.Short())
				break
			}
			c := cands[i]
			if ok, why := slotFits(slot, c); !ok {
				err = refuse("migrate.constraint", "task %s cannot run on node %s: %s", slot.ID, to.Short(), why)
			} else if c.Free <= 0 {
				err = refuse("migrate.slots", "node %s has no free slot", to.Short())
			} else if perr := m.placementCheck(svc)(slot, c); perr != nil {
				err = perr
			}
		}
		if err != nil {
			out.Entries = append(out.Entries, entry(now, EntryMoveRefused, append(subjects, "node:"+string(to)),
				map[string]any{"job": job.ID, "task": slot.ID, "from": from, "to": to, "rule": ruleOf(err), "reason": err.Error()}))
			return mv, err
		}
		rel := &Output{}
		if err := m.releaseTask(now, rel, job, svc, slot, to, reason); err != nil {
			return mv, err
		}
		job.Tasks[slot.ID] = to
		mv.To = to
		out.Entries = append(out.Entries, rel.Entries...)
		out.Releases = append(out.Releases, rel.Releases...)
	} else {
		// Any node but the source: take it out of the candidates for now.
		src := m.st.Nodes[from]
		wasDraining := src != nil && src.Draining
		if src != nil {
			src.Draining = true
		}
		var rel *Output
		mv, rel = m.place(now, job, slot, reason)
		mv.From = from
		if src != nil {
			src.Draining = wasDraining
		}
		if mv.To == "" {
			out.Entries = append(out.Entries, entry(now, EntryTaskUnplaced, subjects,
				map[string]any{"job": job.ID, "task": slot.ID, "from": from, "rule": mv.Rule, "reason": job.Unplaced[slot.ID]}))
			return mv, nil
		}
		out.Entries = append(out.Entries, rel.Entries...)
		out.Releases = append(out.Releases, rel.Releases...)
	}
	out.Entries = append(out.Entries, entry(now, EntryTaskMigrated, append(subjects, "node:"+string(mv.To)),
		map[string]any{"job": job.ID, "task": slot.ID, "from": from, "to": mv.To, "reason": reason, "restore_checkpoint": m.restoreID(job.ID, slot.ID)}))
	return mv, nil
}

// slotFits reports whether candidate c meets the task's own constraints
// (tiers, site).
func slotFits(t TaskSlot, c Candidate) (bool, string) {
	if len(t.Tiers) > 0 && !slices.Contains(t.Tiers, c.Tier) {
		return false, fmt.Sprintf("tier %s is not one of %v", c.Tier, t.Tiers)
	}
	if t.Site != "" && t.Site != c.Site {
		return false, fmt.Sprintf("site %s is not %s", c.Site, t.Site)
	}
	return true, ""
}

func (m *Machine) migrate(now time.Time, st *party.Statement, out *Output) error {
	if err := m.requireOperator(st); err != nil {
		return err
	}
	var b MigrateRequest
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	job, ok := m.st.Jobs[b.Job]
	if !ok {
		return refuse("job.unknown", "job %q is not deployed", b.Job)
	}
	slot, ok := m.slotOf(job, b.Task)
	if !ok {
		return refuse("migrate.task", "job %s has no task %q", b.Job, b.Task)
	}
	if b.To == "" {
		return refuse("statement.body", "task.migrate names no destination node")
	}
	mv, err := m.moveTask(now, job, slot, b.To, "migrated by the operator", out)
	if err != nil {
		// The refusal is logged (moveTask wrote the entry); the machine's
		// caller logs nothing more for a refused statement.
		return err
	}
	res := &MoveResult{Moves: []TaskMove{mv}, ExchangeEpochs: map[string]uint32{}}
	if err := m.advanceExchange(now, job, "task "+b.Task+" migrated", out); err != nil {
		return err
	}
	res.ExchangeEpochs[job.ID] = job.ExchangeEpoch
	out.Result = res
	return nil
}

// slotOf returns the (site-pinned) slot of a task of job.
func (m *Machine) slotOf(job *Job, task string) (TaskSlot, bool) {
	for _, jt := range m.jobTasks(func(j *Job, t string) bool { return j == job && t == task }) {
		return jt.slot, true
	}
	return TaskSlot{}, false
}

// drainNode moves every task off node (to nodes the tasks' owners accept,
// or unplaced until one is admitted) and advances the exchange epoch of
// every job whose tasks moved.
func (m *Machine) drainNode(now time.Time, node party.ID, reason string, out *Output) (*MoveResult, error) {
	n := m.st.Nodes[node]
	if n == nil {
		return nil, refuse("node.unknown", "node %s was never admitted", node.Short())
	}
	n.Draining = true
	res := &MoveResult{Node: node, ExchangeEpochs: map[string]uint32{}}
	moved := map[string]*Job{}
	for _, jt := range m.tasksOn(node) {
		mv, err := m.moveTask(now, jt.job, jt.slot, "", reason, out)
		if err != nil {
			return nil, err
		}
		res.Moves = append(res.Moves, mv)
		moved[jt.job.ID] = jt.job
	}
	ids := make([]string, 0, len(moved))
	for id := range moved {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if err := m.advanceExchange(now, moved[id], "tasks drained from node "+node.Short(), out); err != nil {
			return nil, err
		}
		res.ExchangeEpochs[id] = moved[id].ExchangeEpoch
	}
	return res, nil
}

func (m *Machine) drain(now time.Time, st *party.Statement, out *Output) error {
	return m.nodeStatement(now, st, out, false)
}

func (m *Machine) removeNode(now time.Time, st *party.Statement, out *Output) error {
	return m.nodeStatement(now, st, out, true)
}

// nodeStatement applies node.drain, or node.remove when remove is set.
func (m *Machine) nodeStatement(now time.Time, st *party.Statement, out *Output, remove bool) error {
	if err := m.requireOperator(st); err != nil {
		return err
	}
	var b NodeRequest
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	verb, typ := "drained", EntryNodeDrained
	if remove {
		verb, typ = "removed", EntryNodeRemoved
	}
	res, err := m.drainNode(now, b.Node, "node "+b.Node.Short()+" "+verb+" by the operator", out)
	if err != nil {
		return err
	}
	if remove {
		// The node's admission ends: to run tasks again it must attest afresh.
		m.st.Nodes[b.Node].Lost = now.UTC()
	}
	// Adaptive operators follow the slots the node no longer offers.
	m.adapt(now, "node "+b.Node.Short()+" "+verb+" by the operator", out)
	out.Entries = append(out.Entries, entry(now, typ, []string{"node:" + string(b.Node)},
		map[string]any{"node": b.Node, "moves": res.Moves}))
	out.Result = res
	return nil
}

// tierRank is the preference of tier for task t: its index in t.Tiers (0 is
// the most preferred; 0 too when the task lists no tiers).
func tierRank(t TaskSlot, tier string) int {
	if i := slices.Index(t.Tiers, tier); i >= 0 {
		return i
	}
	return 0
}

// ReliefHold is how long a task moved off an overloaded node (RelieveTask)
// is kept from moving back to that node by rebalancePreferred, which would
// otherwise send it back as soon as any node is admitted, since the node it
// left now has a free slot of its preferred tier. Placing the task again
// (its node lost or drained, or it was unplaced) chooses that node only
// when no other node qualifies.
//
// It is a hold and not "until the node's load falls below the threshold"
// because the machine's overload model has no node load to wait on: the API
// server judges overload per task, from the backpressure in the signed status
// reports of the node the task runs on, and keeps those reports as
// operational data, neither persisted nor logged. Once the task has left,
// no report says how it would fare on that node again. A hold needs only the
// time the machine is given, so it stays deterministic and survives a restart
// (Job.Relieved is persisted). Ten minutes is twenty times the default
// Config.OverloadFor of the API server: a task that is overloaded again after
// coming back moves at most once per hold plus OverloadFor.
const ReliefHold = 10 * time.Minute

// held reports whether task of job may not move back to node yet, at now,
// because it was relieved from it less than ReliefHold ago.
func (j *Job) held(task string, node party.ID, now time.Time) bool {
	at, ok := j.Relieved[task][node]
	return ok && now.Sub(at) < ReliefHold
}

// expireRelief forgets the reliefs of job whose hold has passed at now.
func (j *Job) expireRelief(now time.Time) {
	for task, nodes := range j.Relieved {
		for node := range nodes {
			if !j.held(task, node, now) {
				delete(nodes, node)
			}
		}
		if len(nodes) == 0 {
			delete(j.Relieved, task)
		}
	}
	if len(j.Relieved) == 0 {
		j.Relieved = nil
	}
}

// rebalancePreferred moves tasks that run on a less preferred tier than
// their first choice (because a node left or was overloaded) back to a node
// of a more preferred tier that every owner's policy accepts, when one has a
// free slot: the operator offered capacity again. A node a task was relieved
// from as overloaded is not a destination for it until ReliefHold has
// passed. Each job whose tasks moved gets a new exchange epoch.
func (m *Machine) rebalancePreferred(now time.Time, reason string, out *Output) {
	moved := map[string]*Job{}
	for _, j := range m.st.Jobs {
		j.expireRelief(now)
	}
	for _, jt := range m.jobTasks(func(j *Job, task string) bool { return j.Tasks[task] != "" }) {
		cur := m.st.Nodes[jt.job.Tasks[jt.task]]
		if cur == nil || tierRank(jt.slot, cur.Location.Tier) == 0 {
			continue
		}
		rank := tierRank(jt.slot, cur.Location.Tier)
		svc := m.jobService(jt.job)
		check := m.placementCheck(svc)
		var better []Candidate
		for _, c := range m.candidates(now) {
			if tierRank(jt.slot, c.Tier) < rank && slices.Contains(jt.slot.Tiers, c.Tier) && !jt.job.held(jt.task, party.ID(c.ID), now) {
				better = append(better, c)
			}
		}
		placement, err := Schedule([]TaskSlot{jt.slot}, better, check)
		if err != nil {
			continue
		}
		mv, err := m.moveTask(now, jt.job, jt.slot, party.ID(placement[jt.slot.ID]), reason, out)
		if err != nil || mv.To == "" {
			continue
		}
		moved[jt.job.ID] = jt.job
	}
	ids := make([]string, 0, len(moved))
	for id := range moved {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		_ = m.advanceExchange(now, moved[id], reason, out)
	}
}

// RelieveResult is the Output.Result of RelieveTask.
type RelieveResult struct {
	Move TaskMove `json:"move"`
}

// RelieveTask moves a task off an overloaded node to a node of the next tier
// its slot allows (edge → regional, say) that every owner's policy accepts.
// Like NodeLost it is a trusted input of the orchestrator itself (the API
// server decides when a task is overloaded, from the workers' signed status
// reports); it refuses by relieve.no-tier when the task may run on no other
// tier, and by the refusing rule when no node of a higher tier qualifies.
// The task comes back to its preferred tier when a node of that tier is
// admitted (rebalancePreferred), but not to the node it was relieved from
// before ReliefHold has passed.
func (m *Machine) RelieveTask(now time.Time, jobID, task, reason string) (*Output, error) {
	out := &Output{Type: EntryTaskMigrated}
	job, ok := m.st.Jobs[jobID]
	if !ok {
		return out, refuse("job.unknown", "job %q is not deployed", jobID)
	}
	slot, ok := m.slotOf(job, task)
	if !ok {
		return out, refuse("migrate.task", "job %s has no task %q", jobID, task)
	}
	cur := m.st.Nodes[job.Tasks[task]]
	if cur == nil {
		return out, refuse("migrate.task", "task %s of job %s runs nowhere", task, jobID)
	}
	rank := tierRank(slot, cur.Location.Tier)
	var higher []Candidate
	for _, c := range m.candidates(now) {
		if slices.Contains(slot.Tiers, c.Tier) && tierRank(slot, c.Tier) > rank {
			higher = append(higher, c)
		}
	}
	if len(higher) == 0 {
		return out, refuse("relieve.no-tier", "task %s may run on tiers %v; no admitted node of a tier after %s", task, slot.Tiers, cur.Location.Tier)
	}
	placement, err := Schedule([]TaskSlot{slot}, higher, m.placementCheck(m.jobService(job)))
	if err != nil {
		return out, err
	}
	mv, err := m.moveTask(now, job, slot, party.ID(placement[slot.ID]), "overloaded: "+reason, out)
	if err != nil {
		return out, err
	}
	if job.Relieved == nil {
		job.Relieved = map[string]map[party.ID]time.Time{}
	}
	if job.Relieved[task] == nil {
		job.Relieved[task] = map[party.ID]time.Time{}
	}
	job.Relieved[task][mv.From] = now.UTC()
	if err := m.advanceExchange(now, job, "task "+task+" relieved", out); err != nil {
		return out, err
	}
	out.Result = &RelieveResult{Move: mv}
	return out, nil
}
