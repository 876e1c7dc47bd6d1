package substrate

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// benchFrame is the payload size of BenchmarkPublish, the order of one sealed
// frame of records.
const benchFrame = 4 << 10

// BenchmarkPublish measures acknowledged JetStream publishes of 4 KiB
// (sealed-frame-sized) messages to a file-backed stream under each durability
// setting: "sync" flushes every write before acknowledging it (the default,
// for data of record), "relaxed" acknowledges first and flushes every two
// minutes. publish=seq waits for each acknowledgement before the next
// publish; publish=async-N keeps up to N publishes in flight and waits for all
// of them at the end. MB/s counts payload bytes; msgs/s counts acknowledged
// messages. Figures: docs/benchmarks.md, "Durability: sync vs relaxed".
//
//	go test -run '^$' -bench Publish -benchtime 2s -count 5 ./substrate/ | tee new.txt
//	benchstat -col /durability new.txt
func BenchmarkPublish(b *testing.B) {
	for _, d := range []struct {
		name string
		sync Sync
	}{{"sync", SyncAlways}, {"relaxed", SyncRelaxed}} {
		for _, m := range []struct {
			name     string
			inFlight int // 0: sequential
		}{{"seq", 0}, {"async-64", 64}} {
			b.Run("durability="+d.name+"/publish="+m.name, func(b *testing.B) {
				benchPublish(b, d.sync, m.inFlight)
			})
		}
	}
}

func benchPublish(b *testing.B, sync Sync, inFlight int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s, err := Start(ctx, Options{StoreDir: b.TempDir(), Sync: sync})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Shutdown()
	nc, err := Connect(ctx, s.ClientURL(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	opts := []jetstream.JetStreamOpt{}
	if inFlight > 0 {
		opts = append(opts, jetstream.WithPublishAsyncMaxPending(inFlight))
	}
	js, err := jetstream.New(nc, opts...)
	if err != nil {
		b.Fatal(err)
	}
	st, err := EnsureStream(ctx, js, jetstream.StreamConfig{Name: "B", Subjects: []string{"b"}, Storage: jetstream.FileStorage})
	if err != nil {
		b.Fatal(err)
	}
	msg := make([]byte, benchFrame)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	if inFlight == 0 {
		for range b.N {
			if _, err := js.Publish(ctx, "b", msg); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		acks := make([]jetstream.PubAckFuture, 0, b.N)
		for range b.N {
			f, err := js.PublishAsync("b", msg, jetstream.WithStallWait(time.Minute))
			if err != nil {
				b.Fatal(err)
			}
			acks = append(acks, f)
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-ctx.Done():
			b.Fatal("async publishes not acknowledged")
		}
		for _, f := range acks {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				b.Fatalf("async publish failed: %v", err)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	info, err := st.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if info.State.Msgs < uint64(b.N) {
		b.Fatalf("stream holds %d messages after %d acknowledged publishes", info.State.Msgs, b.N)
	}
}
