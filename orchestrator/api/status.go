package api

import (
	"bytes"
	"cmp"
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/party"
)

// SubjectStatus carries workers' signed task status reports
// (sealflow.status.<node id>); the orchestrator keeps the latest in memory.
const SubjectStatus = "sealflow.status.*"

// StatusSubject returns the subject a node publishes its status on.
func StatusSubject(node party.ID) string { return "sealflow.status." + string(node) }

// TypeTaskStatus is the statement type of a worker's status report.
const TypeTaskStatus = "task.status"

// TaskReport is one task's counters in a status report.
type TaskReport struct {
	Job        string `json:"job"`
	Task       string `json:"task"`
	State      string `json:"state"`
	RecordsIn  int64  `json:"records_in"`
	RecordsOut int64  `json:"records_out"`
	// Backpressure is the share of wall time, over the last report
	// interval, that the task's most backpressured chain spent blocked
	// sending to the next one, in [0, 1]; reported for running tasks.
	Backpressure float64 `json:"backpressure,omitempty"`
	// Operators holds the live counters of the task's current run, one per
	// node of its JobSpec (in the engine's plan order); empty before the
	// run started and in reports of older workers.
	Operators []OperatorReport `json:"operators,omitempty"`
}

// OperatorReport is one JobSpec node's live counters in a task report,
// summed over its subtasks.
type OperatorReport struct {
	// ID is the node's ID in the task's JobSpec.
	ID         string `json:"id"`
	RecordsIn  int64  `json:"records_in"`
	RecordsOut int64  `json:"records_out"`
	// Watermark is the node's event time (epoch ms), when it has one and
	// has not passed the end of its input.
	Watermark *int64 `json:"watermark,omitempty"`
	// Ended is true once every subtask of the node passed the end of its
	// input (the final watermark).
	Ended bool `json:"ended,omitempty"`
	// Backpressure is the backpressure ratio of the engine chain that runs
	// the node (0 for chains that send to no other chain).
	Backpressure float64 `json:"backpressure,omitempty"`
}

// StatusReport is the body of a task.status statement.
type StatusReport struct {
	Tasks []TaskReport `json:"tasks"`
}

// TaskStatus is what the orchestrator knows of a task's progress: the latest
// report of the node it is placed on, and rates over the last two reports.
// Its Operators (JSON "operators") shadow the report's: the same counters
// with rates and watermark lag.
type TaskStatus struct {
	TaskReport
	Node         party.ID  `json:"node"`
	Updated      time.Time `json:"updated"`
	InPerSecond  float64   `json:"records_in_per_second"`
	OutPerSecond float64   `json:"records_out_per_second"`
	// Operators are the report's operators with their rates.
	Operators []OperatorStatus `json:"operators,omitempty"`
	// overSince is when the task's backpressure last rose above
	// OverloadBackpressure and stayed there (zero when it is below).
	overSince time.Time
}

// OperatorStatus is one operator's counters from the latest report, with
// rates over the last two reports of the same run and its watermark lag.
type OperatorStatus struct {
	OperatorReport
	InPerSecond  float64 `json:"records_in_per_second"`
	OutPerSecond float64 `json:"records_out_per_second"`
	// WatermarkLagSeconds is how far the watermark was behind the report's
	// signing time, when the operator has a watermark and has not ended.
	WatermarkLagSeconds *float64 `json:"watermark_lag_seconds,omitempty"`
}

// WatermarkLag returns the largest watermark lag of the task's operators
// (its slowest), in seconds, and false if none has a lag (no watermark yet,
// or every input ended).
func (t *TaskStatus) WatermarkLag() (float64, bool) {
	lag, ok := 0.0, false
	for _, o := range t.Operators {
		if o.WatermarkLagSeconds != nil && (!ok || *o.WatermarkLagSeconds > lag) {
			lag, ok = *o.WatermarkLagSeconds, true
		}
	}
	return lag, ok
}

// statusBook holds the latest task status reports; they are operational
// data, not state: neither persisted nor logged.
type statusBook struct {
	mu    sync.Mutex
	tasks map[string]*TaskStatus
}

// record applies a verified report of node at time at: only tasks placed on
// that node are taken.
func (b *statusBook) record(node party.ID, placed map[string]party.ID, at time.Time, rep *StatusReport) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tasks == nil {
		b.tasks = map[string]*TaskStatus{}
	}
	for _, t := range rep.Tasks {
		if placed[t.Task] != node {
			continue
		}
		old := b.tasks[t.Task]
		ts := &TaskStatus{TaskReport: t, Node: node, Updated: at, Operators: operatorStatus(t.Operators, at)}
		// How long the task has been backpressured without a break, on
		// this node (overload.go).
		if t.State == "running" && t.Backpressure >= OverloadBackpressure {
			ts.overSince = at
			if old != nil && old.Node == node && !old.overSince.IsZero() {
				ts.overSince = old.overSince
			}
		}
		ts.TaskReport.Operators = nil // served as ts.Operators
		if old != nil {
			if !at.After(old.Updated) {
				continue // an older or replayed report
			}
			if d := at.Sub(old.Updated).Seconds(); d > 0 && old.Node == node {
				ts.InPerSecond = perSecond(old.RecordsIn, t.RecordsIn, d)
				ts.OutPerSecond = perSecond(old.RecordsOut, t.RecordsOut, d)
				operatorRates(ts.Operators, old.Operators, d)
			}
		}
		b.tasks[t.Task] = ts
	}
}

// perSecond returns the rate of a counter that went from old to now in d
// seconds; 0 when it went back (the task restarted and counts afresh).
func perSecond(old, now int64, d float64) float64 {
	if now < old {
		return 0
	}
	return float64(now-old) / d
}

// maxOperators bounds the operators kept per task report: a JobSpec is
// small, and a node must not make the orchestrator hold more.
const maxOperators = 256

// operatorStatus returns the status of a report's operators signed at at,
// without rates.
func operatorStatus(ops []OperatorReport, at time.Time) []OperatorStatus {
	if len(ops) == 0 {
		return nil
	}
	ops = ops[:min(len(ops), maxOperators)]
	out := make([]OperatorStatus, len(ops))
	for i, o := range ops {
		out[i] = OperatorStatus{OperatorReport: o}
		if o.Watermark != nil && !o.Ended {
			lag := float64(at.UnixMilli()-*o.Watermark) / 1000
			out[i].WatermarkLagSeconds = &lag
		}
	}
	return out
}

// operatorRates sets the rates of ops from the counters of the same
// operators (by ID) in the previous report, d seconds earlier.
func operatorRates(ops, prev []OperatorStatus, d float64) {
	if len(prev) == 0 {
		return
	}
	byID := make(map[string]*OperatorStatus, len(prev))
	for i := range prev {
		byID[prev[i].ID] = &prev[i]
	}
	for i := range ops {
		if p, ok := byID[ops[i].ID]; ok {
			ops[i].InPerSecond = perSecond(p.RecordsIn, ops[i].RecordsIn, d)
			ops[i].OutPerSecond = perSecond(p.RecordsOut, ops[i].RecordsOut, d)
		}
	}
}

// job returns the status of a job's tasks, by task id.
func (b *statusBook) job(tasks map[string]party.ID) []TaskStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []TaskStatus
	for id, node := range tasks {
		if ts, ok := b.tasks[id]; ok {
			out = append(out, *ts)
		} else {
			out = append(out, TaskStatus{TaskReport: TaskReport{Task: id, State: "no report yet"}, Node: node})
		}
	}
	slices.SortFunc(out, func(a, b TaskStatus) int { return cmpString(a.Task, b.Task) })
	return out
}

// natsStatus verifies a worker's signed status report and records it.
func (s *Server) natsStatus(m *nats.Msg) {
	s.mu.Lock()
	st := s.m.State()
	lookup := func(id party.ID) (*party.Identity, error) {
		if n, ok := st.Nodes[id]; ok {
			return n.Identity, nil
		}
		return nil, &attest.Refusal{Rule: party.RuleUnknownParty, Reason: "not an admitted node"}
	}
	now := s.cfg.Now()
	stmt, err := party.Verify(m.Data, lookup, now)
	placed := map[string]party.ID{}
	if err == nil && stmt.Type == TypeTaskStatus && "sealflow.status."+string(stmt.Issuer) == m.Subject && s.m.Admitted(now, stmt.Issuer) {
		// A report of an admitted node proves it alive, tasks or not; a
		// lost or expired node must re-attest first.
		s.live.heard(stmt.Issuer, now)
	}
	if err == nil {
		for _, j := range st.Jobs {
			for t, n := range j.Tasks {
				placed[j.ID+"\x00"+t] = n
			}
		}
	}
	s.mu.Unlock()
	if err != nil || stmt.Type != TypeTaskStatus || "sealflow.status."+string(stmt.Issuer) != m.Subject {
		return
	}
	var rep StatusReport
	dec := json.NewDecoder(bytes.NewReader(stmt.Body))
	dec.DisallowUnknownFields()
	if dec.Decode(&rep) != nil {
		return
	}
	// Key placement by job and task, so a node cannot report another job's
	// task of the same name.
	byTask := map[string]party.ID{}
	for i := range rep.Tasks {
		if n, ok := placed[rep.Tasks[i].Job+"\x00"+rep.Tasks[i].Task]; ok {
			byTask[rep.Tasks[i].Task] = n
		}
	}
	s.status.record(stmt.Issuer, byTask, stmt.IssuedAt, &rep)
}

// JobStatus returns the latest status of a job's tasks.
func (s *Server) JobStatus(job string) ([]TaskStatus, bool) {
	s.mu.Lock()
	j, ok := s.m.State().Jobs[job]
	var tasks map[string]party.ID
	if ok {
		tasks = make(map[string]party.ID, len(j.Tasks))
		for t, n := range j.Tasks {
			tasks[t] = n
		}
	}
	s.mu.Unlock()
	if !ok {
		return nil, false
	}
	return s.status.job(tasks), true
}

// CheckpointView is a job's checkpoint status (GET /v1/checkpoints?job=):
// each task's latest accepted checkpoint (its restore point), the job's
// last complete checkpoint, and the checkpoints still waiting for
// acknowledgements. Ages are seconds before the orchestrator's clock at
// the time of the request.
type CheckpointView struct {
	Job string `json:"job"`
	// Complete is the last checkpoint every task acknowledged, if any.
	Complete *CompleteCheckpoint `json:"complete,omitempty"`
	// Tasks holds every task of the job, by task id; Checkpoint is 0 for a
	// task with no accepted checkpoint yet.
	Tasks []TaskCheckpoint `json:"tasks"`
	// Pending are the checkpoints some but not all tasks acknowledged, by
	// id.
	Pending []PendingCheckpoint `json:"pending,omitempty"`
}

// CompleteCheckpoint is a job's last complete checkpoint.
type CompleteCheckpoint struct {
	ID         uint64    `json:"id"`
	Version    int64     `json:"version"`
	Started    time.Time `json:"started"`
	Completed  time.Time `json:"completed"`
	AgeSeconds float64   `json:"age_seconds"`
}

// TaskCheckpoint is a task's latest accepted checkpoint.
type TaskCheckpoint struct {
	Task string `json:"task"`
	// Node is the node the task is placed on now; SnapshotNode the one
	// that wrote the snapshot (they differ after a move until the task's
	// next checkpoint).
	Node         party.ID  `json:"node"`
	Checkpoint   uint64    `json:"checkpoint,omitempty"`
	SnapshotNode party.ID  `json:"snapshot_node,omitempty"`
	Accepted     time.Time `json:"accepted,omitzero"`
	AgeSeconds   float64   `json:"age_seconds,omitempty"`
}

// PendingCheckpoint is a checkpoint waiting for acknowledgements.
type PendingCheckpoint struct {
	ID           uint64    `json:"id"`
	Started      time.Time `json:"started"`
	Acknowledged int       `json:"acknowledged"`
	Tasks        int       `json:"tasks"`
}

// checkpointView builds the checkpoint view of job from its checkpoints
// (nil if it has none) at now.
func checkpointView(job *orchestrator.Job, cps *orchestrator.JobCheckpoints, now time.Time) CheckpointView {
	age := func(t time.Time) float64 { return max(now.Sub(t).Seconds(), 0) }
	v := CheckpointView{Job: job.ID, Tasks: make([]TaskCheckpoint, 0, len(job.Tasks))}
	for task, node := range job.Tasks {
		tc := TaskCheckpoint{Task: task, Node: node}
		if cps != nil {
			if rp := cps.Latest[task]; rp != nil {
				tc.Checkpoint, tc.SnapshotNode, tc.Accepted, tc.AgeSeconds = rp.Checkpoint, rp.Node, rp.Accepted, age(rp.Accepted)
			}
		}
		v.Tasks = append(v.Tasks, tc)
	}
	slices.SortFunc(v.Tasks, func(a, b TaskCheckpoint) int { return cmpString(a.Task, b.Task) })
	if cps == nil {
		return v
	}
	if c := cps.Complete; c != nil {
		v.Complete = &CompleteCheckpoint{ID: c.ID, Version: c.Version, Started: c.Started, Completed: c.Completed, AgeSeconds: age(c.Completed)}
	}
	for id, rec := range cps.Pending {
		v.Pending = append(v.Pending, PendingCheckpoint{ID: id, Started: rec.Started, Acknowledged: len(rec.Snapshots), Tasks: len(job.Tasks)})
	}
	slices.SortFunc(v.Pending, func(a, b PendingCheckpoint) int { return cmp.Compare(a.ID, b.ID) })
	return v
}

// JobCheckpoints returns the checkpoint status of a deployed job, and false
// if the job is not deployed.
func (s *Server) JobCheckpoints(job string) (CheckpointView, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.m.State()
	j, ok := st.Jobs[job]
	if !ok {
		return CheckpointView{}, false
	}
	return checkpointView(j, st.Checkpoints[job], s.cfg.Now()), true
}
