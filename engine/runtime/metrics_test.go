package runtime

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/operator"
	"github.com/sealflow/sealflow/engine/record"
)

// passSpec sends the test events from a source straight to a sink: with
// chaining disabled, two tasks and one exchange.
func passSpec() *jobspec.Spec {
	return &jobspec.Spec{
		Name: "pass", Schemas: map[string][]jobspec.Field{"ev": eventsSchema},
		Nodes: []jobspec.Node{
			{ID: "src", Kind: jobspec.KindSource, Params: jobspec.Params{Stream: "events", Schema: "ev", TimeField: "ts", Watermark: &jobspec.Watermark{MaxOutOfOrdernessMs: 10}}},
			{ID: "out", Kind: jobspec.KindSink, Inputs: []string{"src"}, Params: jobspec.Params{Stream: "results"}},
		},
	}
}

// slowed returns src with a pause after every batch it emits.
func slowed(src Source, pause time.Duration) Source {
	return func(ctx context.Context, split Split, emit func(*record.Batch) error) error {
		return src(ctx, split, func(b *record.Batch) error {
			time.Sleep(pause)
			return emit(b)
		})
	}
}

func TestProbeBackpressure(t *testing.T) {
	const (
		batch   = 64
		batches = 60
		n       = batch * batches
		pause   = 2 * time.Millisecond
	)
	gen := GeneratorSource(n, batch, func(i int64, r *record.Record) error { event(i, r); return nil })
	tests := []struct {
		name     string
		src      Source
		sinkWait time.Duration
		min, max float64 // bounds of the source task's backpressure
	}{
		// The sink takes 2 ms a frame, the source none: the source waits
		// for channel space almost all the time.
		{"slow consumer", gen, pause, 0.5, 1},
		// The source takes 2 ms a batch, the sink none: sends never wait.
		{"slow producer", slowed(gen, pause), 0, 0, 0.1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var probe atomic.Pointer[Probe]
			var mid Live // read while the run is going
			var got atomic.Int64
			sink := func(_ Split, b *record.Batch) error {
				if got.Add(int64(b.Len())) == n/2 {
					mid = probe.Load().Read()
				}
				time.Sleep(tt.sinkWait)
				return nil
			}
			_, err := Run(context.Background(), passSpec(), Options{
				Sources: map[string]Source{"events": tt.src}, Sinks: map[string]Sink{"results": sink},
				DisableChaining: true, BatchSize: batch, LocalCapacity: 2, WatermarkInterval: -1,
				Observer: ObserverFunc(probe.Store),
			})
			if err != nil {
				t.Fatal(err)
			}
			end := probe.Load().Read()
			if len(end.Tasks) != 2 || !end.Tasks[0].Producing || end.Tasks[1].Producing {
				t.Fatalf("tasks = %+v, want a producing source task and a sink task", end.Tasks)
			}
			bp := end.Backpressure(Live{})
			t.Logf("backpressure %.3f (blocked %v of %v)", bp, end.Tasks[0].Blocked, end.At.Sub(end.Started))
			if bp < tt.min || bp > tt.max {
				t.Errorf("source task backpressure = %.3f, want in [%.2f, %.2f]", bp, tt.min, tt.max)
			}
			if end.Tasks[0].Frames < batches || end.Tasks[0].Bytes == 0 {
				t.Errorf("source task sent %d frames, %d bytes; want at least %d frames", end.Tasks[0].Frames, end.Tasks[0].Bytes, batches)
			}

			// Mid-run: counters are live, watermarks have advanced and lag
			// behind the events' time.
			if mid.At.IsZero() {
				t.Fatal("the sink never read the probe mid-run")
			}
			src, out := mid.Nodes[0], mid.Nodes[1]
			if src.ID != "src" || out.ID != "out" {
				t.Fatalf("nodes = %+v, want src then out", mid.Nodes)
			}
			if out.RecordsIn < n/2-batch || out.RecordsIn > n/2 || src.RecordsOut < out.RecordsIn || src.RecordsOut == n && tt.sinkWait == 0 {
				t.Errorf("mid-run: src out %d, sink in %d; want the sink at about %d of %d", src.RecordsOut, out.RecordsIn, n/2, n)
			}
			// Event i is at 1_000_000+i ms (±5); the watermark is 11 ms
			// behind the newest event, and may be one batch ahead of the
			// counters (published after the batch).
			for _, node := range []LiveNode{src, out} {
				if hi := 1_000_000 + src.RecordsOut + batch; !node.HasWatermark || node.Watermark < 1_000_000 || node.Watermark > hi {
					t.Errorf("mid-run: node %s watermark %d (has %v), want in [1000000, %d]", node.ID, node.Watermark, node.HasWatermark, hi)
				}
			}
			if out.Watermark > src.Watermark {
				t.Errorf("mid-run: the sink's watermark %d is ahead of the source's %d", out.Watermark, src.Watermark)
			}
			if lag, ok := out.Lag(time.UnixMilli(1_000_000 + n)); !ok || lag <= 0 || lag > n*time.Millisecond {
				t.Errorf("mid-run: sink lag = %v, %v; want between 0 and %v", lag, ok, n*time.Millisecond)
			}

			// At the end: every record counted, watermarks final.
			for _, node := range end.Nodes {
				if node.ID == "src" && node.RecordsOut != n || node.ID == "out" && node.RecordsIn != n {
					t.Errorf("end: node %s in %d out %d, want %d", node.ID, node.RecordsIn, node.RecordsOut, n)
				}
				if node.Watermark != operator.FinalWatermark {
					t.Errorf("end: node %s watermark %d, want final", node.ID, node.Watermark)
				}
				if _, ok := node.Lag(time.Now()); ok {
					t.Errorf("end: node %s reports a lag after the end of its input", node.ID)
				}
			}
		})
	}
}

func TestLiveBackpressureBetweenSnapshots(t *testing.T) {
	t0 := time.Unix(1000, 0)
	snap := func(at time.Duration, blocked ...time.Duration) Live {
		l := Live{Started: t0, At: t0.Add(at)}
		for _, b := range blocked {
			l.Tasks = append(l.Tasks, LiveTask{Subtasks: 2, Producing: true, Blocked: b})
		}
		return l
	}
	tests := []struct {
		name        string
		since, live Live
		want        float64
	}{
		{"since start", Live{}, snap(10*time.Second, 4*time.Second, 10*time.Second), 0.5},
		{"between snapshots", snap(10*time.Second, 0, 10*time.Second), snap(20*time.Second, 20*time.Second, 10*time.Second), 1},
		{"idle window", snap(10*time.Second, 5*time.Second), snap(20*time.Second, 5*time.Second), 0},
		{"no time passed", snap(10*time.Second, 0), snap(10*time.Second, time.Second), 0},
		{"no producers", Live{}, Live{Started: t0, At: t0.Add(time.Second), Tasks: []LiveTask{{Subtasks: 1, Blocked: time.Second}}}, 0},
	}
	for _, tt := range tests {
		if got := tt.live.Backpressure(tt.since); got != tt.want {
			t.Errorf("%s: Backpressure = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// benchObserved is benchRun with an Observer whose probe is read every
// 10 ms, as a scraping worker would (far more often).
func benchObserved(b *testing.B, spec *jobspec.Spec) {
	const events = 1 << 20
	ctx := context.Background()
	var wall, cpu time.Duration
	b.ResetTimer()
	for range b.N {
		var probe atomic.Pointer[Probe]
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				case <-time.After(10 * time.Millisecond):
					if p := probe.Load(); p != nil {
						_ = p.Read()
					}
				}
			}
		}()
		start := time.Now()
		c0 := cpuTime()
		_, err := Run(ctx, spec, Options{
			Sources:  map[string]Source{"bids": GeneratorSource(events, 512, bid)},
			Sinks:    map[string]Sink{"out": func(_ Split, b *record.Batch) error { return nil }},
			Observer: ObserverFunc(probe.Store),
		})
		wall += time.Since(start)
		cpu += cpuTime() - c0
		close(stop)
		<-done
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(events)*float64(b.N)/wall.Seconds(), "events/s")
	if cpu > 0 {
		b.ReportMetric(float64(events)*float64(b.N)/cpu.Seconds(), "events/cpu-s")
	}
}

func BenchmarkStatelessLocalObserved(b *testing.B) { benchObserved(b, statelessSpec()) }

func BenchmarkWindowedLocalObserved(b *testing.B) { benchObserved(b, windowedBidSpec()) }
