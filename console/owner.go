package console

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/sealflow/sealflow/ledger"
)

// OwnerView is what the console highlights for a data owner: its streams and
// every node and recipient that received a key to them or to data derived from
// them, each with the log entries that say so. It is computed from the
// transparency log alone, so an owner can recompute it from the entries it
// verified (the console's JavaScript does, and compares).
type OwnerView struct {
	// Owner is the owner's party id ("" when the view was asked for by
	// stream).
	Owner string `json:"owner,omitempty"`
	// Streams are the owner's streams, sorted.
	Streams []string `json:"streams"`
	// Nodes are the nodes that hold a key to the streams or to a job that
	// reads them, sorted by id.
	Nodes []NodeKeys `json:"nodes"`
	// Recipients are the parties that received an output key of a job that
	// reads the streams, sorted by id.
	Recipients []RecipientKeys `json:"recipients"`
	// Entries are the indexes of the log entries the view was built from
	// (stream registrations and key releases), sorted.
	Entries []int64 `json:"entries"`
}

// NodeKeys are the keys one node received that reach an owner's data.
type NodeKeys struct {
	// Node is the node's id.
	Node string `json:"node"`
	// Direct is true when the node holds a stream key of the owner itself
	// (it reads the owner's records); otherwise it holds keys of a job that
	// reads them (exchange, checkpoint or output keys).
	Direct bool `json:"direct"`
	// Tasks are the tasks the keys were released for, sorted.
	Tasks []string `json:"tasks"`
	// Jobs are the jobs of those tasks, sorted.
	Jobs []string `json:"jobs"`
	// Keys are the key releases, in log order.
	Keys []KeyRelease `json:"keys"`
}

// RecipientKeys are the output keys one recipient received.
type RecipientKeys struct {
	// Recipient is the party's id.
	Recipient string `json:"recipient"`
	// Keys are the key releases, in log order.
	Keys []KeyRelease `json:"keys"`
}

// KeyRelease is one key.released log entry.
type KeyRelease struct {
	// Index is the entry's index in the log.
	Index int64 `json:"index"`
	// Key is the key id ("<scope>/<epoch>"), Purpose what it is for
	// ("stream", "exchange", "checkpoint", "output").
	Key     string `json:"key"`
	Purpose string `json:"purpose"`
	// Task and Job name what the key was released for (Task is empty for
	// recipients).
	Task string `json:"task,omitempty"`
	Job  string `json:"job,omitempty"`
	// Streams are the owner's streams the entry is about.
	Streams []string `json:"streams"`
}

// keyReleasedBody is the part of a key.released entry's body the view reads.
type keyReleasedBody struct {
	Key       string `json:"key"`
	Purpose   string `json:"purpose"`
	Node      string `json:"node"`
	Task      string `json:"task"`
	Recipient string `json:"recipient"`
}

// Entry types the owner view reads.
const (
	typeStreamRegistered = "stream.registered"
	typeKeyReleased      = "key.released"
)

// OwnerStreams returns the streams owner registered, from the
// stream.registered entries whose subjects name "party:<owner>", sorted.
func OwnerStreams(owner string, entries []ledger.Entry) []string {
	var out []string
	for _, e := range entries {
		if e.Type != typeStreamRegistered || !slices.Contains(e.Subjects, "party:"+owner) {
			continue
		}
		for _, s := range e.Subjects {
			if name, ok := strings.CutPrefix(s, "stream:"); ok {
				out = append(out, name)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// BuildOwnerView computes the owner view of streams from log entries: every
// key.released entry about one of the streams ("stream:<name>" among its
// subjects) puts its node (or recipient) in the view. A node is Direct when
// one of its releases is a stream key whose scope is one of the streams.
// Entries about other subjects are ignored, so callers may pass the whole log.
func BuildOwnerView(owner string, streams []string, entries []ledger.Entry) *OwnerView {
	v := &OwnerView{Owner: owner, Streams: slices.Clone(streams), Nodes: []NodeKeys{}, Recipients: []RecipientKeys{}, Entries: []int64{}}
	slices.Sort(v.Streams)
	v.Streams = slices.Compact(v.Streams)
	mine := map[string]bool{}
	for _, s := range v.Streams {
		mine[s] = true
	}
	nodes := map[string]*NodeKeys{}
	recips := map[string]*RecipientKeys{}
	for _, e := range entries {
		var about []string
		for _, s := range e.Subjects {
			if name, ok := strings.CutPrefix(s, "stream:"); ok && mine[name] {
				about = append(about, name)
			}
		}
		if len(about) == 0 {
			continue
		}
		switch e.Type {
		case typeStreamRegistered:
			v.Entries = append(v.Entries, e.Index)
		case typeKeyReleased:
			var b keyReleasedBody
			if json.Unmarshal(e.Body, &b) != nil {
				continue
			}
			rel := KeyRelease{Index: e.Index, Key: b.Key, Purpose: b.Purpose, Task: b.Task, Job: jobOf(e.Subjects), Streams: about}
			switch {
			case b.Node != "":
				n := nodes[b.Node]
				if n == nil {
					n = &NodeKeys{Node: b.Node, Tasks: []string{}, Jobs: []string{}}
					nodes[b.Node] = n
				}
				n.Keys = append(n.Keys, rel)
				if b.Purpose == "stream" && mine[scopeOf(b.Key)] {
					n.Direct = true
				}
				if b.Task != "" && !slices.Contains(n.Tasks, b.Task) {
					n.Tasks = append(n.Tasks, b.Task)
				}
				if rel.Job != "" && !slices.Contains(n.Jobs, rel.Job) {
					n.Jobs = append(n.Jobs, rel.Job)
				}
			case b.Recipient != "":
				r := recips[b.Recipient]
				if r == nil {
					r = &RecipientKeys{Recipient: b.Recipient}
					recips[b.Recipient] = r
				}
				r.Keys = append(r.Keys, rel)
			default:
				continue
			}
			v.Entries = append(v.Entries, e.Index)
		}
	}
	for _, n := range nodes {
		slices.Sort(n.Tasks)
		slices.Sort(n.Jobs)
		v.Nodes = append(v.Nodes, *n)
	}
	slices.SortFunc(v.Nodes, func(a, b NodeKeys) int { return strings.Compare(a.Node, b.Node) })
	for _, r := range recips {
		v.Recipients = append(v.Recipients, *r)
	}
	slices.SortFunc(v.Recipients, func(a, b RecipientKeys) int { return strings.Compare(a.Recipient, b.Recipient) })
	slices.Sort(v.Entries)
	v.Entries = slices.Compact(v.Entries)
	return v
}

// NodeIDs returns the ids of the view's nodes, sorted.
func (v *OwnerView) NodeIDs() []string {
	out := make([]string, len(v.Nodes))
	for i, n := range v.Nodes {
		out[i] = n.Node
	}
	return out
}

// jobOf returns the job a subject list names ("job:<id>"), or "".
func jobOf(subjects []string) string {
	for _, s := range subjects {
		if j, ok := strings.CutPrefix(s, "job:"); ok {
			return j
		}
	}
	return ""
}

// scopeOf returns the scope of a key id "<scope>/<epoch>".
func scopeOf(key string) string {
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		return key[:i]
	}
	return key
}
