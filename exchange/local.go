package exchange

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// Local is an in-process transport: each channel is a Go channel holding at most
// Capacity frames, so a producer blocks once its consumer is Capacity frames
// behind. The zero value is not usable; call NewLocal.
type Local struct {
	capacity int
	maxFrame int
	metrics  *Metrics

	mu    sync.Mutex
	chans map[ChannelID]chan []byte
}

// NewLocal returns an in-process transport whose channels buffer up to capacity
// frames each (at least 1) of at most maxFrame bytes (unbounded if 0). m may be
// nil.
func NewLocal(capacity, maxFrame int, m *Metrics) *Local {
	return &Local{capacity: max(capacity, 1), maxFrame: maxFrame, metrics: m, chans: make(map[ChannelID]chan []byte)}
}

func (l *Local) channel(id ChannelID) chan []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	ch, ok := l.chans[id]
	if !ok {
		ch = make(chan []byte, l.capacity)
		l.chans[id] = ch
	}
	return ch
}

// Sender opens the producing end of a local channel.
func (l *Local) Sender(_ context.Context, id ChannelID) (Sender, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	return &localSender{id: id, ch: l.channel(id), maxFrame: l.maxFrame, m: l.metrics}, nil
}

// Receiver opens the consuming end of a local channel.
func (l *Local) Receiver(_ context.Context, id ChannelID) (Receiver, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	return &localReceiver{ch: l.channel(id), m: l.metrics, l: l, id: id}, nil
}

type localSender struct {
	id       ChannelID
	ch       chan []byte
	maxFrame int
	m        *Metrics
	closed   bool
}

func (s *localSender) Send(ctx context.Context, frame []byte) error {
	if s.closed {
		return fmt.Errorf("channel %s: %w", s.id, ErrClosed)
	}
	if s.maxFrame > 0 && len(frame) > s.maxFrame {
		return fmt.Errorf("channel %s: %w: %d bytes, limit %d", s.id, ErrFrameTooLarge, len(frame), s.maxFrame)
	}
	select {
	case s.ch <- frame:
	default:
		// No room: the consumer is behind. Wait, and count the wait.
		start := time.Now()
		select {
		case s.ch <- frame:
		case <-ctx.Done():
			return fmt.Errorf("channel %s: waiting for room: %w", s.id, ctx.Err())
		}
		s.m.creditWait(time.Since(start))
	}
	s.m.sent(len(frame))
	return nil
}

func (s *localSender) Abort() { s.closed = true }

func (s *localSender) Close(context.Context) error {
	if !s.closed {
		s.closed = true
		close(s.ch)
	}
	return nil
}

type localReceiver struct {
	ch   chan []byte
	m    *Metrics
	l    *Local
	id   ChannelID
	done bool
}

func (r *localReceiver) Recv(ctx context.Context) ([]byte, error) {
	if r.done {
		return nil, io.EOF
	}
	select {
	case f, ok := <-r.ch:
		if !ok {
			r.done = true
			return nil, io.EOF
		}
		r.m.received(len(f))
		return f, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("channel %s: waiting for a frame: %w", r.id, ctx.Err())
	}
}

func (r *localReceiver) Close() error {
	r.l.mu.Lock()
	delete(r.l.chans, r.id)
	r.l.mu.Unlock()
	return nil
}
