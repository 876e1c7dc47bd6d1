package wan

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echo starts a TCP echo server and returns its address.
func echo(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// sink starts a TCP server that discards what it reads and, at EOF, replies
// with the byte count as text.
func sink(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				fmt.Fprintf(c, "%d", n)
			}()
		}
	}()
	return ln.Addr().String()
}

func link(t testing.TB, target string, cfg Config) *Link {
	t.Helper()
	l, err := Listen(context.Background(), "127.0.0.1:0", target, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func dial(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes one byte and waits for its echo.
func roundTrip(c net.Conn) (time.Duration, error) {
	start := time.Now()
	c.SetDeadline(start.Add(3 * time.Second))
	if _, err := c.Write([]byte{'x'}); err != nil {
		return 0, err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// minRTT is the smallest of n round trips, which removes scheduling noise.
func minRTT(t testing.TB, c net.Conn, n int) time.Duration {
	t.Helper()
	best := time.Hour
	for range n {
		d, err := roundTrip(c)
		if err != nil {
			t.Fatal(err)
		}
		best = min(best, d)
	}
	return best
}

func TestLatency(t *testing.T) {
	t.Parallel()
	target := echo(t)
	for _, lat := range []time.Duration{0, 5 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond} {
		t.Run(lat.String(), func(t *testing.T) {
			t.Parallel()
			l := link(t, target, Config{Latency: lat})
			// The fastest of 15 round trips filters out a loaded machine.
			got := minRTT(t, dial(t, l.Addr()), 15)
			want := 2 * lat
			// A round trip crosses the link twice; allow 15 ms of scheduling,
			// less than the error of applying a 20 or 50 ms latency twice.
			if got < want || got > want+15*time.Millisecond {
				t.Errorf("round trip through a %v link took %v, want %v..%v", lat, got, want, want+15*time.Millisecond)
			}
		})
	}
}

func TestBandwidth(t *testing.T) {
	t.Parallel()
	target := sink(t)
	const size = 1 << 20
	for _, tc := range []struct {
		rate    int64
		latency time.Duration
	}{
		{rate: 2 << 20},
		{rate: 4 << 20, latency: 20 * time.Millisecond},
	} {
		t.Run(fmt.Sprintf("%dB/s+%v", tc.rate, tc.latency), func(t *testing.T) {
			t.Parallel()
			l := link(t, target, Config{Bandwidth: tc.rate, Latency: tc.latency})
			c := dial(t, l.Addr())
			start := time.Now()
			if _, err := c.Write(make([]byte, size)); err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).CloseWrite()
			reply, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			if string(reply) != fmt.Sprint(size) {
				t.Fatalf("sink got %q bytes, want %d", reply, size)
			}
			// Transfer time plus one round trip for the reply; the cap is the lower
			// bound, the upper one allows for a loaded machine.
			want := time.Duration(float64(size)/float64(tc.rate)*float64(time.Second)) + 2*tc.latency
			if took < want*85/100 || took > want*2 {
				t.Errorf("1 MiB at %d B/s with %v latency took %v, want about %v", tc.rate, tc.latency, took, want)
			}
			if s := l.Stats(); s.Up != size {
				t.Errorf("Stats.Up = %d, want %d", s.Up, size)
			}
		})
	}
}

func TestLossStallsButKeepsBytes(t *testing.T) {
	t.Parallel()
	target := echo(t)
	l := link(t, target, Config{Loss: 0.5, RetransmitDelay: 30 * time.Millisecond, Seed: 7})
	c := dial(t, l.Addr())
	msg := make([]byte, 64<<10)
	rand.Read(msg)
	var stalled int
	for range 10 {
		start := time.Now()
		c.SetDeadline(start.Add(5 * time.Second))
		go c.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatal("bytes changed crossing a lossy link")
		}
		if time.Since(start) >= 30*time.Millisecond {
			stalled++
		}
	}
	s := l.Stats()
	if s.Lost == 0 || stalled == 0 {
		t.Errorf("with 50%% loss: %d chunks lost, %d of 10 round trips stalled; want both > 0", s.Lost, stalled)
	}
}

func TestOutage(t *testing.T) {
	t.Parallel()
	target := echo(t)
	l := link(t, target, Config{Latency: time.Millisecond})
	c := dial(t, l.Addr())
	if _, err := roundTrip(c); err != nil {
		t.Fatalf("before outage: %v", err)
	}

	l.SetDown(true)
	if !l.Down() {
		t.Fatal("Down() = false after SetDown(true)")
	}
	if _, err := roundTrip(c); err == nil {
		t.Fatal("an established connection still carried traffic during an outage")
	}
	// New connections are accepted by the kernel but cut at once (the dial
	// itself may already see the reset).
	if c2, err := net.DialTimeout("tcp", l.Addr(), 2*time.Second); err == nil {
		defer c2.Close()
		if _, err := roundTrip(c2); err == nil {
			t.Fatal("a new connection carried traffic during an outage")
		} else if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("outage should reset, not time out: %v", err)
		}
	}
	waitFor(t, func() bool { return l.Stats().Refused == 1 })

	l.SetDown(false)
	c3 := dial(t, l.Addr())
	if _, err := roundTrip(c3); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	s := l.Stats()
	if s.Reset != 1 || s.Refused != 1 || s.Accepted != 2 {
		t.Errorf("stats = %+v, want 1 reset, 1 refused, 2 accepted", s)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg Config
		ok  bool
	}{
		{Config{}, true},
		{Config{Latency: time.Second, Bandwidth: 1, Loss: 0.99}, true},
		{Config{Latency: -1}, false},
		{Config{Bandwidth: -1}, false},
		{Config{Loss: 1}, false},
		{Config{Loss: -0.1}, false},
		{Config{RetransmitDelay: -1}, false},
	} {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tc.cfg, err, tc.ok)
		}
	}
	if _, err := Listen(context.Background(), "127.0.0.1:0", "nohostport", Config{}); err == nil {
		t.Error("Listen accepted a target without a port")
	}
}

func TestSetConfigChangesLatency(t *testing.T) {
	t.Parallel()
	l := link(t, echo(t), Config{})
	c := dial(t, l.Addr())
	if d := minRTT(t, c, 10); d > 20*time.Millisecond {
		t.Fatalf("transparent link round trip %v, want < 20ms", d)
	}
	if err := l.SetConfig(Config{Latency: 25 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if d := minRTT(t, c, 3); d < 50*time.Millisecond {
		t.Errorf("after SetConfig(25ms) round trip %v, want >= 50ms", d)
	}
}

// BenchmarkRoundTrip reports the round trip through links of 5, 20 and 50 ms.
func BenchmarkRoundTrip(b *testing.B) {
	target := echo(b)
	for _, lat := range []time.Duration{5 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond} {
		b.Run(lat.String(), func(b *testing.B) {
			l := link(b, target, Config{Latency: lat})
			c := dial(b, l.Addr())
			var total time.Duration
			for b.Loop() {
				d, err := roundTrip(c)
				if err != nil {
					b.Fatal(err)
				}
				total += d
			}
			b.ReportMetric(float64((total/time.Duration(b.N)-2*lat).Microseconds())/1000, "added-ms/rtt")
		})
	}
}

// BenchmarkThroughput reports throughput through a 10 MB/s link.
func BenchmarkThroughput(b *testing.B) {
	const rate = 10 << 20
	l := link(b, sink(b), Config{Bandwidth: rate, Latency: 5 * time.Millisecond})
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		c := dial(b, l.Addr())
		c.Write(buf)
		c.(*net.TCPConn).CloseWrite()
		io.ReadAll(c)
		c.Close()
	}
}

// waitFor polls cond until it holds or 2 s pass.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 2s")
		}
		time.Sleep(time.Millisecond)
	}
}
