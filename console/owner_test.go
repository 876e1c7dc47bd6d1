package console

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/sealflow/sealflow/ledger"
)

func released(i int64, subjects []string, body string) ledger.Entry {
	return ledger.Entry{Index: i, Type: "key.released", Subjects: subjects, Body: json.RawMessage(body)}
}

func TestBuildOwnerView(t *testing.T) {
	entries := []ledger.Entry{
		{Index: 0, Type: "stream.registered", Subjects: []string{"party:alice", "stream:meter-a"}},
		{Index: 1, Type: "stream.registered", Subjects: []string{"party:bob", "stream:meter-b"}},
		// job j reads meter-a and meter-b: n1 reads meter-a, n2 meter-b, n3 aggregates.
		released(2, []string{"job:j", "node:n1", "service:s", "stream:meter-a", "stream:meter-b"}, `{"key":"meter-a/1","purpose":"stream","node":"n1","task":"j/a"}`),
		released(3, []string{"job:j", "node:n1", "service:s", "stream:meter-a", "stream:meter-b"}, `{"key":"j/0","purpose":"exchange","node":"n1","task":"j/a"}`),
		released(4, []string{"job:j", "node:n2", "service:s", "stream:meter-a", "stream:meter-b"}, `{"key":"meter-b/1","purpose":"stream","node":"n2","task":"j/b"}`),
		released(5, []string{"job:j", "node:n3", "service:s", "stream:meter-a", "stream:meter-b"}, `{"key":"out/0","purpose":"output","node":"n3","task":"j/agg"}`),
		// job k reads meter-b only.
		released(6, []string{"job:k", "node:n4", "service:t", "stream:meter-b"}, `{"key":"meter-b/1","purpose":"stream","node":"n4","task":"k/b"}`),
		// an output key to a recipient.
		released(7, []string{"job:j", "party:grid", "stream:meter-a", "stream:meter-b"}, `{"key":"out/0","purpose":"output","recipient":"grid"}`),
		// a malformed body and other types are ignored.
		released(8, []string{"job:j", "stream:meter-a"}, `"not an object"`),
		{Index: 9, Type: "job.deployed", Subjects: []string{"job:j", "stream:meter-a"}, Body: json.RawMessage(`{"node":"n9"}`)},
	}
	tests := []struct {
		owner       string
		wantStreams []string
		wantNodes   []string
		wantDirect  []string
		wantRecips  []string
		wantEntries []int64
	}{
		{"alice", []string{"meter-a"}, []string{"n1", "n2", "n3"}, []string{"n1"}, []string{"grid"}, []int64{0, 2, 3, 4, 5, 7}},
		{"bob", []string{"meter-b"}, []string{"n1", "n2", "n3", "n4"}, []string{"n2", "n4"}, []string{"grid"}, []int64{1, 2, 3, 4, 5, 6, 7}},
		{"carol", nil, nil, nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.owner, func(t *testing.T) {
			streams := OwnerStreams(tt.owner, entries)
			if !slices.Equal(streams, tt.wantStreams) {
				t.Fatalf("streams = %v, want %v", streams, tt.wantStreams)
			}
			v := BuildOwnerView(tt.owner, streams, entries)
			var direct, recips []string
			for _, n := range v.Nodes {
				if n.Direct {
					direct = append(direct, n.Node)
				}
			}
			for _, r := range v.Recipients {
				recips = append(recips, r.Recipient)
			}
			if !slices.Equal(v.NodeIDs(), tt.wantNodes) && !(len(v.Nodes) == 0 && tt.wantNodes == nil) {
				t.Errorf("nodes = %v, want %v", v.NodeIDs(), tt.wantNodes)
			}
			if !slices.Equal(direct, tt.wantDirect) {
				t.Errorf("direct = %v, want %v", direct, tt.wantDirect)
			}
			if !slices.Equal(recips, tt.wantRecips) {
				t.Errorf("recipients = %v, want %v", recips, tt.wantRecips)
			}
			if !slices.Equal(v.Entries, tt.wantEntries) && !(len(v.Entries) == 0 && tt.wantEntries == nil) {
				t.Errorf("entries = %v, want %v", v.Entries, tt.wantEntries)
			}
		})
	}
	// n1's tasks and jobs are gathered from its releases.
	v := BuildOwnerView("alice", []string{"meter-a"}, entries)
	if n := v.Nodes[0]; n.Node != "n1" || !slices.Equal(n.Tasks, []string{"j/a"}) || !slices.Equal(n.Jobs, []string{"j"}) || len(n.Keys) != 2 {
		t.Errorf("n1 = %+v, want tasks [j/a], jobs [j], two keys", n)
	}
}

// FuzzOwnerView feeds arbitrary log records (as an orchestrator that lies,
// or a corrupted log, would hold) through DecodeEntry and BuildOwnerView:
// no panic, and every highlighted node or recipient is backed by a
// key.released entry about one of the streams.
func FuzzOwnerView(f *testing.F) {
	f.Add([]byte(`{"index":3,"time":"2026-11-25T12:00:00Z","type":"key.released","subjects":["job:j","node:n1","stream:s"],"body":{"key":"s/1","purpose":"stream","node":"n1","task":"j/a"}}`), "s")
	f.Add([]byte(`{"index":4,"type":"key.released","subjects":["stream:s"],"body":{"recipient":"r","purpose":"output","key":"o/0"}}`), "s")
	f.Add([]byte(`{"index":0,"type":"stream.registered","subjects":["party:p","stream:s"]}`), "s")
	f.Add([]byte(`{"type":"key.released","subjects":["stream:"],"body":{"node":""}}`), "")
	f.Add([]byte(`not json`), "s")
	f.Fuzz(func(t *testing.T, record []byte, stream string) {
		e, err := ledger.DecodeEntry(record)
		if err != nil {
			return
		}
		v := BuildOwnerView("", []string{stream}, []ledger.Entry{e})
		if len(v.Nodes)+len(v.Recipients) > 1 {
			t.Fatalf("one entry produced %d holders", len(v.Nodes)+len(v.Recipients))
		}
		holders := len(v.Nodes) + len(v.Recipients)
		if holders > 0 && (e.Type != "key.released" || !slices.Contains(e.Subjects, "stream:"+stream)) {
			t.Fatalf("holder from an entry of type %q with subjects %v", e.Type, e.Subjects)
		}
		for _, n := range v.Nodes {
			if len(n.Keys) != 1 || n.Keys[0].Index != e.Index || n.Node == "" {
				t.Fatalf("node %+v not backed by entry %d", n, e.Index)
			}
		}
		if holders > 0 && !slices.Equal(v.Entries, []int64{e.Index}) {
			t.Fatalf("entries = %v, want [%d]", v.Entries, e.Index)
		}
	})
}
