package runtime

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/exchange"
)

// rewindable returns a source of the n test events (event), split by
// position between subtasks, that registers its position (the next event
// index) and resumes from a restored one. After each batch it calls fail,
// and returns its error if there is one; it sleeps delay between batches.
// After the last event it goes on emitting empty batches while hold (if
// any) reports true.
func rewindable(n int64, fail func() error, hold func() bool, delay time.Duration) Source {
	return func(ctx context.Context, split Split, emit func(*record.Batch) error) error {
		next := int64(split.Subtask)
		if split.Restored != nil {
			if len(split.Restored) != 8 {
				return errors.New("bad restored position")
			}
			next = int64(binary.BigEndian.Uint64(split.Restored))
		}
		if split.SetSnapshotter != nil {
			split.SetSnapshotter(func() ([]byte, error) { return binary.BigEndian.AppendUint64(nil, uint64(next)), nil })
		}
		var b record.Batch
		for next < n {
			b.Records = b.Records[:0]
			for k := 0; k < 64 && next < n; k++ {
				b.Records = append(b.Records, record.Record{})
				event(next, &b.Records[len(b.Records)-1])
				next += int64(split.Parallelism)
			}
			if err := emit(&b); err != nil {
				return err
			}
			if fail != nil {
				if err := fail(); err != nil {
					return err
				}
			}
			if delay > 0 {
				time.Sleep(delay)
			}
		}
		// Where checkpoints are slow (-race on a loaded machine), a test
		// that injects failures after checkpoints holds the end of input
		// until it did, emitting empty batches so barriers still flow.
		for hold != nil && hold() {
			b.Records = b.Records[:0]
			if err := emit(&b); err != nil {
				return err
			}
			if err := fail(); err != nil {
				return err
			}
			time.Sleep(time.Millisecond)
		}
		return nil
	}
}

// txLog is an idempotent CommitSink: it remembers, per sink subtask, the
// last checkpoint and batch index it published, as a JetStream sink does
// with message headers, and drops what it already has.
type txLog struct {
	mu      sync.Mutex
	recs    []record.Record
	last    map[int][2]uint64 // subtask → checkpoint, batches published
	dropped int
	calls   int
}

func (l *txLog) commit(_ context.Context, split Split, ckpt uint64, batches []*record.Batch) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last = map[int][2]uint64{}
	}
	l.calls++
	for i, b := range batches {
		last := l.last[split.Subtask]
		if ckpt < last[0] || ckpt == last[0] && uint64(i) < last[1] {
			l.dropped++
			continue
		}
		for _, r := range b.Records {
			l.recs = append(l.recs, record.Record{Time: r.Time, Values: slices.Clone(r.Values)})
		}
		l.last[split.Subtask] = [2]uint64{ckpt, uint64(i) + 1}
	}
	return nil
}

func (l *txLog) records() []record.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.recs)
}

// persisted keeps the last snapshot a run persisted.
type persisted struct {
	mu   sync.Mutex
	last []byte
	ids  []uint64
}

func (p *persisted) persist(_ context.Context, id uint64, snap []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last, p.ids = slices.Clone(snap), append(p.ids, id)
	return nil
}

func (p *persisted) get() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// trigger sends increasing checkpoint ids every interval until ctx ends.
func trigger(ctx context.Context, next *atomic.Uint64, every time.Duration) <-chan uint64 {
	ch := make(chan uint64)
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				select {
				case ch <- next.Add(1):
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return ch
}

// TestCheckpointRecoveryExactlyOnce runs a keyed window aggregate with
// checkpoints every few milliseconds, fails it twice at random points after
// checkpoints completed, restores each time from the last persisted snapshot,
// and checks that the committed output equals the failure-free result
// exactly: nothing lost, nothing twice.
func TestCheckpointRecoveryExactlyOnce(t *testing.T) {
	const n = 30000
	want := expectWindowed(n)
	for _, tc := range []struct {
		name    string
		par     int
		noChain bool
		nats    bool
	}{
		{"chained/p1", 1, false, false},
		{"chained/p2", 2, false, false},
		{"unchained/p3", 3, true, false},
		{"nats/p2", 2, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				out   txLog
				store persisted
			)
			var tr exchange.Transport
			if tc.nats {
				tr = natsTransport(t, 4)
			}
			runFailingTwice(t, windowedSpec(tc.par), n, &out, &store, nil, Options{Transport: tr, DisableChaining: tc.noChain})
			if got := rows(out.records()); !slices.Equal(got, want) {
				t.Fatalf("committed output differs from the failure-free result: %d rows, want %d (%d commits dropped as already published)", len(got), len(want), out.dropped)
			}
			if out.dropped == 0 {
				t.Logf("no re-commit was needed (failures fell after commits)")
			}
		})
	}
}

// runFailingTwice runs spec over a rewindable source of n events (wrapped by
// wrap, if not nil) with checkpoints every 3 ms persisted in store and
// output committed to out, and opts' other options. It fails the first two
// attempts once two of their checkpoints completed, restores each next
// attempt from store, and returns the third attempt's result; the test
// fails unless exactly two failures were injected.
func runFailingTwice(t *testing.T, spec *jobspec.Spec, n int64, out *txLog, store *persisted, wrap func(Source) Source, opts Options) *Result {
	t.Helper()
	var ids atomic.Uint64
	failures := 0
	for attempt := 0; ; attempt++ {
		if attempt > 5 {
			t.Fatal("no successful run after 5 attempts")
		}
		var completed atomic.Int32
		var failed atomic.Bool
		fail := func() error {
			// Fail the first two attempts once two checkpoints of the
			// attempt completed.
			if failures < 2 && completed.Load() >= 2 && failed.CompareAndSwap(false, true) {
				return errors.New("injected failure")
			}
			return nil
		}
		src := rewindable(n, fail, func() bool { return failures < 2 && !failed.Load() }, 200*time.Microsecond)
		if wrap != nil {
			src = wrap(src)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		o := opts
		o.Sources = map[string]Source{"events": src}
		o.CommitSinks = map[string]CommitSink{"results": out.commit}
		o.Checkpoint = &Checkpointing{
			Trigger:    trigger(ctx, &ids, 3*time.Millisecond),
			Persist:    store.persist,
			Restore:    store.get(),
			OnComplete: func(uint64, int, time.Duration) { completed.Add(1) },
		}
		o.BatchSize = 64
		res, err := Run(ctx, spec, o)
		cancel()
		if err == nil {
			if failures != 2 {
				t.Fatalf("%d failures injected, want 2 (checkpoints completed too late?)", failures)
			}
			return res
		}
		if !strings.Contains(err.Error(), "injected failure") {
			t.Fatalf("attempt %d: %v", attempt, err)
		}
		failures++
	}
}

// TestCheckpointOutputWaitsForPersist shows that a sink commits nothing
// before a checkpoint covering it is persisted: with a Persist that always
// fails, every checkpoint is declined and all the output arrives only with
// the final checkpoint, after the run's input ended... which also fails to
// persist, so nothing at all is committed.
func TestCheckpointOutputWaitsForPersist(t *testing.T) {
	var out txLog
	var ids atomic.Uint64
	var declined atomic.Int32
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := Run(ctx, windowedSpec(2), Options{
		Sources:     map[string]Source{"events": rewindable(5000, nil, nil, 100*time.Microsecond)},
		CommitSinks: map[string]CommitSink{"results": out.commit},
		Checkpoint: &Checkpointing{
			Trigger:   trigger(ctx, &ids, 2*time.Millisecond),
			Persist:   func(context.Context, uint64, []byte) error { return errors.New("store unavailable") },
			OnDecline: func(uint64, error) { declined.Add(1) },
		},
	})
	if err == nil || !strings.Contains(err.Error(), "store unavailable") {
		t.Fatalf("Run = %v, want the final checkpoint's persist error", err)
	}
	if declined.Load() == 0 {
		t.Fatal("no checkpoint was declined")
	}
	if got := len(out.records()); got != 0 {
		t.Fatalf("%d records committed without a persisted checkpoint", got)
	}
}

// TestCheckpointAlignmentLimitDeclines sets an alignment limit no
// multi-input subtask can meet: those checkpoints are declined, and the
// output is still exact (committed with the final checkpoint).
func TestCheckpointAlignmentLimitDeclines(t *testing.T) {
	const n = 20000
	var (
		out      txLog
		store    persisted
		ids      atomic.Uint64
		declined atomic.Int32
		lastErr  atomic.Value
	)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := Run(ctx, windowedSpec(3), Options{
		Sources:     map[string]Source{"events": rewindable(n, nil, nil, 100*time.Microsecond)},
		CommitSinks: map[string]CommitSink{"results": out.commit},
		BatchSize:   32,
		Checkpoint: &Checkpointing{
			Trigger:        trigger(ctx, &ids, 2*time.Millisecond),
			Persist:        store.persist,
			AlignmentLimit: 1,
			OnDecline: func(_ uint64, err error) {
				declined.Add(1)
				lastErr.Store(err.Error())
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if declined.Load() == 0 {
		t.Fatal("no checkpoint was declined under a 1-byte alignment limit")
	}
	if msg, _ := lastErr.Load().(string); !strings.Contains(msg, "alignment limit") {
		t.Fatalf("decline reason %q does not name the alignment limit", msg)
	}
	if got, want := rows(out.records()), expectWindowed(n); !slices.Equal(got, want) {
		t.Fatalf("output differs: %d rows, want %d", len(got), len(want))
	}
}

// TestCheckpointRestoreFinished restores the final checkpoint of a finished
// run: the run only commits the pending output again (which the sink drops)
// and reads nothing.
func TestCheckpointRestoreFinished(t *testing.T) {
	const n = 3000
	var out txLog
	var store persisted
	ctx := context.Background()
	_, err := Run(ctx, windowedSpec(2), Options{
		Sources:     map[string]Source{"events": rewindable(n, nil, nil, 0)},
		CommitSinks: map[string]CommitSink{"results": out.commit},
		Checkpoint:  &Checkpointing{Persist: store.persist},
	})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := DecodeSnapshot(store.get())
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Finished {
		t.Fatal("the last persisted snapshot of a finished run is not marked finished")
	}
	before := len(out.records())
	calls := out.calls
	read := false
	_, err = Run(ctx, windowedSpec(2), Options{
		Sources: map[string]Source{"events": func(context.Context, Split, func(*record.Batch) error) error {
			read = true
			return nil
		}},
		CommitSinks: map[string]CommitSink{"results": out.commit},
		Checkpoint:  &Checkpointing{Persist: store.persist, Restore: store.get()},
	})
	if err != nil {
		t.Fatal(err)
	}
	if read {
		t.Fatal("a run restored from a finished checkpoint read its source")
	}
	if out.calls == calls {
		t.Fatal("the restored run did not commit the pending output again")
	}
	if got := len(out.records()); got != before {
		t.Fatalf("re-committing added %d records", got-before)
	}
	if got, want := rows(out.records()), expectWindowed(n); !slices.Equal(got, want) {
		t.Fatalf("output differs: %d rows, want %d", len(got), len(want))
	}
}

// TestCheckpointSourceWithoutSnapshotter declines every checkpoint of a run
// whose source cannot be rewound, naming it.
func TestCheckpointSourceWithoutSnapshotter(t *testing.T) {
	var out txLog
	var ids atomic.Uint64
	var msg atomic.Value
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var recs []record.Record
	for i := range int64(2000) {
		var r record.Record
		event(i, &r)
		recs = append(recs, r)
	}
	slow := SliceSource(recs, 16)
	_, err := Run(ctx, windowedSpec(1), Options{
		Sources: map[string]Source{"events": func(ctx context.Context, sp Split, emit func(*record.Batch) error) error {
			return slow(ctx, sp, func(b *record.Batch) error {
				time.Sleep(200 * time.Microsecond)
				return emit(b)
			})
		}},
		CommitSinks: map[string]CommitSink{"results": out.commit},
		Checkpoint: &Checkpointing{
			Trigger:   trigger(ctx, &ids, 2*time.Millisecond),
			Persist:   func(context.Context, uint64, []byte) error { return nil },
			OnDecline: func(_ uint64, err error) { msg.Store(err.Error()) },
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := msg.Load().(string); !strings.Contains(m, "cannot be rewound") {
		t.Fatalf("decline reason = %q, want one naming the source that cannot be rewound", m)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	s := &Snapshot{ID: 7, Finished: true, Parts: []SubtaskSnapshot{
		{Node: "src", Subtask: 1, Parallelism: 2, Source: []byte{1, 2}, Done: true},
		{Node: "agg", Subtask: 0, Parallelism: 1, Ops: []OperatorSnapshot{{Node: "agg", KeyGroups: state.Range{From: 0, To: 32}, Data: []byte("x")}},
			Sinks: []SinkPending{{Node: "out", Epochs: []Epoch{{ID: 6, Batches: 1, Data: []byte{0}}}}}},
	}}
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeSnapshot(b)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := got.MarshalBinary()
	if !bytes.Equal(again, b) {
		t.Fatal("snapshot does not round-trip")
	}
	for _, cut := range []int{0, 3, len(b) - 1} {
		if _, err := DecodeSnapshot(b[:cut]); err == nil {
			t.Fatalf("a snapshot cut at %d bytes decodes", cut)
		}
	}
}

func FuzzDecodeSnapshot(f *testing.F) {
	s := &Snapshot{ID: 3, Parts: []SubtaskSnapshot{{Node: "a", Subtask: 0, Parallelism: 1, Source: []byte{9},
		Ops:   []OperatorSnapshot{{Node: "b", KeyGroups: state.Range{From: 1, To: 4}, Data: []byte("d")}},
		Sinks: []SinkPending{{Node: "c", Epochs: []Epoch{{ID: 2, Batches: 0}}}}}}}
	b, _ := s.MarshalBinary()
	f.Add(b)
	f.Add([]byte(snapshotMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		snap, err := DecodeSnapshot(data)
		if err != nil {
			if !errors.Is(err, errBadSnapshot) {
				t.Fatalf("error %v does not wrap errBadSnapshot", err)
			}
			return
		}
		again, err := snap.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeSnapshot(again); err != nil {
			t.Fatalf("re-encoded snapshot does not decode: %v", err)
		}
	})
}

// TestCheckpointCommitCutShort fails a commit after it published part of a
// checkpoint's output (as a crash between two publishes would): the run
// fails, the next run restores the checkpoint, commits its output again and
// the sink drops the part it already has, so the output is exact.
func TestCheckpointCommitCutShort(t *testing.T) {
	const n = 20000
	var (
		out   txLog
		store persisted
		ids   atomic.Uint64
		cut   atomic.Bool
	)
	// After the first commit of more than one batch, publish only its first
	// batch and fail.
	commit := func(ctx context.Context, split Split, ckpt uint64, batches []*record.Batch) error {
		if len(batches) > 1 && cut.CompareAndSwap(false, true) {
			if err := out.commit(ctx, split, ckpt, batches[:1]); err != nil {
				return err
			}
			return errors.New("connection lost while publishing")
		}
		return out.commit(ctx, split, ckpt, batches)
	}
	for attempt := 0; ; attempt++ {
		if attempt > 3 {
			t.Fatal("no successful run after 3 attempts")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := Run(ctx, windowedSpec(2), Options{
			Sources:     map[string]Source{"events": rewindable(n, nil, nil, 100*time.Microsecond)},
			CommitSinks: map[string]CommitSink{"results": commit},
			BatchSize:   16,
			Checkpoint:  &Checkpointing{Trigger: trigger(ctx, &ids, 3*time.Millisecond), Persist: store.persist, Restore: store.get()},
		})
		cancel()
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "connection lost") {
			t.Fatal(err)
		}
	}
	if !cut.Load() {
		t.Fatal("no commit was cut short")
	}
	if out.dropped == 0 {
		t.Fatal("the restored run dropped nothing: the cut commit was not re-committed")
	}
	if got, want := rows(out.records()), expectWindowed(n); !slices.Equal(got, want) {
		t.Fatalf("output differs: %d rows, want %d", len(got), len(want))
	}
}

// TestCheckpointRescalesKeyedOperator restores a failed run with its window
// operator at another parallelism (2 → 3 → 1; sources and sinks keep
// theirs): each subtask takes the key groups it now owns from every old
// subtask's snapshot, and the output is exact.
func TestCheckpointRescalesKeyedOperator(t *testing.T) {
	const n = 30000
	var (
		out   txLog
		store persisted
		ids   atomic.Uint64
	)
	withAgg := func(p int) *jobspec.Spec {
		s := windowedSpec(2)
		for i := range s.Nodes {
			if s.Nodes[i].ID == "agg" {
				s.Nodes[i].Parallelism = p
			}
		}
		return s
	}
	for attempt, p := range []int{2, 3, 1} {
		var completed atomic.Int32
		var failed atomic.Bool
		fail := func() error {
			if attempt < 2 && completed.Load() >= 2 && failed.CompareAndSwap(false, true) {
				return errors.New("injected failure")
			}
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		_, err := Run(ctx, withAgg(p), Options{
			Sources:     map[string]Source{"events": rewindable(n, fail, func() bool { return attempt < 2 && !failed.Load() }, 200*time.Microsecond)},
			CommitSinks: map[string]CommitSink{"results": out.commit},
			BatchSize:   64,
			Checkpoint: &Checkpointing{Trigger: trigger(ctx, &ids, 3*time.Millisecond), Persist: store.persist, Restore: store.get(),
				OnComplete: func(uint64, int, time.Duration) { completed.Add(1) }},
		})
		cancel()
		switch {
		case attempt < 2 && (err == nil || !strings.Contains(err.Error(), "injected failure")):
			t.Fatalf("attempt %d at parallelism %d: %v, want the injected failure", attempt, p, err)
		case attempt == 2 && err != nil:
			t.Fatalf("last attempt at parallelism %d: %v", p, err)
		}
	}
	if got, want := rows(out.records()), expectWindowed(n); !slices.Equal(got, want) {
		t.Fatalf("output across rescales differs: %d rows, want %d", len(got), len(want))
	}
}
