package confidential

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/seal"
)

func TestPositionsEncoding(t *testing.T) {
	for _, tc := range []struct {
		name string
		pos  map[uint32]Position
		enc  []byte
	}{
		{"none", map[uint32]Position{}, []byte{1, 0}},
		{"one ended", map[uint32]Position{3: {StreamSeq: 7, Next: 2, Ended: true}}, []byte{1, 1, 3, 7, 2, 1}},
		{"sorted by partition", map[uint32]Position{MaxPartitions - 1: {StreamSeq: 1 << 40, Next: 300}, 0: {StreamSeq: 1, Next: 1}},
			[]byte{1, 2, 0, 1, 1, 0, 0xff, 0xff, 3, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0xac, 0x02, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := MarshalPositions(tc.pos)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, tc.enc) {
				t.Errorf("MarshalPositions = %x, want %x", b, tc.enc)
			}
			got, err := UnmarshalPositions(b)
			if err != nil || !maps.Equal(got, tc.pos) {
				t.Errorf("UnmarshalPositions = %v, %v; want %v", got, err, tc.pos)
			}
		})
	}
	for _, pos := range []map[uint32]Position{
		{MaxPartitions: {StreamSeq: 1, Next: 1}},
		{0: {StreamSeq: 0, Next: 1}},
		{0: {StreamSeq: 1, Next: 0}},
	} {
		if b, err := MarshalPositions(pos); err == nil {
			t.Errorf("MarshalPositions(%v) = %x, want an error", pos, b)
		}
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"other version", []byte{2, 0}},
		{"no count", []byte{1}},
		{"non-minimal count", []byte{1, 0x80, 0}},
		{"count beyond the input", []byte{1, 2, 0, 1, 1, 0}},
		{"truncated entry", []byte{1, 1, 0, 1, 1}},
		{"unknown flag", []byte{1, 1, 0, 1, 1, 2}},
		{"repeated partition", []byte{1, 2, 0, 1, 1, 0, 0, 1, 1, 0}},
		{"decreasing partitions", []byte{1, 2, 1, 1, 1, 0, 0, 1, 1, 0}},
		{"partition too large", []byte{1, 1, 0x80, 0x80, 4, 1, 1, 0}},
		{"zero stream sequence", []byte{1, 1, 0, 0, 1, 0}},
		{"zero next", []byte{1, 1, 0, 1, 0, 0}},
		{"non-minimal sequence", []byte{1, 1, 0, 0x81, 0, 1, 0}},
		{"trailing byte", []byte{1, 1, 0, 1, 1, 0, 0}},
	} {
		if pos, err := UnmarshalPositions(tc.b); err == nil {
			t.Errorf("%s: UnmarshalPositions(%x) = %v, want an error", tc.name, tc.b, pos)
		}
	}
}

// FuzzUnmarshalPositions checks that UnmarshalPositions never panics and
// accepts only canonical encodings: what it accepts encodes back to the same
// bytes.
func FuzzUnmarshalPositions(f *testing.F) {
	for _, pos := range []map[uint32]Position{
		{},
		{0: {StreamSeq: 1, Next: 1}},
		{2: {StreamSeq: 9, Next: 4, Ended: true}, 4: {StreamSeq: 1 << 63, Next: 1 << 33}},
	} {
		b, err := MarshalPositions(pos)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		pos, err := UnmarshalPositions(b)
		if err != nil {
			if !errors.Is(err, errPositions) {
				t.Fatalf("error %v does not wrap errPositions", err)
			}
			return
		}
		again, err := MarshalPositions(pos)
		if err != nil {
			t.Fatalf("accepted %x as %v, which does not encode: %v", b, pos, err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("accepted %x as %v, which encodes as %x", b, pos, again)
		}
	})
}

// errCrash stops a source run the way a failure would.
var errCrash = errors.New("test: subtask crashed")

// snapshotRun runs subtask sub of p of a new IngestSource over stream id the
// way a checkpointed runtime does: emit calls the registered snapshotter
// after processing the stopAt-th batch with records, and the run then fails
// (as if the task was killed after the checkpoint). With stopAt 0 the run
// goes to its end and the snapshot is taken after it (the final checkpoint).
// It returns the event times emitted up to the snapshot and the snapshot.
func snapshotRun(ctx context.Context, t *testing.T, src *IngestSource, sub, p int, restored []byte, stopAt int) ([]int64, []byte) {
	t.Helper()
	var snap runtime.SourceSnapshotter
	split := runtime.Split{Node: "src", Subtask: sub, Parallelism: p, Schema: meterSchema, Restored: restored,
		SetSnapshotter: func(f runtime.SourceSnapshotter) { snap = f }}
	var got []int64
	var pos []byte
	n := 0
	err := src.Source()(ctx, split, func(b *record.Batch) error {
		if snap == nil {
			t.Fatal("emit called before a snapshotter was registered")
		}
		for _, r := range b.Records {
			got = append(got, r.Time)
		}
		if b.Len() == 0 {
			return nil
		}
		if n++; n == stopAt {
			var err error
			if pos, err = snap(); err != nil {
				t.Fatal(err)
			}
			return errCrash
		}
		return nil
	})
	switch {
	case stopAt > 0 && !errors.Is(err, errCrash):
		t.Fatalf("subtask %d: %v after %d batches, want to stop after batch %d", sub, err, n, stopAt)
	case stopAt == 0 && err != nil:
		t.Fatalf("subtask %d: %v", sub, err)
	case stopAt == 0:
		if snap == nil {
			t.Fatal("no snapshotter registered")
		}
		if pos, err = snap(); err != nil {
			t.Fatal(err)
		}
	}
	return got, pos
}

// TestIngestSourceSnapshotRestore reads a 3-partition stream with two
// subtasks, takes a snapshot inside emit at different batches, restores a
// new source from it and checks that both reads together emit every record
// exactly once, and that partitions which ended before the snapshot are not
// waited for after the restore.
func TestIngestSourceSnapshotRestore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, _, js := startNATS(t)
	keys := seal.NewKeyring()
	if _, err := keys.Generate("snap", 1); err != nil {
		t.Fatal(err)
	}
	pub, err := NewPublisher(ctx, js, "snap", meterSchema, keys, 3)
	if err != nil {
		t.Fatal(err)
	}
	// Partition 0 has 3 frames and ends first; partitions 1 and 2 have 6
	// frames each, interleaved. Subtask 0 of 2 reads partitions 0 and 2.
	all := map[int][]int64{}
	publish := func(part uint32, i int) {
		rs := []record.Record{meterReading(i), meterReading(i + 1)}
		if err := pub.Publish(ctx, part, batchOf(rs...)); err != nil {
			t.Fatal(err)
		}
		sub := int(part) % 2
		all[sub] = append(all[sub], rs[0].Time, rs[1].Time)
	}
	for i := range 3 {
		publish(0, i*2)
	}
	if err := pub.w.write(ctx, 0, &record.Batch{}, true); err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		publish(1, 100+i*2)
		publish(2, 200+i*2)
	}
	if err := pub.Close(ctx); err != nil {
		t.Fatal(err)
	}
	opts := []Option{WithEndTimeout(3 * time.Second)}
	for _, tc := range []struct {
		sub, stopAt int
		// ended are the partitions the snapshot must record as ended.
		ended []uint32
	}{
		{0, 1, nil},
		{0, 3, nil},         // partition 0's last frame not read yet
		{0, 4, []uint32{0}}, // read before partition 2's first frame
		{0, 8, []uint32{0}},
		{0, 9, []uint32{0}}, // every batch read; partition 2's last frame not yet
		{0, 0, []uint32{0, 2}},
		{1, 2, nil},
		{1, 0, []uint32{1}},
	} {
		src, err := NewIngestSource(js, "snap", 3, keys, opts...)
		if err != nil {
			t.Fatal(err)
		}
		first, pos := snapshotRun(ctx, t, src, tc.sub, 2, nil, tc.stopAt)
		dec, err := UnmarshalPositions(pos)
		if err != nil {
			t.Fatalf("subtask %d stopped at %d: snapshot %x: %v", tc.sub, tc.stopAt, pos, err)
		}
		var ended []uint32
		for p, ps := range dec {
			if ps.Ended {
				ended = append(ended, p)
			}
		}
		slices.Sort(ended)
		if !slices.Equal(ended, tc.ended) {
			t.Errorf("subtask %d stopped at %d: snapshot %v has partitions %v ended, want %v", tc.sub, tc.stopAt, dec, ended, tc.ended)
		}
		restoredSrc, err := NewIngestSource(js, "snap", 3, keys, opts...)
		if err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		second, _ := snapshotRun(ctx, t, restoredSrc, tc.sub, 2, pos, 0)
		took := time.Since(began)
		if got, want := slices.Sorted(slices.Values(slices.Concat(first, second))), slices.Sorted(slices.Values(all[tc.sub])); !slices.Equal(got, want) {
			t.Errorf("subtask %d stopped at %d: the reads before (%d records) and after the restore (%d) emitted\n%v\nwant every record of its partitions once\n%v",
				tc.sub, tc.stopAt, len(first), len(second), got, want)
		}
		if tc.stopAt == 0 && (len(second) > 0 || took > time.Second) {
			t.Errorf("subtask %d restored after its partitions ended: emitted %d records and took %v, want none at once", tc.sub, len(second), took)
		}
		if got := restoredSrc.Positions(); tc.stopAt == 0 && !maps.Equal(got, mustPositions(t, pos)) {
			t.Errorf("Positions after a restore at the end = %v, want the restored %v", got, mustPositions(t, pos))
		}
	}
}

func mustPositions(t *testing.T, b []byte) map[uint32]Position {
	t.Helper()
	pos, err := UnmarshalPositions(b)
	if err != nil {
		t.Fatal(err)
	}
	return pos
}

// TestIngestSourceRefusesRestoredPositions checks that a subtask refuses a
// restored position that is malformed or names a partition it does not read
// (another subtask's, after a change of parallelism).
func TestIngestSourceRefusesRestoredPositions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, _, js := startNATS(t)
	keys := seal.NewKeyring()
	if _, err := keys.Generate("snap-bad", 1); err != nil {
		t.Fatal(err)
	}
	if err := EnsureIngestStream(ctx, js, "snap-bad"); err != nil {
		t.Fatal(err)
	}
	foreign, err := MarshalPositions(map[uint32]Position{1: {StreamSeq: 1, Next: 1}})
	if err != nil {
		t.Fatal(err)
	}
	beyond, err := MarshalPositions(map[uint32]Position{4: {StreamSeq: 1, Next: 1}})
	if err != nil {
		t.Fatal(err)
	}
	for name, restored := range map[string][]byte{
		"malformed":                   {1, 1},
		"another subtask's partition": foreign,
		"beyond the stream":           beyond,
	} {
		src, err := NewIngestSource(js, "snap-bad", 3, keys, WithEndTimeout(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		split := runtime.Split{Subtask: 0, Parallelism: 2, Schema: meterSchema, Restored: restored}
		err = src.Source()(ctx, split, func(*record.Batch) error { return nil })
		if err == nil || seal.ReasonOf(err) == seal.ReasonTruncated {
			t.Errorf("%s: restoring from %x: %v, want a refusal", name, restored, err)
		}
	}
}
