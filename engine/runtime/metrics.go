package runtime

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/sealflow/sealflow/engine/operator"
)

// Observer watches a run while it goes, for metrics and consoles. Set it in
// Options.Observer. The runtime never calls it per record or per batch: it
// calls RunStarted once, and from then on the subtasks publish their
// counters into atomic fields the observer reads through the Probe whenever
// it likes (on a Prometheus scrape, for example).
type Observer interface {
	// RunStarted is called once per Run, after the run's subtasks are built
	// and before any of them starts, with the probe that reads them. The
	// probe stays readable after Run returns (it then reads the final
	// counters).
	RunStarted(p *Probe)
}

// ObserverFunc adapts a function to Observer.
type ObserverFunc func(p *Probe)

// RunStarted calls f(p).
func (f ObserverFunc) RunStarted(p *Probe) { f(p) }

// Probe reads the live counters of one run. It is safe for concurrent use.
type Probe struct {
	started time.Time
	tasks   []*task
	subs    []*subtask
}

// noWatermark marks a node (or head input) that has seen no watermark yet.
const noWatermark = math.MinInt64

// liveStats are the counters one subtask publishes for its probe. The
// subtask writes them; the probe reads them from any goroutine.
type liveStats struct {
	nodes []liveNode
	// inWM holds the latest watermark of each head input; the subtask's
	// goroutine alone uses it.
	inWM          []int64
	frames, bytes atomic.Int64
	prefiltered   atomic.Int64
	combined      atomic.Int64
	// blocked is, while no exchange send is in progress, the time (ns)
	// spent in sends so far; during a send, that time minus the send's
	// start (unix ns), a negative number. One word, so a reader adding now
	// to a negative value gets a consistent, monotonic total.
	blocked atomic.Int64
}

type liveNode struct {
	in, out atomic.Int64
	// wmOut is the latest watermark the node emitted, wmIn the latest it
	// received (the least over its inputs); noWatermark if none.
	wmOut, wmIn atomic.Int64
}

// newProbe makes the subtasks of a run publish live counters and returns the
// probe reading them. It must be called before the subtasks run.
func newProbe(p *plan, subs []*subtask, started time.Time) *Probe {
	for _, st := range subs {
		l := &liveStats{nodes: make([]liveNode, len(st.t.nodes)), inWM: make([]int64, max(len(st.t.in), 1))}
		for i := range l.nodes {
			l.nodes[i].wmOut.Store(noWatermark)
			l.nodes[i].wmIn.Store(noWatermark)
		}
		for i := range l.inWM {
			l.inWM[i] = noWatermark
		}
		st.live = l
	}
	return &Probe{started: started, tasks: p.tasks, subs: subs}
}

// publish copies the subtask's counters into its live stats. The subtask
// calls it after every batch and watermark it processes, and at the end.
func (st *subtask) publish() {
	l := st.live
	if l == nil {
		return
	}
	for i := range l.nodes {
		l.nodes[i].in.Store(st.stats[i].in)
		l.nodes[i].out.Store(st.stats[i].out)
	}
	l.frames.Store(st.frames)
	l.bytes.Store(st.bytes)
	pre, comb := st.tail.notSent()
	l.prefiltered.Store(pre)
	l.combined.Store(comb)
}

// watermarkPassed notes that node emitted wm, which the next node of the
// chain (if any) receives.
func (st *subtask) watermarkPassed(node int, wm int64) {
	l := st.live
	if l == nil || wm == operator.IdleWatermark {
		return
	}
	l.nodes[node].wmOut.Store(wm)
	if node+1 < len(l.nodes) {
		l.nodes[node+1].wmIn.Store(wm)
	}
}

// watermarkReceived notes that the head node received wm on input.
func (st *subtask) watermarkReceived(input int, wm int64) {
	l := st.live
	if l == nil || wm == operator.IdleWatermark || input >= len(l.inWM) {
		return
	}
	l.inWM[input] = wm
	least := l.inWM[0]
	for _, w := range l.inWM[1:] {
		least = min(least, w)
	}
	if least != noWatermark {
		l.nodes[0].wmIn.Store(least)
	}
}

// sendBegins notes that an exchange send begins.
func (st *subtask) sendBegins() {
	if l := st.live; l != nil {
		l.blocked.Store(l.blocked.Load() - time.Now().UnixNano())
	}
}

// sendEnded notes that the send in progress returned.
func (st *subtask) sendEnded() {
	if l := st.live; l != nil {
		l.blocked.Store(l.blocked.Load() + time.Now().UnixNano())
	}
}

// Live is a snapshot of a run's counters.
type Live struct {
	// Started is when the run started, At when the snapshot was read.
	Started, At time.Time
	// Nodes holds every node's counters, summed over its subtasks, in
	// plan order (a task's chain in order, tasks in topological order).
	Nodes []LiveNode
	// Tasks holds every task's (chain's) exchange counters, by task index.
	Tasks []LiveTask
}

// LiveNode is one node's live counters.
type LiveNode struct {
	// ID is the node's ID, Task the index in Live.Tasks of the task that
	// runs it.
	ID   string
	Task int
	// RecordsIn and RecordsOut count the records the node received and
	// emitted so far.
	RecordsIn, RecordsOut int64
	// Watermark is the node's event time (epoch ms): the least over its
	// subtasks that have one of the latest watermark each emitted, or
	// received for nodes that emit none (sinks); idle inputs are ignored.
	// operator.FinalWatermark once every subtask passed its input's end.
	// Valid only if HasWatermark.
	Watermark    int64
	HasWatermark bool
}

// Lag returns how far the node's watermark is behind now (wall-clock time
// as event time), and false if the node has no watermark yet or has passed
// the end of its input.
func (n LiveNode) Lag(now time.Time) (time.Duration, bool) {
	if !n.HasWatermark || n.Watermark == operator.FinalWatermark {
		return 0, false
	}
	return time.Duration(now.UnixMilli()-n.Watermark) * time.Millisecond, true
}

// LiveTask is one task's exchange counters, summed over its subtasks.
type LiveTask struct {
	// Name names the task by its chain of nodes ("src→map").
	Name string
	// Subtasks is the task's parallelism.
	Subtasks int
	// Producing is whether the task sends to other tasks over exchanges.
	Producing bool
	// Frames and Bytes count the frames sent over exchanges and their
	// sealed size.
	Frames, Bytes int64
	// Prefiltered counts the records the task's maxima pre-filters dropped
	// instead of sending them (see Options.DisablePrefilter).
	Prefiltered int64
	// Combined counts the records the task's count combiners did not send
	// because another record carried them (see Options.DisableCombine).
	Combined int64
	// Blocked is the time the subtasks spent in exchange sends, which block
	// while the consumer has no credit (or channel space) left: the
	// backpressure the task meets. Sends in progress count up to At.
	Blocked time.Duration
}

// Read returns the run's current counters.
func (p *Probe) Read() Live {
	now := time.Now()
	l := Live{Started: p.started, At: now, Tasks: make([]LiveTask, len(p.tasks))}
	for i, t := range p.tasks {
		l.Tasks[i] = LiveTask{Name: t.name(), Subtasks: t.parallelism, Producing: len(t.out) > 0}
	}
	// Nodes of a task are contiguous; first[i] is the first of task i's.
	first := make([]int, len(p.tasks))
	for i, t := range p.tasks {
		first[i] = len(l.Nodes)
		for _, info := range t.nodes {
			l.Nodes = append(l.Nodes, LiveNode{ID: info.Node.ID, Task: i, Watermark: operator.FinalWatermark})
		}
	}
	// seen[n] counts the subtasks of node n that have a watermark.
	seen := make([]int, len(l.Nodes))
	for _, st := range p.subs {
		ls := st.live
		lt := &l.Tasks[st.t.id]
		lt.Frames += ls.frames.Load()
		lt.Bytes += ls.bytes.Load()
		lt.Prefiltered += ls.prefiltered.Load()
		lt.Combined += ls.combined.Load()
		blocked := ls.blocked.Load()
		if blocked < 0 { // a send in progress
			blocked = max(blocked+now.UnixNano(), 0)
		}
		lt.Blocked += time.Duration(blocked)
		for i := range ls.nodes {
			ln := &ls.nodes[i]
			n := &l.Nodes[first[st.t.id]+i]
			n.RecordsIn += ln.in.Load()
			n.RecordsOut += ln.out.Load()
			wm := ln.wmOut.Load()
			if wm == noWatermark {
				wm = ln.wmIn.Load()
			}
			if wm != noWatermark {
				seen[first[st.t.id]+i]++
				n.Watermark = min(n.Watermark, wm)
			}
		}
	}
	for i := range l.Nodes {
		// Subtasks without a watermark (idle, or not started) hold no
		// one back, as downstream.
		l.Nodes[i].HasWatermark = seen[i] > 0
		if !l.Nodes[i].HasWatermark {
			l.Nodes[i].Watermark = 0
		}
	}
	return l
}

// Backpressure returns the share of wall time, between the snapshot since
// and l, that the most backpressured producing task spent blocked in
// exchange sends (averaged over its subtasks), in [0, 1]. A zero since
// measures from the start of the run. since must be an earlier snapshot of
// the same probe.
func (l Live) Backpressure(since Live) float64 {
	from := l.Started
	if !since.At.IsZero() {
		from = since.At
	}
	wall := l.At.Sub(from)
	if wall <= 0 {
		return 0
	}
	worst := 0.0
	for i, t := range l.Tasks {
		if !t.Producing || t.Subtasks == 0 {
			continue
		}
		blocked := t.Blocked
		if i < len(since.Tasks) {
			blocked -= since.Tasks[i].Blocked
		}
		worst = max(worst, float64(blocked)/float64(wall)/float64(t.Subtasks))
	}
	return min(max(worst, 0), 1)
}
