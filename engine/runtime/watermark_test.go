package runtime

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
)

func TestWindowSpan(t *testing.T) {
	win := func(w jobspec.Window) jobspec.Node {
		return jobspec.Node{Kind: jobspec.KindWindowAggregate, Params: jobspec.Params{Window: &w}}
	}
	for _, tc := range []struct {
		name  string
		nodes []jobspec.Node
		want  int64
	}{
		{"no windows", []jobspec.Node{{Kind: jobspec.KindSource}, {Kind: jobspec.KindMap}}, -1},
		{"tumbling", []jobspec.Node{win(jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 10_000})}, 2_500},
		{"sliding: its size, not its slide", []jobspec.Node{win(jobspec.Window{Type: jobspec.WindowSliding, SizeMs: 10_000, SlideMs: 2_000})}, 2_500},
		{"session: its gap", []jobspec.Node{win(jobspec.Window{Type: jobspec.WindowSession, GapMs: 400})}, 100},
		{"the shortest of several", []jobspec.Node{
			win(jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 60_000}),
			{Kind: jobspec.KindWindowJoin, Params: jobspec.Params{Window: &jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 8_000}}},
		}, 2_000},
		{"at least 1 ms", []jobspec.Node{win(jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 2})}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := windowSpan(&jobspec.Spec{Nodes: tc.nodes}); got != tc.want {
				t.Fatalf("windowSpan = %d, want %d", got, tc.want)
			}
		})
	}
}

// TestWatermarkSpanFiresWhileReading runs windowedSpec (10 ms windows) with a
// wall-clock watermark interval of an hour. The source reads 2,000 events
// (2 s of event time), then waits for the sink to receive half of the
// results before it ends. The default span (2.5 ms of event time) sends
// watermarks as event time advances, so windows fire while the source reads;
// with no span only the first watermark is sent (the interval starts with
// it), which fires the windows of the first batch, and the rest wait for the
// final watermark.
func TestWatermarkSpanFiresWhileReading(t *testing.T) {
	const n = 2_000
	want := int64(len(expectWindowed(n)))
	for _, tc := range []struct {
		name     string
		span     int64
		wait     time.Duration
		wantFire bool
	}{
		{"default span", 0, 20 * time.Second, true},
		{"no span", -1, 300 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var results atomic.Int64
			fired := make(chan struct{})
			var closed atomic.Bool
			gen := GeneratorSource(n, 100, func(i int64, r *record.Record) error { event(i, r); return nil })
			var firedWhileReading bool
			src := func(ctx context.Context, split Split, emit func(*record.Batch) error) error {
				if err := gen(ctx, split, emit); err != nil {
					return err
				}
				select {
				case <-fired:
					firedWhileReading = true
				case <-time.After(tc.wait):
				case <-ctx.Done():
					return ctx.Err()
				}
				return nil
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var c Collector
			collect := c.Sink()
			_, err := Run(ctx, windowedSpec(1), Options{
				Sources: map[string]Source{"events": src},
				Sinks: map[string]Sink{"results": func(s Split, b *record.Batch) error {
					if results.Add(int64(b.Len())) >= want/2 && closed.CompareAndSwap(false, true) {
						close(fired)
					}
					return collect(s, b)
				}},
				WatermarkInterval: time.Hour,
				WatermarkSpan:     tc.span,
			})
			if err != nil {
				t.Fatal(err)
			}
			if firedWhileReading != tc.wantFire {
				t.Fatalf("a window fired while the source read: %v, want %v", firedWhileReading, tc.wantFire)
			}
			if results.Load() != want {
				t.Fatalf("sink got %d rows, want %d", results.Load(), want)
			}
		})
	}
}
