package orchestrator

import (
	"encoding/hex"
	"maps"
	"slices"
	"time"

	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/party"
)

// TypeCheckpointAck is the statement a worker signs when a task of a job has
// stored its sealed snapshot of a checkpoint (see package checkpoint).
const TypeCheckpointAck = "checkpoint.ack"

// EntryCheckpointComplete is the log entry type written when every task of a
// job has acknowledged a checkpoint.
const EntryCheckpointComplete = "checkpoint.complete"

// MaxPendingCheckpoints is how many incomplete checkpoints the machine keeps
// per job; a newer one evicts the oldest (a checkpoint a lost task will never
// acknowledge).
const MaxPendingCheckpoints = 8

// SourcePosition is where a source read a partition of a stream up to at a
// checkpoint: the JetStream stream sequence of the last frame taken and the
// sealed sequence number expected next (as confidential.Position and
// checkpoint.Position, to which it converts).
type SourcePosition struct {
	StreamSeq uint64 `json:"stream_seq"`
	Next      uint64 `json:"next"`
}

// CheckpointAck is the body of a checkpoint.ack statement: one task's
// snapshot of a checkpoint, its digest and the source positions it recorded.
type CheckpointAck struct {
	Job        string `json:"job"`
	Checkpoint uint64 `json:"checkpoint"`
	Task       string `json:"task"`
	// Version is the version of the service the task runs.
	Version int64 `json:"version"`
	// KeyGroups is the key-group range the snapshot holds.
	KeyGroups state.Range `json:"key_groups"`
	// Digest is the hex SHA-256 of the sealed snapshot object.
	Digest string `json:"digest"`
	// Positions are the task's source positions, by stream and partition.
	Positions map[string]map[uint32]SourcePosition `json:"positions,omitempty"`
	// Deployed, when set, is the deploy time of the job the task runs for:
	// an ack from a run of an earlier deployment of the same job id (stopped,
	// then deployed again) is refused, so it never commits.
	Deployed time.Time `json:"deployed,omitzero"`
	// Generation is the task's run generation (see Job.Generations).
	Generation uint64 `json:"generation,omitempty"`
}

// CheckpointSnapshot is one task's acknowledged snapshot.
type CheckpointSnapshot struct {
	Node      party.ID    `json:"node"`
	KeyGroups state.Range `json:"key_groups"`
	Digest    string      `json:"digest"`
}

// CheckpointRecord is a checkpoint of a job as the machine knows it: the
// snapshots acknowledged so far and the source positions they reported.
type CheckpointRecord struct {
	Job       string                               `json:"job"`
	ID        uint64                               `json:"id"`
	Version   int64                                `json:"version"`
	Snapshots map[string]CheckpointSnapshot        `json:"snapshots"` // by task
	Positions map[string]map[uint32]SourcePosition `json:"positions,omitempty"`
	Started   time.Time                            `json:"started"`
	Completed time.Time                            `json:"completed,omitzero"`
}

// Snapshot returns the snapshot task acknowledged.
func (r *CheckpointRecord) Snapshot(task string) (CheckpointSnapshot, bool) {
	s, ok := r.Snapshots[task]
	return s, ok
}

// JobCheckpoints are a job's last complete checkpoint, the ones still
// waiting for acknowledgements and each task's restore point.
type JobCheckpoints struct {
	Complete *CheckpointRecord            `json:"complete,omitempty"`
	Pending  map[uint64]*CheckpointRecord `json:"pending,omitempty"`
	// Latest holds each task's latest accepted snapshot, by task id.
	Latest map[string]*RestorePoint `json:"latest,omitempty"`
}

// RestorePoint is a task's latest accepted checkpoint snapshot: what the task
// restores from when it restarts, on the same node or another. Every stage of
// a job checkpoints on its own and commits its output only after its
// checkpoint is accepted, so a task restores from its own latest snapshot,
// not from the job's last complete checkpoint.
type RestorePoint struct {
	Job        string `json:"job"`
	Task       string `json:"task"`
	Checkpoint uint64 `json:"checkpoint"`
	// Version is the version of the service that wrote the snapshot.
	Version   int64       `json:"version"`
	KeyGroups state.Range `json:"key_groups"`
	// Digest is the hex SHA-256 of the sealed snapshot object; a restore
	// refuses any other object.
	Digest string `json:"digest"`
	// Node is the node that wrote the snapshot.
	Node party.ID `json:"node"`
	// Positions are the task's source positions at the snapshot.
	Positions map[string]map[uint32]SourcePosition `json:"positions,omitempty"`
	// Accepted is when the orchestrator accepted the acknowledgement.
	Accepted time.Time `json:"accepted"`
}

// CheckpointAckResult is the Output.Result of an accepted checkpoint.ack.
type CheckpointAckResult struct {
	Job        string `json:"job"`
	Checkpoint uint64 `json:"checkpoint"`
	Task       string `json:"task"`
	// Complete is true when every task of the job acknowledged the
	// checkpoint.
	Complete bool `json:"complete"`
	// Already is true when the acknowledgement repeats the task's latest
	// accepted one (a retry): nothing changed.
	Already bool `json:"already,omitempty"`
	// Pinned lists the task's checkpoints that savepoints hold: the worker
	// keeps their snapshot objects.
	Pinned []uint64 `json:"pinned,omitempty"`
}

// RestorePoint returns the latest snapshot of a job's task the orchestrator
// accepted, if any.
func (m *Machine) RestorePoint(job, task string) (RestorePoint, bool) {
	c := m.st.Checkpoints[job]
	if c == nil || c.Latest[task] == nil {
		return RestorePoint{}, false
	}
	rp := *c.Latest[task]
	rp.Positions = clonePositions(rp.Positions)
	return rp, true
}

func clonePositions(p map[string]map[uint32]SourcePosition) map[string]map[uint32]SourcePosition {
	if p == nil {
		return nil
	}
	out := make(map[string]map[uint32]SourcePosition, len(p))
	for s, parts := range p {
		out[s] = maps.Clone(parts)
	}
	return out
}

// samePositions reports whether a and b hold the same positions.
func samePositions(a, b map[string]map[uint32]SourcePosition) bool {
	n := func(p map[string]map[uint32]SourcePosition) int {
		c := 0
		for _, parts := range p {
			c += len(parts)
		}
		return c
	}
	return n(a) == n(b) && positionsEqual(a, b)
}

// LastCheckpoint returns the job's last complete checkpoint: the snapshots a
// restore must use, with the digests Get must check, and the positions the
// sources rewind to. Callers must not modify it.
func (m *Machine) LastCheckpoint(job string) (*CheckpointRecord, bool) {
	if c := m.st.Checkpoints[job]; c != nil && c.Complete != nil {
		return c.Complete, true
	}
	return nil, false
}

func (m *Machine) checkpointAck(now time.Time, st *party.Statement, issuer *party.Identity, out *Output) error {
	if err := requireRole(issuer, party.RoleWorker); err != nil {
		return err
	}
	var b CheckpointAck
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	job, ok := m.st.Jobs[b.Job]
	if !ok {
		return refuse("checkpoint.job", "job %q is not deployed", b.Job)
	}
	if g := job.Generations[b.Task]; b.Generation < g {
		return refuse("checkpoint.generation", "the acknowledgement is from generation %d of task %s, which was rescaled since (generation %d)", b.Generation, b.Task, g)
	}
	if !b.Deployed.IsZero() && !b.Deployed.Equal(job.Deployed) {
		return refuse("checkpoint.job", "the acknowledgement is for job %s deployed at %s; the job running now was deployed at %s", b.Job, b.Deployed.UTC().Format(time.RFC3339Nano), job.Deployed.Format(time.RFC3339Nano))
	}
	placed, ok := job.Tasks[b.Task]
	if !ok {
		return refuse("checkpoint.task", "job %s has no task %q", b.Job, b.Task)
	}
	subjects := []string{"job:" + b.Job, "service:" + job.Service, "node:" + string(st.Issuer)}
	logRefusal := func(err error) error {
		out.Entries = append(out.Entries, entry(now, "checkpoint.refused", subjects,
			map[string]any{"job": b.Job, "checkpoint": b.Checkpoint, "task": b.Task, "node": st.Issuer, "digest": b.Digest, "rule": ruleOf(err), "reason": err.Error()}))
		return err
	}
	if placed != st.Issuer {
		return logRefusal(refuse("checkpoint.node", "task %s of job %s is placed on node %s, not on %s", b.Task, b.Job, placed.Short(), st.Issuer.Short()))
	}
	if !m.st.Nodes[st.Issuer].admitted(now) {
		return logRefusal(refuse("checkpoint.node", "node %s is not admitted, was declared lost or its identity expired; it must re-attest", st.Issuer.Short()))
	}
	if d, err := hex.DecodeString(b.Digest); err != nil || len(d) != 32 {
		return refuse("checkpoint.digest", "snapshot digest %q of task %s is not a hex SHA-256", short(b.Digest), b.Task)
	}
	if err := b.KeyGroups.Validate(state.MaxMaxParallelism); err != nil {
		return refuse("checkpoint.key-groups", "task %s: %v", b.Task, err)
	}
	if err := m.checkPositions(job, &b); err != nil {
		return err
	}
	cps := m.st.Checkpoints[b.Job]
	if latest := cps.latest(b.Task); latest != nil && b.Checkpoint <= latest.Checkpoint {
		if b.Checkpoint == latest.Checkpoint && latest.Node == st.Issuer {
			if latest.Digest == b.Digest && latest.KeyGroups == b.KeyGroups && latest.Version == b.Version && samePositions(latest.Positions, b.Positions) {
				out.Result = &CheckpointAckResult{Job: b.Job, Checkpoint: b.Checkpoint, Task: b.Task,
					Complete: cps.Complete != nil && cps.Complete.ID == b.Checkpoint, Already: true}
				return nil
			}
			return logRefusal(refuse("checkpoint.duplicate", "task %s already acknowledged checkpoint %d of job %s with digest %s", b.Task, b.Checkpoint, b.Job, short(latest.Digest)))
		}
		return logRefusal(refuse("checkpoint.stale", "checkpoint %d of task %s of job %s is not newer than the task's latest accepted checkpoint %d", b.Checkpoint, b.Task, b.Job, latest.Checkpoint))
	}
	// Each task restores from its own latest snapshot, so an ack newer than
	// the task's latest is accepted even when the job-wide bookkeeping has
	// moved on (other tasks completed later ids, or the pending records are
	// full of newer ones: a task that was cut off by a WAN outage, say); it
	// then only updates the task's restore point.
	track := !(cps != nil && cps.Complete != nil && b.Checkpoint <= cps.Complete.ID)
	var rec *CheckpointRecord
	if cps != nil && track {
		rec = cps.Pending[b.Checkpoint]
	}
	snap := CheckpointSnapshot{Node: st.Issuer, KeyGroups: b.KeyGroups, Digest: b.Digest}
	evict := uint64(0)
	if track && rec == nil && cps != nil && len(cps.Pending) >= MaxPendingCheckpoints {
		evict = slices.Min(slices.Collect(maps.Keys(cps.Pending)))
		track = b.Checkpoint > evict
	}
	if rec != nil {
		if rec.Version != b.Version {
			return logRefusal(refuse("checkpoint.version", "task %s acknowledges checkpoint %d of job %s at version %d, other tasks at version %d", b.Task, b.Checkpoint, b.Job, b.Version, rec.Version))
		}
		if prev, ok := rec.Snapshots[b.Task]; ok {
			// Only reachable for a state saved before restore points
			// existed: the task's restore point covers this otherwise.
			return logRefusal(refuse("checkpoint.duplicate", "task %s already acknowledged checkpoint %d of job %s with digest %s", b.Task, b.Checkpoint, b.Job, short(prev.Digest)))
		}
		for stream, parts := range b.Positions {
			for p, pos := range parts {
				if old, ok := rec.Positions[stream][p]; ok && old != pos {
					return logRefusal(refuse("checkpoint.positions", "task %s reports position %+v of %s partition %d in checkpoint %d, another task reported %+v", b.Task, pos, stream, p, b.Checkpoint, old))
				}
			}
		}
	}

	// Every check passed: record the acknowledgement.
	if m.st.Checkpoints == nil {
		m.st.Checkpoints = map[string]*JobCheckpoints{}
	}
	if cps == nil {
		cps = &JobCheckpoints{}
		m.st.Checkpoints[b.Job] = cps
	}
	if cps.Latest == nil {
		cps.Latest = map[string]*RestorePoint{}
	}
	cps.Latest[b.Task] = &RestorePoint{Job: b.Job, Task: b.Task, Checkpoint: b.Checkpoint, Version: b.Version, KeyGroups: b.KeyGroups,
		Digest: b.Digest, Node: st.Issuer, Positions: clonePositions(b.Positions), Accepted: now.UTC()}
	if !track {
		out.Result = &CheckpointAckResult{Job: b.Job, Checkpoint: b.Checkpoint, Task: b.Task, Pinned: m.pinned(b.Job, b.Task)}
		return nil
	}
	if cps.Pending == nil {
		cps.Pending = map[uint64]*CheckpointRecord{}
	}
	if rec == nil {
		if len(cps.Pending) >= MaxPendingCheckpoints {
			delete(cps.Pending, evict)
		}
		rec = &CheckpointRecord{Job: b.Job, ID: b.Checkpoint, Version: b.Version, Snapshots: map[string]CheckpointSnapshot{}, Started: now.UTC()}
		cps.Pending[b.Checkpoint] = rec
	}
	rec.Snapshots[b.Task] = snap
	for stream, parts := range b.Positions {
		if rec.Positions == nil {
			rec.Positions = map[string]map[uint32]SourcePosition{}
		}
		if rec.Positions[stream] == nil {
			rec.Positions[stream] = map[uint32]SourcePosition{}
		}
		maps.Copy(rec.Positions[stream], parts)
	}
	complete := true
	for task := range job.Tasks {
		if _, ok := rec.Snapshots[task]; !ok {
			complete = false
			break
		}
	}
	out.Result = &CheckpointAckResult{Job: b.Job, Checkpoint: b.Checkpoint, Task: b.Task, Complete: complete, Pinned: m.pinned(b.Job, b.Task)}
	if !complete {
		return nil
	}
	rec.Completed = now.UTC()
	cps.Complete = rec
	for id := range cps.Pending {
		if id <= rec.ID {
			delete(cps.Pending, id)
		}
	}
	out.Entries = append(out.Entries, entry(now, EntryCheckpointComplete, []string{"job:" + b.Job, "service:" + job.Service},
		map[string]any{"job": b.Job, "checkpoint": rec.ID, "version": rec.Version, "snapshots": rec.Snapshots,
			"positions": rec.Positions, "digest": digestJSON(rec)}))
	return nil
}

func (c *JobCheckpoints) latest(task string) *RestorePoint {
	if c == nil {
		return nil
	}
	return c.Latest[task]
}

// checkPositions checks that a task reports positions only of registered
// streams it reads, within their partitions. Names that are not registered
// streams are the job's own intermediate streams.
func (m *Machine) checkPositions(job *Job, b *CheckpointAck) error {
	var reads []string
	if svc := m.jobService(job); svc != nil {
		for _, t := range svc.Manifest.Tasks {
			if t.ID == b.Task {
				reads = t.Reads
			}
		}
	}
	for stream, parts := range b.Positions {
		if stream == "" {
			return refuse("checkpoint.positions", "task %s reports positions of a stream without a name", b.Task)
		}
		s, ok := m.st.Streams[stream]
		if !ok {
			continue
		}
		if !slices.Contains(reads, stream) {
			return refuse("checkpoint.positions", "task %s of job %s reports positions of stream %s, which it does not read", b.Task, b.Job, stream)
		}
		for p := range parts {
			if int64(p) >= int64(s.Partitions) {
				return refuse("checkpoint.positions", "task %s reports partition %d of stream %s, which has %d partitions", b.Task, p, stream, s.Partitions)
			}
		}
	}
	return nil
}

// positionsEqual reports whether every position in ack is recorded in rec
// with the same value.
func positionsEqual(rec, ack map[string]map[uint32]SourcePosition) bool {
	for stream, parts := range ack {
		for p, pos := range parts {
			if old, ok := rec[stream][p]; !ok || old != pos {
				return false
			}
		}
	}
	return true
}

func short(s string) string {
	if len(s) > 16 {
		return s[:16] + "..."
	}
	return s
}
