package ledger

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// testKey derives a deterministic key so that test failures reproduce.
func testKey(t testing.TB, seed byte) (note.Signer, *Checker) {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	s, err := NewSigner("sealflow-orchestrator", priv)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCheckerForKey("sealflow-orchestrator", priv.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

func entry(i int, tag string) Entry {
	return Entry{
		Time:     time.Date(2026, 11, 25, 0, 0, i, 0, time.UTC),
		Type:     "key.release",
		Subjects: []string{fmt.Sprintf("stream-%d", i%3), "node-1"},
		Body:     json.RawMessage(fmt.Sprintf(`{"n":%d,"tag":%q}`, i, tag)),
	}
}

func fill(t testing.TB, l *Log, from, to int, tag string) {
	t.Helper()
	for i := from; i < to; i++ {
		e, err := l.AppendEntry(entry(i, tag))
		if err != nil {
			t.Fatal(err)
		}
		if e.Index != int64(i) {
			t.Fatalf("entry %d stored at index %d", i, e.Index)
		}
	}
}

func head(t testing.TB, l *Log, c *Checker) TreeHead {
	t.Helper()
	sth, err := l.SignedTreeHead()
	if err != nil {
		t.Fatal(err)
	}
	th, err := c.VerifyTreeHead(sth)
	if err != nil {
		t.Fatalf("verifying our own tree head: %v", err)
	}
	return th
}

// headAt signs the tree head of the first n records of l (tests only).
func headAt(t testing.TB, l *Log, c *Checker, n int64) TreeHead {
	t.Helper()
	cp, err := Unmarshal(l.Marshal(), l.signer)
	if err != nil {
		t.Fatal(err)
	}
	cp.records, cp.hashes = cp.records[:n], nil
	cp, err = Unmarshal(cp.Marshal(), l.signer)
	if err != nil {
		t.Fatal(err)
	}
	return head(t, cp, c)
}

func TestProofsVerify(t *testing.T) {
	s, c := testKey(t, 1)
	l := NewLog(s)
	const n = 17
	fill(t, l, 0, n, "a")
	heads := make([]TreeHead, n+1)
	for size := int64(1); size <= n; size++ {
		heads[size] = headAt(t, l, c, size)
		if heads[size].Size != size {
			t.Fatalf("head size %d, want %d", heads[size].Size, size)
		}
	}
	for size := int64(1); size <= n; size++ {
		for i := int64(0); i < size; i++ {
			p, err := l.ProveInclusion(i, size)
			if err != nil {
				t.Fatal(err)
			}
			rec, _ := l.Record(i)
			if err := CheckInclusion(heads[size], rec, p); err != nil {
				t.Fatalf("record %d in size %d: %v", i, size, err)
			}
		}
		for old := int64(1); old <= size; old++ {
			p, err := l.ProveConsistency(old, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := CheckConsistency(heads[old], heads[size], p); err != nil {
				t.Fatalf("consistency %d -> %d: %v", old, size, err)
			}
		}
	}
}

func wantRefusal(t *testing.T, err, kind error, rule string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("error = %v, want %v", err, kind)
	}
	var r interface{ RefusedBy() string }
	if !errors.As(err, &r) || r.RefusedBy() != rule {
		t.Fatalf("error %v does not name rule %s", err, rule)
	}
}

func TestTamperingDetected(t *testing.T) {
	s, c := testKey(t, 1)
	l := NewLog(s)
	fill(t, l, 0, 11, "a")
	th := head(t, l, c)
	old := headAt(t, l, c, 6)
	rec, _ := l.Record(4)
	ip, _ := l.ProveInclusion(4, th.Size)
	cp, _ := l.ProveConsistency(6, th.Size)

	t.Run("tampered entry", func(t *testing.T) {
		bad := bytes.Replace(rec, []byte(`"n":4`), []byte(`"n":5`), 1)
		if bytes.Equal(bad, rec) {
			t.Fatal("test did not change the record")
		}
		wantRefusal(t, CheckInclusion(th, bad, ip), ErrInclusion, "ledger.inclusion")
	})
	t.Run("entry at another index", func(t *testing.T) {
		other := *ip
		other.Index = 5
		wantRefusal(t, CheckInclusion(th, rec, &other), ErrInclusion, "ledger.inclusion")
	})
	t.Run("tampered inclusion proof hash", func(t *testing.T) {
		for i := range ip.Hashes {
			bad := *ip
			bad.Hashes = append(bad.Hashes[:0:0], ip.Hashes...)
			bad.Hashes[i][0] ^= 1
			wantRefusal(t, CheckInclusion(th, rec, &bad), ErrInclusion, "ledger.inclusion")
		}
	})
	t.Run("tampered consistency proof hash", func(t *testing.T) {
		for i := range cp.Hashes {
			bad := *cp
			bad.Hashes = append(bad.Hashes[:0:0], cp.Hashes...)
			bad.Hashes[i][31] ^= 0x80
			wantRefusal(t, CheckConsistency(old, th, &bad), ErrFork, "ledger.fork")
		}
	})
	t.Run("tampered tree head", func(t *testing.T) {
		sth, _ := l.SignedTreeHead()
		sigLine := bytes.LastIndex(sth, []byte("— "))
		tests := map[string][]byte{
			"signature byte": func() []byte {
				b := bytes.Clone(sth)
				i := len(b) - 6 // inside the base64 signature
				if b[i] == 'A' {
					b[i] = 'B'
				} else {
					b[i] = 'A'
				}
				return b
			}(),
			"size changed": bytes.Replace(sth, []byte("\n11\n"), []byte("\n12\n"), 1),
			"no signature": sth[:sigLine],
		}
		for name, b := range tests {
			if _, err := c.VerifyTreeHead(b); err == nil {
				t.Errorf("%s: tampered tree head verified", name)
			} else if name != "no signature" {
				wantRefusal(t, err, ErrSignature, "ledger.signature")
			}
		}
	})
	t.Run("other key", func(t *testing.T) {
		s2, _ := testKey(t, 2)
		l2, _ := Unmarshal(l.Marshal(), s2)
		sth, _ := l2.SignedTreeHead()
		_, err := c.VerifyTreeHead(sth)
		wantRefusal(t, err, ErrSignature, "ledger.signature")
	})
}

func TestWitnessDetectsRollbackAndFork(t *testing.T) {
	s, c := testKey(t, 1)
	path := filepath.Join(t.TempDir(), "witness.json")
	w, err := OpenWitness(c, path)
	if err != nil {
		t.Fatal(err)
	}
	l := NewLog(s)
	fill(t, l, 0, 5, "a")
	snapshot := l.Marshal() // an older sealed state the infrastructure keeps
	sth5, _ := l.SignedTreeHead()
	if _, err := w.Update(sth5, nil); err != nil {
		t.Fatalf("first tree head: %v", err)
	}
	fill(t, l, 5, 10, "a")
	sth10, _ := l.SignedTreeHead()
	p, _ := l.ProveConsistency(5, 10)
	if th, err := w.Update(sth10, p); err != nil || th.Size != 10 {
		t.Fatalf("honest growth to 10: %v", err)
	}

	// The orchestrator is restarted from the older snapshot: rolled back.
	rolled, err := Unmarshal(snapshot, s)
	if err != nil {
		t.Fatal(err)
	}
	sthRolled, _ := rolled.SignedTreeHead()
	_, err = w.Update(sthRolled, nil)
	wantRefusal(t, err, ErrRollback, "ledger.rollback")

	// It grows back to size 10 with other entries: same size, other hash.
	fill(t, rolled, 5, 10, "b")
	sthSame, _ := rolled.SignedTreeHead()
	_, err = w.Update(sthSame, nil)
	wantRefusal(t, err, ErrRollback, "ledger.rollback")

	// And beyond: a fork, whatever proof it offers.
	fill(t, rolled, 10, 13, "b")
	sthFork, _ := rolled.SignedTreeHead()
	_, err = w.Update(sthFork, nil)
	if err == nil {
		t.Fatal("growth without a consistency proof accepted")
	}
	pFork, _ := rolled.ProveConsistency(10, 13)
	_, err = w.Update(sthFork, pFork)
	wantRefusal(t, err, ErrFork, "ledger.fork")

	// The witness kept the last good head, also across a restart.
	w2, err := OpenWitness(c, path)
	if err != nil {
		t.Fatal(err)
	}
	last, ok := w2.Last()
	if !ok || last.Size != 10 || !bytes.Equal(last.Signed, sth10) {
		t.Fatalf("reopened witness: last = %d (ok %v), want the honest size 10", last.Size, ok)
	}
	fill(t, l, 10, 12, "a")
	sth12, _ := l.SignedTreeHead()
	p, _ = l.ProveConsistency(10, 12)
	if _, err := w2.Update(sth12, p); err != nil {
		t.Fatalf("honest growth after a refused fork: %v", err)
	}
	rec, _ := l.Record(11)
	ip, _ := l.ProveInclusion(11, 12)
	if err := w2.CheckEntry(rec, ip); err != nil {
		t.Fatalf("CheckEntry: %v", err)
	}
}

func TestForkedLogs(t *testing.T) {
	s, c := testKey(t, 1)
	a := NewLog(s)
	fill(t, a, 0, 5, "same")
	b, _ := Unmarshal(a.Marshal(), s)
	fill(t, a, 5, 8, "a")
	fill(t, b, 5, 9, "b")
	w, _ := OpenWitness(c, filepath.Join(t.TempDir(), "w"))
	sthA, _ := a.SignedTreeHead()
	if _, err := w.Update(sthA, nil); err != nil {
		t.Fatal(err)
	}
	sthB, _ := b.SignedTreeHead()
	p, _ := b.ProveConsistency(8, 9)
	_, err := w.Update(sthB, p)
	wantRefusal(t, err, ErrFork, "ledger.fork")
	// The shared prefix is consistent in both.
	pa, _ := a.ProveConsistency(5, 8)
	if err := CheckConsistency(headAt(t, b, c, 5), head(t, a, c), pa); err != nil {
		t.Fatalf("shared prefix: %v", err)
	}
}

func TestWitnessStateTampered(t *testing.T) {
	s, c := testKey(t, 1)
	l := NewLog(s)
	fill(t, l, 0, 3, "a")
	path := filepath.Join(t.TempDir(), "w.json")
	w, _ := OpenWitness(c, path)
	sth, _ := l.SignedTreeHead()
	if _, err := w.Update(sth, nil); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	var st witnessState
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	st.TreeHead = bytes.Replace(st.TreeHead, []byte("\n3\n"), []byte("\n1\n"), 1)
	bad, _ := json.Marshal(st)
	os.WriteFile(path, bad, 0o600)
	_, err := OpenWitness(c, path)
	wantRefusal(t, err, ErrSignature, "ledger.signature")
	os.WriteFile(path, []byte("{"), 0o600)
	if _, err := OpenWitness(c, path); err == nil {
		t.Fatal("truncated state accepted")
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	s, c := testKey(t, 1)
	l := NewLog(s)
	fill(t, l, 0, 9, "a")
	data := l.Marshal()
	r, err := Unmarshal(data, s)
	if err != nil {
		t.Fatal(err)
	}
	if head(t, r, c).Hash != head(t, l, c).Hash {
		t.Fatal("restored log has another tree hash")
	}
	if got := r.About("stream-1"); fmt.Sprint(got) != "[1 4 7]" {
		t.Fatalf("About(stream-1) = %v, want [1 4 7]", got)
	}
	for i := range data {
		bad := bytes.Clone(data)
		bad[i] ^= 0x20
		if _, err := Unmarshal(bad, s); err == nil {
			t.Fatalf("corruption at byte %d not detected", i)
		}
	}
	if _, err := Unmarshal(data[:len(data)-1], s); err == nil {
		t.Fatal("truncation not detected")
	}
}

func TestEntries(t *testing.T) {
	s, _ := testKey(t, 1)
	l := NewLog(s)
	if _, err := l.AppendEntry(Entry{}); err == nil {
		t.Fatal("entry without a type accepted")
	}
	e, _ := l.AppendEntry(entry(0, "x"))
	rec, _ := l.Record(0)
	got, err := DecodeEntry(rec)
	if err != nil || got.Index != 0 || got.Type != e.Type || !got.Time.Equal(e.Time) || string(got.Body) != string(e.Body) {
		t.Fatalf("DecodeEntry = %+v, %v; want %+v", got, err, e)
	}
	idx, _ := l.Append([]byte("opaque bytes"))
	if idx != 1 || len(l.About("node-1")) != 1 {
		t.Fatalf("opaque record at %d; About(node-1) = %v", idx, l.About("node-1"))
	}
	for _, bad := range []string{`{"type":"x","extra":1}`, `{"index":0}`, `{"type":"x"} {}`, `{"type":"x","index":-1}`} {
		if _, err := DecodeEntry([]byte(bad)); err == nil {
			t.Errorf("DecodeEntry(%s) accepted", bad)
		}
	}
	if _, err := l.ProveInclusion(2, 2); err == nil {
		t.Fatal("proof for a record outside the tree")
	}
	if _, err := l.ProveConsistency(2, 3); err == nil {
		t.Fatal("consistency proof beyond the log")
	}
}

func BenchmarkAppendEntry(b *testing.B) {
	s, _ := testKey(b, 1)
	l := NewLog(s)
	e := entry(1, "bench")
	cpu := processCPU(b)
	for b.Loop() {
		if _, err := l.AppendEntry(e); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}

func BenchmarkAppendAndSign(b *testing.B) {
	s, _ := testKey(b, 1)
	l := NewLog(s)
	e := entry(1, "bench")
	cpu := processCPU(b)
	for b.Loop() {
		if _, err := l.AppendEntry(e); err != nil {
			b.Fatal(err)
		}
		if _, err := l.SignedTreeHead(); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signed-entries/s")
}

func BenchmarkVerifyInclusion(b *testing.B) {
	s, c := testKey(b, 1)
	l := NewLog(s)
	fill(b, l, 0, 1<<12, "bench")
	th := head(b, l, c)
	rec, _ := l.Record(1234)
	p, _ := l.ProveInclusion(1234, th.Size)
	cpu := processCPU(b)
	for b.Loop() {
		if err := CheckInclusion(th, rec, p); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu)
}

// memStore is a Store that can be told to fail.
type memStore struct {
	records [][]byte
	fail    bool
}

func (m *memStore) Append(index int64, record []byte) error {
	if m.fail {
		return errors.New("disk full")
	}
	if index != int64(len(m.records)) {
		return fmt.Errorf("append at %d, have %d", index, len(m.records))
	}
	m.records = append(m.records, bytes.Clone(record))
	return nil
}

func TestStore(t *testing.T) {
	s, c := testKey(t, 1)
	st := &memStore{}
	l := NewLog(s, WithStore(st))
	fill(t, l, 0, 6, "a")
	if len(st.records) != 6 {
		t.Fatalf("store holds %d records, want 6", len(st.records))
	}
	st.fail = true
	if _, err := l.AppendEntry(entry(6, "a")); err == nil {
		t.Fatal("append succeeded although the store failed")
	}
	if l.Size() != 6 {
		t.Fatalf("a failed store append changed the log: size %d", l.Size())
	}
	st.fail = false
	r, err := FromRecords(s, st.records, WithStore(st))
	if err != nil {
		t.Fatal(err)
	}
	if head(t, r, c).Hash != head(t, l, c).Hash || len(st.records) != 6 {
		t.Fatalf("restored log differs or re-stored records (%d)", len(st.records))
	}
	fill(t, r, 6, 8, "a")
	if len(st.records) != 8 {
		t.Fatalf("store holds %d records after restore and 2 appends, want 8", len(st.records))
	}
}

// TestConcurrentUse appends, signs and proves at once; run with -race.
func TestConcurrentUse(t *testing.T) {
	s, c := testKey(t, 1)
	l := NewLog(s)
	fill(t, l, 0, 1, "a")
	done := make(chan error, 3)
	go func() {
		for i := 1; i < 200; i++ {
			if _, err := l.AppendEntry(entry(i, "a")); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for range 2 {
		go func() {
			for range 100 {
				sth, err := l.SignedTreeHead()
				if err != nil {
					done <- err
					return
				}
				th, err := c.VerifyTreeHead(sth)
				if err != nil {
					done <- err
					return
				}
				p, err := l.ProveInclusion(0, th.Size)
				if err != nil {
					done <- err
					return
				}
				rec, _ := l.Record(0)
				if err := CheckInclusion(th, rec, p); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 3 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func TestAudit(t *testing.T) {
	s, c := testKey(t, 1)
	l := NewLog(s)
	fill(t, l, 0, 10, "a")
	th := headAt(t, l, c, 8)
	items, err := l.Audit("stream-2", 8)
	if err != nil {
		t.Fatal(err)
	}
	es, err := CheckAudit(th, "stream-2", items)
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for _, e := range es {
		got = append(got, e.Index)
	}
	if fmt.Sprint(got) != "[2 5]" {
		t.Fatalf("audit of stream-2 at size 8 = %v, want [2 5]", got)
	}
	other, _ := l.Audit("stream-1", 8)
	tests := map[string][]AuditItem{
		"other subject":  other,
		"reordered":      {items[1], items[0]},
		"tampered":       {{Record: bytes.Replace(items[0].Record, []byte("key.release"), []byte("key.revoke!"), 1), Proof: items[0].Proof}},
		"missing proof":  {{Record: items[0].Record}},
		"proof for size": {{Record: items[0].Record, Proof: &InclusionProof{Index: 2, TreeSize: 10, Hashes: items[0].Proof.Hashes}}},
	}
	for name, bad := range tests {
		if _, err := CheckAudit(th, "stream-2", bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := CheckAudit(th, "stream-2", tests["tampered"]); !errors.Is(err, ErrInclusion) {
		t.Errorf("tampered record: %v, want ErrInclusion", err)
	}
}

func TestKeyErrors(t *testing.T) {
	priv := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	pub := priv.Public().(ed25519.PublicKey)
	tests := []struct {
		name string
		priv ed25519.PrivateKey
		pub  ed25519.PublicKey
	}{
		{"", priv, pub},
		{"has space", priv, pub},
		{"has+plus", priv, pub},
		{"short-key", priv[:10], pub[:10]},
	}
	for _, tt := range tests {
		if _, err := NewSigner(tt.name, tt.priv); err == nil {
			t.Errorf("NewSigner(%q, %d-byte key) succeeded", tt.name, len(tt.priv))
		}
		if _, err := NewCheckerForKey(tt.name, tt.pub); err == nil {
			t.Errorf("NewCheckerForKey(%q, %d-byte key) succeeded", tt.name, len(tt.pub))
		}
	}
	if _, err := NewChecker("not a key"); err == nil {
		t.Error("NewChecker accepted a malformed verifier key")
	}
}
