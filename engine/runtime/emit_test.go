package runtime

import (
	"context"
	"runtime"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

// TestEmitAllocatesNothingPerRecord runs windowedSpec (a filter and a keyed
// exchange after the source) over n and 2n events and checks the second run
// allocates less than 0.2 objects per extra record. The filter keeps half of
// the records, so an allocation per record that reaches the exchange shows as
// 0.5. The
// filter and the exchange's routing take a pointer to the record they are
// given; a pointer to the Emit parameter itself moved it to the heap, an
// allocation per record.
func TestEmitAllocatesNothingPerRecord(t *testing.T) {
	mallocs := func(n int64) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := Run(context.Background(), windowedSpec(1), Options{
			Sources: map[string]Source{"events": GeneratorSource(n, 256, func(i int64, r *record.Record) error { event(i, r); return nil })},
			Sinks:   map[string]Sink{"results": func(Split, *record.Batch) error { return nil }},
		})
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatal(err)
		}
		return after.Mallocs - before.Mallocs
	}
	const n = 50_000
	mallocs(n) // warm up
	small, large := mallocs(n), mallocs(2*n)
	perRecord := (float64(large) - float64(small)) / n
	if perRecord > 0.2 {
		t.Fatalf("%.2f allocations per extra record (%d for %d events, %d for %d)", perRecord, small, n, large, 2*n)
	}
	t.Logf("%.3f allocations per extra record", perRecord)
}
