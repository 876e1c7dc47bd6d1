package api

import (
	"bytes"
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sealflow/sealflow/attest"
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
}

// StatusReport is the body of a task.status statement.
type StatusReport struct {
	Tasks []TaskReport `json:"tasks"`
}

// TaskStatus is what the orchestrator knows of a task's progress: the latest
// report of the node it is placed on, and rates over the last two reports.
type TaskStatus struct {
	TaskReport
	Node         party.ID  `json:"node"`
	Updated      time.Time `json:"updated"`
	InPerSecond  float64   `json:"records_in_per_second"`
	OutPerSecond float64   `json:"records_out_per_second"`
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
		ts := &TaskStatus{TaskReport: t, Node: node, Updated: at}
		if old != nil {
			if !at.After(old.Updated) {
				continue // an older or replayed report
			}
			if d := at.Sub(old.Updated).Seconds(); d > 0 && old.Node == node {
				ts.InPerSecond = float64(t.RecordsIn-old.RecordsIn) / d
				ts.OutPerSecond = float64(t.RecordsOut-old.RecordsOut) / d
			}
		}
		b.tasks[t.Task] = ts
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
