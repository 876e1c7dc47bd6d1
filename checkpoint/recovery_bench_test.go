package checkpoint_test

// Benchmarks of checkpoints and recovery for issue #5, end to end: the
// engine's aligned checkpoints of a running job, sealed into a JetStream
// object store of an embedded NATS server (checkpoint.Store, a generated
// checkpoint key), and restored from it. Results and commands are in
// docs/benchmarks.md, "Checkpoints and recovery".
//
//	go test -run '^$' -bench 'Checkpoint$' -benchtime 5x -timeout 30m ./checkpoint
//	go test -run '^$' -bench 'Recovery$' -benchtime 5x -timeout 30m ./checkpoint
//	go test -run '^$' -bench 'CheckpointThroughput$' -benchtime 1x -timeout 30m ./checkpoint

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/checkpoint"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/nexmark"
	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/substrate"
)

// benchJob is the job id the benchmarks' snapshots are sealed for.
const benchJob = "bench-job"

// joinMaxPar is the benchmark join's number of key groups.
const joinMaxPar = 128

// padBytes is the size of the string each build row of the join carries: the
// state is about padBytes per build row.
const padBytes = 1000

// benchEnv is an embedded NATS JetStream server on loopback, a checkpoint
// store in it and a keyring with a generated checkpoint key for benchJob.
type benchEnv struct {
	store *checkpoint.Store
	keys  *seal.Keyring
}

func newBenchEnv(tb testing.TB, sync substrate.Sync) *benchEnv {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := substrate.Start(ctx, substrate.Options{StoreDir: tb.TempDir(), Sync: sync})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(srv.Shutdown)
	nc, err := substrate.Connect(ctx, srv.ClientURL(), "checkpoint-bench")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	st, err := checkpoint.Open(ctx, js, "", checkpoint.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		tb.Fatal(err)
	}
	keys := seal.NewKeyring()
	if _, err := keys.Generate(checkpoint.KeyScope(benchJob), 0); err != nil {
		tb.Fatal(err)
	}
	return &benchEnv{store: st, keys: keys}
}

// benchSnapshotID names the snapshot of checkpoint id: the benchmarks persist
// a run's whole snapshot as one task's.
func benchSnapshotID(task string, id uint64) checkpoint.SnapshotID {
	return checkpoint.SnapshotID{Job: benchJob, Version: 1, Task: task, KeyGroups: state.Range{From: 0, To: joinMaxPar}, Checkpoint: id}
}

// joinSpec is the stateful job of the checkpoint and recovery benchmarks: a
// regular join of build rows (key k, a padBytes string) with a slow stream of
// probes (key pk, sequence number pts, wall-clock emission time wall), each
// of which matches one build row. The join keeps every row, so its state is
// the build rows (plus the probes, a few tens of bytes each). The join's
// output goes to a commit sink ("results", exactly-once) and to a plain sink
// ("tap", which sees output as soon as it is produced).
func joinSpec() (*jobspec.Spec, error) {
	b := jobspec.New("checkpoint-bench").Version("1").MaxParallelism(joinMaxPar)
	b.Schema("row", jobspec.Int("k"), jobspec.Int("ts"), jobspec.String("pad"))
	b.Schema("probe", jobspec.Int("pk"), jobspec.Int("pts"), jobspec.Int("wall"))
	rows := b.Source("build", "row", jobspec.EventTime("ts", 0)).As("rows").KeyBy("k")
	probes := b.Source("probe", "probe", jobspec.EventTime("pts", 0)).As("probes").KeyBy("pk")
	out := rows.Join(probes, jobspec.On("k", "pk")).
		Map(jobspec.Col("pk", ""), jobspec.Col("pts", ""), jobspec.Col("wall", ""))
	out.Sink("results")
	out.Sink("tap")
	return b.Build()
}

// rowsFor returns the number of build rows that make about size bytes of
// join state.
func rowsFor(size int) int { return max(1, size/(padBytes+16)) }

// position and restoredPosition encode a source's position (the next index).
func position(next int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(next)) }

func restoredPosition(b []byte) (int64, error) {
	if len(b) != 8 {
		return 0, errors.New("bad restored position")
	}
	return int64(binary.BigEndian.Uint64(b)), nil
}

// buildSource emits rows build rows of distinct padBytes strings as fast as it
// can, then calls done.
func buildSource(rows int64, done func()) runtime.Source {
	return func(ctx context.Context, split runtime.Split, emit func(*record.Batch) error) error {
		next := int64(split.Subtask)
		if split.Restored != nil {
			var err error
			if next, err = restoredPosition(split.Restored); err != nil {
				return err
			}
		}
		if split.SetSnapshotter != nil {
			split.SetSnapshotter(func() ([]byte, error) { return position(next), nil })
		}
		filler := strings.Repeat("s", padBytes-16)
		var b record.Batch
		for next < rows {
			b.Reset()
			for k := 0; k < 256 && next < rows; k++ {
				pad := fmt.Sprintf("%016d", next) + filler
				b.Records = append(b.Records, record.Record{Values: []record.Value{record.Int(next), record.Int(0), record.String(pad)}})
				next += int64(split.Parallelism)
			}
			if err := emit(&b); err != nil {
				return err
			}
		}
		done()
		return nil
	}
}

// probeSource emits perBatch probes every interval until ctx ends: probe i
// has key i mod keys, pts i and the wall-clock time of its batch. It calls
// started once it runs (after a restore, once the run restored its state).
func probeSource(keys int64, perBatch int, every time.Duration, started func()) runtime.Source {
	return func(ctx context.Context, split runtime.Split, emit func(*record.Batch) error) error {
		next := int64(0)
		if split.Restored != nil {
			var err error
			if next, err = restoredPosition(split.Restored); err != nil {
				return err
			}
		}
		if split.SetSnapshotter != nil {
			split.SetSnapshotter(func() ([]byte, error) { return position(next), nil })
		}
		started()
		t := time.NewTicker(every)
		defer t.Stop()
		var b record.Batch
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
			}
			b.Reset()
			now := time.Now().UnixNano()
			for range perBatch {
				b.Records = append(b.Records, record.Record{Values: []record.Value{record.Int(next % keys), record.Int(next), record.Int(now)}})
				next++
			}
			if err := emit(&b); err != nil {
				return err
			}
		}
	}
}

// commitLog is an idempotent CommitSink (it drops batches of a
// (checkpoint, index) it already published, as a JetStream sink does with
// message headers) that notes when it first published something new.
type commitLog struct {
	mu    sync.Mutex
	last  map[int][2]uint64
	n     int64
	pts   []int64 // published pts values, when keep
	keep  bool
	first time.Time // the first new publication since resetFirst
}

func (l *commitLog) commit(_ context.Context, split runtime.Split, ckpt uint64, batches []*record.Batch) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last = map[int][2]uint64{}
	}
	for i, b := range batches {
		last := l.last[split.Subtask]
		if ckpt < last[0] || ckpt == last[0] && uint64(i) < last[1] {
			continue
		}
		if b.Len() > 0 && l.first.IsZero() {
			l.first = time.Now()
		}
		l.n += int64(b.Len())
		if l.keep {
			for _, r := range b.Records {
				l.pts = append(l.pts, r.Values[1].I)
			}
		}
		l.last[split.Subtask] = [2]uint64{ckpt, uint64(i) + 1}
	}
	return nil
}

func (l *commitLog) resetFirst() {
	l.mu.Lock()
	l.first = time.Time{}
	l.mu.Unlock()
}

func (l *commitLog) firstNew() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.first
}

// tapLog is a plain sink that records, per batch, when it arrived and the
// largest latency (arrival - probe emission) in it.
type tapLog struct {
	mu      sync.Mutex
	first   time.Time
	samples []latency
}

type latency struct {
	at  time.Time
	lat time.Duration
}

func (t *tapLog) sink(_ runtime.Split, b *record.Batch) error {
	if b.Len() == 0 {
		return nil
	}
	now := time.Now()
	var worst time.Duration
	for i := range b.Records {
		worst = max(worst, now.Sub(time.Unix(0, b.Records[i].Values[2].I)))
	}
	t.mu.Lock()
	if t.first.IsZero() {
		t.first = now
	}
	t.samples = append(t.samples, latency{now, worst})
	t.mu.Unlock()
	return nil
}

func (t *tapLog) resetFirst() {
	t.mu.Lock()
	t.first = time.Time{}
	t.mu.Unlock()
}

func (t *tapLog) firstOut() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.first
}

// maxLatency returns the largest latency of the batches that arrived in
// [from, to].
func (t *tapLog) maxLatency(from, to time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	var worst time.Duration
	for _, s := range t.samples {
		if !s.at.Before(from) && !s.at.After(to) {
			worst = max(worst, s.lat)
		}
	}
	return worst
}

// persistTiming is what Persist saw of one checkpoint.
type persistTiming struct {
	start, end time.Time
	size       int
	digest     checkpoint.Digest
}

// ckptEvent is a completed (err nil) or declined checkpoint.
type ckptEvent struct {
	id   uint64
	took time.Duration
	err  error
}

// joinRun is a running joinSpec job whose checkpoints are triggered by hand
// and persisted with checkpoint.Store.Put.
type joinRun struct {
	trigger   chan uint64
	buildDone chan struct{}
	started   time.Time     // when Run was called
	probeUp   chan struct{} // closed when the probe source runs
	probeAt   time.Time     // when it did
	events    chan ckptEvent
	cancel    context.CancelFunc
	done      chan error

	mu       sync.Mutex
	persists map[uint64]persistTiming
	persistE error
}

// startJoin runs joinSpec over rows build rows, restored from restore if it
// is not nil, committing to out and tapping to tap.
func (e *benchEnv) startJoin(tb testing.TB, rows int, restore []byte, out *commitLog, tap *tapLog) *joinRun {
	tb.Helper()
	spec, err := joinSpec()
	if err != nil {
		tb.Fatal(err)
	}
	r := &joinRun{
		trigger:   make(chan uint64, 1),
		buildDone: make(chan struct{}),
		probeUp:   make(chan struct{}),
		events:    make(chan ckptEvent, 1024),
		done:      make(chan error, 1),
		persists:  map[uint64]persistTiming{},
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	var buildOnce, probeOnce sync.Once
	opts := runtime.Options{
		Sources: map[string]runtime.Source{
			"build": buildSource(int64(rows), func() { buildOnce.Do(func() { close(r.buildDone) }) }),
			"probe": probeSource(int64(rows), 4, time.Millisecond, func() {
				probeOnce.Do(func() {
					r.mu.Lock()
					r.probeAt = time.Now()
					r.mu.Unlock()
					close(r.probeUp)
				})
			}),
		},
		Sinks:             map[string]runtime.Sink{"tap": tap.sink},
		CommitSinks:       map[string]runtime.CommitSink{"results": out.commit},
		WatermarkInterval: -1, // flush output frames at every probe batch
		Logger:            slog.New(slog.DiscardHandler),
		Checkpoint: &runtime.Checkpointing{
			Trigger: r.trigger,
			Restore: restore,
			Persist: func(ctx context.Context, id uint64, snap []byte) error {
				start := time.Now()
				d, err := e.store.Put(ctx, benchSnapshotID("join", id), snap, e.keys)
				end := time.Now()
				r.mu.Lock()
				defer r.mu.Unlock()
				if err != nil {
					r.persistE = err
					return err
				}
				r.persists[id] = persistTiming{start: start, end: end, size: len(snap), digest: d}
				return nil
			},
			OnComplete: func(id uint64, _ int, took time.Duration) {
				select {
				case r.events <- ckptEvent{id: id, took: took}:
				default:
				}
			},
			OnDecline: func(id uint64, err error) {
				select {
				case r.events <- ckptEvent{id: id, err: err}:
				default:
				}
			},
		},
	}
	r.started = time.Now()
	go func() {
		_, err := runtime.Run(ctx, spec, opts)
		r.done <- err
	}()
	return r
}

// stop cancels the run and waits for it to end.
func (r *joinRun) stop() {
	r.cancel()
	<-r.done
}

// waitBuilt waits until every build row was emitted, then lets the join take
// them in and the probes' output settle.
func (r *joinRun) waitBuilt(tb testing.TB) {
	tb.Helper()
	select {
	case <-r.buildDone:
	case err := <-r.done:
		tb.Fatalf("the job ended while building: %v", err)
	case <-time.After(5 * time.Minute):
		tb.Fatal("the build rows took more than 5 minutes")
	}
	time.Sleep(300 * time.Millisecond)
}

// checkpoint triggers checkpoint id and waits until it is persisted and its
// output committed.
func (r *joinRun) checkpoint(tb testing.TB, id uint64) (ckptEvent, persistTiming) {
	tb.Helper()
	r.trigger <- id
	timeout := time.After(5 * time.Minute)
	for {
		select {
		case ev := <-r.events:
			if ev.id != id {
				continue
			}
			if ev.err != nil {
				tb.Fatalf("checkpoint %d declined: %v", id, ev.err)
			}
			r.mu.Lock()
			pt := r.persists[id]
			r.mu.Unlock()
			return ev, pt
		case err := <-r.done:
			tb.Fatalf("the job ended during checkpoint %d: %v", id, err)
		case <-timeout:
			tb.Fatalf("checkpoint %d took more than 5 minutes", id)
		}
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

var benchSyncs = []substrate.Sync{substrate.SyncAlways, substrate.SyncRelaxed}

// BenchmarkCheckpoint measures checkpoints of the join job at about 1 MB and
// 100 MB of state. Each iteration triggers one checkpoint of the running job
// and waits until it is persisted (sealed into the object store) and its
// output committed; ns/op is that whole time. Metrics (medians over the
// iterations): snapshot-MB, the snapshot's actual size; sync-ms, trigger to
// snapshot handed to Persist (barriers, the operators' snapshots and encoding
// the whole: an upper bound of what processing waits for); put-ms, Persist
// (checkpoint.Store.Put: seal and store); persisted-ms, trigger to Put
// returned; maxlat-ms, the largest latency of an output (probe emitted →
// tapped) while the checkpoint ran, against baselat-ms over the half second
// before the trigger.
func BenchmarkCheckpoint(b *testing.B) {
	for _, sync := range benchSyncs {
		for _, mb := range []int{1, 100} {
			b.Run(fmt.Sprintf("sync=%s/state=%dMB", sync, mb), func(b *testing.B) {
				e := newBenchEnv(b, sync)
				var out commitLog
				var tap tapLog
				r := e.startJoin(b, rowsFor(mb<<20), nil, &out, &tap)
				defer r.stop()
				r.waitBuilt(b)
				time.Sleep(200 * time.Millisecond)
				var size, syncMs, putMs, persistedMs, maxLat, baseLat []float64
				b.ResetTimer()
				for i := range b.N {
					id := uint64(i) + 1
					trig := time.Now()
					_, pt := r.checkpoint(b, id)
					b.StopTimer()
					size = append(size, float64(pt.size)/(1<<20))
					syncMs = append(syncMs, ms(pt.start.Sub(trig)))
					putMs = append(putMs, ms(pt.end.Sub(pt.start)))
					persistedMs = append(persistedMs, ms(pt.end.Sub(trig)))
					maxLat = append(maxLat, ms(tap.maxLatency(trig, pt.end)))
					baseLat = append(baseLat, ms(tap.maxLatency(trig.Add(-500*time.Millisecond), trig)))
					b.Logf("checkpoint %d: %.1f MB, sync %.0f ms, put %.0f ms, persisted %.0f ms, max latency %.0f ms (before: %.1f ms)",
						id, size[i], syncMs[i], putMs[i], persistedMs[i], maxLat[i], baseLat[i])
					if id > 1 {
						if err := e.store.Delete(context.Background(), benchSnapshotID("join", id-1)); err != nil {
							b.Fatal(err)
						}
					}
					time.Sleep(700 * time.Millisecond)
					b.StartTimer()
				}
				b.StopTimer()
				b.ReportMetric(median(size), "snapshot-MB")
				b.ReportMetric(median(syncMs), "sync-ms")
				b.ReportMetric(median(putMs), "put-ms")
				b.ReportMetric(median(persistedMs), "persisted-ms")
				b.ReportMetric(median(maxLat), "maxlat-ms")
				b.ReportMetric(median(baseLat), "baselat-ms")
			})
		}
	}
}

// recovery is the breakdown of one recovery, from the kill (the cancel of
// the running job).
type recovery struct {
	size                                     int
	teardown, get, restore, first, committed time.Duration
}

// recoverOnce runs the join job over rows build rows, takes checkpoint 1,
// lets the job go on for a while, kills it (cancels its run) and restores a
// new run from the snapshot read back from the store; the new run triggers
// checkpoint 2 at once. It returns the times from the kill: the old run's
// teardown, store.Get (read, digest check, open), the new run's decode and
// operator restore (until its sources run), the first output (tapped) and
// the first newly committed output (after checkpoint 2 is persisted).
func (e *benchEnv) recoverOnce(tb testing.TB, rows int, out *commitLog) recovery {
	tb.Helper()
	var tap tapLog
	a := e.startJoin(tb, rows, nil, out, &tap)
	a.waitBuilt(tb)
	_, pt := a.checkpoint(tb, 1)
	time.Sleep(200 * time.Millisecond)

	kill := time.Now()
	a.cancel()
	if err := <-a.done; !errors.Is(err, context.Canceled) {
		tb.Fatalf("killed run ended with %v", err)
	}
	killed := time.Now()
	snap, err := e.store.Get(context.Background(), benchSnapshotID("join", 1), pt.digest, e.keys)
	if err != nil {
		tb.Fatal(err)
	}
	got := time.Now()
	out.resetFirst()
	tap.resetFirst()
	b := e.startJoin(tb, rows, snap, out, &tap)
	defer b.stop()
	b.trigger <- 2
	deadline := time.After(5 * time.Minute)
	for out.firstNew().IsZero() || tap.firstOut().IsZero() {
		select {
		case err := <-b.done:
			tb.Fatalf("the restored run ended: %v", err)
		case ev := <-b.events:
			if ev.err != nil {
				tb.Fatalf("checkpoint %d of the restored run declined: %v", ev.id, ev.err)
			}
		case <-deadline:
			tb.Fatal("no output 5 minutes after the restore")
		case <-time.After(time.Millisecond):
		}
	}
	select {
	case <-b.buildDone:
		tb.Fatal("the restored run emitted the build rows again")
	default:
	}
	b.mu.Lock()
	probeAt := b.probeAt
	b.mu.Unlock()
	clear(snap)
	return recovery{
		size:      pt.size,
		teardown:  killed.Sub(kill),
		get:       got.Sub(killed),
		restore:   probeAt.Sub(b.started),
		first:     tap.firstOut().Sub(kill),
		committed: out.firstNew().Sub(kill),
	}
}

// BenchmarkRecovery measures recovery of the join job at about 1 MB and 100
// MB of state: kill to first output after restore, one recovery per
// iteration (ns/op is kill to first committed output). Metrics (medians):
// snapshot-MB; teardown-ms, the killed run's cancel until it returned (a
// killed process has none; in-process we wait for it); get-ms, store.Get
// (read, digest check, open); restore-ms, the new run's start until its
// sources run (decode, operators' Restore, re-commit of the restored
// checkpoint's pending output); first-out-ms, kill to the first output of the
// restored run (plain sink, at-least-once); first-commit-ms, kill to its first
// newly committed output (exactly-once: after its first checkpoint, triggered
// at once, is persisted).
func BenchmarkRecovery(b *testing.B) {
	for _, sync := range benchSyncs {
		for _, mb := range []int{1, 100} {
			b.Run(fmt.Sprintf("sync=%s/state=%dMB", sync, mb), func(b *testing.B) {
				e := newBenchEnv(b, sync)
				var size, teardown, get, restore, first, committed []float64
				b.StopTimer()
				for range b.N {
					var out commitLog
					rc := e.recoverOnce(b, rowsFor(mb<<20), &out)
					size = append(size, float64(rc.size)/(1<<20))
					teardown = append(teardown, ms(rc.teardown))
					get = append(get, ms(rc.get))
					restore = append(restore, ms(rc.restore))
					first = append(first, ms(rc.first))
					committed = append(committed, ms(rc.committed))
					b.Logf("recovery: %.1f MB, teardown %.1f ms, get %.0f ms, restore %.0f ms, first output %.0f ms, first commit %.0f ms",
						float64(rc.size)/(1<<20), ms(rc.teardown), ms(rc.get), ms(rc.restore), ms(rc.first), ms(rc.committed))
				}
				// ns/op: the median kill → first committed output.
				b.ReportMetric(median(committed)*1e6, "ns/op")
				b.ReportMetric(median(size), "snapshot-MB")
				b.ReportMetric(median(teardown), "teardown-ms")
				b.ReportMetric(median(get), "get-ms")
				b.ReportMetric(median(restore), "restore-ms")
				b.ReportMetric(median(first), "first-out-ms")
				b.ReportMetric(median(committed), "first-commit-ms")
			})
		}
	}
}

// TestRecoveryHarness checks the recovery benchmark's job on small state:
// the restored run produces output only its restored join state can
// produce (the build rows are not emitted again), and the output committed
// over both runs holds every probe once.
func TestRecoveryHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("starts NATS and two runs")
	}
	e := newBenchEnv(t, substrate.SyncRelaxed)
	out := &commitLog{keep: true}
	rc := e.recoverOnce(t, 200, out)
	if rc.committed <= 0 || rc.first <= 0 || rc.size < 200*padBytes {
		t.Fatalf("implausible recovery %+v", rc)
	}
	out.mu.Lock()
	pts := slices.Clone(out.pts)
	out.mu.Unlock()
	slices.Sort(pts)
	for i, p := range pts {
		if p != int64(i) {
			t.Fatalf("committed probes are not 0..%d each once: position %d holds %d", len(pts)-1, i, p)
		}
	}
	if len(pts) == 0 {
		t.Fatal("nothing committed")
	}
	t.Logf("%d probes committed once each; recovery %+v", len(pts), rc)
}

// q5Mode is one configuration of the throughput benchmark.
type q5Mode struct {
	name   string
	every  time.Duration // checkpoint interval; 0: no checkpoints
	commit bool          // exactly-once commit sink instead of a plain sink
}

// runQ5 runs Nexmark q5 over events generated events and returns its wall
// time, output rows and completed checkpoints.
func (e *benchEnv) runQ5(ctx context.Context, spec *jobspec.Spec, g *nexmark.Generator, events int64, m q5Mode) (time.Duration, int64, int, error) {
	var mu sync.Mutex
	var rows int64
	var ckpts int
	var prev uint64   // the last snapshot stored
	var snapBytes int // the largest snapshot
	src := func(ctx context.Context, split runtime.Split, emit func(*record.Batch) error) error {
		if split.Restored != nil {
			return errors.New("q5 benchmark source cannot restore")
		}
		s := nexmark.NewSource(g, nexmark.KindBid, events, split.Subtask, split.Parallelism)
		if split.SetSnapshotter != nil {
			split.SetSnapshotter(func() ([]byte, error) { return position(s.Next()), nil })
		}
		b := &record.Batch{Records: make([]record.Record, 0, 512)}
		for more := true; more; {
			if err := ctx.Err(); err != nil {
				return err
			}
			b.Reset()
			more = s.Fill(b, 512)
			if b.Len() > 0 {
				if err := emit(b); err != nil {
					return err
				}
			}
		}
		return nil
	}
	o := runtime.Options{
		Sources: map[string]runtime.Source{nexmark.BidStream: src},
		Sinks: map[string]runtime.Sink{nexmark.OutputStream: func(_ runtime.Split, b *record.Batch) error {
			mu.Lock()
			rows += int64(b.Len())
			mu.Unlock()
			return nil
		}},
		Logger: slog.New(slog.DiscardHandler),
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if m.every > 0 {
		trig := make(chan uint64)
		go func() {
			t := time.NewTicker(m.every)
			defer t.Stop()
			for id := uint64(1); ; id++ {
				select {
				case <-runCtx.Done():
					return
				case <-t.C:
				}
				select {
				case trig <- id:
				case <-runCtx.Done():
					return
				}
			}
		}()
		o.Checkpoint = &runtime.Checkpointing{
			Trigger: trig,
			Persist: func(ctx context.Context, id uint64, snap []byte) error {
				if _, err := e.store.Put(ctx, benchSnapshotID("q5", id), snap, e.keys); err != nil {
					return err
				}
				// As the worker does: the previous snapshot goes once the
				// next one is stored.
				if prev != 0 {
					if err := e.store.Delete(ctx, benchSnapshotID("q5", prev)); err != nil {
						return err
					}
				}
				prev = id
				return nil
			},
			OnComplete: func(_ uint64, size int, _ time.Duration) { ckpts++; snapBytes = max(snapBytes, size) },
		}
		if m.commit {
			o.CommitSinks = map[string]runtime.CommitSink{nexmark.OutputStream: func(_ context.Context, _ runtime.Split, _ uint64, batches []*record.Batch) error {
				mu.Lock()
				for _, b := range batches {
					rows += int64(b.Len())
				}
				mu.Unlock()
				return nil
			}}
		}
	}
	start := time.Now()
	_, err := runtime.Run(runCtx, spec, o)
	wall := time.Since(start)
	cancel()
	// The last checkpoint's persist is over: Run returned after the final one.
	if err == nil && m.every > 0 {
		_ = e.store.Delete(ctx, benchSnapshotID("q5", prev))
	}
	if snapBytes > 0 {
		q5Snapshot.Store(int64(snapBytes))
	}
	return wall, rows, ckpts, err
}

// q5Snapshot is the size of the largest snapshot of the last q5 run.
var q5Snapshot atomic.Int64

// cpuTime returns the CPU time (user + system) the process used so far: the
// engine's and the embedded NATS server's.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCheckpointThroughput runs Nexmark q5 (parallelism 1) over the same
// generated events without checkpoints, with a checkpoint every second and a
// plain sink, and with a checkpoint every second and an exactly-once commit
// sink: one discarded warm-up round, then q5Runs rounds of one run of each,
// in rotating order, per iteration. It reports the median throughput of each
// (Mev/s: million generated events per second), the median over the rounds
// of each mode's throughput relative to the round's run without checkpoints
// (/none), and the median CPU seconds of the process per run (cpu-s; the
// engine and the embedded NATS server), whose ratio is steadier than wall
// time on a shared machine.
func BenchmarkCheckpointThroughput(b *testing.B) {
	const (
		events = 5_000_000
		q5Runs = 7
	)
	e := newBenchEnv(b, substrate.SyncAlways)
	spec, err := nexmark.JobSpec("q5", nexmark.QueryOptions{})
	if err != nil {
		b.Fatal(err)
	}
	g, err := nexmark.NewGenerator(nexmark.DefaultConfig(1))
	if err != nil {
		b.Fatal(err)
	}
	modes := []q5Mode{{"none", 0, false}, {"1s-plain", time.Second, false}, {"1s-commit", time.Second, true}}
	rates := make([][]float64, len(modes))
	cpus := make([][]float64, len(modes))
	ratios := make([][]float64, len(modes))
	b.ResetTimer()
	for range b.N {
		for run := -1; run < q5Runs; run++ {
			var want int64 = -1
			round := make([]float64, len(modes))
			for k := range modes {
				i := (k + max(run, 0)) % len(modes)
				m := modes[i]
				cpu0 := cpuTime()
				wall, rows, ckpts, err := e.runQ5(context.Background(), spec, g, events, m)
				cpu := cpuTime() - cpu0
				if err != nil {
					b.Fatalf("%s: %v", m.name, err)
				}
				if want >= 0 && rows != want {
					b.Fatalf("%s: %d output rows, another mode gave %d", m.name, rows, want)
				}
				want = rows
				if m.every > 0 && ckpts < int(wall/m.every)-1 {
					b.Fatalf("%s: %d checkpoints in %s", m.name, ckpts, wall)
				}
				rate := float64(events) / wall.Seconds() / 1e6
				b.Logf("round %d %-9s %6.3f s %.3f Mev/s %.3f CPU-s %d rows %d checkpoints (largest %d bytes)", run, m.name, wall.Seconds(), rate, cpu.Seconds(), rows, ckpts, q5Snapshot.Swap(0))
				if run < 0 {
					continue // warm-up
				}
				round[i] = rate
				rates[i] = append(rates[i], rate)
				cpus[i] = append(cpus[i], cpu.Seconds())
			}
			if run >= 0 {
				for i := range modes {
					ratios[i] = append(ratios[i], round[i]/round[0])
				}
			}
		}
	}
	b.StopTimer()
	for i, m := range modes {
		b.ReportMetric(median(rates[i]), m.name+"-Mev/s")
		b.ReportMetric(median(cpus[i]), m.name+"-cpu-s")
		if i > 0 {
			b.ReportMetric(median(ratios[i]), m.name+"/none")
		}
	}
}
