package confidential

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/seal"
)

// frameMaker seals ingest frames of one partition the way a Publisher does.
type frameMaker struct {
	t      *testing.T
	sealer *seal.Sealer
	parts  int
}

func newFrameMaker(t *testing.T, keys *seal.Keyring, scope string, part uint32, parts int) *frameMaker {
	s, err := seal.NewSealer(keys, seal.KindIngest, scope, part)
	if err != nil {
		t.Fatal(err)
	}
	return &frameMaker{t: t, sealer: s, parts: parts}
}

// frame seals readings from..to-1 (a last frame when last).
func (m *frameMaker) frame(from, to int, last bool) []byte {
	var b record.Batch
	for i := from; i < to; i++ {
		b.Records = append(b.Records, meterReading(i))
	}
	body, err := appendBody(nil, meterSchema, &b, last, m.parts)
	if err != nil {
		m.t.Fatal(err)
	}
	lo, hi := timeRange(&b)
	var f []byte
	if last {
		f, err = m.sealer.SealLast(nil, body, lo, hi)
	} else {
		f, err = m.sealer.Seal(nil, body, lo, hi)
	}
	if err != nil {
		m.t.Fatal(err)
	}
	return f
}

func households0(ns ...int) []string {
	var out []string
	for _, n := range ns {
		out = append(out, fmt.Sprint(meterReading(n).Time))
	}
	return out
}

func span(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// readIngest runs an IngestSource over stream id as one subtask and returns
// the event times of the records it emitted.
func readIngest(t *testing.T, js jetstream.JetStream, id string, keys *seal.Keyring, opts ...Option) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	src, err := NewIngestSource(js, id, 1, keys, opts...)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	err = src.Source()(ctx, runtime.Split{Node: "src", Stream: id, Subtask: 0, Parallelism: 1, Schema: meterSchema}, func(b *record.Batch) error {
		for _, r := range b.Records {
			got = append(got, fmt.Sprint(r.Time))
		}
		return nil
	})
	return got, err
}

// TestIngestTamperingThroughJetStream publishes sealed ingest frames to
// JetStream with one attack each, reads the stream back with an
// IngestSource, and checks that the attack was refused (with the rule's
// reason, reported) and that no record of a bad frame was emitted.
func TestIngestTamperingThroughJetStream(t *testing.T) {
	_, _, js := startNATS(t)
	for i, tc := range []struct {
		name string
		// frames returns what lands in the stream, given the owner's and an
		// attacker's frame makers.
		frames  func(owner, other, unadmitted *frameMaker) [][]byte
		reasons []seal.Reason
		emitted []int
		fails   bool
	}{
		{"untampered", func(o, _, _ *frameMaker) [][]byte {
			return [][]byte{o.frame(0, 10, false), o.frame(10, 20, false), o.frame(20, 25, true)}
		}, nil, span(0, 25), false},
		{"flipped bit", func(o, _, _ *frameMaker) [][]byte {
			f := o.frame(0, 10, false)
			f[len(f)-30] ^= 0x04
			return [][]byte{f, o.frame(10, 20, false), o.frame(20, 25, true)}
		}, []seal.Reason{seal.ReasonTampered, seal.ReasonGap}, nil, true},
		{"replayed old frame", func(o, _, _ *frameMaker) [][]byte {
			f0 := o.frame(0, 10, false)
			return [][]byte{f0, o.frame(10, 20, false), f0, o.frame(20, 25, true)}
		}, []seal.Reason{seal.ReasonReplayed}, span(0, 25), false},
		{"reordered frames", func(o, _, _ *frameMaker) [][]byte {
			f0, f1 := o.frame(0, 10, false), o.frame(10, 20, false)
			return [][]byte{f1, f0, o.frame(20, 25, true)}
		}, []seal.Reason{seal.ReasonGap}, nil, true},
		{"another stream's key", func(o, other, _ *frameMaker) [][]byte {
			return [][]byte{other.frame(100, 110, false), o.frame(0, 10, false), o.frame(10, 12, true)}
		}, []seal.Reason{seal.ReasonForeign}, span(0, 12), false},
		{"truncated stream", func(o, _, _ *frameMaker) [][]byte {
			return [][]byte{o.frame(0, 10, false), o.frame(10, 20, false)}
		}, []seal.Reason{seal.ReasonTruncated}, span(0, 20), true},
		{"unadmitted sender", func(o, _, u *frameMaker) [][]byte {
			return [][]byte{u.frame(200, 210, false), o.frame(0, 10, false), o.frame(10, 12, true)}
		}, []seal.Reason{seal.ReasonUnknownEpoch}, span(0, 12), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			id := fmt.Sprintf("meter-%d", i)
			owner := seal.NewKeyring()
			if _, err := owner.Generate(id, 1); err != nil {
				t.Fatal(err)
			}
			// Another owner's stream key, presented under this stream's scope.
			otherKeys := seal.NewKeyring()
			otherKey, err := otherKeys.Generate("meter-other", 1)
			if err != nil {
				t.Fatal(err)
			}
			secret, _ := otherKey.Bytes()
			forged := seal.NewKeyring()
			if _, err := forged.AddSecret(id, 1, secret); err != nil {
				t.Fatal(err)
			}
			// A sender with a key epoch the job never received.
			unadmitted := seal.NewKeyring()
			if _, err := unadmitted.Generate(id, 2); err != nil {
				t.Fatal(err)
			}
			if err := ingestPlace.ensure(ctx, js, id); err != nil {
				t.Fatal(err)
			}
			frames := tc.frames(newFrameMaker(t, owner, id, 0, 1), newFrameMaker(t, forged, id, 0, 1), newFrameMaker(t, unadmitted, id, 0, 1))
			for k, f := range frames {
				if _, err := js.Publish(ctx, IngestSubject(id, 0), f, jetstream.WithMsgID(fmt.Sprint(k))); err != nil {
					t.Fatal(err)
				}
			}
			var rej rejections
			counter := seal.NewRejectionCounter()
			got, err := readIngest(t, js, id, owner, WithRejectHandler(rej.handler()), WithRejectionCounter(counter), WithEndTimeout(300*time.Millisecond))
			if tc.fails != (err != nil) {
				t.Fatalf("read error %v, want failure %v", err, tc.fails)
			}
			if err != nil {
				var r *seal.Rejection
				if !errors.As(err, &r) || r.Reason != tc.reasons[len(tc.reasons)-1] {
					t.Errorf("error %v is not a rejection for %s", err, tc.reasons[len(tc.reasons)-1])
				}
			}
			var want []string
			for _, r := range tc.reasons {
				want = append(want, string(r))
			}
			if r := rej.list(); !slices.Equal(r, want) {
				t.Errorf("reported rejections %v, want %v", r, want)
			}
			for _, r := range tc.reasons {
				if n := counterValue(t, counter, "ingest", string(r)); n < 1 {
					t.Errorf("rejection %s not counted", r)
				}
			}
			if w := households0(tc.emitted...); !slices.Equal(got, w) {
				t.Errorf("emitted records at %v, want %v", got, w)
			}
		})
	}
}

// TestIngestSourceParallelResume reads a 3-partition stream with two
// subtasks, then resumes a second source from the first's positions after
// more frames are published: it emits exactly the new records.
func TestIngestSourceParallelResume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _, js := startNATS(t)
	keys := seal.NewKeyring()
	if _, err := keys.Generate("meter", 1); err != nil {
		t.Fatal(err)
	}
	pub, err := NewPublisher(ctx, js, "meter", meterSchema, keys, 3, WithPadding(256))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if err := pub.Publish(ctx, uint32(i%3), batchOf(meterReading(i))); err != nil {
			t.Fatal(err)
		}
	}
	first, err := NewIngestSource(js, "meter", 3, keys, WithEndTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	// Without last frames the first reader ends truncated, having emitted
	// everything published so far.
	got := map[int64]int{}
	collect := func(b *record.Batch) error {
		for _, r := range b.Records {
			got[r.Time]++
		}
		return nil
	}
	for sub := range 2 {
		err := first.Source()(ctx, runtime.Split{Subtask: sub, Parallelism: 2, Schema: meterSchema}, collect)
		if seal.ReasonOf(err) != seal.ReasonTruncated {
			t.Fatalf("subtask %d: %v, want a truncated stream", sub, err)
		}
	}
	if len(got) != 30 {
		t.Fatalf("first read emitted %d distinct records, want 30", len(got))
	}
	for i := 30; i < 45; i++ {
		if err := pub.Publish(ctx, uint32(i%3), batchOf(meterReading(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, 0, batchOf(meterReading(99))); err == nil {
		t.Error("publishing after Close succeeded")
	}
	second, err := NewIngestSource(js, "meter", 3, keys, WithResume(first.Positions()))
	if err != nil {
		t.Fatal(err)
	}
	got = map[int64]int{}
	for sub := range 2 {
		if err := second.Source()(ctx, runtime.Split{Subtask: sub, Parallelism: 2, Schema: meterSchema}, collect); err != nil {
			t.Fatalf("resumed subtask %d: %v", sub, err)
		}
	}
	if len(got) != 15 {
		t.Errorf("resumed read emitted %d distinct records, want the 15 new ones", len(got))
	}
	for i := 30; i < 45; i++ {
		if got[meterReading(i).Time] != 1 {
			t.Errorf("record %d emitted %d times after resuming, want once", i, got[meterReading(i).Time])
		}
	}
}

// TestReadOutputRefusesIncompleteStreams checks that a recipient is told
// when an output stream lacks a partition's end or holds a bad frame.
func TestReadOutputRefusesIncompleteStreams(t *testing.T) {
	_, _, js := startNATS(t)
	for i, tc := range []struct {
		name   string
		attack func(ctx context.Context, t *testing.T, s jetstream.Stream)
		reason seal.Reason
	}{
		{"complete", func(context.Context, *testing.T, jetstream.Stream) {}, ""},
		{"partition end deleted", func(ctx context.Context, t *testing.T, s jetstream.Stream) {
			info, err := s.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.DeleteMsg(ctx, info.State.LastSeq); err != nil {
				t.Fatal(err)
			}
		}, seal.ReasonTruncated},
		{"middle frame deleted", func(ctx context.Context, t *testing.T, s jetstream.Stream) {
			if err := s.DeleteMsg(ctx, 1); err != nil {
				t.Fatal(err)
			}
		}, seal.ReasonGap},
		{"everything purged", func(ctx context.Context, t *testing.T, s jetstream.Stream) {
			if err := s.Purge(ctx); err != nil {
				t.Fatal(err)
			}
		}, seal.ReasonTruncated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			id := fmt.Sprintf("out-%d", i)
			keys := seal.NewKeyring()
			if _, err := keys.Generate(id, 1); err != nil {
				t.Fatal(err)
			}
			sink, err := NewOutputSink(ctx, js, id, meterSchema, keys, 2)
			if err != nil {
				t.Fatal(err)
			}
			for n := range 6 {
				if err := sink.Sink()(runtime.Split{Subtask: n % 2, Parallelism: 2}, batchOf(meterReading(n))); err != nil {
					t.Fatal(err)
				}
			}
			if err := sink.Close(ctx); err != nil {
				t.Fatal(err)
			}
			s, err := js.Stream(ctx, OutputStreamPrefix+id)
			if err != nil {
				t.Fatal(err)
			}
			tc.attack(ctx, t, s)
			recs, err := ReadOutput(ctx, js, id, meterSchema, keys)
			if tc.reason == "" {
				if err != nil || len(recs) != 6 {
					t.Fatalf("ReadOutput: %d records, %v; want 6", len(recs), err)
				}
				return
			}
			if got := seal.ReasonOf(err); got != tc.reason {
				t.Fatalf("ReadOutput: %d records, error %v; want a %s rejection", len(recs), err, tc.reason)
			}
		})
	}
}

// TestPublisherContinuesPastForgedFrames appends frames the storage made up
// (sealed with a key of its own, and plain garbage) after an owner's frames:
// a restarted publisher continues the sealed sequence after the owner's last
// authentic frame, and a reader gets every owner record once and refuses the
// forged frames.
func TestPublisherContinuesPastForgedFrames(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _, js := startNATS(t)
	keys := seal.NewKeyring()
	if _, err := keys.Generate("meter", 1); err != nil {
		t.Fatal(err)
	}
	pub, err := NewPublisher(ctx, js, "meter", meterSchema, keys, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := pub.Publish(ctx, 0, batchOf(meterReading(i))); err != nil {
			t.Fatal(err)
		}
	}
	forger := seal.NewKeyring()
	if _, err := forger.Generate("meter", 1); err != nil {
		t.Fatal(err)
	}
	fs, err := seal.NewSealer(forger, seal.KindIngest, "meter", 0, seal.WithStartSeq(6))
	if err != nil {
		t.Fatal(err)
	}
	forged, err := fs.Seal(nil, []byte("forged"), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range [][]byte{forged, []byte("garbage")} {
		if _, err := js.Publish(ctx, IngestSubject("meter", 0), f); err != nil {
			t.Fatal(err)
		}
	}
	again, err := NewPublisher(ctx, js, "meter", meterSchema, keys, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := 5; i < 10; i++ {
		if err := again.Publish(ctx, 0, batchOf(meterReading(i))); err != nil {
			t.Fatalf("publishing after forged frames: %v", err)
		}
	}
	if err := again.Close(ctx); err != nil {
		t.Fatal(err)
	}
	var rejected atomic.Int32
	src, err := NewIngestSource(js, "meter", 1, keys, WithRejectHandler(func(string, string, error) { rejected.Add(1) }))
	if err != nil {
		t.Fatal(err)
	}
	got := map[int64]int{}
	if err := src.Source()(ctx, runtime.Split{Subtask: 0, Parallelism: 1, Schema: meterSchema}, func(b *record.Batch) error {
		for _, r := range b.Records {
			got[r.Time]++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 10 {
		t.Fatalf("read %d distinct records, want 10", len(got))
	}
	for ts, n := range got {
		if n != 1 {
			t.Fatalf("record at %d read %d times", ts, n)
		}
	}
	if rejected.Load() != 2 {
		t.Fatalf("%d frames rejected, want the 2 forged ones", rejected.Load())
	}
}
