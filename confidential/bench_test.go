package confidential

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/exchange"
	"github.com/sealflow/sealflow/nexmark"
	"github.com/sealflow/sealflow/seal"
)

// benchEvents is the number of Nexmark events per run.
const benchEvents = 200_000

// BenchmarkNexmarkSealedVsPlaintext runs Nexmark queries with the generator in
// the job, parallelism 2 and NATS exchanges (chained as `nexmark run` plans
// them, or unchained so every edge is an exchange; q1 chained has no
// exchange at all), alternating a sealed run
// (ExchangeCodec) and a plaintext run (runtime.IdentityCodec) on one server,
// and reports events/s for each and their ratio.
func BenchmarkNexmarkSealedVsPlaintext(b *testing.B) {
	_, nc, _ := startNATS(b)
	tr, err := exchange.NewNATS(nc, exchange.NATSOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		q       string
		noChain bool
	}{{"q1", true}, {"q5", false}, {"q5", true}} {
		q := tc.q
		name := q + "/chained"
		if tc.noChain {
			name = q + "/unchained"
		}
		b.Run(name, func(b *testing.B) {
			var wall [2]time.Duration // plaintext, sealed
			var bytes [2]int64
			var cpu [2]time.Duration
			var codecTime time.Duration
			run := func(i int, sealed bool) {
				job := fmt.Sprintf("bench-%s-%d-%v", q, i, sealed)
				var codec runtime.FrameCodec = runtime.IdentityCodec{}
				var timed TimedCodec
				if sealed {
					c, err := NewEphemeralExchangeCodec(job)
					if err != nil {
						b.Fatal(err)
					}
					timed = NewTimedCodec(c)
					codec = timed
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				cpu0 := cpuTime()
				defer cancel()
				res, err := nexmark.Run(ctx, nexmark.RunOptions{
					Query:        q,
					QueryOptions: nexmark.QueryOptions{Parallelism: 2},
					Input:        nexmark.Input{Events: benchEvents, Config: nexmark.DefaultConfig(1)},
					Engine:       runtime.Options{Transport: tr, Codec: codec, JobID: job, DisableChaining: tc.noChain},
				})
				if err != nil {
					b.Fatal(err)
				}
				k := 0
				if sealed {
					k = 1
				}
				wall[k] += res.Wall
				cpu[k] += cpuTime() - cpu0
				bytes[k] += res.Bytes
				if timed != nil {
					codecTime += timed.Spent()
				}
			}
			b.ResetTimer()
			for i := range b.N {
				// Alternate which goes first, so warm-up and drift hit both.
				run(i, i%2 == 1)
				run(i, i%2 == 0)
			}
			plain := float64(benchEvents*b.N) / wall[0].Seconds()
			sealed := float64(benchEvents*b.N) / wall[1].Seconds()
			b.ReportMetric(plain, "plain-ev/s")
			b.ReportMetric(sealed, "sealed-ev/s")
			b.ReportMetric(sealed/plain, "sealed/plain")
			// Process CPU time (the engine and the embedded server) per event:
			// steadier than wall time on a shared machine.
			b.ReportMetric(float64(cpu[0].Nanoseconds())/float64(benchEvents*b.N), "plain-cpu-ns/ev")
			b.ReportMetric(float64(cpu[1].Nanoseconds())/float64(benchEvents*b.N), "sealed-cpu-ns/ev")
			// The CPU time spent inside Seal and Open, against the sealed runs'
			// CPU time: the share of the work that sealing is, which is its
			// throughput cost when the pipeline is CPU-bound.
			b.ReportMetric(float64(codecTime.Nanoseconds())/float64(benchEvents*b.N), "codec-ns/ev")
			b.ReportMetric(float64(codecTime.Nanoseconds())/float64(cpu[1].Nanoseconds()), "codec-share")
			b.ReportMetric(float64(bytes[1])/float64(benchEvents*b.N), "sealed-bytes/ev")
			b.ReportMetric(float64(bytes[1]-bytes[0])/float64(max(bytes[0], 1)), "byte-overhead")
		})
	}
}

// cpuTime returns the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkExchangeCodec seals and opens one exchange frame of each size on
// one channel: the codec's own cost per frame, without the engine.
func BenchmarkExchangeCodec(b *testing.B) {
	for _, size := range []int{1 << 10, 16 << 10, 256 << 10} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			c, err := NewEphemeralExchangeCodec("bench")
			if err != nil {
				b.Fatal(err)
			}
			pt := make([]byte, size)
			var sealed, opened []byte
			b.SetBytes(int64(size))
			b.ReportAllocs()
			h := runtime.FrameHeader{Job: "bench", Edge: 1, From: 0, To: 1}
			for i := range b.N {
				h.Seq = uint64(i + 1)
				var err error
				if sealed, err = c.Seal(h, sealed[:0], pt); err != nil {
					b.Fatal(err)
				}
				if opened, err = c.Open(h, opened[:0], sealed); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkIngestSealedVsPlaintext publishes meter readings through a
// Publisher into JetStream (file storage, relaxed sync) and reads them back
// with an IngestSource, sealed and in plaintext alternately, and reports
// records/s for each.
func BenchmarkIngestSealedVsPlaintext(b *testing.B) {
	const records, batch = 20_000, 500
	_, _, js := startNATS(b)
	var recs []record.Record
	for i := range records {
		recs = append(recs, meterReading(i))
	}
	var wall [2]time.Duration
	run := func(i int, sealed bool) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		id := fmt.Sprintf("bench-%d-%v", i, sealed)
		keys := seal.NewKeyring()
		var opts []Option
		if sealed {
			if _, err := keys.Generate(id, 1); err != nil {
				b.Fatal(err)
			}
		} else {
			opts = append(opts, WithPlaintext())
		}
		start := time.Now()
		pub, err := NewPublisher(ctx, js, id, meterSchema, keys, 2, opts...)
		if err != nil {
			b.Fatal(err)
		}
		for k := 0; k < records; k += batch {
			if err := pub.Publish(ctx, uint32(k/batch%2), batchOf(recs[k:k+batch]...)); err != nil {
				b.Fatal(err)
			}
		}
		if err := pub.Close(ctx); err != nil {
			b.Fatal(err)
		}
		src, err := NewIngestSource(js, id, 2, keys, opts...)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		if err := src.Source()(ctx, runtime.Split{Parallelism: 1, Schema: meterSchema}, func(bt *record.Batch) error {
			n += bt.Len()
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		if n != records {
			b.Fatalf("read %d records, published %d", n, records)
		}
		k := 0
		if sealed {
			k = 1
		}
		wall[k] += time.Since(start)
	}
	for i := range b.N {
		run(i, i%2 == 1)
		run(i, i%2 == 0)
	}
	plain := float64(records*b.N) / wall[0].Seconds()
	sealed := float64(records*b.N) / wall[1].Seconds()
	b.ReportMetric(plain, "plain-rec/s")
	b.ReportMetric(sealed, "sealed-rec/s")
	b.ReportMetric(sealed/plain, "sealed/plain")
}
