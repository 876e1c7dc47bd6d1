package runtime

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/exchange"
)

var sideSchema = []jobspec.Field{{Name: "id", Type: record.TypeInt}, {Name: "k", Type: record.TypeInt}, {Name: "ts", Type: record.TypeInt}}

func leftEvent(i int64, r *record.Record) error {
	r.Values = append(r.Values[:0], record.Int(i), record.Int(i%5), record.Int(i*3))
	return nil
}

func rightEvent(i int64, r *record.Record) error {
	r.Values = append(r.Values[:0], record.Int(i), record.Int(i%7), record.Int(i*2+1))
	return nil
}

// TestWindowJoinAndUnion runs a job with two sources feeding both a window
// join (keyed exchanges on both inputs) and a union, at parallelism 1 and 3,
// locally and over NATS, and checks both outputs against direct computation.
func TestWindowJoinAndUnion(t *testing.T) {
	const nl, nr = 600, 900
	var wantJoin, wantUnion []string
	var l, r record.Record
	for i := range int64(nl) {
		leftEvent(i, &l)
		wantUnion = append(wantUnion, fmt.Sprintf("%d %d %d", l.Values[0].I, l.Values[1].I, l.Values[2].I))
		for j := range int64(nr) {
			rightEvent(j, &r)
			lw, rw := l.Values[2].I/10, r.Values[2].I/10
			if l.Values[1].I == r.Values[1].I && lw == rw {
				wantJoin = append(wantJoin, fmt.Sprintf("%d %d %d %d %d %d %d %d", i, l.Values[1].I, l.Values[2].I, j, r.Values[1].I, r.Values[2].I, lw*10, lw*10+10))
			}
		}
	}
	for j := range int64(nr) {
		rightEvent(j, &r)
		wantUnion = append(wantUnion, fmt.Sprintf("%d %d %d", r.Values[0].I, r.Values[1].I, r.Values[2].I))
	}
	sort.Strings(wantJoin)
	sort.Strings(wantUnion)

	src := func(id, stream string) jobspec.Node {
		return jobspec.Node{ID: id, Kind: jobspec.KindSource, Params: jobspec.Params{Stream: stream, Schema: "side", TimeField: "ts", Watermark: &jobspec.Watermark{}}}
	}
	for _, tc := range []struct {
		name string
		nats bool
		par  int
	}{{"local/p1", false, 1}, {"local/p3", false, 3}, {"nats/p3", true, 3}} {
		t.Run(tc.name, func(t *testing.T) {
			spec := &jobspec.Spec{
				Name: "two", Parallelism: tc.par, Schemas: map[string][]jobspec.Field{"side": sideSchema},
				Nodes: []jobspec.Node{
					src("l", "left"), src("r", "right"),
					{ID: "j", Kind: jobspec.KindWindowJoin, Inputs: []string{"l", "r"}, Params: jobspec.Params{
						Window: &jobspec.Window{Type: jobspec.WindowTumbling, SizeMs: 10}, LeftKeys: []string{"k"}, RightKeys: []string{"k"}, RightPrefix: "r_"}},
					{ID: "u", Kind: jobspec.KindUnion, Inputs: []string{"l", "r"}},
					{ID: "joined", Kind: jobspec.KindSink, Inputs: []string{"j"}, Params: jobspec.Params{Stream: "joined"}},
					{ID: "all", Kind: jobspec.KindSink, Inputs: []string{"u"}, Params: jobspec.Params{Stream: "all"}},
				},
			}
			var tr exchange.Transport
			if tc.nats {
				tr = natsTransport(t, 4)
			}
			var joined, all Collector
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := Run(ctx, spec, Options{
				Sources:   map[string]Source{"left": GeneratorSource(nl, 64, leftEvent), "right": GeneratorSource(nr, 64, rightEvent)},
				Sinks:     map[string]Sink{"joined": joined.Sink(), "all": all.Sink()},
				Transport: tr, BatchSize: 64,
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := rows(joined.Records()); !slices.Equal(got, wantJoin) {
				t.Errorf("join: got %d rows, want %d; got %q..., want %q...", len(got), len(wantJoin), got[:min(2, len(got))], wantJoin[:2])
			}
			if got := rows(all.Records()); !slices.Equal(got, wantUnion) {
				t.Errorf("union: got %d rows, want %d", len(got), len(wantUnion))
			}
		})
	}
}

func TestRunRefusesBadSetup(t *testing.T) {
	good := func() *jobspec.Spec { return windowedSpec(1) }
	gen := GeneratorSource(10, 0, func(i int64, r *record.Record) error { event(i, r); return nil })
	var c Collector
	tests := []struct {
		name string
		spec *jobspec.Spec
		o    Options
		want string
	}{
		{"invalid spec", func() *jobspec.Spec { s := good(); s.Nodes[1].Params.Expr = "nosuchfield > 1"; return s }(),
			Options{Sources: map[string]Source{"events": gen}, Sinks: map[string]Sink{"results": c.Sink()}}, "nosuchfield"},
		{"missing source", good(), Options{Sinks: map[string]Sink{"results": c.Sink()}}, `stream "events"`},
		{"missing sink", good(), Options{Sources: map[string]Source{"events": gen}}, `stream "results"`},
		{"failing source", good(), Options{
			Sources: map[string]Source{"events": func(context.Context, Split, func(*record.Batch) error) error { return errors.New("disk on fire") }},
			Sinks:   map[string]Sink{"results": c.Sink()}}, "disk on fire"},
		{"failing sink", good(), Options{Sources: map[string]Source{"events": gen},
			Sinks: map[string]Sink{"results": func(Split, *record.Batch) error { return errors.New("sink full") }}}, "sink full"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := Run(ctx, tc.spec, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// TestRunCancel cancels a run whose source never ends, blocked behind a sink
// that never returns until cancelled: Run must return promptly.
func TestRunCancel(t *testing.T) {
	for _, useNATS := range []bool{false, true} {
		t.Run(fmt.Sprintf("nats=%v", useNATS), func(t *testing.T) {
			var tr exchange.Transport
			if useNATS {
				tr = natsTransport(t, 2)
			}
			ctx, cancel := context.WithCancel(context.Background())
			started := make(chan struct{})
			endless := func(ctx context.Context, _ Split, emit func(*record.Batch) error) error {
				var b record.Batch
				var r record.Record
				for i := int64(0); ; i++ {
					event(i, &r)
					b.Records = append(b.Records[:0], r)
					if err := emit(&b); err != nil {
						return err
					}
				}
			}
			stuck := func(Split, *record.Batch) error {
				select {
				case started <- struct{}{}:
				default:
				}
				<-ctx.Done()
				return ctx.Err()
			}
			done := make(chan error, 1)
			go func() {
				_, err := Run(ctx, windowedSpec(2), Options{Sources: map[string]Source{"events": endless}, Sinks: map[string]Sink{"results": stuck},
					Transport: tr, DisableChaining: true, BatchSize: 4})
				done <- err
			}()
			// The sink sees records only after a window fires, so wait for
			// the first sink call, then cancel.
			select {
			case <-started:
			case err := <-done:
				t.Fatalf("Run ended before cancel: %v", err)
			case <-time.After(20 * time.Second):
				t.Fatal("sink never called")
			}
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("Run after cancel = %v, want context.Canceled", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return within 10 s of cancel")
			}
		})
	}
}

// TestCoalescedWatermarkReachesConsumer runs a following source that sends
// two batches in quick succession and then only empty batches: the second
// batch's watermark, held back to coalesce watermarks, must still be sent and
// fire the window it closes before the input ends.
func TestCoalescedWatermarkReachesConsumer(t *testing.T) {
	for _, useNATS := range []bool{false, true} {
		t.Run(fmt.Sprintf("nats=%v", useNATS), func(t *testing.T) {
			var tr exchange.Transport
			if useNATS {
				tr = natsTransport(t, 4)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			mk := func(id, ts int64) record.Record {
				return record.Record{Values: []record.Value{record.Int(id), record.Int(1), record.Int(2), record.Int(ts)}}
			}
			src := func(ctx context.Context, _ Split, emit func(*record.Batch) error) error {
				if err := emit(&record.Batch{Records: []record.Record{mk(0, 1_000_000), mk(1, 1_000_004)}}); err != nil {
					return err
				}
				if err := emit(&record.Batch{Records: []record.Record{mk(2, 1_000_100)}}); err != nil {
					return err
				}
				pace := time.NewTicker(5 * time.Millisecond)
				defer pace.Stop()
				for {
					select {
					case <-pace.C:
						if err := emit(&record.Batch{}); err != nil {
							return err
						}
					case <-ctx.Done():
						return ctx.Err()
					}
				}
			}
			fired := make(chan string, 1)
			sink := func(_ Split, b *record.Batch) error {
				select {
				case fired <- rows(b.Records)[0]:
				default:
				}
				return nil
			}
			done := make(chan error, 1)
			go func() {
				_, err := Run(ctx, windowedSpec(1), Options{Sources: map[string]Source{"events": src}, Sinks: map[string]Sink{"results": sink},
					Transport: tr, WatermarkInterval: 50 * time.Millisecond})
				done <- err
			}()
			select {
			case row := <-fired:
				if want := "1 1000000 1000010 2 40"; row != want {
					t.Fatalf("first result %q, want %q", row, want)
				}
			case err := <-done:
				t.Fatalf("Run ended before the window fired: %v", err)
			case <-ctx.Done():
				t.Fatal("the window closed by the second batch never fired")
			}
			cancel()
			<-done
		})
	}
}

// TestLateRecordsCounted sends records far behind the watermark and checks
// they are counted as late and reach the late side output.
func TestLateRecordsCounted(t *testing.T) {
	// One source subtask, so the watermark the late records trail is
	// deterministic; two aggregate subtasks.
	spec := windowedSpec(1)
	spec.Nodes[4].Parallelism = 2
	spec.Nodes[4].Params.Window.LateOutput = "late"
	mk := func(id, ts int64) record.Record {
		return record.Record{Values: []record.Value{record.Int(id), record.Int(id % 3), record.Int(2), record.Int(ts)}}
	}
	var recs []record.Record
	for i := range int64(200) {
		recs = append(recs, mk(i, 1_000_000+i))
	}
	// Late records, for keys on both aggregate subtasks.
	for i := range int64(10) {
		recs = append(recs, mk(200+i, 1_000_000))
	}
	var sideLate atomic.Int64
	var c Collector
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := Run(ctx, spec, Options{
		Sources: map[string]Source{"events": SliceSource(recs, 50)}, Sinks: map[string]Sink{"results": c.Sink()},
		WatermarkInterval: -1,
		Side: func(node, name string, rec record.Record) {
			if node == "agg" && name == "late" {
				sideLate.Add(1)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Nodes["agg"].Late; got != 10 {
		t.Errorf("agg counted %d late records, want 10", got)
	}
	if got := res.Nodes["agg"].Side["late"]; got != 10 || sideLate.Load() != 10 {
		t.Errorf("late side output got %d records (callback %d), want 10", got, sideLate.Load())
	}
}
