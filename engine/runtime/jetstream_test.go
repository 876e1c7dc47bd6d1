package runtime

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

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
}
