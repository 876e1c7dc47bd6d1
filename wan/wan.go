// Package wan emulates a wide-area network link on one machine: a TCP proxy
// between a local listen address and a target that adds one-way latency, caps
// bandwidth, emulates packet loss, and can be cut on command.
//
// sealflow's geo tests and benchmarks run every site on loopback; routing each
// site-to-parent connection through a [Link] makes them see what a WAN does to
// the data plane: delay, limited throughput, stalls and outages.
//
// # What is emulated
//
//   - Latency: every chunk of bytes read from one side is delivered to the
//     other side Latency after it was read, in both directions, so a round trip
//     costs twice Latency. Chunks are pipelined: latency does not limit
//     throughput, as on a real link with large TCP windows.
//   - Bandwidth: a token bucket per direction, shared by every connection
//     through the link, releases at most Bandwidth bytes per second (with a
//     burst of 10 ms worth of bytes, at least 64 KiB).
//   - Loss: TCP hides packet loss from applications; what they see is a
//     retransmission stall, during which every later byte of that connection
//     waits too (head-of-line blocking). Each chunk is "lost" with probability
//     Loss and then delivered after an extra RetransmitDelay (by default
//     200 ms, Linux's minimum retransmission timeout, plus one round trip).
//     Bytes are never dropped, reordered or corrupted.
//   - Outage: [Link.SetDown] with true resets every connection through the
//     link and refuses new ones until the link is brought up again. Peers see a
//     connection reset, as after a middlebox failure, rather than a silent
//     black hole, so NATS reconnects as soon as the link returns.
//
// The bytes of one connection are copied in chunks of at most 32 KiB; latency
// and loss apply per chunk, so a Link is a model of a path, not of packets.
package wan

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes the emulated path. The zero Config is a transparent proxy.
type Config struct {
	// Latency is the one-way delay added in each direction.
	Latency time.Duration
	// Bandwidth caps throughput in each direction, in bytes per second; zero
	// means unlimited.
	Bandwidth int64
	// Loss is the probability, in [0, 1), that a chunk needs a retransmission.
	Loss float64
	// RetransmitDelay is the stall a lost chunk adds; if zero, 200 ms plus two
	// times Latency.
	RetransmitDelay time.Duration
	// Seed makes the loss pattern reproducible; two links with the same seed
	// and traffic lose the same chunks.
	Seed uint64
	// Logger receives connection events; nothing is logged if nil.
	Logger *slog.Logger
}

// Validate reports the first field of c that is out of range.
func (c Config) Validate() error {
	switch {
	case c.Latency < 0:
		return fmt.Errorf("wan: latency %v is negative", c.Latency)
	case c.Bandwidth < 0:
		return fmt.Errorf("wan: bandwidth %d B/s is negative (use 0 for unlimited)", c.Bandwidth)
	case !(c.Loss >= 0 && c.Loss < 1):
		return fmt.Errorf("wan: loss %v is outside [0, 1)", c.Loss)
	case c.RetransmitDelay < 0:
		return fmt.Errorf("wan: retransmit delay %v is negative", c.RetransmitDelay)
	}
	return nil
}

func (c Config) retransmitDelay() time.Duration {
	if c.RetransmitDelay > 0 {
		return c.RetransmitDelay
	}
	return 200*time.Millisecond + 2*c.Latency
}

// Stats counts what crossed a link.
type Stats struct {
	// Up and Down count bytes delivered towards the target and back.
	Up, Down int64
	// Accepted counts connections accepted; Refused those refused while down;
	// Reset those cut by an outage.
	Accepted, Refused, Reset int64
	// Lost counts chunks that were stalled by an emulated retransmission.
	Lost int64
}

// Link is a running emulated WAN link. Its methods are safe for concurrent use.
type Link struct {
	target string
	ln     net.Listener
	log    *slog.Logger

	mu    sync.Mutex
	cfg   Config
	rng   *rand.Rand
	down  bool
	conns map[*pair]struct{}

	up, back bucket

	stats struct {
		up, down, accepted, refused, reset, lost atomic.Int64
	}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Listen starts a link that accepts connections on listen (such as
// "127.0.0.1:0") and forwards each to target. The link stops when ctx ends or
// Close is called.
func Listen(ctx context.Context, listen, target string, cfg Config) (*Link, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("wan: target %q is not host:port: %w", target, err)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("wan: listening on %q for link to %s: %w", listen, target, err)
	}
	lctx, cancel := context.WithCancel(ctx)
	l := &Link{
		target: target,
		ln:     ln,
		log:    cfg.Logger,
		cfg:    cfg,
		rng:    rand.New(rand.NewPCG(cfg.Seed, 0x5ea1f10e)),
		conns:  map[*pair]struct{}{},
		ctx:    lctx,
		cancel: cancel,
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	l.up.setRate(cfg.Bandwidth)
	l.back.setRate(cfg.Bandwidth)
	l.wg.Add(2)
	go l.accept()
	go func() {
		defer l.wg.Done()
		<-lctx.Done()
		ln.Close()
		l.closeAll(false)
	}()
	return l, nil
}

// Addr is the address the link listens on.
func (l *Link) Addr() string { return l.ln.Addr().String() }

// Target is the address the link forwards to.
func (l *Link) Target() string { return l.target }

// Config returns the link's current configuration.
func (l *Link) Config() Config {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cfg
}

// SetConfig changes latency, bandwidth and loss. Bytes already in flight keep
// the delay they were given; new bytes get the new one.
func (l *Link) SetConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if cfg.Logger == nil {
		cfg.Logger = l.cfg.Logger
	}
	l.cfg = cfg
	l.up.setRate(cfg.Bandwidth)
	l.back.setRate(cfg.Bandwidth)
	return nil
}

// SetDown starts (true) or ends (false) an outage. Starting one resets every
// connection through the link; while it lasts new connections are accepted
// and closed at once.
func (l *Link) SetDown(down bool) {
	l.mu.Lock()
	was := l.down
	l.down = down
	l.mu.Unlock()
	if down && !was {
		l.log.Info("wan link down", "addr", l.Addr(), "target", l.target)
		l.closeAll(true)
	} else if !down && was {
		l.log.Info("wan link up", "addr", l.Addr(), "target", l.target)
	}
}

// Down reports whether the link is in an outage.
func (l *Link) Down() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.down
}

// Stats returns the link's counters.
func (l *Link) Stats() Stats {
	return Stats{
		Up:       l.stats.up.Load(),
		Down:     l.stats.down.Load(),
		Accepted: l.stats.accepted.Load(),
		Refused:  l.stats.refused.Load(),
		Reset:    l.stats.reset.Load(),
		Lost:     l.stats.lost.Load(),
	}
}

// Close stops the link, closes every connection through it and waits for its
// goroutines to end.
func (l *Link) Close() error {
	l.cancel()
	l.wg.Wait()
	return nil
}

func (l *Link) closeAll(reset bool) {
	l.mu.Lock()
	ps := make([]*pair, 0, len(l.conns))
	for p := range l.conns {
		ps = append(ps, p)
	}
	l.mu.Unlock()
	for _, p := range ps {
		if reset {
			l.stats.reset.Add(1)
		}
		p.close(reset)
	}
}

func (l *Link) accept() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				l.log.Warn("wan accept failed", "addr", l.Addr(), "err", err)
			}
			return
		}
		l.mu.Lock()
		down := l.down
		l.mu.Unlock()
		if down {
			l.stats.refused.Add(1)
			resetConn(c)
			continue
		}
		l.stats.accepted.Add(1)
		l.wg.Add(1)
		go l.serve(c)
	}
}

// serve connects c to the target and copies both ways until either side ends.
func (l *Link) serve(c net.Conn) {
	defer l.wg.Done()
	d := net.Dialer{Timeout: 5 * time.Second}
	t, err := d.DialContext(l.ctx, "tcp", l.target)
	if err != nil {
		l.log.Warn("wan dial failed", "target", l.target, "err", err)
		c.Close()
		return
	}
	p := &pair{a: c, b: t, closed: make(chan struct{})}
	l.mu.Lock()
	if l.down {
		l.mu.Unlock()
		l.stats.refused.Add(1)
		p.close(true)
		return
	}
	l.conns[p] = struct{}{}
	l.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.pipe(p, c, t, &l.up, &l.stats.up) }()
	go func() { defer wg.Done(); l.pipe(p, t, c, &l.back, &l.stats.down) }()
	wg.Wait()
	p.close(false)
	l.mu.Lock()
	delete(l.conns, p)
	l.mu.Unlock()
}

// chunk is a run of bytes read at one time, due for delivery at due.
type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst through the emulated path: a reader stamps each chunk
// with its delivery time, a writer waits for it and for bandwidth tokens.
func (l *Link) pipe(p *pair, src, dst net.Conn, b *bucket, counter *atomic.Int64) {
	// 256 chunks of up to 32 KiB bound what one direction holds in flight to
	// 8 MiB; a full queue stops reading, which pushes back on the sender.
	q := make(chan chunk, 256)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ch := range q {
			if !sleepUntil(l.ctx, p.closed, ch.due) {
				return
			}
			if !b.take(l.ctx, p.closed, len(ch.b)) {
				return
			}
			if _, err := dst.Write(ch.b); err != nil {
				p.close(false)
				return
			}
			counter.Add(int64(len(ch.b)))
		}
		// Source ended cleanly: pass the half-close on.
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	var prevDue time.Time
	for {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 {
			l.mu.Lock()
			lat := l.cfg.Latency
			due := time.Now().Add(lat)
			if l.cfg.Loss > 0 && l.rng.Float64() < l.cfg.Loss {
				due = due.Add(l.cfg.retransmitDelay())
				l.stats.lost.Add(1)
			}
			l.mu.Unlock()
			// TCP delivers in order: a chunk never overtakes a stalled one.
			if due.Before(prevDue) {
				due = prevDue
			}
			prevDue = due
			select {
			case q <- chunk{b: buf[:n], due: due}:
			case <-p.closed:
				close(q)
				<-done
				return
			case <-l.ctx.Done():
				close(q)
				<-done
				return
			}
		}
		if err != nil {
			close(q)
			<-done
			return
		}
	}
}

// sleepUntil waits until t; it returns false if the pair closed or ctx ended.
func sleepUntil(ctx context.Context, closed <-chan struct{}, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return true
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-closed:
		return false
	case <-ctx.Done():
		return false
	}
}

// pair is one proxied connection: a is the accepted side, b the target side.
type pair struct {
	a, b   net.Conn
	once   sync.Once
	closed chan struct{}
}

func (p *pair) close(reset bool) {
	p.once.Do(func() {
		close(p.closed)
		if reset {
			resetConn(p.a)
			resetConn(p.b)
			return
		}
		p.a.Close()
		p.b.Close()
	})
}

// resetConn closes c with a TCP reset rather than an orderly shutdown.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// bucket is a token bucket: rate bytes per second, burst of 10 ms of rate
// (at least 64 KiB). A zero rate is unlimited.
type bucket struct {
	mu     sync.Mutex
	rate   float64
	tokens float64
	last   time.Time
}

func (b *bucket) setRate(r int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rate = float64(r)
	b.tokens = b.burst()
	b.last = time.Now()
}

func (b *bucket) burst() float64 { return max(b.rate/100, 64<<10) }

// take withdraws n tokens, waiting for the debt to be repaid; false if the
// connection closed or ctx ended first.
func (b *bucket) take(ctx context.Context, closed <-chan struct{}, n int) bool {
	b.mu.Lock()
	if b.rate == 0 {
		b.mu.Unlock()
		return true
	}
	now := time.Now()
	b.tokens = min(b.burst(), b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	b.tokens -= float64(n)
	var wait time.Duration
	if b.tokens < 0 {
		wait = time.Duration(-b.tokens / b.rate * float64(time.Second))
	}
	b.mu.Unlock()
	return sleepUntil(ctx, closed, now.Add(wait))
}
