package checkpoint

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/substrate"
)

// randomState returns n pseudo-random bytes (chunk boundaries need content
// that varies, as encoded state does).
func randomState(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// edit returns a copy of b with k bytes changed at scattered places and,
// if insert, 100 bytes inserted in the middle (shifting what follows).
func edit(b []byte, k int, insert bool, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	out := bytes.Clone(b)
	for range k {
		out[r.IntN(len(out))] ^= 0x5a
	}
	if insert {
		mid := len(out) / 2
		out = slices.Insert(out, mid, randomState(100, seed)...)
	}
	return out
}

func TestChunkBoundariesResynchronise(t *testing.T) {
	a := randomState(1<<20, 1)
	b := slices.Insert(bytes.Clone(a), 1000, []byte("inserted near the start")...)
	sumsOf := func(p []byte) map[Digest]bool {
		m := map[Digest]bool{}
		off := 0
		for _, n := range chunk(p) {
			if n < cdcMin && off+n != len(p) || n > cdcMax {
				t.Fatalf("chunk of %d bytes at %d, want [%d, %d]", n, off, cdcMin, cdcMax)
			}
			m[Digest(sha256.Sum256(p[off:off+n]))] = true
			off += n
		}
		if off != len(p) {
			t.Fatalf("chunks cover %d of %d bytes", off, len(p))
		}
		return m
	}
	sa, sb := sumsOf(a), sumsOf(b)
	shared := 0
	for s := range sb {
		if sa[s] {
			shared++
		}
	}
	// An insertion changes the chunk it falls in (and maybe the next); the
	// boundaries after it are found again.
	if len(sb)-shared > 3 {
		t.Fatalf("%d of %d chunks changed after one insertion, want at most 3", len(sb)-shared, len(sb))
	}
	if n := len(sa); n < (1<<20)/cdcMax || n > (1<<20)/cdcMin {
		t.Fatalf("%d chunks in 1 MiB", n)
	}
}

// TestIncrementalChain writes a whole snapshot and two incremental ones on
// it, reads each back, and checks that the incremental ones wrote only the
// chunks that changed.
func TestIncrementalChain(t *testing.T) {
	e := newEnv(t, substrate.SyncRelaxed)
	keys := ring(t, "job")
	v1 := randomState(2<<20, 1)
	v2 := edit(v1, 5, false, 2)
	v3 := edit(v2, 5, true, 3)
	d1, x1, err := e.store.PutIncremental(e.ctx, sid("job", "agg", 1), v1, keys, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(x1.Packs) != 1 || x1.Packs[0].Length != uint64(len(v1)) {
		t.Fatalf("first snapshot: packs %+v, want one of the whole snapshot", x1.Packs)
	}
	d2, x2, err := e.store.PutIncremental(e.ctx, sid("job", "agg", 2), v2, keys, x1, true)
	if err != nil {
		t.Fatal(err)
	}
	d3, x3, err := e.store.PutIncremental(e.ctx, sid("job", "agg", 3), v3, keys, x2, true)
	if err != nil {
		t.Fatal(err)
	}
	for i, x := range []*Index{x2, x3} {
		last := x.Packs[len(x.Packs)-1]
		if last.ID.Checkpoint != uint64(i+2) || last.Length > 8*cdcMax {
			t.Fatalf("snapshot %d wrote a pack of %d bytes (%+v), want at most %d (a few changed chunks)", i+2, last.Length, last.ID, 8*cdcMax)
		}
		if x.Packs[0] != x1.Packs[0] {
			t.Fatalf("snapshot %d does not reference the first one's pack: %+v", i+2, x.Packs)
		}
	}
	for i, c := range []struct {
		d    Digest
		want []byte
	}{{d1, v1}, {d2, v2}, {d3, v3}} {
		id := sid("job", "agg", uint64(i+1))
		got, x, err := e.store.GetSnapshot(e.ctx, id, c.d, keys)
		if err != nil || !bytes.Equal(got, c.want) {
			t.Fatalf("GetSnapshot(%d): %d bytes, %v; want the %d written", i+1, len(got), err, len(c.want))
		}
		if x.Length != uint64(len(c.want)) || len(x.Chunks) == 0 {
			t.Fatalf("GetSnapshot(%d): index %d bytes, %d chunks", i+1, x.Length, len(x.Chunks))
		}
		// Get reads whole snapshots only.
		if _, err := e.store.Get(e.ctx, id, c.d, keys); RuleOf(err) != RuleForeign {
			t.Fatalf("Get of an incremental snapshot: %v, want %s", err, RuleForeign)
		}
	}
}

// TestIncrementalOnWholeSnapshot takes a snapshot written by Put (whole) as
// the base of an incremental one.
func TestIncrementalOnWholeSnapshot(t *testing.T) {
	e := newEnv(t, substrate.SyncRelaxed)
	keys := ring(t, "job")
	v1 := randomState(1<<20, 4)
	d1 := e.put(sid("job", "agg", 1), v1, keys)
	got, x1, err := e.store.GetSnapshot(e.ctx, sid("job", "agg", 1), d1, keys)
	if err != nil || !bytes.Equal(got, v1) || !x1.Whole {
		t.Fatalf("GetSnapshot of a whole snapshot: %v, whole %v", err, x1 != nil && x1.Whole)
	}
	v2 := edit(v1, 3, false, 5)
	d2, x2, err := e.store.PutIncremental(e.ctx, sid("job", "agg", 2), v2, keys, x1, true)
	if err != nil {
		t.Fatal(err)
	}
	if !x2.Packs[0].Whole || x2.Packs[0].Object() != sid("job", "agg", 1).Object() {
		t.Fatalf("the incremental snapshot does not reference the whole one: %+v", x2.Packs)
	}
	// Releasing the whole snapshot keeps its object: x2 references it.
	if n, err := e.store.Release(e.ctx, x1, 0, x2); err != nil || n != 0 {
		t.Fatalf("Release of the base deleted %d objects (%v), want 0", n, err)
	}
	if got, _, err := e.store.GetSnapshot(e.ctx, sid("job", "agg", 2), d2, keys); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("GetSnapshot after Release: %v", err)
	}
}

// TestIncrementalRefusals checks that an incremental snapshot whose index or
// packs were deleted, substituted, or are stale or foreign is refused as a
// whole, by the rule named.
func TestIncrementalRefusals(t *testing.T) {
	type fixture struct {
		e          *env
		keys       *seal.Keyring
		d1, d2, d3 Digest
		x1, x2, x3 *Index
	}
	setup := func(t *testing.T) *fixture {
		e := newEnv(t, substrate.SyncRelaxed)
		keys := ring(t, "job", "other")
		f := &fixture{e: e, keys: keys}
		v1 := randomState(1<<20, 6)
		v2 := edit(v1, 4, false, 7)
		v3 := edit(v2, 4, false, 8)
		var err error
		if f.d1, f.x1, err = e.store.PutIncremental(e.ctx, sid("job", "agg", 1), v1, keys, nil, true); err != nil {
			t.Fatal(err)
		}
		if f.d2, f.x2, err = e.store.PutIncremental(e.ctx, sid("job", "agg", 2), v2, keys, f.x1, true); err != nil {
			t.Fatal(err)
		}
		if f.d3, f.x3, err = e.store.PutIncremental(e.ctx, sid("job", "agg", 3), v3, keys, f.x2, true); err != nil {
			t.Fatal(err)
		}
		// Another job's snapshot with the same task and checkpoint ids.
		o := sid("other", "agg", 1)
		if _, _, err := e.store.PutIncremental(e.ctx, o, v1, keys, nil, true); err != nil {
			t.Fatal(err)
		}
		return f
	}
	pack := func(id SnapshotID) string { return id.Object() + packSuffix }
	tests := []struct {
		name string
		// change changes the store; want is the rule refusing snapshot 3.
		change func(f *fixture)
		want   string
	}{
		{"base pack deleted", func(f *fixture) {
			if err := f.e.store.ObjectStore().Delete(f.e.ctx, pack(sid("job", "agg", 1))); err != nil {
				t.Fatal(err)
			}
		}, RuleMissing},
		{"own pack deleted", func(f *fixture) {
			if err := f.e.store.ObjectStore().Delete(f.e.ctx, pack(sid("job", "agg", 3))); err != nil {
				t.Fatal(err)
			}
		}, RuleMissing},
		{"stale pack put back", func(f *fixture) {
			// Checkpoint 2's pack copied over checkpoint 3's.
			b := f.e.rawName(pack(sid("job", "agg", 2)))
			f.e.putRawName(pack(sid("job", "agg", 3)), b)
		}, RuleDigest},
		{"foreign pack substituted", func(f *fixture) {
			b := f.e.rawName(pack(sid("other", "agg", 1)))
			f.e.putRawName(pack(sid("job", "agg", 1)), b)
		}, RuleDigest},
		{"pack byte flipped", func(f *fixture) {
			b := f.e.rawName(pack(sid("job", "agg", 1)))
			b[len(b)/2] ^= 1
			f.e.putRawName(pack(sid("job", "agg", 1)), b)
		}, RuleDigest},
		{"index substituted by an older one", func(f *fixture) {
			f.e.putRaw(sid("job", "agg", 3), f.e.raw(sid("job", "agg", 2)))
		}, RuleDigest},
		{"index deleted", func(f *fixture) {
			if err := f.e.store.Delete(f.e.ctx, sid("job", "agg", 3)); err != nil {
				t.Fatal(err)
			}
		}, RuleMissing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := setup(t)
			tc.change(f)
			got, x, err := f.e.store.GetSnapshot(f.e.ctx, sid("job", "agg", 3), f.d3, f.keys)
			if RuleOf(err) != tc.want || got != nil || x != nil {
				t.Fatalf("GetSnapshot: %d bytes, %v; want nothing and rule %s", len(got), err, tc.want)
			}
		})
	}
}

// TestIncrementalIndexRefusals seals indexes (with the job's key, as only a
// holder of it could) that do not describe their snapshot: a chunk whose
// SHA-256 is not the one listed, a chunk outside its pack, a malformed
// index. Each is refused with RuleTampered and nothing is returned.
func TestIncrementalIndexRefusals(t *testing.T) {
	e := newEnv(t, substrate.SyncRelaxed)
	keys := ring(t, "job")
	v1 := randomState(256<<10, 9)
	_, x1, err := e.store.PutIncremental(e.ctx, sid("job", "agg", 1), v1, keys, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		index  func() []byte
		reason string
	}{
		{"chunk sum", func() []byte {
			x := *x1
			x.Chunks = slices.Clone(x1.Chunks)
			x.Chunks[1].Sum[0] ^= 1
			return x.marshal()
		}, "SHA-256"},
		{"chunk outside its pack", func() []byte {
			x := *x1
			x.Chunks = slices.Clone(x1.Chunks)
			x.Chunks[len(x.Chunks)-1].Offset += 10
			return x.marshal()
		}, "not inside pack"},
		{"length", func() []byte {
			x := *x1
			x.Length++
			return x.marshal()
		}, "chunks hold"},
		{"trailing bytes", func() []byte { return append(x1.marshal(), 0) }, "index does not decode"},
		{"bad magic", func() []byte { return []byte("SFCX\x01") }, "magic"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := sid("job", "agg", uint64(10+i))
			d, err := e.store.put(e.ctx, id, id.Object(), true, tc.index(), keys)
			if err != nil {
				t.Fatal(err)
			}
			got, x, err := e.store.GetSnapshot(e.ctx, id, d, keys)
			if RuleOf(err) != RuleTampered || got != nil || x != nil || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("GetSnapshot: %d bytes, %v; want nothing and rule %s mentioning %q", len(got), err, RuleTampered, tc.reason)
			}
		})
	}
	// A pack read as a snapshot is refused: it is not an index, and its
	// digest is not the recorded one.
	if _, _, err := e.store.GetSnapshot(e.ctx, sid("job", "agg", 1), x1.Packs[0].Digest, keys); RuleOf(err) != RuleDigest {
		t.Fatalf("GetSnapshot with a pack's digest: %v, want %s", err, RuleDigest)
	}
}

// TestReleaseKeepsReferencedPacks releases superseded snapshots of a chain
// and checks that the packs the kept snapshots reference survive (the
// restore still works) while the others are deleted; Prune spares them too.
func TestReleaseKeepsReferencedPacks(t *testing.T) {
	e := newEnv(t, substrate.SyncRelaxed)
	keys := ring(t, "job")
	v := randomState(1<<20, 10)
	var xs []*Index
	var ds []Digest
	var vs [][]byte
	for c := uint64(1); c <= 4; c++ {
		if c > 1 {
			v = edit(v, 3, false, c)
		}
		d, x, err := e.store.PutIncremental(e.ctx, sid("job", "agg", c), v, keys, last(xs), true)
		if err != nil {
			t.Fatal(err)
		}
		xs, ds, vs = append(xs, x), append(ds, d), append(vs, v)
	}
	exists := func(name string) bool {
		_, err := e.store.ObjectStore().GetInfo(e.ctx, name)
		if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}
	// Checkpoint 2 is pinned (a savepoint); 3 is superseded by 4.
	n, err := e.store.Release(e.ctx, xs[2], 0, xs[3], xs[1])
	if err != nil {
		t.Fatal(err)
	}
	// Checkpoint 4 still references the chunks of checkpoint 3's pack that
	// it did not change.
	pack3 := sid("job", "agg", 3).Object() + packSuffix
	want := 1
	if !slices.Contains(xs[3].Objects(), pack3) {
		want = 2
	}
	if n != want || exists(sid("job", "agg", 3).Object()) || exists(pack3) != (want == 1) {
		t.Fatalf("Release of checkpoint 3 deleted %d objects, want %d (its index, and its pack unless 4 references it)", n, want)
	}
	if !exists(sid("job", "agg", 1).Object() + packSuffix) {
		t.Fatal("Release deleted checkpoint 1's pack, which checkpoints 2 and 4 reference")
	}
	// keepThrough spares what an unknown pinned snapshot may reference.
	if n, err := e.store.Release(e.ctx, xs[1], 2, xs[3]); err != nil || n != 0 {
		t.Fatalf("Release with keepThrough 2 deleted %d objects (%v), want 0", n, err)
	}
	// Prune of everything before 4 keeps what 4 references.
	if _, err := e.store.Prune(e.ctx, "job", 4, xs[3]); err != nil {
		t.Fatal(err)
	}
	for _, o := range xs[3].Objects() {
		if !exists(o) {
			t.Fatalf("Prune deleted %q, which checkpoint 4 references", o)
		}
	}
	if exists(sid("job", "agg", 2).Object()) {
		t.Fatal("Prune kept checkpoint 2's index, which nothing kept references")
	}
	got, _, err := e.store.GetSnapshot(e.ctx, sid("job", "agg", 4), ds[3], keys)
	if err != nil || !bytes.Equal(got, vs[3]) {
		t.Fatalf("GetSnapshot of checkpoint 4 after Release and Prune: %v", err)
	}
}

// TestIncrementalRewritesSparsePacks changes most of the state: the base
// pack would keep less than three quarters of its bytes in use, so its chunks are
// written again and the new snapshot references only its own pack.
func TestIncrementalRewritesSparsePacks(t *testing.T) {
	e := newEnv(t, substrate.SyncRelaxed)
	keys := ring(t, "job")
	v1 := randomState(1<<20, 11)
	_, x1, err := e.store.PutIncremental(e.ctx, sid("job", "agg", 1), v1, keys, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	v2 := edit(v1, 400, false, 12)
	// Without compaction the sparse base pack is referenced still.
	_, xk, err := e.store.PutIncremental(e.ctx, sid("job", "agg", 2), v2, keys, x1, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(xk.Packs) != 2 || xk.Packs[0] != x1.Packs[0] {
		t.Fatalf("without compaction: packs %+v, want the base's and its own", xk.Packs)
	}
	d2, x2, err := e.store.PutIncremental(e.ctx, sid("job", "agg", 2), v2, keys, x1, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(x2.Packs) != 1 || x2.Packs[0].ID.Checkpoint != 2 || x2.Packs[0].Length != uint64(len(v2)) {
		t.Fatalf("packs %+v, want checkpoint 2's own, of the whole snapshot", x2.Packs)
	}
	if got, _, err := e.store.GetSnapshot(e.ctx, sid("job", "agg", 2), d2, keys); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("GetSnapshot: %v", err)
	}
}

func last(xs []*Index) *Index {
	if len(xs) == 0 {
		return nil
	}
	return xs[len(xs)-1]
}

// rawName and putRawName read and write an object by name.
func (e *env) rawName(name string) []byte {
	e.t.Helper()
	b, err := e.store.ObjectStore().GetBytes(e.ctx, name)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *env) putRawName(name string, b []byte) {
	e.t.Helper()
	if _, err := e.store.ObjectStore().PutBytes(e.ctx, name, b); err != nil {
		e.t.Fatal(err)
	}
}
