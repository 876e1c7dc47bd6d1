package checkpoint

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/sealflow/sealflow/substrate"
)

// BenchmarkPutGet stores and reads back one snapshot per iteration through an
// embedded NATS server on loopback, under both flush policies. MB/s counts
// the snapshot once per Put+Get; put-s and get-s are the seconds of each half.
// B/op shows the memory one round trip allocates (the snapshot read back is
// one copy of the state).
//
//	go test -run '^$' -bench PutGet -benchtime 3x -benchmem ./checkpoint
func BenchmarkPutGet(b *testing.B) {
	for _, sync := range []substrate.Sync{substrate.SyncAlways, substrate.SyncRelaxed} {
		for _, size := range []int{1 << 20, 100 << 20} {
			b.Run(fmt.Sprintf("sync=%s/%dMB", sync, size>>20), func(b *testing.B) {
				e := newEnv(b, sync)
				keys := ring(b, "job")
				pt := pattern(size, "bench")
				b.SetBytes(int64(size))
				b.ReportAllocs()
				var put, get time.Duration
				b.ResetTimer()
				for i := range b.N {
					id := sid("job", "agg", uint64(i)+1)
					t0 := time.Now()
					d, err := e.store.Put(e.ctx, id, pt, keys)
					if err != nil {
						b.Fatal(err)
					}
					t1 := time.Now()
					got, err := e.store.Get(e.ctx, id, d, keys)
					if err != nil {
						b.Fatal(err)
					}
					get += time.Since(t1)
					put += t1.Sub(t0)
					if len(got) != size {
						b.Fatalf("got %d bytes back, want %d", len(got), size)
					}
					b.StopTimer()
					if err := e.store.Delete(e.ctx, id); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				b.ReportMetric(put.Seconds()/float64(b.N), "put-s/op")
				b.ReportMetric(get.Seconds()/float64(b.N), "get-s/op")
			})
		}
	}
}

// BenchmarkSealOpen seals and opens a snapshot in memory, without NATS: the
// cost of this package's own layer (HKDF, AES-256-GCM per chunk, SHA-256 of
// the sealed object) within BenchmarkPutGet.
//
//	go test -run '^$' -bench SealOpen -benchtime 3x ./checkpoint
func BenchmarkSealOpen(b *testing.B) {
	for _, size := range []int{1 << 20, 100 << 20} {
		b.Run(fmt.Sprintf("%dMB", size>>20), func(b *testing.B) {
			keys := ring(b, "job")
			id := sid("job", "agg", 1)
			pt := pattern(size, "bench")
			s := &Store{maxSnapshot: DefaultMaxSnapshot}
			b.SetBytes(int64(size))
			b.ResetTimer()
			for range b.N {
				obj := sealChunked(b, id, pt, keys, DefaultChunk)
				sum := sha256.Sum256(obj)
				got, _, err := s.open(id, bufio.NewReaderSize(bytes.NewReader(obj), maxHeader+64), uint64(len(obj)), keys)
				if err != nil || len(got) != size || sum == (Digest{}) {
					b.Fatalf("open: %v", err)
				}
			}
		})
	}
}
