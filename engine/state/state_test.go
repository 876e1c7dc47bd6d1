package state

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

type counter struct{ N int64 }

type counterCodec struct{}

func (counterCodec) Append(dst []byte, v *counter) []byte { return AppendVarint(dst, v.N) }
func (counterCodec) Decode(src []byte, v *counter) error {
	d := NewDecoder(src)
	v.N = d.Varint()
	return d.Done()
}

func TestRangeForCoversAllGroups(t *testing.T) {
	for _, tc := range []struct{ p, maxP int }{{1, 128}, {2, 128}, {3, 128}, {7, 128}, {128, 128}, {5, 7}, {1, 1}} {
		next := 0
		for i := 0; i < tc.p; i++ {
			r := RangeFor(i, tc.p, tc.maxP)
			if r.From != next || r.Len() < tc.maxP/tc.p || r.Len() > tc.maxP/tc.p+1 {
				t.Fatalf("p=%d maxP=%d subtask %d: range %v (want from %d, size ~%d)", tc.p, tc.maxP, i, r, next, tc.maxP/tc.p)
			}
			for kg := r.From; kg < r.To; kg++ {
				if s := SubtaskFor(kg, tc.p, tc.maxP); s != i {
					t.Fatalf("p=%d maxP=%d: SubtaskFor(%d)=%d, RangeFor says %d", tc.p, tc.maxP, kg, s, i)
				}
			}
			next = r.To
		}
		if next != tc.maxP {
			t.Fatalf("p=%d maxP=%d: ranges end at %d", tc.p, tc.maxP, next)
		}
	}
}

func TestKeyGroupSpreadsConsecutiveKeys(t *testing.T) {
	const maxP, n = 128, 128 * 1000
	counts := make([]int, maxP)
	for k := uint64(0); k < n; k++ {
		kg := KeyGroup(k, maxP)
		if kg < 0 || kg >= maxP {
			t.Fatalf("KeyGroup(%d)=%d outside [0,%d)", k, kg, maxP)
		}
		counts[kg]++
	}
	for kg, c := range counts {
		if c < 800 || c > 1200 {
			t.Fatalf("group %d got %d of %d consecutive keys; want about 1000", kg, c, n)
		}
	}
}

func TestCheckParallelism(t *testing.T) {
	for _, tc := range []struct {
		p, maxP int
		ok      bool
	}{{1, 128, true}, {128, 128, true}, {129, 128, false}, {0, 128, false}, {1, 0, false}, {1, MaxMaxParallelism + 1, false}} {
		if err := CheckParallelism(tc.p, tc.maxP); (err == nil) != tc.ok {
			t.Errorf("CheckParallelism(%d,%d) = %v, want ok=%v", tc.p, tc.maxP, err, tc.ok)
		}
	}
}

func fill(t *testing.T, s *Store[counter], keys int) {
	t.Helper()
	for k := uint64(0); k < uint64(keys); k++ {
		if !s.Owns(k) {
			continue
		}
		v, created, err := s.GetOrCreate(k)
		if err != nil || !created {
			t.Fatalf("GetOrCreate(%d) = %v, %v", k, created, err)
		}
		v.N = int64(k * 3)
	}
}

func TestStoreRescale(t *testing.T) {
	const maxP, keys = 16, 500
	// Two old subtasks, each with its own keys.
	var snaps [][]byte
	for i := 0; i < 2; i++ {
		r := RangeFor(i, 2, maxP)
		s, err := NewStore[counter](maxP, r, counterCodec{})
		if err != nil {
			t.Fatal(err)
		}
		fill(t, s, keys)
		snap, err := s.Snapshot(r)
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, snap)
	}
	// Three new subtasks restore their ranges from both snapshots.
	total := 0
	for i := 0; i < 3; i++ {
		r := RangeFor(i, 3, maxP)
		s, _ := NewStore[counter](maxP, r, counterCodec{})
		for _, snap := range snaps {
			if err := s.Restore(r, snap); err != nil {
				t.Fatal(err)
			}
		}
		s.ForEach(func(k uint64, v *counter) bool {
			if v.N != int64(k*3) || !s.Owns(k) {
				t.Fatalf("subtask %d: key %d = %d after restore", i, k, v.N)
			}
			return true
		})
		total += s.Len()
		// Snapshots are deterministic: restoring and snapshotting again gives the same bytes.
		fresh, _ := NewStore[counter](maxP, r, counterCodec{})
		fill(t, fresh, keys)
		a, _ := s.Snapshot(r)
		b, _ := fresh.Snapshot(r)
		if !bytes.Equal(a, b) {
			t.Fatalf("subtask %d: restored snapshot differs from a fresh one", i)
		}
	}
	if total != keys {
		t.Fatalf("restored %d keys in total, want %d", total, keys)
	}
}

func TestStoreRestoreReplacesOnlyRange(t *testing.T) {
	const maxP = 8
	all := Range{0, maxP}
	s, _ := NewStore[counter](maxP, all, counterCodec{})
	fill(t, s, 100)
	snap, _ := s.Snapshot(all)
	for k := uint64(0); k < 100; k++ {
		v, _, _ := s.GetOrCreate(k)
		v.N = -1
	}
	extra := uint64(1000)
	v, _, _ := s.GetOrCreate(extra)
	v.N = 7
	part := Range{2, 5}
	if err := s.Restore(part, snap); err != nil {
		t.Fatal(err)
	}
	for k := uint64(0); k < 100; k++ {
		want := int64(-1)
		if part.Contains(KeyGroup(k, maxP)) {
			want = int64(k * 3)
		}
		if got := s.Get(k).N; got != want {
			t.Fatalf("key %d (group %d) = %d, want %d", k, KeyGroup(k, maxP), got, want)
		}
	}
	if part.Contains(KeyGroup(extra, maxP)) == (s.Get(extra) != nil) {
		t.Fatalf("key %d not in the snapshot: restore of %v should remove it iff its group is in range", extra, part)
	}
}

func TestStoreRefusals(t *testing.T) {
	const maxP = 8
	s, _ := NewStore[counter](maxP, Range{0, 4}, counterCodec{})
	var outside uint64
	for KeyGroup(outside, maxP) < 4 {
		outside++
	}
	if _, _, err := s.GetOrCreate(outside); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Fatalf("GetOrCreate of a key in group %d: err = %v", KeyGroup(outside, maxP), err)
	}
	good, _ := s.Snapshot(Range{0, 4})
	if _, err := s.Snapshot(Range{0, 5}); err == nil {
		t.Fatal("snapshot of a range beyond the owned one succeeded")
	}
	other, _ := NewStore[counter](16, Range{0, 16}, counterCodec{})
	if err := other.Restore(Range{0, 16}, good); err == nil || !strings.Contains(err.Error(), "max parallelism") {
		t.Fatalf("restore with a different max parallelism: err = %v", err)
	}
	for name, data := range map[string][]byte{
		"empty":      nil,
		"magic":      []byte("XXXX\x01\x08\x00\x04\x00"),
		"version":    []byte("SFKS\x02\x08\x00\x04\x00"),
		"trailing":   append(append([]byte(nil), good...), 0),
		"truncated":  good[:len(good)-1],
		"bad range":  []byte("SFKS\x01\x08\x05\x04\x00"),
		"huge count": []byte("SFKS\x01\x08\x00\x04\xff\xff\xff\x0f"),
	} {
		if err := s.Restore(Range{0, 4}, data); err == nil {
			t.Errorf("%s snapshot: restore succeeded", name)
		}
	}
}

func TestStoreRecyclesWithoutAllocating(t *testing.T) {
	s, _ := NewStore[counter](128, Range{0, 128}, counterCodec{})
	for k := uint64(0); k < 64; k++ {
		s.GetOrCreate(k)
	}
	allocs := testing.AllocsPerRun(100, func() {
		for k := uint64(0); k < 64; k++ {
			v, _, _ := s.GetOrCreate(k)
			v.N++
			s.Delete(k)
			s.GetOrCreate(k)
		}
	})
	if allocs > 0 {
		t.Fatalf("%v allocations per run of get/delete/create on existing groups", allocs)
	}
}

func TestValueCodecRoundTrip(t *testing.T) {
	rec := record.Record{Time: -5, Values: []record.Value{
		{}, record.Int(-1 << 40), record.Float(2.5), record.String("héllo"), record.Bool(true), record.Bool(false),
	}}
	b := AppendRecord(nil, &rec)
	var got record.Record
	d := NewDecoder(b)
	d.Record(&got)
	if err := d.Done(); err != nil {
		t.Fatal(err)
	}
	if got.Time != rec.Time || len(got.Values) != len(rec.Values) {
		t.Fatalf("got %+v, want %+v", got, rec)
	}
	for i := range rec.Values {
		if got.Values[i] != rec.Values[i] {
			t.Fatalf("value %d: got %+v, want %+v", i, got.Values[i], rec.Values[i])
		}
	}
	for _, bad := range [][]byte{{9}, {byte(record.TypeBool), 2}, {byte(record.TypeFloat), 1, 2}, {byte(record.TypeString), 5, 'a'}} {
		d := NewDecoder(bad)
		d.Value()
		if d.Done() == nil {
			t.Errorf("value %x decoded without error", bad)
		}
	}
}

func FuzzDecodeSnapshot(f *testing.F) {
	s, _ := NewStore[counter](8, Range{0, 8}, counterCodec{})
	for k := uint64(0); k < 20; k++ {
		v, _, _ := s.GetOrCreate(k)
		v.N = int64(k)
	}
	good, _ := s.Snapshot(Range{0, 8})
	f.Add(good)
	f.Add(good[:9])
	f.Add([]byte("SFKS\x01\x08\x00\x08\x01\x03\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, entries, err := DecodeSnapshot(data, 8, counterCodec{})
		if err != nil {
			return
		}
		// What decodes must re-encode to the same bytes (the encoding is canonical).
		st, _ := NewStore[counter](8, Range{0, 8}, counterCodec{})
		for _, e := range entries {
			v, _, _ := st.GetOrCreate(e.Key)
			*v = e.Value
		}
		again, err := st.Snapshot(r)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("decoded snapshot re-encodes differently:\n in %x\nout %x", data, again)
		}
	})
}

func BenchmarkStoreGetOrCreate(b *testing.B) {
	for _, keys := range []uint64{1000, 100000} {
		b.Run(fmt.Sprintf("%dkeys", keys), func(b *testing.B) {
			s, _ := NewStore[counter](DefaultMaxParallelism, Range{0, DefaultMaxParallelism}, counterCodec{})
			b.ReportAllocs()
			x := uint64(1)
			for i := 0; i < b.N; i++ {
				x = x*6364136223846793005 + 1442695040888963407
				v, _, _ := s.GetOrCreate((x >> 33) % keys)
				v.N++
			}
		})
	}
}

func BenchmarkSnapshotRestore(b *testing.B) {
	const keys = 10000
	all := Range{0, DefaultMaxParallelism}
	s, _ := NewStore[counter](DefaultMaxParallelism, all, counterCodec{})
	for k := uint64(0); k < keys; k++ {
		v, _, _ := s.GetOrCreate(k)
		v.N = int64(k)
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		snap, err := s.Snapshot(all)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Restore(all, snap); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*keys), "ns/key")
}
