package api

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/party"
)

// liveness remembers when each node was last heard from: a verified status
// report, a statement it signed that was applied, a restore-point request,
// or keys released to it. It is operational data, neither persisted nor
// logged: a restarted orchestrator gives every node a full NodeTimeout from
// its start.
type liveness struct {
	mu    sync.Mutex
	since time.Time
	last  map[party.ID]time.Time
}

func (l *liveness) start(now time.Time) {
	l.mu.Lock()
	l.since, l.last = now, map[party.ID]time.Time{}
	l.mu.Unlock()
}

// heard records that node was heard from at t.
func (l *liveness) heard(node party.ID, t time.Time) {
	l.mu.Lock()
	if t.After(l.last[node]) {
		l.last[node] = t
	}
	l.mu.Unlock()
}

// lastHeard returns when node was last heard from, or when the server
// started if it was not heard from since.
func (l *liveness) lastHeard(node party.ID) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[node]; ok && t.After(l.since) {
		return t
	}
	return l.since
}

// LastHeard returns when the server last heard from node (a status report,
// an applied statement it signed, a restore-point request, or keys released
// to it), or when the server started if not since.
func (s *Server) LastHeard(node party.ID) time.Time { return s.live.lastHeard(node) }

// CheckLiveness declares lost every admitted node that holds tasks and was
// not heard from for longer than Config.NodeTimeout (orchestrator.Machine.
// NodeLost): its tasks are rescheduled, the log entries appended, the state
// persisted and the new keys published like other releases. It returns the
// nodes declared lost. ServeNATS runs it periodically; tests call it with an
// injected clock.
func (s *Server) CheckLiveness(ctx context.Context) ([]party.ID, error) {
	if s.cfg.NodeTimeout < 0 {
		return nil, nil
	}
	s.mu.Lock()
	now := s.cfg.Now()
	st := s.m.State()
	holding := map[party.ID]bool{}
	for _, j := range st.Jobs {
		for _, n := range j.Tasks {
			if n != "" {
				holding[n] = true
			}
		}
	}
	var silent []party.ID
	for n := range holding {
		if node := st.Nodes[n]; node != nil && node.Lost.IsZero() && now.Sub(s.live.lastHeard(n)) > s.cfg.NodeTimeout {
			silent = append(silent, n)
		}
	}
	slices.Sort(silent)
	var (
		releases []orchestrator.Release
		ver      uint64
		lost     []party.ID
		outs     []*orchestrator.Output
	)
	for _, n := range silent {
		reason := "not heard from since " + s.live.lastHeard(n).UTC().Format(time.RFC3339Nano) + " (timeout " + s.cfg.NodeTimeout.String() + ")"
		out, err := s.m.NodeLost(now, n, reason)
		if err != nil {
			// Only an unknown node is refused, and n comes from the state.
			s.log.Error("declaring a node lost", "node", n.Short(), "err", err)
			continue
		}
		_, v, lerr := s.record(out, nil)
		if lerr != nil {
			s.mu.Unlock()
			return lost, lerr
		}
		ver = v
		lost = append(lost, n)
		outs = append(outs, out)
		s.logRescales(out)
		s.relMu.Lock()
		// A lost node's keys are not served again: it must re-attest.
		delete(s.releases, n)
		s.relMu.Unlock()
		releases = append(releases, out.Releases...)
		res, _ := out.Result.(*orchestrator.NodeLostResult)
		var moves []orchestrator.TaskMove
		if res != nil {
			moves = res.Moves
		}
		s.log.Warn("node lost: tasks rescheduled", "node", n.Short(), "reason", reason, "moves", moves)
	}
	s.mu.Unlock()
	if len(lost) == 0 {
		return nil, nil
	}
	s.metrics.nodesLost.Add(float64(len(lost)))
	if err := s.flush(ctx, ver); err != nil {
		return lost, err
	}
	if len(releases) > 0 {
		s.metrics.keyReleases.Add(float64(len(releases)))
		s.deliver(releases, now)
	}
	s.hintJobs(outs...)
	return lost, nil
}

// watchLiveness runs CheckLiveness every quarter of NodeTimeout until ctx
// ends. The overload check has its own ticker (watchOverload).
func (s *Server) watchLiveness(ctx context.Context) {
	if s.cfg.NodeTimeout < 0 {
		return
	}
	s.every(ctx, max(s.cfg.NodeTimeout/4, 10*time.Millisecond),
		periodic{"checking node liveness", func(ctx context.Context) error {
			_, err := s.CheckLiveness(ctx)
			return err
		}})
}

// periodic is one of the orchestrator's own periodic checks: what it does,
// for the log, and the check.
type periodic struct {
	what  string
	check func(context.Context) error
}

// every runs the checks in order every d until ctx ends, logging failures.
func (s *Server) every(ctx context.Context, d time.Duration, checks ...periodic) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for _, c := range checks {
				if err := c.check(ctx); err != nil && ctx.Err() == nil {
					s.log.Error(c.what, "err", err)
				}
			}
		}
	}
}
