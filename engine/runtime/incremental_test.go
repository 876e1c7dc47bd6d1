package runtime

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/checkpoint"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/substrate"
)

// incStore persists a run's snapshots as the worker does: sealed into a
// checkpoint store on NATS, each incrementally on the last one persisted (or
// restored), and reads the last one back with GetSnapshot.
type incStore struct {
	st   *checkpoint.Store
	keys *seal.Keyring

	mu      sync.Mutex
	fresh   bool // restored, and not checkpointed since: do not compact
	base    *checkpoint.Index
	digest  checkpoint.Digest
	written map[uint64][2]uint64 // checkpoint -> bytes written, snapshot bytes
}

func newIncStore(t *testing.T) *incStore {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv, err := substrate.Start(ctx, substrate.Options{StoreDir: t.TempDir(), Sync: substrate.SyncRelaxed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := substrate.Connect(ctx, srv.ClientURL(), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := checkpoint.Open(ctx, js, "")
	if err != nil {
		t.Fatal(err)
	}
	keys := seal.NewKeyring()
	if _, err := keys.Generate(checkpoint.KeyScope("job"), 0); err != nil {
		t.Fatal(err)
	}
	return &incStore{st: st, keys: keys, written: map[uint64][2]uint64{}}
}

func incID(id uint64) checkpoint.SnapshotID {
	return checkpoint.SnapshotID{Job: "job", Version: 1, Task: "t", KeyGroups: state.Range{From: 0, To: 32}, Checkpoint: id, Writer: "n1"}
}

func (s *incStore) persist(ctx context.Context, id uint64, snap []byte) error {
	s.mu.Lock()
	base, fresh := s.base, s.fresh
	s.mu.Unlock()
	d, x, err := s.st.PutIncremental(ctx, incID(id), snap, s.keys, base, !fresh)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.base, s.digest, s.fresh = x, d, false
	s.written[id] = [2]uint64{x.Written(), uint64(len(snap))}
	return nil
}

// restore reads the last snapshot persisted, nil if none.
func (s *incStore) restore(ctx context.Context) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.base == nil {
		return nil, nil
	}
	data, x, err := s.st.GetSnapshot(ctx, s.base.ID, s.digest, s.keys)
	if err != nil {
		return nil, err
	}
	s.base, s.fresh = x, true
	return data, nil
}

// paced returns a source of test events with id i and key i % keys: the
// first fast events at once, then the rest in batches of 4, every 2 ms.
// Its position is the next event index; after each batch it calls fail with
// it. Once every event is out it keeps emitting empty batches every 2 ms
// (so barriers are still injected) while hold reports true.
func paced(n, fast, keys int64, fail func(next int64) error, hold func() bool) Source {
	return func(ctx context.Context, split Split, emit func(*record.Batch) error) error {
		next := int64(0)
		if split.Restored != nil {
			next = int64(binary.BigEndian.Uint64(split.Restored))
		}
		split.SetSnapshotter(func() ([]byte, error) { return binary.BigEndian.AppendUint64(nil, uint64(next)), nil })
		var b record.Batch
		for next < n {
			size := int64(256)
			if next >= fast {
				size = 4
				time.Sleep(2 * time.Millisecond)
			}
			b.Records = b.Records[:0]
			for k := int64(0); k < size && next < n; k++ {
				b.Records = append(b.Records, record.Record{Values: []record.Value{record.Int(next), record.Int(next % keys), record.Int(next % 100), record.Int(1000)}})
				next++
			}
			if err := emit(&b); err != nil {
				return err
			}
			if err := fail(next); err != nil {
				return err
			}
		}
		var empty record.Batch
		for hold() {
			time.Sleep(2 * time.Millisecond)
			if err := emit(&empty); err != nil {
				return err
			}
			if err := fail(next); err != nil {
				return err
			}
		}
		return nil
	}
}

// TestCheckpointIncrementalRestore runs a keyed aggregate whose state (one
// accumulator per key, tens of thousands of keys) is built at once and then
// changes slowly, persisting every checkpoint incrementally into a sealed
// checkpoint store on NATS. The run fails twice; each restore reads an
// incremental snapshot back (GetSnapshot), and the restored run's first
// checkpoint writes only a small part of its state. The output (emitted at
// the end) equals the failure-free result.
func TestCheckpointIncrementalRestore(t *testing.T) {
	const (
		n, fast, keys = 40_600, 40_000, 30_000
	)
	spec := &jobspec.Spec{
		Name: "running", Parallelism: 1, MaxParallelism: 32,
		Schemas: map[string][]jobspec.Field{"ev": eventsSchema},
		Nodes: []jobspec.Node{
			{ID: "src", Kind: jobspec.KindSource, Params: jobspec.Params{Stream: "events", Schema: "ev", TimeField: "ts"}},
			{ID: "byk", Kind: jobspec.KindKeyBy, Inputs: []string{"src"}, Params: jobspec.Params{Keys: []string{"k"}}},
			{ID: "agg", Kind: jobspec.KindWindowAggregate, Inputs: []string{"byk"}, Params: jobspec.Params{
				Window:     &jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 1 << 40},
				Aggregates: []jobspec.Aggregate{{Fn: jobspec.AggCount, As: "n"}, {Fn: jobspec.AggSum, Field: "v", As: "total"}}}},
			{ID: "out", Kind: jobspec.KindSink, Inputs: []string{"agg"}, Params: jobspec.Params{Stream: "results"}},
		},
	}
	var want []string
	{
		type acc struct{ n, total int64 }
		m := map[int64]*acc{}
		for i := range int64(n) {
			if m[i%keys] == nil {
				m[i%keys] = &acc{}
			}
			m[i%keys].n++
			m[i%keys].total += i % 100
		}
		for k, a := range m {
			want = append(want, fmt.Sprintf("%d 0 %d %d %d", k, int64(1)<<40, a.n, a.total))
		}
		sort.Strings(want)
	}
	store := newIncStore(t)

	var (
		out      txLog
		ids      atomic.Uint64
		restores []uint64 // checkpoint restored from, per restored attempt
		firsts   []uint64 // the first checkpoint of each restored attempt
	)
	for attempt := 0; ; attempt++ {
		if attempt > 4 {
			t.Fatal("no successful run after 4 attempts")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		restoreData, err := store.restore(ctx)
		if err != nil {
			cancel()
			t.Fatalf("attempt %d: restoring: %v", attempt, err)
		}
		if restoreData != nil {
			restores = append(restores, store.base.ID.Checkpoint)
		}
		var slow, failed atomic.Bool
		var completed atomic.Int32 // in the slow part
		var first atomic.Uint64
		// Fail the first two attempts in the slow part, after checkpoints
		// completed there (the restore point has all the keys); where
		// checkpoints are slow (-race, a loaded machine) the source holds
		// its end until they did (hold, below).
		fail := func(next int64) error {
			if next >= fast {
				slow.Store(true)
			}
			if attempt < 2 && next >= fast+100*int64(attempt+1) && completed.Load() >= 2 && failed.CompareAndSwap(false, true) {
				return errors.New("injected failure")
			}
			return nil
		}
		// A restored run also holds its end until its first checkpoint
		// completed, so that checkpoint is not the final one, which holds
		// the fired windows' output rather than the restored state.
		hold := func() bool {
			return (attempt < 2 && !failed.Load()) || (restoreData != nil && first.Load() == 0)
		}
		_, err = Run(ctx, spec, Options{
			Sources:     map[string]Source{"events": paced(n, fast, keys, fail, hold)},
			CommitSinks: map[string]CommitSink{"results": out.commit},
			BatchSize:   256,
			Checkpoint: &Checkpointing{
				Trigger: trigger(ctx, &ids, 5*time.Millisecond),
				Persist: store.persist,
				Restore: restoreData,
				OnComplete: func(id uint64, _ int, _ time.Duration) {
					first.CompareAndSwap(0, id)
					if slow.Load() {
						completed.Add(1)
					}
				},
			},
		})
		cancel()
		if restoreData != nil {
			firsts = append(firsts, first.Load())
		}
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "injected failure") {
			t.Fatalf("attempt %d: %v", attempt, err)
		}
	}
	if len(restores) < 2 {
		t.Fatalf("restored %d times, want 2 (restores from checkpoints %v)", len(restores), restores)
	}
	if got := rows(out.records()); !slices.Equal(got, want) {
		t.Fatalf("committed output differs from the failure-free result: %d rows, want %d", len(got), len(want))
	}
	// The restored runs' first checkpoints wrote a small part of the state.
	for i, id := range firsts[:2] {
		w := store.written[id]
		if id == 0 || w[1] < 500<<10 || w[0]*4 > w[1] {
			t.Fatalf("restored attempt %d: first checkpoint %d wrote %d of %d bytes, want under a quarter of a state of at least 500 KiB", i+1, id, w[0], w[1])
		}
		t.Logf("restored from checkpoint %d; first checkpoint %d wrote %d of %d bytes", restores[i], id, w[0], w[1])
	}
}
