package api

import (
	"github.com/sealflow/sealflow/orchestrator"
)

// SubjectJobsChanged is where the orchestrator publishes an empty message
// whenever an applied statement or its own decision changed where or how a
// job's tasks run (deployed, stopped, moved, rescaled, upgraded, revoked, a
// node drained, removed or lost). It is only a hint: workers answer it by
// fetching the job list over the TLS connection pinned to the verified
// orchestrator, as they do on every status tick, so a forged or dropped hint
// changes nothing but when they look. Without it a worker notices a rescale
// or a move away only at its next status tick.
const SubjectJobsChanged = "sealflow.jobs.changed"

// jobsChangingEntries are the log entry types after which workers should look
// at the job list again.
var jobsChangingEntries = map[string]bool{
	"job.deployed":                    true,
	"job.stopped":                     true,
	"job.upgraded":                    true,
	"job.rolled-back":                 true,
	"service.revoked":                 true,
	orchestrator.EntryJobScaled:       true,
	orchestrator.EntryTaskMigrated:    true,
	orchestrator.EntryTaskRescheduled: true,
	orchestrator.EntryTaskPlaced:      true,
	orchestrator.EntryNodeDrained:     true,
	orchestrator.EntryNodeRemoved:     true,
	orchestrator.EntryNodeLost:        true,
	orchestrator.EntryExchangeEpoch:   true,
}

// changesJobs reports whether out logged a change workers act on.
func changesJobs(out *orchestrator.Output) bool {
	if out == nil {
		return false
	}
	for _, e := range out.Entries {
		if jobsChangingEntries[e.Type] {
			return true
		}
	}
	return false
}

// OnJobsChanged sets a function called (outside the server's lock, after the
// change was persisted) whenever the jobs changed; ServeNATS publishes
// SubjectJobsChanged with it.
func (s *Server) OnJobsChanged(f func()) {
	s.relMu.Lock()
	s.jobsHint = f
	s.relMu.Unlock()
}

// hintJobs calls the OnJobsChanged function if any output changed the jobs.
func (s *Server) hintJobs(outs ...*orchestrator.Output) {
	changed := false
	for _, out := range outs {
		changed = changed || changesJobs(out)
	}
	if !changed {
		return
	}
	s.relMu.Lock()
	f := s.jobsHint
	s.relMu.Unlock()
	if f != nil {
		f()
	}
}
