package confidential

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/seal"
)

// cutJS is a JetStream context whose PublishMsg fails once after a number of
// successful publishes: before storing the message (a task killed mid-commit)
// or after (the acknowledgement was lost).
type cutJS struct {
	jetstream.JetStream
	mu         sync.Mutex
	left       int  // publishes that succeed before the cut; < 0: no cut
	storeOnCut bool // the cut publish is stored anyway
}

var errCut = errors.New("test: publish cut")

func (c *cutJS) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	c.mu.Lock()
	cut := c.left == 0
	c.left--
	c.mu.Unlock()
	if !cut {
		return c.JetStream.PublishMsg(ctx, m, opts...)
	}
	if c.storeOnCut {
		if _, err := c.JetStream.PublishMsg(ctx, m, opts...); err != nil {
			return nil, err
		}
	}
	return nil, errCut
}

// noDedupJS publishes every message under a message id of its own, so
// JetStream's message-id deduplication never drops one.
type noDedupJS struct {
	jetstream.JetStream
	n atomic.Int64
}

func (d *noDedupJS) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return d.JetStream.PublishMsg(ctx, m, append(opts, jetstream.WithMsgID(fmt.Sprintf("unique-%d", d.n.Add(1))))...)
}

// commitBatches returns the output of sink subtask sub at checkpoint cp:
// sizes[sub] batches of two readings each, distinct for every (cp, sub, i).
func commitBatches(cp uint64, sub, n int) []*record.Batch {
	var bs []*record.Batch
	for i := range n {
		k := int(cp)*1000 + sub*100 + i*10
		bs = append(bs, batchOf(meterReading(k), meterReading(k+1)))
	}
	return bs
}

func recordsOf(bs []*record.Batch) []record.Record {
	var out []record.Record
	for _, b := range bs {
		out = append(out, b.Records...)
	}
	return out
}

// commitStep is one action of a writer in a commit scenario.
type commitStep struct {
	// restart replaces the writer by a new one before the step (a task
	// restored on another node); cut, if ≥ 0, makes the new writer's
	// publish number cut fail (stored too with storeOnCut).
	restart    bool
	cut        int
	storeOnCut bool
	// cp is the checkpoint to commit, for every subtask (0: none); close
	// closes the writer after the commit.
	cp    uint64
	close bool
	// fails says the step's commit must fail (it was cut).
	fails bool
}

// sealedWriter is an OutputSink or a Publisher under test.
type sealedWriter struct {
	commit runtime.CommitSink
	close  func(context.Context) error
}

// commitScenarios are the crash and restart patterns every exactly-once
// writer must survive; sizes gives each checkpoint's batches per subtask.
var commitScenarios = []struct {
	name  string
	steps []commitStep
}{
	{"restart re-commits the last checkpoint", []commitStep{
		{cp: 1, cut: -1}, {cp: 2, cut: -1},
		{restart: true, cut: -1, cp: 2}, {cp: 3, cut: -1, close: true},
	}},
	{"restart re-commits older checkpoints", []commitStep{
		{cp: 1, cut: -1}, {cp: 2, cut: -1},
		{restart: true, cut: -1, cp: 1}, {cp: 2, cut: -1}, {cp: 3, cut: -1, close: true},
	}},
	{"commit cut after its first batch", []commitStep{
		{cp: 1, cut: -1}, {restart: true, cut: 1, cp: 2, fails: true},
		{restart: true, cut: -1, cp: 2}, {cp: 3, cut: -1, close: true},
	}},
	{"acknowledgement of a commit's second batch lost", []commitStep{
		{cp: 1, cut: 1, storeOnCut: true, fails: true},
		{restart: true, cut: -1, cp: 1}, {cp: 2, cut: -1}, {cp: 3, cut: -1, close: true},
	}},
	{"same writer retries after a lost acknowledgement", []commitStep{
		{cp: 1, cut: -1}, {restart: true, cut: 2, storeOnCut: true, cp: 2, fails: true},
		{cp: 2, cut: -1}, {cp: 3, cut: -1, close: true},
	}},
	{"close after restore, then again", []commitStep{
		{cp: 1, cut: -1}, {cp: 2, cut: -1}, {cp: 3, cut: -1},
		{restart: true, cut: -1, close: true}, {restart: true, cut: -1, cp: 3, close: true},
	}},
	{"restored after close re-commits", []commitStep{
		{cp: 1, cut: -1}, {cp: 2, cut: -1}, {cp: 3, cut: -1, close: true},
		{restart: true, cut: -1, cp: 3, close: true},
	}},
}

// commitSizes is how many batches each of the two subtasks commits at
// checkpoints 1 to 3.
var commitSizes = map[uint64][2]int{1: {3, 1}, 2: {3, 2}, 3: {1, 3}}

// runCommitScenario plays steps with writers from newWriter over two
// partitions and returns the records of every checkpoint committed, and the
// number of frames the stream must hold (batches and two last frames).
func runCommitScenario(ctx context.Context, t *testing.T, steps []commitStep, js jetstream.JetStream, newWriter func(jetstream.JetStream) sealedWriter) (want []record.Record, frames int) {
	t.Helper()
	var w sealedWriter
	committed := map[uint64]bool{}
	for k, st := range steps {
		if st.restart || k == 0 {
			cj := &cutJS{JetStream: js, left: st.cut, storeOnCut: st.storeOnCut}
			if st.cut < 0 {
				cj.left = -1
			}
			w = newWriter(cj)
		}
		if st.cp > 0 {
			var errs []error
			for sub := range 2 {
				bs := commitBatches(st.cp, sub, commitSizes[st.cp][sub])
				errs = append(errs, w.commit(ctx, runtime.Split{Subtask: sub, Parallelism: 2, Schema: meterSchema}, st.cp, bs))
			}
			err := errors.Join(errs...)
			if st.fails != (err != nil) {
				t.Fatalf("step %d: commit of checkpoint %d: %v, want failure %v", k, st.cp, err, st.fails)
			}
			if st.fails && !errors.Is(err, errCut) {
				t.Fatalf("step %d: commit failed with %v, not the cut", k, err)
			}
			if !st.fails {
				committed[st.cp] = true
			}
		}
		if st.close {
			if err := w.close(ctx); err != nil {
				t.Fatalf("step %d: close: %v", k, err)
			}
		}
	}
	for cp := range committed {
		for sub := range 2 {
			want = append(want, recordsOf(commitBatches(cp, sub, commitSizes[cp][sub]))...)
			frames += commitSizes[cp][sub]
		}
	}
	return want, frames + 2
}

// checkFrames checks that stream holds exactly n messages.
func checkFrames(ctx context.Context, t *testing.T, js jetstream.JetStream, stream string, n int) {
	t.Helper()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(n) {
		t.Errorf("stream %s holds %d messages, want %d (one per committed batch and one last frame per partition)", stream, info.State.Msgs, n)
	}
}

// TestOutputCommitSinkExactlyOnce commits checkpoints through OutputSinks
// that are cut and restarted, and checks that ReadOutput returns the
// records of every committed checkpoint exactly once, with a gap-free sealed
// sequence and no frame rejected.
func TestOutputCommitSinkExactlyOnce(t *testing.T) {
	_, _, js := startNATS(t)
	for i, tc := range commitScenarios {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			id := fmt.Sprintf("commit-out-%d", i)
			keys := seal.NewKeyring()
			if _, err := keys.Generate(id, 1); err != nil {
				t.Fatal(err)
			}
			want, frames := runCommitScenario(ctx, t, tc.steps, js, func(js jetstream.JetStream) sealedWriter {
				o, err := NewOutputSink(ctx, js, id, meterSchema, keys, 2, WithPadding(64))
				if err != nil {
					t.Fatal(err)
				}
				return sealedWriter{o.CommitSink(), o.Close}
			})
			var rej rejections
			got, err := ReadOutput(ctx, js, id, meterSchema, keys, WithRejectHandler(rej.handler()))
			if err != nil {
				t.Fatalf("ReadOutput: %v", err)
			}
			if r := rej.list(); len(r) > 0 {
				t.Errorf("frames rejected: %v", r)
			}
			if g, w := canonical(got), canonical(want); !slices.Equal(g, w) {
				t.Errorf("ReadOutput returned %d records, want the %d committed once:\ngot  %v\nwant %v", len(g), len(w), g, w)
			}
			checkFrames(ctx, t, js, OutputStreamPrefix+id, frames)
		})
	}
}

// TestPublisherCommitSinkExactlyOnce plays the same scenarios with a
// Publisher (an intermediate stream between stages) and reads the stream
// back with an IngestSource.
func TestPublisherCommitSinkExactlyOnce(t *testing.T) {
	_, _, js := startNATS(t)
	for i, tc := range commitScenarios {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			id := fmt.Sprintf("commit-in-%d", i)
			keys := seal.NewKeyring()
			if _, err := keys.Generate(id, 1); err != nil {
				t.Fatal(err)
			}
			want, frames := runCommitScenario(ctx, t, tc.steps, js, func(js jetstream.JetStream) sealedWriter {
				p, err := NewPublisher(ctx, js, id, meterSchema, keys, 2)
				if err != nil {
					t.Fatal(err)
				}
				return sealedWriter{p.CommitSink(), p.Close}
			})
			var rej rejections
			src, err := NewIngestSource(js, id, 2, keys, WithRejectHandler(rej.handler()), WithEndTimeout(2*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			var got []record.Record
			err = src.Source()(ctx, runtime.Split{Subtask: 0, Parallelism: 1, Schema: meterSchema}, func(b *record.Batch) error {
				for _, r := range b.Records {
					got = append(got, record.Record{Time: r.Time, Values: slices.Clone(r.Values)})
				}
				return nil
			})
			if err != nil {
				t.Fatalf("reading the stream: %v", err)
			}
			if r := rej.list(); len(r) > 0 {
				t.Errorf("frames rejected: %v", r)
			}
			if g, w := canonical(got), canonical(want); !slices.Equal(g, w) {
				t.Errorf("IngestSource emitted %d records, want the %d committed once:\ngot  %v\nwant %v", len(g), len(w), g, w)
			}
			checkFrames(ctx, t, js, IngestStreamPrefix+id, frames)
		})
	}
}

// TestCommitSinkRefuses checks the commits a writer must not accept.
func TestCommitSinkRefuses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _, js := startNATS(t)
	keys := seal.NewKeyring()
	for _, id := range []string{"refuse-out", "refuse-forged"} {
		if _, err := keys.Generate(id, 1); err != nil {
			t.Fatal(err)
		}
	}
	split := runtime.Split{Subtask: 0, Parallelism: 1, Schema: meterSchema}
	newSink := func(id string) runtime.CommitSink {
		o, err := NewOutputSink(ctx, js, id, meterSchema, keys, 1)
		if err != nil {
			t.Fatal(err)
		}
		return o.CommitSink()
	}
	commit := newSink("refuse-out")
	if err := commit(ctx, split, 1, commitBatches(1, 0, 2)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		split runtime.Split
		cp    uint64
		n     int
	}{
		{"checkpoint 0", split, 0, 1},
		{"same checkpoint, other batch count", split, 1, 3},
		{"parallelism other than the partitions", runtime.Split{Subtask: 0, Parallelism: 2}, 2, 1},
	} {
		if err := newSink("refuse-out")(ctx, tc.split, tc.cp, commitBatches(tc.cp, 0, tc.n)); err == nil {
			t.Errorf("%s: commit accepted", tc.name)
		}
	}
	o, err := NewOutputSink(ctx, js, "refuse-out", meterSchema, keys, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := o.CommitSink()(ctx, split, 2, commitBatches(2, 0, 1)); err == nil {
		t.Error("a commit of new batches after Close was accepted")
	}
	if err := o.CommitSink()(ctx, split, 1, commitBatches(1, 0, 2)); err != nil {
		t.Errorf("re-committing a checkpoint published before Close: %v", err)
	}
	// A last message the writer cannot authenticate (sealed with another
	// key of the same scope, as storage making up frames would) is not
	// continued: the writer continues after the last authentic frame (here
	// none), and readers refuse the made-up one.
	other := seal.NewKeyring()
	if _, err := other.Generate("refuse-forged", 1); err != nil {
		t.Fatal(err)
	}
	if err := outputPlace.ensure(ctx, js, "refuse-forged"); err != nil {
		t.Fatal(err)
	}
	fs, err := seal.NewSealer(other, seal.KindOutput, "refuse-forged", 0)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := fs.Seal(nil, []byte("made up"), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, OutputSubject("refuse-forged", 0), forged); err != nil {
		t.Fatal(err)
	}
	honest, err := NewOutputSink(ctx, js, "refuse-forged", meterSchema, keys, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := honest.CommitSink()(ctx, split, 2, commitBatches(2, 0, 1)); err != nil {
		t.Fatalf("committing after a made-up frame: %v", err)
	}
	if err := honest.Close(ctx); err != nil {
		t.Fatal(err)
	}
	var rejected int
	got, err := ReadOutput(ctx, js, "refuse-forged", meterSchema, keys, WithRejectHandler(func(string, string, error) { rejected++ }))
	if err != nil {
		t.Fatal(err)
	}
	if want := recordsOf(commitBatches(2, 0, 1)); len(got) != len(want) || rejected != 1 {
		t.Errorf("read %d records and rejected %d frames after a made-up frame, want %d and 1", len(got), rejected, len(want))
	}
}

// TestCheckpointedRunExactlyOnce runs a pass-through job from a sealed
// ingest stream into a sealed output stream under the runtime's aligned
// checkpoints, fails the first two attempts after two checkpoints each, and
// restores every next attempt (new source, new sink) from the last persisted
// snapshot: the output holds every input record exactly once.
func TestCheckpointedRunExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a job three times")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	_, _, js := startNATS(t)
	keys := seal.NewKeyring()
	for _, id := range []string{"cp-meter", "cp-out"} {
		if _, err := keys.Generate(id, 1); err != nil {
			t.Fatal(err)
		}
	}
	pub, err := NewPublisher(ctx, js, "cp-meter", meterSchema, keys, 2)
	if err != nil {
		t.Fatal(err)
	}
	var want []record.Record
	for i := 0; i < 3000; i += 10 {
		var b record.Batch
		for k := i; k < i+10; k++ {
			b.Records = append(b.Records, meterReading(k))
		}
		want = append(want, b.Records...)
		if err := pub.Publish(ctx, uint32(i/10%2), &b); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Close(ctx); err != nil {
		t.Fatal(err)
	}
	b := jobspec.New("cp-pass").Parallelism(2).
		Schema("meter", jobspec.String("household"), jobspec.String("feeder"), jobspec.Int("wh"), jobspec.Int("ts"))
	b.Source("cp-meter", "meter", jobspec.EventTime("ts", 0)).Sink("cp-out")
	spec, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		snapshot []byte
		ids      atomic.Uint64
	)
	errInjected := errors.New("test: injected failure")
	failures := 0
	for attempt := 0; ; attempt++ {
		if attempt > 5 {
			t.Fatal("no successful run after 5 attempts")
		}
		var completed atomic.Int32
		src, err := NewIngestSource(js, "cp-meter", 2, keys, WithEndTimeout(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		sink, err := NewOutputSink(ctx, js, "cp-out", meterSchema, keys, 2)
		if err != nil {
			t.Fatal(err)
		}
		source := func(ctx context.Context, split runtime.Split, emit func(*record.Batch) error) error {
			return src.Source()(ctx, split, func(b *record.Batch) error {
				if failures < 2 && completed.Load() >= 2 {
					return errInjected
				}
				time.Sleep(time.Millisecond)
				return emit(b)
			})
		}
		rctx, rcancel := context.WithCancel(ctx)
		trigger := make(chan uint64)
		go func() {
			tk := time.NewTicker(5 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-rctx.Done():
					return
				case <-tk.C:
					select {
					case trigger <- ids.Add(1):
					case <-rctx.Done():
						return
					}
				}
			}
		}()
		mu.Lock()
		restore := snapshot
		mu.Unlock()
		_, err = runtime.Run(rctx, spec, runtime.Options{
			Sources:     map[string]runtime.Source{"cp-meter": source},
			CommitSinks: map[string]runtime.CommitSink{"cp-out": sink.CommitSink()},
			BatchSize:   16,
			Checkpoint: &runtime.Checkpointing{
				Trigger: trigger,
				Persist: func(_ context.Context, _ uint64, s []byte) error {
					mu.Lock()
					defer mu.Unlock()
					snapshot = slices.Clone(s)
					return nil
				},
				Restore:    restore,
				OnComplete: func(uint64, int, time.Duration) { completed.Add(1) },
			},
		})
		rcancel()
		if err == nil {
			if err := sink.Close(ctx); err != nil {
				t.Fatal(err)
			}
			break
		}
		if !errors.Is(err, errInjected) && !strings.Contains(err.Error(), errInjected.Error()) {
			t.Fatalf("attempt %d: %v", attempt, err)
		}
		failures++
	}
	if failures != 2 {
		t.Fatalf("%d failures injected, want 2", failures)
	}
	var rej rejections
	got, err := ReadOutput(ctx, js, "cp-out", meterSchema, keys, WithRejectHandler(rej.handler()))
	if err != nil {
		t.Fatal(err)
	}
	if r := rej.list(); len(r) > 0 {
		t.Errorf("frames rejected: %v", r)
	}
	if g, w := canonical(got), canonical(want); !slices.Equal(g, w) {
		t.Errorf("the output holds %d records, want the %d input records once", len(g), len(w))
	}
}

// TestStaleWriterDoesNotInterleave has a writer that fell behind (a zombie,
// or a task whose restart raced another) commit checkpoints another writer
// of the same partition already published, with message-id deduplication
// out of the way (its window is two minutes by default): every publish expects the partition's last message, so
// the stale writer looks the partition up again and skips what is there. The
// stream holds each batch once, and readers refuse nothing.
func TestStaleWriterDoesNotInterleave(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, _, js := startNATS(t)
	keys := seal.NewKeyring()
	if _, err := keys.Generate("racy", 1); err != nil {
		t.Fatal(err)
	}
	split := runtime.Split{Node: "out", Stream: "racy", Subtask: 0, Parallelism: 1, Schema: meterSchema}
	// Message-id deduplication is off: only the expected-last-sequence
	// check keeps the writers apart.
	nodedup := &noDedupJS{JetStream: js}
	newCommit := func() runtime.CommitSink {
		o, err := NewOutputSink(ctx, nodedup, "racy", meterSchema, keys, 1)
		if err != nil {
			t.Fatal(err)
		}
		return o.CommitSink()
	}
	commit := func(c runtime.CommitSink, cps ...uint64) {
		for _, cp := range cps {
			if err := c(ctx, split, cp, commitBatches(cp, 0, 3)); err != nil {
				t.Fatalf("commit %d: %v", cp, err)
			}
		}
	}
	stale := newCommit()
	commit(stale, 1)
	commit(newCommit(), 2, 3)
	commit(stale, 2, 3, 4)
	var want []record.Record
	for cp := uint64(1); cp <= 4; cp++ {
		want = append(want, recordsOf(commitBatches(cp, 0, 3))...)
	}
	last, err := NewOutputSink(ctx, js, "racy", meterSchema, keys, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := last.Close(ctx); err != nil {
		t.Fatal(err)
	}
	rejected := 0
	got, err := ReadOutput(ctx, js, "racy", meterSchema, keys, WithRejectHandler(func(string, string, error) { rejected++ }))
	if err != nil {
		t.Fatal(err)
	}
	if g, w := canonical(got), canonical(want); !slices.Equal(g, w) || rejected != 0 {
		t.Fatalf("a stale writer left %d records (want %d once each) and %d refused frames (want 0)", len(got), len(want), rejected)
	}
}
