package main

import (
	"slices"
	"testing"
	"time"

	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
)

// TestScaleLines: service status names every operator with a parallelism
// override or adaptive bounds, in task and operator order, with the bounds,
// the cool-down (the default when unset) and the last rescale.
func TestScaleLines(t *testing.T) {
	last := time.Date(2026, 11, 26, 6, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		job  api.JobView
		want []string
	}{
		{"none", api.JobView{}, nil},
		{"manual", api.JobView{Scale: map[string]map[string]int{"b/edge": {"win": 3}, "a/edge": {"win": 2}}}, []string{
			"scaled: task a/edge operator win parallelism 2",
			"scaled: task b/edge operator win parallelism 3",
		}},
		{"adaptive", api.JobView{
			Scale: map[string]map[string]int{"a/edge": {"win": 4}},
			Adaptive: map[string]map[string]*orchestrator.Adaptive{
				"a/edge": {"win": {AdaptiveBounds: orchestrator.AdaptiveBounds{Min: 1, Max: 4, Cooldown: orchestrator.Duration(10 * time.Second)}, Last: last}},
				"a/reg":  {"agg": {AdaptiveBounds: orchestrator.AdaptiveBounds{Min: 2, Max: 8}}},
			}}, []string{
			"scaled: task a/edge operator win parallelism 4 (adaptive 1..4, cool-down 10s, last rescaled 2026-11-26T06:00:00Z)",
			"scaled: task a/reg operator agg (adaptive 2..8, cool-down 30s)",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := scaleLines(tc.job); !slices.Equal(got, tc.want) {
				t.Fatalf("scaleLines:\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}
