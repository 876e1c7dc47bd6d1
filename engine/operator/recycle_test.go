package operator

import (
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

// TestWindowAggregateRecycledBuffersStayBounded checks that the window
// buffers a window aggregate keeps for reuse are bounded by the most windows
// open at once, not by the most windows each recycled key state ever held.
// Each round opens one window for each of 100 fresh keys, except that a
// rotating tenth of them get four windows before the watermark closes them
// all: at most 130 windows are open at once, but key states recycled through
// the store's free list used to keep four windows' buffers each once any key
// they served had four, so the buffers kept grew with the number of rounds.
func TestWindowAggregateRecycledBuffersStayBounded(t *testing.T) {
	const (
		keys   = 100
		busy   = 10 // keys with four windows per round
		rounds = 40
		size   = 10
	)
	for _, tc := range []struct {
		name string
		cfg  WindowConfig
	}{
		{"tumbling count", WindowConfig{Windowing: Tumbling(size), Key: KeyOf(0), KeyFields: []int{0}, Aggs: []Agg{{Kind: AggCount}}}},
		{"tumbling max rows", WindowConfig{Windowing: Tumbling(size), Key: KeyOf(0), KeyFields: []int{0}, Aggs: []Agg{{Kind: AggMaxRows, Field: 1}}}},
		{"sliding sum", WindowConfig{Windowing: Sliding(2*size, size), Key: KeyOf(0), KeyFields: []int{0}, Aggs: []Agg{{Kind: AggSum, Field: 1}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			op, err := NewWindowAggregate(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			out := &recorder{}
			peak := 0
			for r := range rounds {
				base := int64(r) * 10 * size
				var b record.Batch
				for k := range keys {
					key := int64(r*keys + k) // fresh keys: states come from the free list
					n := 1
					if (k+r)%(keys/busy) == 0 {
						n = 4
					}
					for w := range n {
						b.Records = append(b.Records, rec(base+int64(w)*size, key, int64(w)))
					}
				}
				if err := op.ProcessBatch(0, &b, out); err != nil {
					t.Fatal(err)
				}
				open := 0
				op.store.ForEach(func(_ uint64, ks *keyState) bool {
					open += len(ks.wins)
					return true
				})
				peak = max(peak, open)
				if err := op.ProcessWatermark(0, base+10*size-1, out); err != nil {
					t.Fatal(err)
				}
				if op.store.Len() != 0 {
					t.Fatalf("round %d: %d keys still held after every window closed", r, op.store.Len())
				}
			}
			// Count the window buffers kept: those of the spare list, and
			// those still in the slots of recycled key states (drained from
			// the free list by creating keys that were never used).
			kept := len(op.spare)
			for k := range keys * 2 {
				ks, created, err := op.store.GetOrCreate(uint64(1<<40 + k))
				if err != nil || !created {
					t.Fatalf("draining the free list: created %v, err %v", created, err)
				}
				for _, w := range ks.wins[:cap(ks.wins)] {
					if w.accs != nil || w.rows != nil {
						kept++
					}
				}
			}
			if kept > peak {
				t.Fatalf("%d window buffers kept for reuse after %d rounds; at most %d windows were open at once", kept, rounds, peak)
			}
			t.Logf("kept %d window buffers, peak %d windows open", kept, peak)
		})
	}
}
