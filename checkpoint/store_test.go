package checkpoint

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/substrate"
)

// env is an embedded NATS server on loopback with a checkpoint store, stopped
// when the test ends.
type env struct {
	t     testing.TB
	ctx   context.Context
	js    jetstream.JetStream
	store *Store
}

func newEnv(t testing.TB, sync substrate.Sync, opts ...Option) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	srv, err := substrate.Start(ctx, substrate.Options{StoreDir: t.TempDir(), Sync: sync})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := substrate.Connect(ctx, srv.ClientURL(), "checkpoint-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	opts = append([]Option{WithLogger(slog.New(slog.DiscardHandler))}, opts...)
	st, err := Open(ctx, js, "", opts...)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, ctx: ctx, js: js, store: st}
}

func (e *env) raw(id SnapshotID) []byte {
	e.t.Helper()
	b, err := e.store.ObjectStore().GetBytes(e.ctx, id.Object())
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *env) putRaw(id SnapshotID, b []byte) {
	e.t.Helper()
	if _, err := e.store.ObjectStore().PutBytes(e.ctx, id.Object(), b); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) put(id SnapshotID, pt []byte, keys *seal.Keyring) Digest {
	e.t.Helper()
	d, err := e.store.Put(e.ctx, id, pt, keys)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// ring returns a keyring holding a fresh checkpoint key (epoch 0) of each job,
// as a worker installs the released key.
func ring(t testing.TB, jobs ...string) *seal.Keyring {
	t.Helper()
	r := seal.NewKeyring()
	for _, j := range jobs {
		if _, err := r.Generate(KeyScope(j), 0); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// pattern returns n bytes of recognizable plaintext.
func pattern(n int, tag string) []byte {
	b := make([]byte, 0, n+64)
	for i := 0; len(b) < n; i++ {
		b = append(b, tag...)
		b = binary.BigEndian.AppendUint32(b, uint32(i))
	}
	return b[:n]
}

func sid(job, task string, ckpt uint64) SnapshotID {
	return SnapshotID{Job: job, Version: 3, Task: task, KeyGroups: state.Range{From: 0, To: 64}, Checkpoint: ckpt}
}

func TestRoundTrip(t *testing.T) {
	e := newEnv(t, substrate.SyncRelaxed, WithChunkSize(MinChunk))
	keys := ring(t, "job")
	for _, n := range []int{0, 1, MinChunk - 1, MinChunk, MinChunk + 1, 5*MinChunk + 17} {
		id := sid("job", "agg", uint64(n)+1)
		pt := pattern(n, "state")
		d := e.put(id, pt, keys)
		if got := sha256.Sum256(e.raw(id)); Digest(got) != d {
			t.Fatalf("%d bytes: Put returned digest %s, the stored object has %x", n, d, got)
		}
		got, err := e.store.Get(e.ctx, id, d, keys)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatalf("%d bytes: got %d bytes back, not the snapshot", n, len(got))
		}
		// The sealed size is the plaintext plus the header and one tag per chunk.
		h, _, err := ParseHeader(e.raw(id))
		if err != nil {
			t.Fatal(err)
		}
		if uint64(len(e.raw(id))) != h.SealedSize() || h.Chunks() != max(1, uint64((n+MinChunk-1)/MinChunk)) {
			t.Fatalf("%d bytes: object of %d bytes, %d chunks; header says %d bytes", n, len(e.raw(id)), h.Chunks(), h.SealedSize())
		}
	}
}

func TestRoundTripLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("64 MB round trip")
	}
	e := newEnv(t, substrate.SyncRelaxed)
	keys := ring(t, "job")
	id := sid("job", "agg", 1)
	pt := pattern(64<<20, "large")
	d := e.put(id, pt, keys)
	got, err := e.store.Get(e.ctx, id, d, keys)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, pt) {
		t.Fatal("the 64 MB snapshot did not come back intact")
	}
}

// TestNoPlaintextInStream scans every message of the object store's raw
// JetStream stream (what the infrastructure stores) for the snapshot's text.
func TestNoPlaintextInStream(t *testing.T) {
	e := newEnv(t, substrate.SyncRelaxed, WithChunkSize(MinChunk))
	keys := ring(t, "job")
	marker := []byte("meter-4711-kwh")
	pt := pattern(20*MinChunk, string(marker))
	e.put(sid("job", "agg", 1), pt, keys)
	st, err := e.js.Stream(e.ctx, "OBJ_"+DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	var scanned int
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(e.ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		scanned += len(m.Data)
		if bytes.Contains(m.Data, marker[:8]) {
			t.Fatalf("message %d on %s holds snapshot plaintext", seq, m.Subject)
		}
	}
	if scanned < len(pt) {
		t.Fatalf("scanned %d bytes of the stream, less than the %d-byte snapshot: the scan missed the object", scanned, len(pt))
	}
	// The scan would have found the plaintext had it been stored in clear.
	e.store.ObjectStore().PutBytes(e.ctx, "clear", pt)
	info, _ = st.Info(e.ctx)
	m, err := st.GetMsg(e.ctx, info.State.LastSeq-1)
	if err != nil || !bytes.Contains(m.Data, marker[:8]) {
		t.Fatalf("control: the clear object's chunk does not contain the marker (%v)", err)
	}
}

func TestGetRefusals(t *testing.T) {
	const chunk = MinChunk
	e := newEnv(t, substrate.SyncRelaxed, WithChunkSize(chunk))
	keys := ring(t, "job", "other-job")
	pt := pattern(4*chunk+100, "secret")
	id := sid("job", "agg", 2)
	sum := func(b []byte) Digest { return sha256.Sum256(b) }

	// Other snapshots an attacker could put in its place.
	stale := sid("job", "agg", 1)
	staleD := e.put(stale, pattern(len(pt), "older!"), keys)
	otherTask := sid("job", "src", 2)
	otherTaskD := e.put(otherTask, pattern(len(pt), "source"), keys)
	otherRange := id
	otherRange.KeyGroups = state.Range{From: 64, To: 128}
	otherRangeD := e.put(otherRange, pt, keys)
	otherVersion := id
	otherVersion.Version = 4
	otherJob := id
	otherJob.Job = "other-job"
	otherJobD := e.put(otherJob, pt, keys)
	otherKey := ring(t, "job") // the same scope and epoch, another secret

	tests := []struct {
		name string
		// mutate changes the store after the genuine Put and returns the
		// digest Get is given (want is the genuine one).
		mutate   func(want Digest) Digest
		keys     *seal.Keyring
		wantRule string
	}{
		{"genuine", func(want Digest) Digest { return want }, keys, ""},
		{"missing", func(want Digest) Digest {
			if err := e.store.Delete(e.ctx, id); err != nil {
				t.Fatal(err)
			}
			return want
		}, keys, RuleMissing},
		{"no recorded digest", func(Digest) Digest { return Digest{} }, keys, RuleDigest},
		{"modified body", func(want Digest) Digest {
			b := e.raw(id)
			b[len(b)-chunk] ^= 1
			e.putRaw(id, b)
			return want
		}, keys, RuleDigest},
		{"modified body, digest forged", func(Digest) Digest {
			b := e.raw(id)
			b[len(b)-chunk] ^= 1
			e.putRaw(id, b)
			return sum(b)
		}, keys, RuleTampered},
		{"modified header salt, digest forged", func(Digest) Digest {
			b := e.raw(id)
			_, n, _ := ParseHeader(b)
			b[n-1] ^= 0x80
			e.putRaw(id, b)
			return sum(b)
		}, keys, RuleTampered},
		{"garbage header, digest forged", func(Digest) Digest {
			b := e.raw(id)
			copy(b, "XXXX")
			e.putRaw(id, b)
			return sum(b)
		}, keys, RuleTampered},
		{"truncated, digest forged", func(Digest) Digest {
			b := e.raw(id)
			b = b[:len(b)-chunk-16]
			e.putRaw(id, b)
			return sum(b)
		}, keys, RuleTampered},
		{"last chunk dropped and length rewritten, digest forged", func(Digest) Digest {
			b := e.raw(id)
			h, n, _ := ParseHeader(b)
			h.Length -= 100 // the last chunk held 100 bytes
			hb, _ := h.AppendBinary(nil)
			b = append(hb, b[n:len(b)-100-16]...)
			e.putRaw(id, b)
			return sum(b)
		}, keys, RuleTampered},
		{"chunks swapped, digest forged", func(Digest) Digest {
			b := e.raw(id)
			_, n, _ := ParseHeader(b)
			c := chunk + 16
			first := bytes.Clone(b[n : n+c])
			copy(b[n:], b[n+c:n+2*c])
			copy(b[n+c:], first)
			e.putRaw(id, b)
			return sum(b)
		}, keys, RuleTampered},
		{"stale", func(want Digest) Digest {
			e.putRaw(id, e.raw(stale))
			return want
		}, keys, RuleDigest},
		{"stale, its digest recorded", func(Digest) Digest {
			e.putRaw(id, e.raw(stale))
			return staleD
		}, keys, RuleForeign},
		{"other task's snapshot", func(want Digest) Digest {
			e.putRaw(id, e.raw(otherTask))
			return want
		}, keys, RuleDigest},
		{"other task's snapshot, its digest recorded", func(Digest) Digest {
			e.putRaw(id, e.raw(otherTask))
			return otherTaskD
		}, keys, RuleForeign},
		{"other key-group range, its digest recorded", func(Digest) Digest {
			e.putRaw(id, e.raw(otherRange))
			return otherRangeD
		}, keys, RuleForeign},
		{"other job's snapshot, its digest recorded", func(Digest) Digest {
			e.putRaw(id, e.raw(otherJob))
			return otherJobD
		}, keys, RuleForeign},
		{"other version, digest forged", func(Digest) Digest {
			// The version is not part of the object name: a version-4 snapshot
			// overwrites the version-3 one.
			d := e.put(otherVersion, pt, keys)
			return d
		}, keys, RuleForeign},
		{"sealed with another key, its digest recorded", func(Digest) Digest {
			return e.put(id, pt, otherKey)
		}, keys, RuleForeign},
		{"key epoch not held", func(want Digest) Digest { return want }, seal.NewKeyring(), RuleKey},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := e.put(id, pt, keys)
			got, err := e.store.Get(e.ctx, id, tc.mutate(want), tc.keys)
			if tc.wantRule == "" {
				if err != nil || !bytes.Equal(got, pt) {
					t.Fatalf("genuine snapshot: err %v, %d bytes", err, len(got))
				}
				return
			}
			if RuleOf(err) != tc.wantRule {
				t.Fatalf("err = %v, want rule %s", err, tc.wantRule)
			}
			var r interface{ RefusedBy() string }
			if !errors.As(err, &r) || r.RefusedBy() != tc.wantRule {
				t.Fatalf("the error does not implement RefusedBy() = %s: %v", tc.wantRule, err)
			}
			if got != nil {
				t.Fatalf("a refused Get returned %d bytes", len(got))
			}
		})
	}
}

func TestPutNeedsKey(t *testing.T) {
	e := newEnv(t, substrate.SyncRelaxed)
	if _, err := e.store.Put(e.ctx, sid("job", "agg", 1), []byte("x"), ring(t, "another")); err == nil {
		t.Fatal("Put sealed without the job's checkpoint key")
	}
	bad := sid("job", "agg", 1)
	bad.KeyGroups = state.Range{From: 5, To: 5}
	if _, err := e.store.Put(e.ctx, bad, []byte("x"), ring(t, "job")); err == nil {
		t.Fatal("Put accepted an empty key-group range")
	}
}

func TestObjectNamesDoNotCollide(t *testing.T) {
	a := SnapshotID{Job: "a", Task: "x/2/y", KeyGroups: state.Range{From: 0, To: 1}, Checkpoint: 1}
	b := SnapshotID{Job: "a/1/x", Task: "y", KeyGroups: state.Range{From: 0, To: 1}, Checkpoint: 2}
	if a.Object() == b.Object() {
		t.Fatalf("two snapshots share the object name %q", a.Object())
	}
}

func TestSealReaderSmallReads(t *testing.T) {
	// obs.Put reads in its own chunk sizes; the sealed stream must not depend on them.
	keys := ring(t, "job")
	k, _ := keys.Current(KeyScope("job"))
	secret, _ := k.Bytes()
	h := Header{ID: sid("job", "agg", 1), ChunkSize: MinChunk, Length: 3*MinChunk + 7, Epoch: 0, KeyID: k.ID()}
	hb, _ := h.AppendBinary(nil)
	aead, err := objectAEAD(secret, h.Salt, hb)
	if err != nil {
		t.Fatal(err)
	}
	pt := pattern(int(h.Length), "x")
	read := func(step int) []byte {
		r := &sealReader{aead: aead, pt: pt, chunk: MinChunk, n: h.Chunks(), out: bytes.Clone(hb), sum: sha256.New()}
		var out []byte
		buf := make([]byte, step)
		for {
			n, err := r.Read(buf)
			out = append(out, buf[:n]...)
			if err == io.EOF {
				return out
			}
		}
	}
	a, b := read(7), read(1<<16)
	if !bytes.Equal(a, b) || uint64(len(a)) != h.SealedSize() {
		t.Fatalf("reads of 7 and 65536 bytes produced %d and %d bytes, want %d equal", len(a), len(b), h.SealedSize())
	}
}

func TestRestoreAllOrNothing(t *testing.T) {
	e := newEnv(t, substrate.SyncRelaxed, WithChunkSize(MinChunk))
	keys := ring(t, "job")
	m := &Manifest{Job: "job", Version: 3, Checkpoint: 5}
	want := map[state.Range][]byte{}
	for _, r := range []state.Range{{From: 0, To: 64}, {From: 64, To: 128}} {
		id := SnapshotID{Job: "job", Version: 3, Task: "agg", KeyGroups: r, Checkpoint: 5}
		want[r] = pattern(3*MinChunk, r.String())
		m.Snapshots = append(m.Snapshots, TaskSnapshot{Task: "agg", KeyGroups: r, Digest: e.put(id, want[r], keys)})
	}
	src := sid("job", "src", 5)
	m.Snapshots = append(m.Snapshots, TaskSnapshot{Task: "src", KeyGroups: src.KeyGroups, Digest: e.put(src, []byte("offsets"), keys)})

	got, err := e.store.Restore(e.ctx, m, "agg", keys)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !bytes.Equal(got[state.Range{From: 0, To: 64}], want[state.Range{From: 0, To: 64}]) || !bytes.Equal(got[state.Range{From: 64, To: 128}], want[state.Range{From: 64, To: 128}]) {
		t.Fatalf("restored %d ranges, not the two snapshots of agg", len(got))
	}
	if _, err := e.store.Restore(e.ctx, m, "sink", keys); err == nil {
		t.Fatal("restoring a task the manifest does not list succeeded")
	}
	// One range replaced: nothing is returned, not even the intact range.
	e.putRaw(m.SnapshotID(1), e.raw(m.SnapshotID(2)))
	got, err = e.store.Restore(e.ctx, m, "agg", keys)
	if RuleOf(err) != RuleDigest || got != nil {
		t.Fatalf("restore with one substituted range: %d ranges, err %v; want none and %s", len(got), err, RuleDigest)
	}
}

func TestPrune(t *testing.T) {
	e := newEnv(t, substrate.SyncRelaxed)
	keys := ring(t, "job", "jo")
	for c := uint64(1); c <= 3; c++ {
		e.put(sid("job", "agg", c), []byte("x"), keys)
		e.put(sid("job", "src", c), []byte("y"), keys)
	}
	e.put(sid("jo", "agg", 1), []byte("z"), keys)
	n, err := e.store.Prune(e.ctx, "job", 3)
	if err != nil || n != 4 {
		t.Fatalf("pruned %d objects (%v), want the 4 of checkpoints 1 and 2", n, err)
	}
	for _, id := range []SnapshotID{sid("job", "agg", 3), sid("job", "src", 3), sid("jo", "agg", 1)} {
		if _, err := e.store.ObjectStore().GetInfo(e.ctx, id.Object()); err != nil {
			t.Fatalf("%s was pruned: %v", id, err)
		}
	}
	if _, err := e.store.ObjectStore().GetInfo(e.ctx, sid("job", "agg", 2).Object()); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("checkpoint 2 survived pruning: %v", err)
	}
	if n, err := e.store.Prune(e.ctx, "job", 3); err != nil || n != 0 {
		t.Fatalf("second prune deleted %d (%v), want 0", n, err)
	}
}

// TestConcurrentTasks has several tasks put and get their snapshots at once
// through one Store (run with -race).
func TestConcurrentTasks(t *testing.T) {
	e := newEnv(t, substrate.SyncRelaxed, WithChunkSize(MinChunk))
	keys := ring(t, "job")
	errs := make(chan error, 4)
	for i := range 4 {
		go func() {
			id := sid("job", fmt.Sprintf("task-%d", i), 1)
			pt := pattern(10*MinChunk+i, id.Task)
			d, err := e.store.Put(e.ctx, id, pt, keys)
			if err == nil {
				var got []byte
				got, err = e.store.Get(e.ctx, id, d, keys)
				if err == nil && !bytes.Equal(got, pt) {
					err = fmt.Errorf("task %d read back another snapshot", i)
				}
			}
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestRawStreamRewritten changes the object's chunk messages in the
// underlying JetStream stream, as whoever runs NATS could, leaving the
// object store's metadata as it was.
func TestRawStreamRewritten(t *testing.T) {
	e := newEnv(t, substrate.SyncRelaxed)
	keys := ring(t, "job")
	id := sid("job", "agg", 1)
	pt := pattern(600<<10, "rewrite")
	want := e.put(id, pt, keys)
	raw := e.raw(id)
	info, err := e.store.ObjectStore().GetInfo(e.ctx, id.Object())
	if err != nil {
		t.Fatal(err)
	}
	st, err := e.js.Stream(e.ctx, "OBJ_"+DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	subj := "$O." + DefaultBucket + ".C." + info.NUID
	if err := st.Purge(e.ctx, jetstream.WithPurgeSubject(subj)); err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0x01
	for off := 0; off < len(raw); off += defaultNATSChunk {
		if _, err := e.js.Publish(e.ctx, subj, raw[off:min(len(raw), off+defaultNATSChunk)]); err != nil {
			t.Fatal(err)
		}
	}
	got, err := e.store.Get(e.ctx, id, want, keys)
	if RuleOf(err) != RuleDigest || got != nil {
		t.Fatalf("rewritten chunks: %d bytes, err %v; want rule %s", len(got), err, RuleDigest)
	}
	// Put back byte for byte, the object is accepted again: the refusal was
	// about the content, not the rewrite.
	raw[len(raw)/2] ^= 0x01
	st.Purge(e.ctx, jetstream.WithPurgeSubject(subj))
	for off := 0; off < len(raw); off += defaultNATSChunk {
		if _, err := e.js.Publish(e.ctx, subj, raw[off:min(len(raw), off+defaultNATSChunk)]); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := e.store.Get(e.ctx, id, want, keys); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("restored chunks: %v", err)
	}
}

// TestWritersDoNotCollide: two runs of a task (a moved task's destination
// and its source, not yet stopped) take a checkpoint of the same id; each
// snapshot lives under its writer's name, so neither overwrites the other,
// and deleting one (a refused acknowledgement) leaves the other readable.
func TestWritersDoNotCollide(t *testing.T) {
	e := newEnv(t, substrate.SyncRelaxed, WithChunkSize(MinChunk))
	keys := ring(t, "job")
	a, b := sid("job", "agg", 7), sid("job", "agg", 7)
	a.Writer, b.Writer = "node-a", "node-b"
	if a.Object() == b.Object() {
		t.Fatal("two writers' snapshots of one checkpoint share an object name")
	}
	da := e.put(a, pattern(1000, "from a"), keys)
	db := e.put(b, pattern(1000, "from b"), keys)
	if err := e.store.Delete(e.ctx, b); err != nil {
		t.Fatal(err)
	}
	got, err := e.store.Get(e.ctx, a, da, keys)
	if err != nil || !bytes.Equal(got, pattern(1000, "from a")) {
		t.Fatalf("writer a's snapshot after writer b's was put and deleted: %v", err)
	}
	if _, err := e.store.Get(e.ctx, b, db, keys); RuleOf(err) != RuleMissing {
		t.Fatalf("the deleted snapshot: %v, want %s", err, RuleMissing)
	}
}
