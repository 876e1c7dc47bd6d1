package operator

import (
	"syscall"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

// discard is an Emitter that only counts.
type discard struct{ n, side, wms int }

func (d *discard) Emit(record.Record)             { d.n++ }
func (d *discard) EmitSide(string, record.Record) { d.side++ }
func (d *discard) EmitWatermark(int64)            { d.wms++ }

// benchWindow feeds b.N random records (key, price, seq) over keys keys, 10
// records per event-time millisecond, in batches of 1000 each followed by a
// watermark 100 ms behind, and reports ns and allocations per record.
func benchWindow(b *testing.B, cfg WindowConfig, keys int) {
	op, err := NewWindowAggregate(cfg)
	if err != nil {
		b.Fatal(err)
	}
	const batchSize = 1000
	batch := record.Batch{Records: make([]record.Record, batchSize)}
	for i := range batch.Records {
		batch.Records[i].Values = []record.Value{record.Int(0), record.Int(0), record.Int(int64(i))}
	}
	x := uint64(1)
	var out discard
	b.ReportAllocs()
	cpu0 := cpuNanos()
	b.ResetTimer()
	for n := 0; n < b.N; n += batchSize {
		for i := range batch.Records {
			r := &batch.Records[i]
			x = x*6364136223846793005 + 1442695040888963407
			r.Time = int64(n+i) / 10
			r.Values[0].I = int64(x>>33) % int64(keys)
			r.Values[1].I = int64(x>>20) % 10000
		}
		if err := op.ProcessBatch(0, &batch, &out); err != nil {
			b.Fatal(err)
		}
		op.ProcessWatermark(0, int64(n+batchSize)/10-100, &out)
	}
	op.Finish(&out)
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/record")
	b.ReportMetric(float64(cpuNanos()-cpu0)/float64(b.N), "cpu-ns/record")
	b.ReportMetric(float64(out.n)/float64(b.N), "results/record")
}

func BenchmarkTumblingCount(b *testing.B) {
	for _, keys := range []int{1000, 10000, 100000} {
		b.Run(itoa(keys)+"keys", func(b *testing.B) {
			benchWindow(b, WindowConfig{Windowing: Tumbling(10000), Key: KeyOf(0), KeyFields: []int{0},
				Aggs: []Agg{{Kind: AggCount}}}, keys)
		})
	}
}

func BenchmarkSlidingMaxRows(b *testing.B) {
	for _, keys := range []int{1000, 10000, 100000} {
		b.Run(itoa(keys)+"keys", func(b *testing.B) {
			benchWindow(b, WindowConfig{Windowing: Sliding(10000, 2000), Key: KeyOf(0),
				Aggs: []Agg{{Kind: AggMaxRows, Field: 1}}}, keys)
		})
	}
}

func BenchmarkSlidingCount(b *testing.B) { // Nexmark q5's first stage: bids per auction
	for _, keys := range []int{1000, 10000} {
		b.Run(itoa(keys)+"keys", func(b *testing.B) {
			benchWindow(b, WindowConfig{Windowing: Sliding(10000, 2000), Key: KeyOf(0), KeyFields: []int{0},
				Aggs: []Agg{{Kind: AggCount}}}, keys)
		})
	}
}

func BenchmarkGlobalTumblingMaxRows(b *testing.B) { // Nexmark q7's shape
	benchWindow(b, WindowConfig{Windowing: Tumbling(10000), Aggs: []Agg{{Kind: AggMaxRows, Field: 1}}}, 1)
}

func itoa(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return itoa(n/1000) + "k"
	}
	s := ""
	for {
		s = string(rune('0'+n%10)) + s
		n /= 10
		if n == 0 {
			return s
		}
	}
}

// cpuNanos returns the process's user+system CPU time, which (unlike wall
// time) stays meaningful on a machine shared with other jobs; it includes the
// garbage collector's work on other threads.
func cpuNanos() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkRegularJoin has Nexmark q3's shape: 10,000 persons on the left,
// b.N auctions on the right, each auction joining its seller.
func BenchmarkRegularJoin(b *testing.B) {
	op, err := NewRegularJoin(JoinConfig{LeftKey: KeyOf(0), RightKey: KeyOf(1)})
	if err != nil {
		b.Fatal(err)
	}
	const persons = 10000
	var out discard
	var pb record.Batch
	for i := 0; i < persons; i++ {
		pb.Records = append(pb.Records, record.Record{Time: int64(i), Values: []record.Value{record.Int(int64(i)), record.String("name"), record.String("OR")}})
	}
	op.ProcessBatch(Left, &pb, &out)
	const batchSize = 1000
	batch := record.Batch{Records: make([]record.Record, batchSize)}
	for i := range batch.Records {
		batch.Records[i].Values = []record.Value{record.Int(0), record.Int(0), record.Int(10)}
	}
	b.ReportAllocs()
	cpu0 := cpuNanos()
	b.ResetTimer()
	for n := 0; n < b.N; n += batchSize {
		for i := range batch.Records {
			r := &batch.Records[i]
			r.Time = int64(n + i)
			r.Values[0].I = int64(n + i)
			r.Values[1].I = int64((n + i) % persons)
		}
		if err := op.ProcessBatch(Right, &batch, &out); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/record")
	b.ReportMetric(float64(cpuNanos()-cpu0)/float64(b.N), "cpu-ns/record")
	b.ReportMetric(float64(out.n)/float64(b.N), "results/record")
}
