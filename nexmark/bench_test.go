package nexmark

import (
	"context"
	"syscall"
	"testing"
)

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// BenchmarkQuery runs each query on the engine (in-process exchanges,
// parallelism 1) over 200k generated events per iteration, and reports
// events/s of wall time and events per CPU-second (events/s per core).
func BenchmarkQuery(b *testing.B) {
	const events = 200_000
	for _, q := range Queries {
		b.Run(q, func(b *testing.B) {
			cpu0 := cpuSeconds()
			for b.Loop() {
				if _, err := Run(context.Background(), RunOptions{Query: q, Input: Input{Events: events, Config: DefaultConfig(1)}}); err != nil {
					b.Fatal(err)
				}
			}
			cpu := cpuSeconds() - cpu0
			b.ReportMetric(float64(b.N)*events/b.Elapsed().Seconds(), "events/s")
			if cpu > 0 {
				b.ReportMetric(float64(b.N)*events/cpu, "events/cpu-s")
			}
		})
	}
}
