package runtime

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/substrate"
)

// TestJetStreamSource publishes the test events as JSON to a stream with two
// partition subjects (plus malformed messages), runs the windowed job reading
// them with one subtask per partition, and checks the result and the count of
// malformed records.
func TestJetStreamSource(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := substrate.Start(ctx, substrate.Options{StoreDir: t.TempDir(), Sync: substrate.SyncRelaxed})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	nc, err := substrate.Connect(ctx, s.ClientURL(), "test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := substrate.EnsureStream(ctx, js, jetstream.StreamConfig{Name: "EVENTS", Subjects: []string{"events.>"}}); err != nil {
		t.Fatal(err)
	}
	const n, parts = 3000, 2
	var rec record.Record
	for i := range int64(n) {
		event(i, &rec)
		msg := fmt.Sprintf(`{"id":%d,"k":%d,"v":%d,"ts":%d}`, rec.Values[0].I, rec.Values[1].I, rec.Values[2].I, rec.Values[3].I)
		if _, err := js.PublishAsync(fmt.Sprintf("events.%d", i%parts), []byte(msg)); err != nil {
			t.Fatal(err)
		}
		if i%1000 == 0 {
			if _, err := js.Publish(ctx, "events.1", []byte(`{"id":"not a number"}`)); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("publishing timed out")
	}
	src := JetStreamSource(js, JetStreamSourceConfig{
		Stream:    "EVENTS",
		Subjects:  func(sp Split) []string { return []string{fmt.Sprintf("events.%d", sp.Subtask)} },
		NewDecode: JSONDecode("ts"),
		FetchSize: 100,
	})
	var c Collector
	res, err := Run(ctx, windowedSpec(parts), Options{Sources: map[string]Source{"events": src}, Sinks: map[string]Sink{"results": c.Sink()}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rows(c.Records()), expectWindowed(n); !slices.Equal(got, want) {
		t.Fatalf("got %d rows, want %d", len(got), len(want))
	}
	if got := res.Nodes["src"].Side["error"]; got != 3 {
		t.Fatalf("counted %d malformed records, want 3", got)
	}
	if got := res.Nodes["src"].RecordsIn; got != n {
		t.Fatalf("source read %d records, want %d", got, n)
	}

	// Round trip: write the results to a stream with the JetStream sink,
	// then read them back with the source.
	if _, err := substrate.EnsureStream(ctx, js, jetstream.StreamConfig{Name: "RESULTS", Subjects: []string{"results.>"}}); err != nil {
		t.Fatal(err)
	}
	sink := JetStreamSink(js, JetStreamSinkConfig{Subject: func(sp Split) string { return fmt.Sprintf("results.%d", sp.Subtask) }, Encode: BatchEncode})
	if _, err := Run(ctx, windowedSpec(parts), Options{Sources: map[string]Source{"events": src}, Sinks: map[string]Sink{"results": sink}}); err != nil {
		t.Fatal(err)
	}
	copySpec := &jobspec.Spec{Name: "copy", Schemas: map[string][]jobspec.Field{"res": {
		{Name: "k", Type: record.TypeInt}, {Name: "window_start", Type: record.TypeInt}, {Name: "window_end", Type: record.TypeInt},
		{Name: "n", Type: record.TypeInt}, {Name: "total", Type: record.TypeInt}}},
		Nodes: []jobspec.Node{
			{ID: "in", Kind: jobspec.KindSource, Params: jobspec.Params{Stream: "results", Schema: "res"}},
			{ID: "out", Kind: jobspec.KindSink, Inputs: []string{"in"}, Params: jobspec.Params{Stream: "copy"}},
		}}
	var back Collector
	_, err = Run(ctx, copySpec, Options{
		Sources: map[string]Source{"results": JetStreamSource(js, JetStreamSourceConfig{Stream: "RESULTS", NewDecode: BatchDecode()})},
		Sinks:   map[string]Sink{"copy": back.Sink()},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rows(back.Records()), expectWindowed(n); !slices.Equal(got, want) {
		t.Fatalf("read back %d rows from the sink's stream, want %d", len(got), len(want))
	}
}
