package orchestrator

import (
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/sealflow/sealflow/party"
)

// Statement types of savepoints.
const (
	// TypeJobSavepoint asks for a savepoint of a running job.
	TypeJobSavepoint = "job.savepoint"
	// TypeJobStop stops a job, optionally taking a savepoint first.
	TypeJobStop = "job.stop"
)

// SavepointRequest is the body of a job.savepoint statement.
type SavepointRequest struct {
	Job string `json:"job"`
	// Name names the savepoint; "<job>-<n>" when empty.
	Name string `json:"name,omitempty"`
}

// JobStop is the body of a job.stop statement.
type JobStop struct {
	Job string `json:"job"`
	// Savepoint takes a savepoint (named Name) before the job stops.
	Savepoint bool   `json:"savepoint,omitempty"`
	Name      string `json:"name,omitempty"`
}

// Savepoint is a retained state of a job: every task's restore point at the
// time it was taken, and the job's keys, so that a job deployed from it (the
// same service, possibly a newer version) reads the snapshots, the
// intermediate streams and the outputs the job left. Every stage of a job
// commits its output only once its checkpoint is accepted, and the stages are
// connected by durable streams, so the set of the tasks' latest restore points
// is a consistent state of the whole job.
type Savepoint struct {
	Name    string `json:"name"`
	Job     string `json:"job"`
	Service string `json:"service"`
	Digest  string `json:"digest"`
	Version int64  `json:"version"`
	// Points holds each task's restore point, by task id.
	Points map[string]RestorePoint `json:"points"`
	// Keys are the job's keys (in clear, inside the TEE, like Job.Keys).
	Keys          map[string][]byte `json:"keys"`
	Epoch         uint32            `json:"epoch"`
	ExchangeEpoch uint32            `json:"exchange_epoch,omitempty"`
	Taken         time.Time         `json:"taken"`
}

// SavepointView is what the log and the API say about a savepoint: its tasks'
// checkpoints and digests, never its keys.
type SavepointView struct {
	Name    string            `json:"name"`
	Job     string            `json:"job"`
	Service string            `json:"service"`
	Version int64             `json:"version"`
	Tasks   map[string]uint64 `json:"tasks"`
	Digests map[string]string `json:"digests"`
	Taken   time.Time         `json:"taken"`
}

// View returns the savepoint without its keys.
func (s *Savepoint) View() SavepointView {
	v := SavepointView{Name: s.Name, Job: s.Job, Service: s.Service, Version: s.Version, Tasks: map[string]uint64{}, Digests: map[string]string{}, Taken: s.Taken}
	for t, p := range s.Points {
		v.Tasks[t], v.Digests[t] = p.Checkpoint, p.Digest
	}
	return v
}

// Savepoint returns the named savepoint.
func (m *Machine) Savepoint(name string) (*Savepoint, bool) {
	s, ok := m.st.Savepoints[name]
	return s, ok
}

// jobOfProvider returns the job, checking that the issuer is the provider of
// its service.
func (m *Machine) jobOfProvider(st *party.Statement, issuer *party.Identity, id string) (*Job, *Service, error) {
	if err := requireRole(issuer, party.RoleProvider); err != nil {
		return nil, nil, err
	}
	job, ok := m.st.Jobs[id]
	if !ok {
		return nil, nil, refuse("job.unknown", "job %q is not deployed", id)
	}
	svc := m.jobService(job)
	if svc == nil || svc.Provider != st.Issuer {
		return nil, nil, refuse("job.owner", "job %s runs a service of another provider", id)
	}
	return job, svc, nil
}

// takeSavepoint records a savepoint of job from its tasks' restore points.
func (m *Machine) takeSavepoint(now time.Time, job *Job, svc *Service, name string, out *Output) (*Savepoint, error) {
	if name == "" {
		n := 1
		for m.st.Savepoints[job.ID+"-"+strconv.Itoa(n)] != nil {
			n++
		}
		name = job.ID + "-" + strconv.Itoa(n)
	}
	if err := checkSavepointName(name); err != nil {
		return nil, err
	}
	if _, dup := m.st.Savepoints[name]; dup {
		return nil, refuse("savepoint.exists", "savepoint %q exists already", name)
	}
	cps := m.st.Checkpoints[job.ID]
	sp := &Savepoint{Name: name, Job: job.ID, Service: job.Service, Digest: job.Digest, Version: svc.Manifest.Version,
		Points: map[string]RestorePoint{}, Keys: map[string][]byte{}, Epoch: job.Epoch, ExchangeEpoch: job.ExchangeEpoch, Taken: now.UTC()}
	var missing []string
	for task := range job.Tasks {
		p := cps.latest(task)
		if p == nil {
			missing = append(missing, task)
			continue
		}
		sp.Points[task] = *p
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, refuse("savepoint.incomplete", "tasks %v of job %s have no accepted checkpoint yet; try again after their first checkpoint", missing, job.ID)
	}
	for k, v := range job.Keys {
		sp.Keys[k] = slices.Clone(v)
	}
	if m.st.Savepoints == nil {
		m.st.Savepoints = map[string]*Savepoint{}
	}
	m.st.Savepoints[name] = sp
	v := sp.View()
	out.Entries = append(out.Entries, entry(now, "savepoint.taken", []string{"job:" + job.ID, "service:" + job.Service}, v))
	return sp, nil
}

func checkSavepointName(name string) error {
	if len(name) > 128 {
		return refuse("savepoint.name", "savepoint name of %d bytes, at most 128", len(name))
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return refuse("savepoint.name", "savepoint name %q: only letters, digits, '-', '_' and '.'", name)
		}
	}
	return nil
}

func (m *Machine) savepoint(now time.Time, st *party.Statement, issuer *party.Identity, out *Output) error {
	var b SavepointRequest
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	job, svc, err := m.jobOfProvider(st, issuer, b.Job)
	if err != nil {
		return err
	}
	sp, err := m.takeSavepoint(now, job, svc, b.Name, out)
	if err != nil {
		return err
	}
	out.Result = sp.View()
	return nil
}

func (m *Machine) stopJob(now time.Time, st *party.Statement, issuer *party.Identity, out *Output) error {
	var b JobStop
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	job, svc, err := m.jobOfProvider(st, issuer, b.Job)
	if err != nil {
		return err
	}
	result := map[string]any{"job": job.ID, "tasks": job.Tasks}
	body := map[string]any{"job": job.ID, "service": job.Service, "reason": "stopped by its provider", "tasks": job.Tasks}
	if b.Savepoint {
		sp, err := m.takeSavepoint(now, job, svc, b.Name, out)
		if err != nil {
			return err
		}
		result["savepoint"] = sp.View()
		body["savepoint"] = sp.Name
	} else if b.Name != "" {
		return refuse("statement.body", "a savepoint name without savepoint: true")
	}
	m.removeJob(job)
	out.Result = result
	out.Entries = append(out.Entries, entry(now, "job.stopped", []string{"job:" + job.ID, "service:" + job.Service}, body))
	return nil
}

// removeJob forgets a job, its keys and its checkpoints (savepoints keep
// their own copies). Its workers, which poll the jobs they run, stop its
// tasks; their acknowledgements are refused from now on, so nothing they
// produced after their last accepted checkpoint is ever committed.
func (m *Machine) removeJob(job *Job) {
	for k := range job.Keys {
		clear(job.Keys[k])
	}
	delete(m.st.Jobs, job.ID)
	delete(m.st.Checkpoints, job.ID)
}

// fromSavepoint prepares a job being deployed from savepoint name: the job
// takes the savepoint's keys (fresh keys only for purposes the savepoint
// lacks) and each of its tasks that the savepoint holds starts from its
// restore point. It returns the job's checkpoints to install and the tasks
// that start empty; it changes nothing in the state.
func (m *Machine) fromSavepoint(now time.Time, job *Job, svc *Service, name string) (*JobCheckpoints, []string, error) {
	sp, ok := m.st.Savepoints[name]
	if !ok {
		return nil, nil, refuse("savepoint.unknown", "savepoint %q does not exist", name)
	}
	if sp.Service != svc.Manifest.ID {
		return nil, nil, refuse("savepoint.service", "savepoint %s is of service %s, not %s", name, sp.Service, svc.Manifest.ID)
	}
	if sp.Job != job.ID {
		return nil, nil, refuse("savepoint.job", "savepoint %s is of job %s: a job deployed from it must have the same id (its snapshots and streams are bound to it), not %s", name, sp.Job, job.ID)
	}
	maps.Copy(job.Keys, cloneKeys(sp.Keys))
	job.Epoch, job.ExchangeEpoch = sp.Epoch, sp.ExchangeEpoch
	cps := &JobCheckpoints{Latest: map[string]*RestorePoint{}}
	var fresh []string
	for _, t := range svc.Manifest.Tasks {
		p, ok := sp.Points[t.ID]
		if !ok {
			fresh = append(fresh, t.ID)
			continue
		}
		p.Accepted = now.UTC()
		cps.Latest[t.ID] = &p
	}
	return cps, fresh, nil
}

func cloneKeys(keys map[string][]byte) map[string][]byte {
	out := make(map[string][]byte, len(keys))
	for k, v := range keys {
		out[k] = slices.Clone(v)
	}
	return out
}

// pinned returns the checkpoint ids of a task's snapshots that savepoints
// hold, so that the worker keeps those objects.
func (m *Machine) pinned(job, task string) []uint64 {
	var ids []uint64
	for _, sp := range m.st.Savepoints {
		if sp.Job == job {
			if p, ok := sp.Points[task]; ok {
				ids = append(ids, p.Checkpoint)
			}
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// SavepointViews lists the savepoints, by name.
func SavepointViews(st *State) []SavepointView {
	names := slices.Sorted(maps.Keys(st.Savepoints))
	out := make([]SavepointView, 0, len(names))
	for _, n := range names {
		out = append(out, st.Savepoints[n].View())
	}
	return out
}
