package demo

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/confidential"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/substrate"
)

// BenchmarkPipeline runs the demo's balancing pipeline — a household's
// meter stream through the edge stage (5 s sums) into an intermediate stream,
// then the regional stage (5 s sums per feeder) into the output stream — over
// JetStream, sealed and plaintext alternately in one run, and reports each
// mode's events per CPU-second and their ratio.
//
//	go test -run '^$' -bench Pipeline -benchtime 3x ./demo
func BenchmarkPipeline(b *testing.B) {
	const readings = 200_000
	ctx := context.Background()
	ns, err := substrate.Start(ctx, substrate.Options{StoreDir: filepath.Join(b.TempDir(), "nats"), Sync: substrate.SyncRelaxed})
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Shutdown()
	nc, err := substrate.Connect(ctx, ns.ClientURL(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	hh := []*household{{id: "h1", feeder: "feeder-north"}}
	man, err := balanceManifest(hh)
	if err != nil {
		b.Fatal(err)
	}
	edge, _ := jobspec.Parse(man.Stages["edge-h1"])
	regional, _ := jobspec.Parse(man.Stages["regional"])
	var cpu [2]float64
	var events [2]float64
	for i := 0; i < b.N; i++ {
		for mode := range 2 { // 0 sealed, 1 plaintext
			run := fmt.Sprintf("r%d-%d", i, mode)
			var opts []confidential.Option
			if mode == 1 {
				opts = append(opts, confidential.WithPlaintext())
			}
			ring := seal.NewKeyring()
			for _, scope := range []string{"meter-" + run, "x-" + run, "out-" + run} {
				if _, err := ring.Generate(scope, 1); err != nil {
					b.Fatal(err)
				}
			}
			// The gateway seals the readings before the clock starts.
			pub, err := confidential.NewPublisher(ctx, js, "meter-"+run, recordSchema(meterFields), ring, 1, opts...)
			if err != nil {
				b.Fatal(err)
			}
			var batch record.Batch
			start := int64(1764057600000)
			for j := 0; j < readings; j++ {
				ts := start + int64(j)*100
				batch.Records = append(batch.Records, record.Record{Time: ts, Values: []record.Value{
					record.String("h1"), record.String("feeder-north"), record.String("SN-1"), record.Float(float64(j%9) / 10), record.Int(ts)}})
				if batch.Len() == 1000 {
					if err := pub.Publish(ctx, 0, &batch); err != nil {
						b.Fatal(err)
					}
					batch.Reset()
				}
			}
			if err := pub.Close(ctx); err != nil {
				b.Fatal(err)
			}
			t0 := cpuSeconds()
			// Edge stage.
			src, err := confidential.NewIngestSource(js, "meter-"+run, 1, ring, opts...)
			if err != nil {
				b.Fatal(err)
			}
			x, err := confidential.NewPublisher(ctx, js, "x-"+run, regionalInSchema(regional), ring, 1, opts...)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := runtime.Run(ctx, edge, runtime.Options{
				Sources: map[string]runtime.Source{"meter-h1": src.Source()},
				Sinks:   map[string]runtime.Sink{"edge-h1": func(sp runtime.Split, bb *record.Batch) error { return x.Publish(ctx, 0, bb) }},
			}); err != nil {
				b.Fatal(err)
			}
			if err := x.Close(ctx); err != nil {
				b.Fatal(err)
			}
			// Regional stage.
			xs, err := confidential.NewIngestSource(js, "x-"+run, 1, ring, opts...)
			if err != nil {
				b.Fatal(err)
			}
			outSchema, _ := man.SinkSchema("grid-balance")
			out, err := confidential.NewOutputSink(ctx, js, "out-"+run, outSchema, ring, 1, opts...)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := runtime.Run(ctx, regional, runtime.Options{
				Sources: map[string]runtime.Source{"edge-h1": xs.Source()},
				Sinks:   map[string]runtime.Sink{"grid-balance": out.Sink()},
			}); err != nil {
				b.Fatal(err)
			}
			if err := out.Close(ctx); err != nil {
				b.Fatal(err)
			}
			cpu[mode] += cpuSeconds() - t0
			events[mode] += readings
		}
	}
	sealed, plain := events[0]/cpu[0], events[1]/cpu[1]
	b.ReportMetric(sealed, "sealed-events/cpu-s")
	b.ReportMetric(plain, "plain-events/cpu-s")
	b.ReportMetric(sealed/plain, "sealed/plain")
}

func regionalInSchema(spec *jobspec.Spec) *record.Schema { return spec.RecordSchema("edge") }

func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
