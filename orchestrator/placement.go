package orchestrator

import (
	"slices"

	"github.com/sealflow/sealflow/engine/jobspec"
)

// Placement by WAN cost.
//
// Among the nodes a task may run on (its pinned site, its tiers, a free slot
// and every input owner's placement policy), Schedule prefers the one whose
// site sends the fewest estimated bytes over WAN links, and only then applies
// the tier preference, free slots and id. The estimate follows how sealflow
// moves data between sites: an owner's stream is stored at the site its
// gateway publishes at (its registered site); an intermediate stream written
// at a site is buffered there and copied to the hub, where its readers read
// it, and outputs are written at the hub. So a task running at site X costs
//
//	Σ in over owner streams: rate(in) × hops(site(in), X)
//	+ Σ in over intermediate streams: rate(in) × hops(hub, X)
//	+ rate(out) × hops(X, hub)
//
// where hops counts the site-to-parent links between two sites. A task that
// pre-aggregates (its estimated output is a fraction of its input) therefore
// runs where its input enters, at the edge, so only its aggregates cross; a
// task reading what other stages wrote runs at the hub when it may.

// Default estimates when no rate was measured: an owner's stream carries
// DefaultStreamRate bytes per second; an aggregating stage writes
// AggregateSelectivity of what it reads, any other stage what it reads.
const (
	DefaultStreamRate    = 1000.0
	AggregateSelectivity = 0.1
)

// Flow is a task's estimated data volume, for placement.
type Flow struct {
	// In maps each stream the task reads to the bytes per second it reads
	// of it.
	In map[string]float64 `json:"in,omitempty"`
	// Out is the bytes per second the task writes (intermediate streams
	// and outputs, all of which reach the hub).
	Out float64 `json:"out,omitempty"`
}

// Geo is what placement knows of the sites and of the data's volume. The zero
// Geo (or a nil one) knows nothing: every placement costs the same and
// Schedule ranks nodes by tier preference alone.
type Geo struct {
	// Hub is the hub's site, where intermediate streams and outputs meet.
	// When empty, the site of a cloud-tier candidate is taken.
	Hub string `json:"hub,omitempty"`
	// Parents maps each site to its parent site: the topology's WAN links.
	// A site missing from it is taken as one link below the hub (zero links
	// for the hub itself).
	Parents map[string]string `json:"parents,omitempty"`
	// StreamSites maps each owner stream to the site it is stored at; a
	// stream not in it (intermediate streams, outputs) is at the hub.
	StreamSites map[string]string `json:"stream_sites,omitempty"`
	// Flows holds each task's estimated volume, by task id; a task without
	// one costs nothing anywhere.
	Flows map[string]Flow `json:"flows,omitempty"`
}

// path returns site and its ancestors, site first, as far as Parents knows
// them (a cycle ends the walk).
func (g *Geo) path(site string) []string {
	p := []string{site}
	for {
		parent, ok := g.Parents[p[len(p)-1]]
		if !ok || parent == "" || slices.Contains(p, parent) {
			return p
		}
		p = append(p, parent)
	}
}

// Hops returns the number of WAN links between sites a and b: 0 for the same
// site; the length of the tree path when Parents joins them; otherwise the
// links from each to the hub (one for a site Parents does not know, none for
// the hub).
func (g *Geo) Hops(a, b string) int {
	if a == b {
		return 0
	}
	pa, pb := g.path(a), g.path(b)
	for i, s := range pa {
		if j := slices.Index(pb, s); j >= 0 {
			return i + j
		}
	}
	return g.depth(pa) + g.depth(pb)
}

// depth returns the number of links from the first site of path p to the hub.
func (g *Geo) depth(p []string) int {
	if i := slices.Index(p, g.Hub); i >= 0 {
		return i
	}
	// A path that does not reach the hub: its top site counts as one
	// link below the hub.
	return len(p)
}

// WANCost returns the estimated bytes per second task would send over WAN
// links if it ran at site: 0 for a task without a Flow.
func (g *Geo) WANCost(task, site string) float64 {
	if g == nil {
		return 0
	}
	f, ok := g.Flows[task]
	if !ok {
		return 0
	}
	// Streams in a fixed order, so the float sum is deterministic.
	ins := make([]string, 0, len(f.In))
	for s := range f.In {
		ins = append(ins, s)
	}
	slices.Sort(ins)
	cost := 0.0
	for _, s := range ins {
		at, ok := g.StreamSites[s]
		if !ok {
			at = g.Hub
		}
		cost += f.In[s] * float64(g.Hops(at, site))
	}
	return cost + f.Out*float64(g.Hops(site, g.Hub))
}

// withHub returns g, or a copy of g whose Hub is the site of the first
// cloud-tier node when g names none.
func (g *Geo) withHub(nodes []Candidate) *Geo {
	if g == nil || g.Hub != "" {
		return g
	}
	for _, n := range nodes {
		if n.Tier == "cloud" && n.Site != "" {
			c := *g
			c.Hub = n.Site
			return &c
		}
	}
	return g
}

// EstimateFlows estimates the volume of each of a manifest's tasks from its
// stages: an owner stream (one of inputs) carries rates[stream] bytes per
// second, or DefaultStreamRate; the tasks reading a stream share it equally;
// a task writes its input times its Selectivity, or, when it declares none,
// times AggregateSelectivity if its JobSpec aggregates (window-aggregate,
// top-n) and 1 otherwise; an intermediate stream carries what the tasks
// writing it write. A task whose JobSpec cannot be parsed gets no Flow (it
// costs nothing anywhere); so does every task of a cyclic manifest's cycle.
func EstimateFlows(m *Manifest, rates map[string]float64) map[string]Flow {
	type taskIO struct {
		reads, writes []string
		sel           float64
	}
	io := map[string]*taskIO{}
	readers := map[string]int{}
	writers := map[string][]string{}
	for i := range m.Tasks {
		t := &m.Tasks[i]
		spec, err := jobspec.Parse(m.StageSpec(t))
		if err != nil {
			continue
		}
		x := &taskIO{sel: t.Selectivity}
		aggregates := false
		for _, n := range spec.Nodes {
			switch n.Kind {
			case jobspec.KindSource:
				if !slices.Contains(x.reads, n.Params.Stream) {
					x.reads = append(x.reads, n.Params.Stream)
					readers[n.Params.Stream]++
				}
			case jobspec.KindSink:
				if !slices.Contains(x.writes, n.Params.Stream) {
					x.writes = append(x.writes, n.Params.Stream)
					writers[n.Params.Stream] = append(writers[n.Params.Stream], t.ID)
				}
			case jobspec.KindWindowAggregate, jobspec.KindTopN:
				aggregates = true
			}
		}
		if x.sel <= 0 {
			x.sel = 1
			if aggregates {
				x.sel = AggregateSelectivity
			}
		}
		io[t.ID] = x
	}
	flows := map[string]Flow{}
	// Resolve in rounds: a task's flow is known once every stream it reads
	// is (an owner stream, or one whose writers' flows are known).
	for progress := true; progress; {
		progress = false
		for _, t := range m.Tasks {
			x, ok := io[t.ID]
			if _, done := flows[t.ID]; !ok || done {
				continue
			}
			f := Flow{In: map[string]float64{}}
			known := true
			for _, s := range x.reads {
				rate := 0.0
				switch {
				case slices.Contains(m.Inputs, s):
					rate = DefaultStreamRate
					if r, ok := rates[s]; ok {
						rate = r
					}
				default:
					for _, w := range writers[s] {
						wf, ok := flows[w]
						if !ok {
							known = false
							break
						}
						rate += wf.Out / float64(len(io[w].writes))
					}
				}
				f.In[s] = rate / float64(readers[s])
			}
			if !known {
				continue
			}
			in := 0.0
			for _, s := range x.reads {
				in += f.In[s]
			}
			f.Out = in * x.sel
			flows[t.ID] = f
			progress = true
		}
	}
	return flows
}

// geo returns what the machine knows for placing svc's tasks: where its
// input streams are stored and each task's estimated volume. It returns nil
// (placement by tier preference alone) when no input stream is registered
// with a site: then the deployment says nothing of where data enters (a
// single-site deployment, whose node sites are mere names). The topology's
// links are not known to the machine: every site other than the hub counts
// as one link below it.
func (m *Machine) geo(svc *Service) *Geo {
	g := &Geo{StreamSites: map[string]string{}}
	for _, in := range svc.Manifest.Inputs {
		if s := m.st.Streams[in]; s != nil && s.Site != "" {
			g.StreamSites[in] = s.Site
		}
	}
	if len(g.StreamSites) == 0 {
		return nil
	}
	g.Flows = EstimateFlows(&svc.Manifest, nil)
	return g
}
