package exchange

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sealflow/sealflow/substrate"
)

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// startNATS starts an embedded server owned by the test and connects to it.
func startNATS(t testing.TB) *nats.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := substrate.Start(ctx, substrate.Options{StoreDir: t.TempDir(), Sync: substrate.SyncRelaxed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	nc, err := substrate.Connect(ctx, s.ClientURL(), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

type transportCase struct {
	name   string
	window int
	make   func(t testing.TB, window int, m *Metrics) Transport
}

var transports = []transportCase{
	{"local", 8, func(_ testing.TB, w int, m *Metrics) Transport { return NewLocal(w, 0, m) }},
	{"nats", 8, func(t testing.TB, w int, m *Metrics) Transport {
		tr, err := NewNATS(startNATS(t), NATSOptions{Window: w, RetryInterval: 50 * time.Millisecond, Metrics: m})
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}},
}

func frameFor(i int, size int) []byte {
	b := make([]byte, max(size, 8))
	binary.BigEndian.PutUint64(b, uint64(i))
	for j := 8; j < len(b); j++ {
		b[j] = byte(i + j)
	}
	return b
}

func checkFrame(t testing.TB, f []byte, i, size int) {
	t.Helper()
	want := frameFor(i, size)
	if string(f) != string(want) {
		t.Fatalf("frame %d: got %d bytes starting %x, want %d bytes starting %x", i, len(f), f[:min(8, len(f))], len(want), want[:8])
	}
}

// open opens both ends, in the given order.
func open(t testing.TB, tr Transport, id ChannelID, receiverFirst bool) (Sender, Receiver) {
	t.Helper()
	ctx := context.Background()
	var s Sender
	var r Receiver
	var err error
	if receiverFirst {
		if r, err = tr.Receiver(ctx, id); err == nil {
			s, err = tr.Sender(ctx, id)
		}
	} else {
		if s, err = tr.Sender(ctx, id); err == nil {
			r, err = tr.Receiver(ctx, id)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return s, r
}

func TestDeliverInOrderThenEOS(t *testing.T) {
	for _, tc := range transports {
		for _, receiverFirst := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/receiverFirst=%v", tc.name, receiverFirst), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				m := NewMetrics(nil, tc.name)
				tr := tc.make(t, tc.window, m)
				s, r := open(t, tr, ChannelID{Job: "j1", Edge: 2, From: 1, To: 3}, receiverFirst)
				const n, size = 500, 100
				errc := make(chan error, 1)
				go func() {
					for i := range n {
						if err := s.Send(ctx, frameFor(i, size)); err != nil {
							errc <- err
							return
						}
					}
					errc <- s.Close(ctx)
				}()
				for i := range n {
					f, err := r.Recv(ctx)
					if err != nil {
						t.Fatalf("Recv %d: %v", i, err)
					}
					checkFrame(t, f, i, size)
				}
				for range 2 {
					if _, err := r.Recv(ctx); err != io.EOF {
						t.Fatalf("Recv after last frame = %v, want io.EOF", err)
					}
				}
				if err := <-errc; err != nil {
					t.Fatalf("producer: %v", err)
				}
				if err := s.Send(ctx, []byte("late")); !errors.Is(err, ErrClosed) {
					t.Fatalf("Send after Close = %v, want ErrClosed", err)
				}
				if got := counterValue(m.framesReceived); got != n {
					t.Fatalf("frames received metric = %v, want %d", got, n)
				}
				if got := counterValue(m.bytesSent); got != n*size {
					t.Fatalf("bytes sent metric = %v, want %d", got, n*size)
				}
			})
		}
	}
}

// TestSlowConsumerBoundsMemoryAndLosesNothing runs a consumer at least 100
// times slower than its producer: the producer must be held back by credit
// (never more than a window of frames sent but not taken), and every frame
// must arrive exactly once, in order.
func TestSlowConsumerBoundsMemoryAndLosesNothing(t *testing.T) {
	for _, tc := range transports {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			m := NewMetrics(nil, tc.name)
			tr := tc.make(t, tc.window, m)
			s, r := open(t, tr, ChannelID{Job: "slow", Edge: 0}, false)
			const n, size = 300, 4096
			var sent atomic.Int64
			errc := make(chan error, 1)
			go func() {
				for i := range n {
					f := frameFor(i, size)
					if err := s.Send(ctx, f); err != nil {
						errc <- err
						return
					}
					sent.Add(1)
				}
				errc <- s.Close(ctx)
			}()
			// The consumer takes one frame per tick: 300 µs, more than 100
			// times what a producer needs to publish a 4 KiB frame.
			pace := time.NewTicker(300 * time.Microsecond)
			defer pace.Stop()
			maxAhead := int64(0)
			start := time.Now()
			for i := range n {
				<-pace.C
				f, err := r.Recv(ctx)
				if err != nil {
					t.Fatalf("Recv %d: %v", i, err)
				}
				checkFrame(t, f, i, size)
				// Frames the producer has finished sending but we have not taken.
				ahead := sent.Load() - int64(i+1)
				maxAhead = max(maxAhead, ahead)
				if ahead > int64(tc.window) {
					t.Fatalf("after taking frame %d the producer had sent %d frames ahead; window is %d", i, ahead, tc.window)
				}
			}
			if _, err := r.Recv(ctx); err != io.EOF {
				t.Fatalf("Recv after last frame = %v, want io.EOF", err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			waits := counterValue(m.creditWaits)
			// NATS grants every half window, so waits come once per half window.
			if waits < float64(n/tc.window) {
				t.Fatalf("producer waited for credit %v times for %d frames; flow control did not hold it back", waits, n)
			}
			t.Logf("%s: %d frames in %v, max %d frames ahead (window %d), %v credit waits", tc.name, n, time.Since(start), maxAhead, tc.window, waits)
		})
	}
}

func TestCancelUnblocks(t *testing.T) {
	for _, tc := range transports {
		t.Run(tc.name, func(t *testing.T) {
			tr := tc.make(t, 2, nil)
			s, r := open(t, tr, ChannelID{Job: "cancel", Edge: 0}, true)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			// Fill the window; the next Send must block until cancelled.
			for i := range 2 {
				if err := s.Send(ctx, frameFor(i, 8)); err != nil {
					t.Fatal(err)
				}
			}
			sctx, scancel := context.WithCancel(ctx)
			errc := make(chan error, 1)
			go func() { errc <- s.Send(sctx, frameFor(2, 8)) }()
			select {
			case err := <-errc:
				t.Fatalf("Send beyond the window returned %v without blocking", err)
			case <-time.After(100 * time.Millisecond):
			}
			scancel()
			if err := <-errc; !errors.Is(err, context.Canceled) {
				t.Fatalf("blocked Send after cancel = %v, want context.Canceled", err)
			}
			// A Recv with nothing to receive is unblocked by its context too.
			for i := range 2 {
				if _, err := r.Recv(ctx); err != nil {
					t.Fatalf("Recv %d: %v", i, err)
				}
			}
			rctx, rcancel := context.WithCancel(ctx)
			go rcancel()
			if _, err := r.Recv(rctx); !errors.Is(err, context.Canceled) {
				t.Fatalf("blocked Recv after cancel = %v, want context.Canceled", err)
			}
		})
	}
}

// TestNATSLossDetected publishes raw data messages, as a lossy or malicious
// substrate could deliver them, and checks the receiver refuses to go on.
func TestNATSLossDetected(t *testing.T) {
	nc := startNATS(t)
	tr, err := NewNATS(nc, NATSOptions{Window: 8})
	if err != nil {
		t.Fatal(err)
	}
	msg := func(kind byte, seq uint64, payload string) []byte {
		b := []byte{kind}
		b = binary.BigEndian.AppendUint64(b, seq)
		return append(b, payload...)
	}
	tests := []struct {
		name string
		msgs [][]byte
		good int // frames received before the error
		want error
	}{
		{"gap", [][]byte{msg(kindData, 1, "a"), msg(kindData, 3, "c")}, 1, ErrFrameLoss},
		{"first missing", [][]byte{msg(kindData, 2, "b")}, 0, ErrFrameLoss},
		{"duplicate", [][]byte{msg(kindData, 1, "a"), msg(kindData, 1, "a")}, 1, ErrFrameLoss},
		{"tail lost before eos", [][]byte{msg(kindData, 1, "a"), msg(kindEOS, 3, "")}, 1, ErrFrameLoss},
		{"garbage", [][]byte{[]byte("xx")}, 0, nil},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			id := ChannelID{Job: "loss", Edge: i}
			r, err := tr.Receiver(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			data, _, _ := tr.Subjects(id)
			for _, m := range tc.msgs {
				if err := nc.Publish(data, m); err != nil {
					t.Fatal(err)
				}
			}
			for range tc.good {
				if _, err := r.Recv(ctx); err != nil {
					t.Fatalf("Recv of a good frame: %v", err)
				}
			}
			_, err = r.Recv(ctx)
			if err == nil || err == io.EOF {
				t.Fatalf("Recv = %v, want an error", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Recv = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestFrameTooLarge(t *testing.T) {
	nc := startNATS(t)
	tr, err := NewNATS(nc, NATSOptions{MaxFrame: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for name, tr := range map[string]Transport{"nats": tr, "local": NewLocal(4, 1000, nil)} {
		s, _ := open(t, tr, ChannelID{Job: "big", Edge: 0}, true)
		if err := s.Send(context.Background(), make([]byte, 1001)); !errors.Is(err, ErrFrameTooLarge) {
			t.Errorf("%s: Send of 1001 bytes = %v, want ErrFrameTooLarge", name, err)
		}
	}
	if _, err := NewNATS(nc, NATSOptions{MaxFrame: 64 << 20}); err == nil {
		t.Error("NewNATS accepted MaxFrame above the server's max_payload")
	}
}

func TestChannelIDValidate(t *testing.T) {
	for _, tc := range []struct {
		id ChannelID
		ok bool
	}{
		{ChannelID{Job: "run-1"}, true},
		{ChannelID{}, false},
		{ChannelID{Job: "a.b"}, false},
		{ChannelID{Job: "a>"}, false},
		{ChannelID{Job: "a b"}, false},
		{ChannelID{Job: "a", Edge: -1}, false},
	} {
		if err := tc.id.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%v) = %v, want ok=%v", tc.id, err, tc.ok)
		}
	}
}

// TestFanoutMerge runs three producer subtasks against two consumer subtasks:
// every producer sends each frame to the consumer its number selects, then
// broadcasts a marker; each consumer must see every producer's frames in that
// producer's order, the markers, and end-of-stream from all.
func TestFanoutMerge(t *testing.T) {
	for _, tc := range transports {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			tr := tc.make(t, 4, nil)
			const producers, consumers, n = 3, 2, 200
			var wg sync.WaitGroup
			results := make([]map[int][]int, consumers)
			errs := make(chan error, producers+consumers)
			for to := range consumers {
				rs, err := OpenInputs(ctx, tr, "fan", 0, to, producers)
				if err != nil {
					t.Fatal(err)
				}
				wg.Go(func() {
					m := Merge(ctx, rs)
					defer m.Close()
					got := map[int][]int{}
					eos := 0
					for {
						e, err := m.Next(ctx)
						if err == io.EOF {
							break
						}
						if err != nil {
							errs <- err
							return
						}
						if e.EOS {
							eos++
							continue
						}
						got[e.Input] = append(got[e.Input], int(binary.BigEndian.Uint64(e.Frame)))
					}
					if eos != producers {
						errs <- fmt.Errorf("consumer %d saw %d end-of-streams, want %d", to, eos, producers)
					}
					results[to] = got
				})
			}
			for from := range producers {
				wg.Go(func() {
					f, err := OpenFanout(ctx, tr, "fan", 0, from, consumers)
					if err != nil {
						errs <- err
						return
					}
					for i := range n {
						if err := f.Send(ctx, i%consumers, frameFor(i, 8)); err != nil {
							errs <- err
							return
						}
					}
					if err := f.Broadcast(ctx, frameFor(1_000_000, 8)); err != nil {
						errs <- err
						return
					}
					errs <- f.Close(ctx)
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			for to := range consumers {
				for from := range producers {
					var want []int
					for i := range n {
						if i%consumers == to {
							want = append(want, i)
						}
					}
					want = append(want, 1_000_000)
					if fmt.Sprint(results[to][from]) != fmt.Sprint(want) {
						t.Errorf("consumer %d from producer %d got %v, want %v", to, from, results[to][from], want)
					}
				}
			}
		})
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add([]byte{kindData, 0, 0, 0, 0, 0, 0, 0, 1, 'x'})
	f.Add([]byte{kindEOS, 0, 0, 0, 0, 0, 0, 0, 9})
	f.Add([]byte{kindEOS, 0, 0, 0, 0, 0, 0, 0, 9, 1})
	f.Add([]byte{7, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, seq, frame, err := parseHeader(b)
		if err != nil {
			return
		}
		if seq == 0 || len(frame) != len(b)-headerLen || (kind == kindEOS && len(frame) != 0) {
			t.Fatalf("parseHeader(%x) = %d, %d, %x", b, kind, seq, frame)
		}
		again := append([]byte{kind}, binary.BigEndian.AppendUint64(nil, seq)...)
		if string(append(again, frame...)) != string(b) {
			t.Fatalf("parseHeader(%x) does not round-trip", b)
		}
	})
}

func FuzzParseGrant(f *testing.F) {
	f.Add(appendGrant(nil, 3, 19))
	f.Add(appendGrant(nil, 9, 1))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		taken, limit, err := parseGrant(b)
		if err != nil {
			return
		}
		if limit < taken || string(appendGrant(nil, taken, limit)) != string(b) {
			t.Fatalf("parseGrant(%x) = %d, %d", b, taken, limit)
		}
	})
}

// TestAbortIsNotEOS checks that an aborted sender never looks like a complete
// stream to its consumer.
func TestAbortIsNotEOS(t *testing.T) {
	for _, tc := range transports {
		t.Run(tc.name, func(t *testing.T) {
			tr := tc.make(t, 4, nil)
			s, r := open(t, tr, ChannelID{Job: "abort", Edge: 0}, true)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := s.Send(ctx, frameFor(0, 8)); err != nil {
				t.Fatal(err)
			}
			s.Abort()
			if err := s.Send(ctx, frameFor(1, 8)); !errors.Is(err, ErrClosed) {
				t.Fatalf("Send after Abort = %v, want ErrClosed", err)
			}
			if _, err := r.Recv(ctx); err != nil {
				t.Fatalf("Recv of the frame sent before Abort: %v", err)
			}
			short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancelShort()
			if _, err := r.Recv(short); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Recv after Abort = %v, want to block until its deadline", err)
			}
		})
	}
}

// benchWindow is the channel window of BenchmarkChannel.
var benchWindow = 16

// BenchmarkChannel measures one channel's throughput with 64 KiB frames.
func BenchmarkChannel(b *testing.B) {
	for _, tc := range transports {
		b.Run(tc.name, func(b *testing.B) {
			tr := tc.make(b, benchWindow, nil)
			s, r := open(b, tr, ChannelID{Job: "bench", Edge: 0}, true)
			ctx := context.Background()
			frame := make([]byte, 64<<10)
			b.SetBytes(int64(len(frame)))
			b.ResetTimer()
			errc := make(chan error, 1)
			go func() {
				for range b.N {
					if err := s.Send(ctx, frame); err != nil {
						errc <- err
						return
					}
				}
				errc <- s.Close(ctx)
			}()
			for range b.N {
				if _, err := r.Recv(ctx); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := r.Recv(ctx); err != io.EOF {
				b.Fatalf("Recv after the last frame = %v, want io.EOF", err)
			}
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// TestBusyConsumerNotFloodedByEOSResends has the consumer take every data
// frame, then stay busy for many resend intervals before taking
// end-of-stream: the producer's resends must not overflow the consumer, and
// Close must succeed once end-of-stream is taken.
func TestBusyConsumerNotFloodedByEOSResends(t *testing.T) {
	tr, err := NewNATS(startNATS(t), NATSOptions{Window: 4, RetryInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	s, r := open(t, tr, ChannelID{Job: "busy", Edge: 0}, true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	closed := make(chan error, 1)
	go func() {
		for i := range 10 {
			if err := s.Send(ctx, frameFor(i, 64<<10)); err != nil {
				closed <- err
				return
			}
		}
		closed <- s.Close(ctx)
	}()
	for i := range 10 {
		f, err := r.Recv(ctx)
		if err != nil {
			t.Fatalf("Recv %d: %v", i, err)
		}
		checkFrame(t, f, i, 64<<10)
	}
	// Busy for 60 resend intervals (far more than the consumer's buffer).
	busy := time.NewTimer(300 * time.Millisecond)
	<-busy.C
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v before the consumer took end-of-stream", err)
	default:
	}
	if _, err := r.Recv(ctx); err != io.EOF {
		t.Fatalf("Recv after a busy spell = %v, want io.EOF", err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestDialNATS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := substrate.Start(ctx, substrate.Options{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	if _, err := DialNATS(ctx, "nats://127.0.0.1:1", NATSOptions{}); err == nil {
		t.Fatal("DialNATS to a closed port succeeded")
	}
	tr, err := DialNATS(ctx, s.ClientURL(), NATSOptions{Window: 2})
	if err != nil {
		t.Fatal(err)
	}
	snd, r := open(t, tr, ChannelID{Job: "dial", Edge: 0}, false)
	go func() {
		_ = snd.Send(ctx, []byte("hello"))
		_ = snd.Close(ctx)
	}()
	if f, err := r.Recv(ctx); err != nil || string(f) != "hello" {
		t.Fatalf("Recv = %q, %v", f, err)
	}
	if _, err := r.Recv(ctx); err != io.EOF {
		t.Fatalf("Recv = %v, want io.EOF", err)
	}
	tr.Close()
	if !tr.nc.IsClosed() {
		t.Fatal("Close left the dialled connection open")
	}
}
