package api

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/sealflow/sealflow/orchestrator"
)

// OverloadBackpressure is the backpressure ratio (share of a task's time its
// producers spent blocked on full exchanges) from which a task counts as
// overloaded.
const OverloadBackpressure = 0.9

// DefaultOverloadFor is Config.OverloadFor's default.
const DefaultOverloadFor = 30 * time.Second

func (s *Server) overloadFor() time.Duration {
	if s.cfg.OverloadFor == 0 {
		return DefaultOverloadFor
	}
	return s.cfg.OverloadFor
}

// overloadEvery is how often watchOverload checks: a quarter of
// OverloadFor, between 10 ms and a second.
func (s *Server) overloadEvery() time.Duration {
	return min(max(s.overloadFor()/4, 10*time.Millisecond), time.Second)
}

// watchOverload runs CheckOverload every overloadEvery until ctx ends,
// unless OverloadFor is negative. It has its own ticker: it ran on the
// liveness ticker, so turning the liveness check off (a negative
// NodeTimeout) turned overload relief off too.
func (s *Server) watchOverload(ctx context.Context) {
	if s.overloadFor() < 0 {
		return
	}
	s.every(ctx, s.overloadEvery(), periodic{"checking task overload", func(ctx context.Context) error {
		_, err := s.CheckOverload(ctx)
		return err
	}})
}

// CheckOverload moves each task whose workers' signed status reports have
// shown backpressure of at least OverloadBackpressure for OverloadFor to the
// next tier its slot allows (edge → regional, say), on a node every owner's
// policy accepts (orchestrator.Machine.RelieveTask). A task that cannot move
// is left where it is, and its overload counts afresh. It returns the tasks
// moved. The task comes back when a node of its preferred tier is admitted.
// ServeNATS runs it periodically (watchOverload); tests call it with an
// injected clock.
func (s *Server) CheckOverload(ctx context.Context) ([]string, error) {
	if s.overloadFor() < 0 {
		return nil, nil
	}
	now := s.cfg.Now()
	s.status.mu.Lock()
	var over []TaskStatus
	for _, ts := range s.status.tasks {
		// Measured on the reporting worker's clock (the reports' signing
		// times), so clock skew between machines does not count.
		if !ts.overSince.IsZero() && ts.Updated.Sub(ts.overSince) >= s.overloadFor() {
			over = append(over, *ts)
		}
	}
	s.status.mu.Unlock()
	if len(over) == 0 {
		return nil, nil
	}
	slices.SortFunc(over, func(a, b TaskStatus) int { return cmpString(a.Task, b.Task) })
	var (
		moved    []string
		releases []orchestrator.Release
		ver      uint64
		outs     []*orchestrator.Output
	)
	s.mu.Lock()
	for _, ts := range over {
		if j := s.m.State().Jobs[ts.Job]; j == nil || j.Tasks[ts.Task] != ts.Node {
			// Moved since it reported (by a check that ran at the same
			// time, say): the report is not about where it runs now.
			continue
		}
		reason := fmt.Sprintf("backpressure %.2f since %s", ts.Backpressure, ts.overSince.UTC().Format(time.RFC3339))
		out, err := s.m.RelieveTask(now, ts.Job, ts.Task, reason)
		s.status.mu.Lock()
		if cur := s.status.tasks[ts.Task]; cur != nil {
			cur.overSince = time.Time{} // counts afresh, moved or not
		}
		s.status.mu.Unlock()
		if err != nil {
			s.log.Info("overloaded task stays", "job", ts.Job, "task", ts.Task, "reason", reason, "err", err)
			continue
		}
		_, v, lerr := s.record(out, nil)
		if lerr != nil {
			s.mu.Unlock()
			return moved, lerr
		}
		ver = v
		moved = append(moved, ts.Task)
		outs = append(outs, out)
		releases = append(releases, out.Releases...)
		s.log.Warn("overloaded task moved up a tier", "job", ts.Job, "task", ts.Task, "reason", reason)
	}
	s.mu.Unlock()
	if len(moved) == 0 {
		return nil, nil
	}
	if err := s.flush(ctx, ver); err != nil {
		return moved, err
	}
	if len(releases) > 0 {
		s.metrics.keyReleases.Add(float64(len(releases)))
		s.deliver(releases, now)
	}
	s.hintJobs(outs...)
	return moved, nil
}
