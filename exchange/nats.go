package exchange

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// NATS is a transport over core NATS subjects with credit-based flow control.
//
// # Protocol
//
// A channel uses three subjects under Prefix.Job.Edge.From.To: "d" carries data
// frames from producer to consumer, "c" carries credit grants from consumer to
// producer, and "r" carries the producer's requests for a grant.
//
// A data message is a 9-byte header, kind (0 data, 1 end-of-stream) and a
// big-endian sequence number starting at 1, followed by the frame. A grant is
// 16 bytes: the highest sequence the consumer has taken (Recv returned it) and
// the highest sequence the producer may send. Grants are absolute, not
// increments, so a lost or repeated grant does no harm: the next one supersedes
// it.
//
// The consumer grants Window frames beyond what it has taken, and grants again
// each time it has taken half a window. The producer sends only sequences up to
// the grant and otherwise waits; so at most Window frames of at most MaxFrame
// bytes are ever in flight or buffered per channel, and a slow consumer slows
// its producer.
//
// Start-up needs no ordering: the consumer publishes a grant once subscribed,
// and the producer, once subscribed to grants, requests one; whichever side
// comes second is heard. A producer that has waited RetryInterval without
// credit requests again, which also recovers from a lost grant.
//
// # Loss
//
// Core NATS is at-most-once: the server drops messages for a client that falls
// too far behind, and a reconnect loses what was in flight. Credits keep a
// channel far below those limits, so loss should not happen; when it does, the
// consumer sees a gap in the sequence numbers (or the client reports a slow
// consumer) and Recv fails with ErrFrameLoss. The exchange does not retransmit:
// the job fails and restarts from its last checkpoint, which is where exactly-once
// is provided. Loss at the tail is caught too: the producer's Close resends
// end-of-stream until the consumer acknowledges it, and a consumer that sees
// end-of-stream after a gap reports the gap.
type NATS struct {
	nc    *nats.Conn
	opts  NATSOptions
	owned bool // Close closes nc
}

// NATSOptions configure a NATS transport. Zero values select the defaults.
type NATSOptions struct {
	// Prefix of every subject; "sf.x" by default.
	Prefix string
	// Window is the number of frames a consumer lets its producer send ahead
	// of what it has taken; 16 by default.
	Window int
	// MaxFrame is the largest frame in bytes; 1 MiB by default. It must fit the
	// server's max_payload with 9 bytes to spare.
	MaxFrame int
	// RetryInterval is how long a blocked producer waits before asking for a
	// grant again, and how often Close resends end-of-stream; 500 ms by default.
	RetryInterval time.Duration
	// Metrics counts frames, bytes and credit waits; may be nil.
	Metrics *Metrics
}

// NewNATS returns a transport over the connection nc, which it does not close.
func NewNATS(nc *nats.Conn, o NATSOptions) (*NATS, error) {
	if nc == nil {
		return nil, errors.New("exchange: NewNATS with a nil connection")
	}
	if o.Prefix == "" {
		o.Prefix = "sf.x"
	}
	if o.Window <= 0 {
		o.Window = 16
	}
	if o.MaxFrame <= 0 {
		o.MaxFrame = 1 << 20
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = 500 * time.Millisecond
	}
	if mp := nc.MaxPayload(); mp > 0 && int64(o.MaxFrame)+headerLen > mp {
		return nil, fmt.Errorf("exchange: MaxFrame %d plus %d header bytes exceeds the server's max_payload %d; lower MaxFrame or raise max_payload", o.MaxFrame, headerLen, mp)
	}
	return &NATS{nc: nc, opts: o}, nil
}

// DialNATS connects to the NATS server at url (an embedded server's
// ClientURL or an external cluster) and returns a transport over that
// connection, which Close closes.
func DialNATS(ctx context.Context, url string, o NATSOptions, opts ...nats.Option) (*NATS, error) {
	nc, err := dial(ctx, url, opts...)
	if err != nil {
		return nil, err
	}
	t, err := NewNATS(nc, o)
	if err != nil {
		nc.Close()
		return nil, err
	}
	t.owned = true
	return t, nil
}

// dial connects without blocking past ctx.
func dial(ctx context.Context, url string, opts ...nats.Option) (*nats.Conn, error) {
	timeout := 10 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("exchange: connecting to %s: %w", url, context.DeadlineExceeded)
	}
	nc, err := nats.Connect(url, append([]nats.Option{nats.Name("sealflow-exchange"), nats.Timeout(timeout)}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("exchange: connecting to %s: %w", url, err)
	}
	return nc, nil
}

// CopiesFrames reports that Send copies each frame before it returns, so the
// caller may reuse the frame's buffer (a Local transport hands the slice
// itself to the consumer and does not).
func (t *NATS) CopiesFrames() bool { return true }

// ReceiverOwnsFrames reports that every frame Recv returns lies in a buffer of
// its own that nothing else reads or writes afterwards (the client copies each
// message off the connection), so the receiver may overwrite it, for example
// to decrypt it in place.
func (t *NATS) ReceiverOwnsFrames() bool { return true }

// Close closes the connection if the transport opened it (DialNATS); a
// connection given to NewNATS is left to its owner.
func (t *NATS) Close() {
	if t.owned {
		t.nc.Close()
	}
}

// flush waits until the server has processed everything sent so far, so
// subscriptions are in place; nats.go wants a deadline, 10 s unless ctx has one.
func (t *NATS) flush(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	return t.nc.FlushWithContext(ctx)
}

// Subjects returns the data, credit and request subjects of a channel.
func (t *NATS) Subjects(id ChannelID) (data, credit, request string) {
	base := t.opts.Prefix + "." + id.Job + "." + strconv.Itoa(id.Edge) + "." + strconv.Itoa(id.From) + "." + strconv.Itoa(id.To)
	return base + ".d", base + ".c", base + ".r"
}

const (
	headerLen = 9
	grantLen  = 16

	kindData = 0
	kindEOS  = 1
)

// parseHeader splits a data message into kind, sequence and frame.
func parseHeader(msg []byte) (kind byte, seq uint64, frame []byte, err error) {
	if len(msg) < headerLen {
		return 0, 0, nil, fmt.Errorf("data message of %d bytes is shorter than the %d-byte header", len(msg), headerLen)
	}
	kind = msg[0]
	if kind != kindData && kind != kindEOS {
		return 0, 0, nil, fmt.Errorf("data message has unknown kind %d", kind)
	}
	seq = binary.BigEndian.Uint64(msg[1:9])
	if seq == 0 {
		return 0, 0, nil, errors.New("data message has sequence 0; sequences start at 1")
	}
	if kind == kindEOS && len(msg) != headerLen {
		return 0, 0, nil, fmt.Errorf("end-of-stream message carries %d payload bytes", len(msg)-headerLen)
	}
	return kind, seq, msg[headerLen:], nil
}

// parseGrant decodes a grant: the highest sequence taken and the highest
// sequence allowed.
func parseGrant(msg []byte) (taken, limit uint64, err error) {
	if len(msg) != grantLen {
		return 0, 0, fmt.Errorf("grant of %d bytes, want %d", len(msg), grantLen)
	}
	taken = binary.BigEndian.Uint64(msg[0:8])
	limit = binary.BigEndian.Uint64(msg[8:16])
	if limit < taken {
		return 0, 0, fmt.Errorf("grant limit %d below taken %d", limit, taken)
	}
	return taken, limit, nil
}

func appendGrant(b []byte, taken, limit uint64) []byte {
	b = binary.BigEndian.AppendUint64(b, taken)
	return binary.BigEndian.AppendUint64(b, limit)
}

// storeMax raises v to x if x is larger.
func storeMax(v *atomic.Uint64, x uint64) {
	for {
		old := v.Load()
		if x <= old || v.CompareAndSwap(old, x) {
			return
		}
	}
}

// Sender opens the producing end of a channel: it subscribes to grants and
// asks for one.
func (t *NATS) Sender(ctx context.Context, id ChannelID) (Sender, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	data, credit, req := t.Subjects(id)
	s := &natsSender{t: t, id: id, data: data, req: req, notify: make(chan struct{}, 1)}
	sub, err := t.nc.Subscribe(credit, s.onGrant)
	if err != nil {
		return nil, fmt.Errorf("exchange: channel %s: subscribing to grants on %s: %w", id, credit, err)
	}
	s.sub = sub
	if err := t.flush(ctx); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("exchange: channel %s: registering grant subscription: %w", id, err)
	}
	if err := t.nc.Publish(req, nil); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("exchange: channel %s: requesting credit: %w", id, err)
	}
	return s, nil
}

type natsSender struct {
	t         *NATS
	id        ChannelID
	data, req string
	sub       *nats.Subscription
	notify    chan struct{}
	limit     atomic.Uint64 // highest sequence allowed
	taken     atomic.Uint64 // highest sequence the consumer has taken
	badGrants atomic.Uint64
	seq       uint64 // last sequence sent
	buf       []byte
	closed    bool
}

func (s *natsSender) onGrant(m *nats.Msg) {
	taken, limit, err := parseGrant(m.Data)
	if err != nil {
		// Grants come from the untrusted substrate; a bad one is ignored (it
		// cannot make us send more than a good one would have allowed).
		s.badGrants.Add(1)
		return
	}
	storeMax(&s.taken, taken)
	storeMax(&s.limit, limit)
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// wait blocks until cond holds, asking for a grant (or running retry) every
// RetryInterval.
func (s *natsSender) wait(ctx context.Context, cond func() bool, retry func() error, what string) error {
	timer := time.NewTimer(s.t.opts.RetryInterval)
	defer timer.Stop()
	for !cond() {
		select {
		case <-s.notify:
		case <-timer.C:
			if err := retry(); err != nil {
				return fmt.Errorf("exchange: channel %s: %s: %w", s.id, what, err)
			}
			timer.Reset(s.t.opts.RetryInterval)
		case <-ctx.Done():
			return fmt.Errorf("exchange: channel %s: %s: %w", s.id, what, ctx.Err())
		}
	}
	return nil
}

func (s *natsSender) requestCredit() error { return s.t.nc.Publish(s.req, nil) }

func (s *natsSender) Send(ctx context.Context, frame []byte) error {
	if s.closed {
		return fmt.Errorf("channel %s: %w", s.id, ErrClosed)
	}
	if len(frame) > s.t.opts.MaxFrame {
		return fmt.Errorf("channel %s: %w: %d bytes, limit %d", s.id, ErrFrameTooLarge, len(frame), s.t.opts.MaxFrame)
	}
	next := s.seq + 1
	if s.limit.Load() < next {
		start := time.Now()
		if err := s.wait(ctx, func() bool { return s.limit.Load() >= next }, s.requestCredit, "waiting for credit"); err != nil {
			return err
		}
		s.t.opts.Metrics.creditWait(time.Since(start))
	}
	if err := s.publish(kindData, next, frame); err != nil {
		return err
	}
	s.seq = next
	s.t.opts.Metrics.sent(len(frame))
	return nil
}

func (s *natsSender) publish(kind byte, seq uint64, frame []byte) error {
	s.buf = append(s.buf[:0], kind)
	s.buf = binary.BigEndian.AppendUint64(s.buf, seq)
	s.buf = append(s.buf, frame...)
	if err := s.t.nc.Publish(s.data, s.buf); err != nil {
		return fmt.Errorf("exchange: channel %s: publishing frame %d on %s: %w", s.id, seq, s.data, err)
	}
	return nil
}

func (s *natsSender) Abort() {
	if !s.closed {
		s.closed = true
		_ = s.sub.Unsubscribe()
	}
}

// Close sends end-of-stream and waits until the consumer acknowledges it,
// resending it every RetryInterval. End-of-stream needs no credit.
func (s *natsSender) Close(ctx context.Context) error {
	if s.closed {
		return nil
	}
	s.closed = true
	defer func() { _ = s.sub.Unsubscribe() }()
	eos := s.seq + 1
	resend := func() error {
		if err := s.publish(kindEOS, eos, nil); err != nil {
			return err
		}
		// A consumer that already took end-of-stream answers requests with
		// its acknowledgement, in case the first one was lost.
		return s.requestCredit()
	}
	if err := resend(); err != nil {
		return err
	}
	return s.wait(ctx, func() bool { return s.taken.Load() >= eos }, resend, "waiting for the consumer to acknowledge end-of-stream")
}

// Receiver opens the consuming end of a channel: it subscribes to data and
// credit requests and grants the first window.
//
// Data messages are taken off the connection by a handler that queues them
// in a buffer of Window+2 frames. Credits keep the buffer from filling; a
// producer that sends beyond its credit overflows it, which Recv reports as
// ErrFrameLoss. Repeated end-of-stream messages are dropped by the handler, so
// a consumer that is busy for a long time before it takes end-of-stream is
// not flooded by the producer's resends.
func (t *NATS) Receiver(ctx context.Context, id ChannelID) (Receiver, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	data, credit, req := t.Subjects(id)
	r := &natsReceiver{t: t, id: id, credit: credit, next: 1, queue: make(chan *nats.Msg, t.opts.Window+2)}
	r.limit.Store(uint64(t.opts.Window))
	sub, err := t.nc.Subscribe(data, r.onData)
	if err != nil {
		return nil, fmt.Errorf("exchange: channel %s: subscribing to data on %s: %w", id, data, err)
	}
	r.sub = sub
	// The handler never blocks, so the client's own queue stays short; the
	// limits are a backstop against a flooding producer.
	if err := sub.SetPendingLimits(4*t.opts.Window+64, (4*t.opts.Window+64)*(t.opts.MaxFrame+headerLen)); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("exchange: channel %s: setting pending limits: %w", id, err)
	}
	reqSub, err := t.nc.Subscribe(req, func(*nats.Msg) { _ = r.grant() })
	if err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("exchange: channel %s: subscribing to credit requests on %s: %w", id, req, err)
	}
	r.reqSub = reqSub
	if err := t.flush(ctx); err != nil {
		_ = r.Close()
		return nil, fmt.Errorf("exchange: channel %s: registering subscriptions: %w", id, err)
	}
	if err := r.grant(); err != nil {
		_ = r.Close()
		return nil, err
	}
	return r, nil
}

type natsReceiver struct {
	t           *NATS
	id          ChannelID
	credit      string
	sub, reqSub *nats.Subscription
	queue       chan *nats.Msg
	overflow    atomic.Bool   // the handler found the queue full and dropped a frame
	eosSeen     atomic.Bool   // the handler has queued an end-of-stream
	next        uint64        // next expected sequence (Recv only)
	taken       atomic.Uint64 // last sequence returned (or end-of-stream seen)
	limit       atomic.Uint64 // last limit granted
	done        bool
}

// onData runs on the subscription's goroutine, in message order.
func (r *natsReceiver) onData(m *nats.Msg) {
	if len(m.Data) == headerLen && m.Data[0] == kindEOS {
		if r.eosSeen.Load() {
			_ = r.grant() // a resend: acknowledge again if already taken
			return
		}
		r.eosSeen.Store(true)
	}
	select {
	case r.queue <- m:
	default:
		r.overflow.Store(true)
	}
}

// grant publishes the current grant. It is called by the receiving goroutine
// and by handlers; all only read the atomics.
func (r *natsReceiver) grant() error {
	var b [grantLen]byte
	if err := r.t.nc.Publish(r.credit, appendGrant(b[:0], r.taken.Load(), r.limit.Load())); err != nil {
		return fmt.Errorf("exchange: channel %s: publishing grant on %s: %w", r.id, r.credit, err)
	}
	return nil
}

func (r *natsReceiver) lossError() error {
	return fmt.Errorf("exchange: channel %s: %w: the producer sent beyond its credit and frames were dropped", r.id, ErrFrameLoss)
}

func (r *natsReceiver) Recv(ctx context.Context) ([]byte, error) {
	if r.done {
		return nil, io.EOF
	}
	var m *nats.Msg
	select {
	case m = <-r.queue:
	case <-ctx.Done():
		return nil, fmt.Errorf("exchange: channel %s: waiting for frame %d: %w", r.id, r.next, ctx.Err())
	}
	if r.overflow.Load() {
		return nil, r.lossError()
	}
	kind, seq, frame, err := parseHeader(m.Data)
	if err != nil {
		return nil, fmt.Errorf("exchange: channel %s: bad data message on %s: %w", r.id, m.Subject, err)
	}
	if seq < r.next {
		return nil, fmt.Errorf("exchange: channel %s: %w: frame %d arrived again or out of order (expected %d)", r.id, ErrFrameLoss, seq, r.next)
	}
	if seq > r.next {
		return nil, fmt.Errorf("exchange: channel %s: %w: expected frame %d, got %d (%d frames missing)", r.id, ErrFrameLoss, r.next, seq, seq-r.next)
	}
	r.next++
	r.taken.Store(seq)
	if kind == kindEOS {
		r.done = true
		if err := r.grant(); err != nil { // acknowledge end-of-stream
			return nil, err
		}
		return nil, io.EOF
	}
	if half := uint64(max(r.t.opts.Window/2, 1)); seq+uint64(r.t.opts.Window)-r.limit.Load() >= half {
		r.limit.Store(seq + uint64(r.t.opts.Window))
		if err := r.grant(); err != nil {
			return nil, err
		}
	}
	r.t.opts.Metrics.received(len(frame))
	return frame, nil
}

func (r *natsReceiver) Close() error {
	var errs []error
	if r.sub != nil {
		errs = append(errs, r.sub.Unsubscribe())
	}
	if r.reqSub != nil {
		errs = append(errs, r.reqSub.Unsubscribe())
	}
	return errors.Join(errs...)
}
