package substrate

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkPublish measures acknowledged JetStream publishes of 1 KiB to a
// file-backed stream under each sync mode: the cost of flushing every write
// before acknowledging it (the default for data of record).
func BenchmarkPublish(b *testing.B) {
	for _, sync := range []Sync{SyncAlways, SyncRelaxed} {
		for _, async := range []bool{false, true} {
			name := sync.String() + "/sync-publish"
			if async {
				name = sync.String() + "/async-publish"
			}
			b.Run(name, func(b *testing.B) {
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
				js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(256))
				if _, err := EnsureStream(ctx, js, jetstream.StreamConfig{Name: "B", Subjects: []string{"b"}}); err != nil {
					b.Fatal(err)
				}
				msg := make([]byte, 1024)
				b.SetBytes(int64(len(msg)))
				b.ResetTimer()
				for range b.N {
					if async {
						if _, err := js.PublishAsync("b", msg, jetstream.WithStallWait(time.Minute)); err != nil {
							b.Fatal(err)
						}
					} else if _, err := js.Publish(ctx, "b", msg); err != nil {
						b.Fatal(err)
					}
				}
				if async {
					select {
					case <-js.PublishAsyncComplete():
					case <-ctx.Done():
						b.Fatal("async publishes not acknowledged")
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}
