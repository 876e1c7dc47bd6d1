package api

import (
	"context"
	"encoding/json"
	"time"

	"github.com/sealflow/sealflow/orchestrator"
)

// DefaultAdaptiveEvery is Config.AdaptiveEvery's default.
const DefaultAdaptiveEvery = time.Second

func (s *Server) adaptiveEvery() time.Duration {
	if s.cfg.AdaptiveEvery == 0 {
		return DefaultAdaptiveEvery
	}
	return s.cfg.AdaptiveEvery
}

// CheckAdaptive re-evaluates every adaptive operator
// (orchestrator.Machine.Adapt): a rescale the machine deferred for its
// cool-down when a node came or went, or one a change of the free slots
// calls for (another job deployed or stopped), happens now. Rescales are
// logged, the state persisted, and each is logged here with its reason. It
// returns the rescales. ServeNATS runs it every Config.AdaptiveEvery (unless
// that is negative); tests call it with an injected clock.
func (s *Server) CheckAdaptive(ctx context.Context) ([]*orchestrator.ScaleResult, error) {
	s.mu.Lock()
	out := s.m.Adapt(s.cfg.Now(), "periodic check of the available slots")
	res, _ := out.Result.(*orchestrator.AdaptResult)
	if res == nil || len(res.Rescales) == 0 {
		s.mu.Unlock()
		return nil, nil
	}
	_, ver, err := s.record(out, nil)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	s.logRescales(out)
	if err := s.flush(ctx, ver); err != nil {
		return res.Rescales, err
	}
	s.hintJobs(out)
	return res.Rescales, nil
}

// logRescales logs the adaptive rescales an output holds (its job.scaled
// entries with adaptive bounds), with their reasons.
func (s *Server) logRescales(out *orchestrator.Output) {
	if out == nil {
		return
	}
	for _, e := range out.Entries {
		if e.Type != orchestrator.EntryJobScaled {
			continue
		}
		var r orchestrator.ScaleResult
		if json.Unmarshal(e.Body, &r) != nil || r.Adaptive == nil {
			continue
		}
		s.log.Info("adaptive rescale", "job", r.Job, "task", r.Task, "operator", r.Operator, "from", r.From, "to", r.Parallelism,
			"generation", r.Generation, "available", r.Available, "min", r.Adaptive.Min, "max", r.Adaptive.Max, "reason", r.Reason)
	}
}

// watchAdaptive runs CheckAdaptive every Config.AdaptiveEvery until ctx
// ends.
func (s *Server) watchAdaptive(ctx context.Context) {
	if s.adaptiveEvery() < 0 {
		return
	}
	s.every(ctx, s.adaptiveEvery(), periodic{"checking adaptive operators", func(ctx context.Context) error {
		_, err := s.CheckAdaptive(ctx)
		return err
	}})
}
