package orchestrator

import (
	"encoding/json"
	"errors"
	"math"
	"testing"

	"github.com/sealflow/sealflow/party"
	"sigs.k8s.io/yaml"
)

// smartGrid is deploy/topologies/smart-grid.yaml's tree: two substations
// under one regional site under the cloud hub.
var smartGrid = map[string]string{"dso-north": "cloud", "substation-a": "dso-north", "substation-b": "dso-north"}

func TestGeoHops(t *testing.T) {
	known := &Geo{Hub: "cloud", Parents: smartGrid}
	unknown := &Geo{Hub: "cloud"}
	tests := []struct {
		name string
		g    *Geo
		a, b string
		want int
	}{
		{"same site", known, "substation-a", "substation-a", 0},
		{"to the parent", known, "substation-a", "dso-north", 1},
		{"edge to hub", known, "substation-a", "cloud", 2},
		{"hub to edge", known, "cloud", "substation-b", 2},
		{"siblings meet at their parent", known, "substation-a", "substation-b", 2},
		{"a site the tree does not know is one link below the hub", known, "elsewhere", "substation-a", 3},
		{"no links known: sites meet at the hub", unknown, "edge-a", "edge-b", 2},
		{"no links known: a site is one link from the hub", unknown, "edge-a", "cloud", 1},
		{"no hub known: every site one link from it", &Geo{}, "edge-a", "", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.g.Hops(tc.a, tc.b); got != tc.want {
				t.Errorf("Hops(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
			}
		})
	}
}

func TestGeoWANCost(t *testing.T) {
	g := &Geo{Hub: "cloud", Parents: smartGrid, StreamSites: map[string]string{"meter-a": "substation-a", "meter-b": "substation-b"},
		Flows: map[string]Flow{
			"pre":    {In: map[string]float64{"meter-a": 1000}, Out: 100},
			"joint":  {In: map[string]float64{"meter-a": 1000, "meter-b": 1000}, Out: 200},
			"merged": {In: map[string]float64{"x-a": 100, "x-b": 100}, Out: 20},
		}}
	tests := []struct {
		task, site string
		want       float64
	}{
		{"pre", "substation-a", 100 * 2},
		{"pre", "dso-north", 1000 + 100},
		{"pre", "cloud", 1000 * 2},
		{"pre", "substation-b", 1000*2 + 100*2},
		{"joint", "dso-north", 1000 + 1000 + 200},
		{"joint", "substation-a", 1000*2 + 200*2},
		{"joint", "cloud", 2000 * 2},
		{"merged", "cloud", 0},
		{"merged", "dso-north", 200 + 20},
		{"no flow", "substation-a", 0},
	}
	for _, tc := range tests {
		if got := g.WANCost(tc.task, tc.site); got != tc.want {
			t.Errorf("WANCost(%s at %s) = %v, want %v", tc.task, tc.site, got, tc.want)
		}
	}
	if got := (*Geo)(nil).WANCost("pre", "cloud"); got != 0 {
		t.Errorf("a nil Geo costs %v", got)
	}
}

// stageManifest is the smart-grid balance service of
// examples/smartgrid/balance.yaml in miniature: per-site edge stages (a 5 s
// sum when aggregate, a pass-through otherwise) and a stage merging them.
func stageManifest(aggregate bool, edgeTiers, mergeTiers []string) Manifest {
	edge := func(id string) json.RawMessage {
		nodes := `{id: src, kind: source, params: {stream: meter-` + id + `, schema: meter, timeField: ts}}, {id: out, kind: sink, inputs: [src], params: {stream: x-` + id + `}}`
		if aggregate {
			nodes = `{id: src, kind: source, params: {stream: meter-` + id + `, schema: meter, timeField: ts}},
  {id: w, kind: window-aggregate, inputs: [src], params: {window: {type: tumbling, sizeMs: 5000}, aggregates: [{fn: sum, field: kwh, as: kwh}]}},
  {id: out, kind: sink, inputs: [w], params: {stream: x-` + id + `}}`
		}
		return toJSON("name: edge-" + id + "\nschemas: {meter: [{name: kwh, type: float}, {name: ts, type: int}]}\nnodes: [" + nodes + "]\n")
	}
	merge := toJSON(`name: merge
schemas: {x: [{name: kwh, type: float}, {name: ts, type: int}]}
nodes: [{id: a, kind: source, params: {stream: x-a, schema: x, timeField: ts}}, {id: b, kind: source, params: {stream: x-b, schema: x, timeField: ts}},
  {id: all, kind: union, inputs: [a, b]}, {id: out, kind: sink, inputs: [all], params: {stream: out}}]
`)
	return Manifest{ID: "svc", Version: 1, Inputs: []string{"meter-a", "meter-b"}, Outputs: []string{"out"},
		Stages: map[string]json.RawMessage{"edge-a": edge("a"), "edge-b": edge("b"), "merge": merge},
		Tasks: []TaskSlot{
			{ID: "svc/edge-a", Stage: "edge-a", Tiers: edgeTiers, Reads: []string{"meter-a"}},
			{ID: "svc/edge-b", Stage: "edge-b", Tiers: edgeTiers, Reads: []string{"meter-b"}},
			{ID: "svc/merge", Stage: "merge", Tiers: mergeTiers, Writes: []string{"out"}},
		}}
}

func toJSON(y string) json.RawMessage {
	j, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		panic(err)
	}
	return j
}

func TestEstimateFlows(t *testing.T) {
	agg := stageManifest(true, nil, nil)
	declared := stageManifest(false, nil, nil)
	declared.Tasks[0].Selectivity = 0.5
	tests := []struct {
		name  string
		m     Manifest
		rates map[string]float64
		want  map[string]Flow
	}{
		{"aggregating edge stages reduce", agg, nil, map[string]Flow{
			"svc/edge-a": {In: map[string]float64{"meter-a": 1000}, Out: 100},
			"svc/edge-b": {In: map[string]float64{"meter-b": 1000}, Out: 100},
			"svc/merge":  {In: map[string]float64{"x-a": 100, "x-b": 100}, Out: 200},
		}},
		{"pass-through edge stages keep", stageManifest(false, nil, nil), nil, map[string]Flow{
			"svc/edge-a": {In: map[string]float64{"meter-a": 1000}, Out: 1000},
			"svc/merge":  {In: map[string]float64{"x-a": 1000, "x-b": 1000}, Out: 2000},
		}},
		{"measured rates replace the default", agg, map[string]float64{"meter-a": 50}, map[string]Flow{
			"svc/edge-a": {In: map[string]float64{"meter-a": 50}, Out: 5},
			"svc/merge":  {In: map[string]float64{"x-a": 5, "x-b": 100}, Out: 105},
		}},
		{"a declared selectivity wins", declared, nil, map[string]Flow{
			"svc/edge-a": {In: map[string]float64{"meter-a": 1000}, Out: 500},
			"svc/merge":  {In: map[string]float64{"x-a": 500, "x-b": 1000}, Out: 1500},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := EstimateFlows(&tc.m, tc.rates)
			for id, w := range tc.want {
				g, ok := got[id]
				if !ok {
					t.Fatalf("no flow for %s: %v", id, got)
				}
				if math.Abs(g.Out-w.Out) > 1e-9 || len(g.In) != len(w.In) {
					t.Errorf("%s: %+v, want %+v", id, g, w)
				}
				for s, r := range w.In {
					if math.Abs(g.In[s]-r) > 1e-9 {
						t.Errorf("%s reads %v of %s, want %v", id, g.In[s], s, r)
					}
				}
			}
		})
	}
	// Parallel subtasks of one stage share its input.
	par := stageManifest(true, nil, nil)
	par.Tasks = append(par.Tasks, TaskSlot{ID: "svc/edge-a/1", Stage: "edge-a", Reads: []string{"meter-a"}})
	if f := EstimateFlows(&par, nil)["svc/edge-a/1"]; f.In["meter-a"] != 500 {
		t.Errorf("the second of two subtasks reads %v of meter-a, want 500", f.In["meter-a"])
	}
}

func TestScheduleByWANCost(t *testing.T) {
	nodes := []Candidate{
		{ID: "sub-a", Tier: "edge", Region: "be", Site: "substation-a", Free: 1},
		{ID: "sub-b", Tier: "edge", Region: "be", Site: "substation-b", Free: 1},
		{ID: "dso", Tier: "regional", Region: "be", Site: "dso-north", Free: 8},
		{ID: "cloud", Tier: "cloud", Region: "de", Site: "cloud", Free: 8},
	}
	all := func(TaskSlot, Candidate) error { return nil }
	noEdgeA := func(_ TaskSlot, n Candidate) error {
		if n.ID == "sub-a" {
			return errors.New("policy:meter-a/not-here refused")
		}
		return nil
	}
	beOnly := func(_ TaskSlot, n Candidate) error {
		if n.Region != "be" {
			return errors.New("policy:meter/region-be refused")
		}
		return nil
	}
	geo := func(flows map[string]Flow) *Geo {
		return &Geo{Parents: smartGrid, StreamSites: map[string]string{"meter-a": "substation-a", "meter-b": "substation-b"}, Flows: flows}
	}
	pre := map[string]Flow{"t": {In: map[string]float64{"meter-a": 1000}, Out: 100}}
	anyTier := []string{"edge", "regional", "cloud"}
	tests := []struct {
		name  string
		tasks []TaskSlot
		geo   *Geo
		check PlacementCheck
		want  Placement
	}{
		{
			name:  "a pre-aggregating task runs where its input enters, though the cloud is preferred",
			tasks: []TaskSlot{{ID: "t", Tiers: []string{"cloud", "regional", "edge"}}},
			geo:   geo(pre), check: all,
			want: Placement{"t": "sub-a"},
		},
		{
			name:  "an expanding task runs at the hub, though the edge is preferred",
			tasks: []TaskSlot{{ID: "t", Tiers: anyTier}},
			geo:   geo(map[string]Flow{"t": {In: map[string]float64{"meter-a": 1000}, Out: 20000}}), check: all,
			want: Placement{"t": "cloud"},
		},
		{
			name:  "the edge refused by policy: the nearest allowed site",
			tasks: []TaskSlot{{ID: "t", Tiers: anyTier}},
			geo:   geo(pre), check: noEdgeA,
			want: Placement{"t": "dso"},
		},
		{
			name:  "the edge's slot taken: the nearest site with a free one",
			tasks: []TaskSlot{{ID: "first", Tiers: []string{"edge"}, Site: "substation-a"}, {ID: "t", Tiers: anyTier}},
			geo:   geo(pre), check: all,
			want: Placement{"first": "sub-a", "t": "dso"},
		},
		{
			name:  "a task reading two sites runs where their links meet",
			tasks: []TaskSlot{{ID: "t", Tiers: anyTier}},
			geo:   geo(map[string]Flow{"t": {In: map[string]float64{"meter-a": 1000, "meter-b": 1000}, Out: 200}}), check: all,
			want: Placement{"t": "dso"},
		},
		{
			name:  "a task reading what other stages wrote runs at the hub when it may",
			tasks: []TaskSlot{{ID: "t", Tiers: []string{"regional", "cloud"}}},
			geo:   geo(map[string]Flow{"t": {In: map[string]float64{"x-a": 100}, Out: 10}}), check: all,
			want: Placement{"t": "cloud"},
		},
		{
			name:  "the hub refused by policy: the regional site",
			tasks: []TaskSlot{{ID: "t", Tiers: []string{"regional", "cloud"}}},
			geo:   geo(map[string]Flow{"t": {In: map[string]float64{"x-a": 100}, Out: 10}}), check: beOnly,
			want: Placement{"t": "dso"},
		},
		{
			name:  "a task without a flow: tier preference",
			tasks: []TaskSlot{{ID: "other", Tiers: anyTier}},
			geo:   geo(pre), check: all,
			want: Placement{"other": "sub-a"},
		},
		{
			name:  "no geo: tier preference",
			tasks: []TaskSlot{{ID: "t", Tiers: []string{"cloud", "regional", "edge"}}},
			geo:   nil, check: all,
			want: Placement{"t": "cloud"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Schedule(tc.tasks, nodes, tc.check, WithGeo(tc.geo))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("task %s on %s, want %s (all: %v)", k, got[k], v, got)
				}
			}
		})
	}
}

// TestDeployPlacesByWANCost deploys through the machine: the edge stages run
// at their streams' sites (pinned), and the merging stage, allowed on the
// regional and cloud tiers with the regional preferred, runs on the cloud,
// where the edge stages' outputs meet; without sites on the streams it runs
// on the regional node, by preference.
func TestDeployPlacesByWANCost(t *testing.T) {
	for _, withSites := range []bool{true, false} {
		w := newWorld(t, nil)
		grid := w.provider("grid")
		var owners []*ownerKey
		for _, id := range []string{"a", "b"} {
			kf, _ := w.owner("owner-"+id, "meter-"+id, `{"name": "any", "stage": "placement", "expr": "true"}`)
			owners = append(owners, &ownerKey{kf, "meter-" + id})
			if withSites {
				w.must(kf, TypeStreamRegister, RegisterStream{Name: "meter-" + id, Partitions: 1, Site: "edge-" + id,
					Schema: []Field{{Name: "kwh", Type: "float"}}, Policy: json.RawMessage(`{"stream": "meter-` + id + `", "rules": [{"name": "any", "stage": "placement", "expr": "true"}]}`)})
			}
		}
		for _, n := range []struct{ name, tier string }{{"edge-a", "edge"}, {"edge-b", "edge"}, {"dso", "regional"}, {"hub", "cloud"}} {
			if _, err := w.nodeSlots(n.name, n.tier, "be", 4); err != nil {
				t.Fatal(err)
			}
		}
		m := stageManifest(true, []string{"edge"}, []string{"regional", "cloud"})
		d := w.must(grid, TypeServiceSubmit, m).Result.(map[string]any)["digest"].(string)
		for _, o := range owners {
			w.must(o.kf, TypeServiceApprove, Approve{Stream: o.stream, Digest: d})
		}
		w.must(grid, TypeJobDeploy, Deploy{Service: "svc"})
		st := w.m.State()
		site := func(task string) string { return st.Nodes[st.Jobs["svc"].Tasks[task]].Location.Site }
		wantMerge := "dso"
		if withSites {
			wantMerge = "hub"
			if site("svc/edge-a") != "edge-a" || site("svc/edge-b") != "edge-b" {
				t.Errorf("edge stages at %s and %s, want their streams' sites", site("svc/edge-a"), site("svc/edge-b"))
			}
		}
		if got := site("svc/merge"); got != wantMerge {
			t.Errorf("streams with sites %v: the merging stage runs at %s, want %s", withSites, got, wantMerge)
		}
	}
}

type ownerKey struct {
	kf     *party.KeyFile
	stream string
}
