package ledger

import (
	"bytes"
	"encoding/json"
	"testing"
)

func FuzzVerifyTreeHead(f *testing.F) {
	s, c := testKey(f, 1)
	l := NewLog(s)
	sth0, _ := l.SignedTreeHead()
	fill(f, l, 0, 3, "a")
	sth3, _ := l.SignedTreeHead()
	f.Add(sth0)
	f.Add(sth3)
	f.Add(bytes.Replace(sth3, []byte("\n3\n"), []byte("\n4\n"), 1))
	f.Add([]byte("go.sum database tree\n3\nAAAA\n\n— x AAAA\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		th, err := c.VerifyTreeHead(data)
		if err != nil {
			return
		}
		// Only tree heads our key signed verify: the log's own heads.
		if th.Size != 0 && th.Size != 3 {
			t.Fatalf("verified a tree head of size %d that was never signed", th.Size)
		}
	})
}

func FuzzParseInclusionProof(f *testing.F) {
	s, c := testKey(f, 1)
	l := NewLog(s)
	fill(f, l, 0, 7, "a")
	th := head(f, l, c)
	rec, _ := l.Record(2)
	p, _ := l.ProveInclusion(2, 7)
	good, _ := json.Marshal(p)
	f.Add(good)
	f.Add([]byte(`{"index":0,"tree_size":1,"hashes":[]}`))
	f.Add([]byte(`{"index":-1,"tree_size":1,"hashes":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseInclusionProof(data)
		if err != nil {
			return
		}
		// A parsed proof must never panic the checker, and only the real
		// proof shape proves record 2.
		if CheckInclusion(th, rec, p) == nil && p.Index != 2 {
			t.Fatalf("record 2 proven at index %d", p.Index)
		}
	})
}

func FuzzParseConsistencyProof(f *testing.F) {
	s, c := testKey(f, 1)
	l := NewLog(s)
	fill(f, l, 0, 9, "a")
	old, th := headAt(f, l, c, 4), head(f, l, c)
	p, _ := l.ProveConsistency(4, 9)
	good, _ := json.Marshal(p)
	f.Add(good)
	f.Add([]byte(`{"old_size":1,"new_size":1,"hashes":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseConsistencyProof(data)
		if err != nil {
			return
		}
		CheckConsistency(old, th, p) // must not panic
	})
}

func FuzzUnmarshal(f *testing.F) {
	s, _ := testKey(f, 1)
	l := NewLog(s)
	f.Add(l.Marshal())
	fill(f, l, 0, 4, "a")
	f.Add(l.Marshal())
	f.Add([]byte("sealflow-ledger v1\n\x05"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Unmarshal(data, s)
		if err != nil {
			return
		}
		if !bytes.Equal(r.Marshal(), data) {
			t.Fatal("Unmarshal accepted an encoding Marshal does not reproduce")
		}
	})
}

func FuzzDecodeEntry(f *testing.F) {
	b, _ := json.Marshal(entry(3, "x"))
	f.Add(b)
	f.Add([]byte(`{"type":"a","subjects":["s"],"body":{"k":[1,2]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := DecodeEntry(data)
		if err != nil {
			return
		}
		if e.Type == "" || e.Index < 0 {
			t.Fatalf("DecodeEntry accepted %+v", e)
		}
	})
}

func FuzzWitnessState(f *testing.F) {
	s, c := testKey(f, 1)
	l := NewLog(s)
	fill(f, l, 0, 2, "a")
	sth, _ := l.SignedTreeHead()
	good, _ := json.Marshal(witnessState{Version: 1, TreeHead: sth})
	f.Add(good)
	f.Add([]byte(`{"version":2,"tree_head":""}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		th, err := decodeWitnessState(c, data)
		if err != nil {
			return
		}
		if th.Size != 2 {
			t.Fatalf("state with a tree head of size %d accepted; only size 2 was signed", th.Size)
		}
	})
}

func FuzzCheckAudit(f *testing.F) {
	s, c := testKey(f, 1)
	l := NewLog(s)
	fill(f, l, 0, 6, "a")
	th := head(f, l, c)
	items, _ := l.Audit("stream-0", 6)
	good, _ := json.Marshal(items)
	f.Add(good)
	f.Add([]byte(`[{"record":"e30=","proof":{"index":0,"tree_size":6,"hashes":[]}}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		items, err := ParseAudit(data)
		if err != nil {
			return
		}
		es, err := CheckAudit(th, "stream-0", items)
		if err != nil {
			return
		}
		for _, e := range es {
			if e.Index%3 != 0 {
				t.Fatalf("accepted entry %d, which is not about stream-0", e.Index)
			}
		}
	})
}
