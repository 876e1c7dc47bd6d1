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

// BenchmarkIncremental compares a checkpoint written whole (Put) with one
// written incrementally on the previous one (PutIncremental) after 40
// scattered small changes, as a migrated task's first checkpoint after its
// restore, through an embedded NATS server on loopback with fsync on every
// write (substrate.SyncAlways, the default). The mode "whole" is Put then
// Get; "incremental" is PutIncremental on the base then GetSnapshot (index
// and packs). written-MB is what the incremental checkpoint wrote.
//
//	go test -run '^$' -bench Incremental -benchtime 5x ./checkpoint
func BenchmarkIncremental(b *testing.B) {
	for _, size := range []int{10 << 20, 100 << 20} {
		for _, mode := range []string{"whole", "incremental"} {
			b.Run(fmt.Sprintf("%dMB/%s", size>>20, mode), func(b *testing.B) {
				e := newEnv(b, substrate.SyncAlways)
				keys := ring(b, "job")
				v := randomState(size, 1)
				_, base, err := e.store.PutIncremental(e.ctx, sid("job", "agg", 1), v, keys, nil, true)
				if err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(size))
				var put, get time.Duration
				var written uint64
				b.ResetTimer()
				for i := range b.N {
					b.StopTimer()
					next := edit(v, 40, false, uint64(i))
					id := sid("job", "agg", uint64(i)+2)
					b.StartTimer()
					t0 := time.Now()
					var got []byte
					if mode == "whole" {
						d, err := e.store.Put(e.ctx, id, next, keys)
						if err != nil {
							b.Fatal(err)
						}
						put += time.Since(t0)
						t1 := time.Now()
						if got, err = e.store.Get(e.ctx, id, d, keys); err != nil {
							b.Fatal(err)
						}
						get += time.Since(t1)
					} else {
						d, x, err := e.store.PutIncremental(e.ctx, id, next, keys, base, false)
						if err != nil {
							b.Fatal(err)
						}
						put += time.Since(t0)
						written += x.Written()
						t1 := time.Now()
						if got, _, err = e.store.GetSnapshot(e.ctx, id, d, keys); err != nil {
							b.Fatal(err)
						}
						get += time.Since(t1)
					}
					if len(got) != size {
						b.Fatalf("got %d bytes, want %d", len(got), size)
					}
				}
				b.ReportMetric(put.Seconds()*1e3/float64(b.N), "put-ms")
				b.ReportMetric(get.Seconds()*1e3/float64(b.N), "get-ms")
				b.ReportMetric(float64(written)/(1<<20)/float64(b.N), "written-MB")
			})
		}
	}
}

// BenchmarkChunking is the CPU cost PutIncremental adds before it writes:
// content-defined chunking and the SHA-256 of every chunk.
//
//	go test -run '^$' -bench Chunking ./checkpoint
func BenchmarkChunking(b *testing.B) {
	v := randomState(10<<20, 1)
	b.SetBytes(int64(len(v)))
	for b.Loop() {
		off := 0
		for _, n := range chunk(v) {
			_ = sha256.Sum256(v[off : off+n])
			off += n
		}
	}
}
