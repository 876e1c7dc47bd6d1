package orchestrator

import (
	"errors"
	"strings"
	"testing"
)

func TestSchedule(t *testing.T) {
	nodes := []Candidate{
		{ID: "edge-1", Tier: "edge", Region: "be", Site: "s1", Free: 1},
		{ID: "edge-2", Tier: "edge", Region: "nl", Site: "s2", Free: 2},
		{ID: "reg-1", Tier: "regional", Region: "be", Site: "r1", Free: 4},
	}
	onlyBE := func(task TaskSlot, n Candidate) error {
		if n.Region != "be" {
			return errors.New("policy:meter/region-be refused")
		}
		return nil
	}
	allowAll := func(TaskSlot, Candidate) error { return nil }
	tests := []struct {
		name    string
		tasks   []TaskSlot
		check   PlacementCheck
		want    Placement
		wantErr string
	}{
		{
			name:  "tier preference wins over free slots",
			tasks: []TaskSlot{{ID: "a", Tiers: []string{"edge", "regional"}}},
			check: allowAll,
			want:  Placement{"a": "edge-2"},
		},
		{
			name:  "slots run out, next preference used",
			tasks: []TaskSlot{{ID: "a", Tiers: []string{"edge"}}, {ID: "b", Tiers: []string{"edge"}}, {ID: "c", Tiers: []string{"edge"}}, {ID: "d", Tiers: []string{"edge", "regional"}}},
			check: allowAll,
			want:  Placement{"a": "edge-2", "b": "edge-1", "c": "edge-2", "d": "reg-1"},
		},
		{
			name:  "policy excludes a region",
			tasks: []TaskSlot{{ID: "a", Tiers: []string{"edge"}}},
			check: onlyBE,
			want:  Placement{"a": "edge-1"},
		},
		{
			name:  "site pin",
			tasks: []TaskSlot{{ID: "src", Site: "s2"}},
			check: allowAll,
			want:  Placement{"src": "edge-2"},
		},
		{
			name:    "nothing allowed names every refusal",
			tasks:   []TaskSlot{{ID: "a", Tiers: []string{"edge"}, Site: "s2"}},
			check:   onlyBE,
			wantErr: "edge-2: policy:meter/region-be refused",
		},
		{
			name:    "no nodes at all",
			tasks:   []TaskSlot{{ID: "a"}},
			wantErr: "no admitted node",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := nodes
			if tc.name == "no nodes at all" {
				n = nil
			}
			got, err := Schedule(tc.tasks, n, tc.check)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				var se *ScheduleError
				if !errors.As(err, &se) {
					t.Fatalf("err is %T, want *ScheduleError", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("task %s on %s, want %s (all: %v)", k, got[k], v, got)
				}
			}
		})
	}
}

func TestPinSources(t *testing.T) {
	streams := map[string]*Stream{"a": {Site: "house-a"}, "b": {Site: "house-b"}, "c": {}}
	tasks := []TaskSlot{
		{ID: "src-a", Reads: []string{"a"}},
		{ID: "src-ab", Reads: []string{"a", "b"}},
		{ID: "src-c", Reads: []string{"c"}},
		{ID: "pinned", Reads: []string{"a"}, Site: "elsewhere"},
		{ID: "agg"},
	}
	got := pinSources(tasks, streams)
	want := map[string]string{"src-a": "house-a", "src-ab": "", "src-c": "", "pinned": "elsewhere", "agg": ""}
	for _, ts := range got {
		if ts.Site != want[ts.ID] {
			t.Errorf("task %s pinned to %q, want %q", ts.ID, ts.Site, want[ts.ID])
		}
	}
	if tasks[0].Site != "" {
		t.Error("pinSources modified the manifest's tasks")
	}
}
