package exchange

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Fanout holds the senders from one producer subtask to every subtask of the
// consuming task, index = consumer subtask. It serves the three patterns:
// partitioned (the runtime maps each record's key group to a subtask and calls
// Send), broadcast (Broadcast) and forward (Send to the producer's own index).
type Fanout struct {
	Senders []Sender
}

// OpenFanout opens the senders of edge from producer subtask from to each of
// consumers consumer subtasks.
func OpenFanout(ctx context.Context, t Transport, job string, edge, from, consumers int) (*Fanout, error) {
	f := &Fanout{Senders: make([]Sender, 0, consumers)}
	for to := range consumers {
		s, err := t.Sender(ctx, ChannelID{Job: job, Edge: edge, From: from, To: to})
		if err != nil {
			f.Abort()
			return nil, err
		}
		f.Senders = append(f.Senders, s)
	}
	return f, nil
}

// Send ships frame to consumer subtask to.
func (f *Fanout) Send(ctx context.Context, to int, frame []byte) error {
	if to < 0 || to >= len(f.Senders) {
		return fmt.Errorf("exchange: send to consumer subtask %d of %d", to, len(f.Senders))
	}
	return f.Senders[to].Send(ctx, frame)
}

// Broadcast ships frame to every consumer subtask. Consumers share the slice.
func (f *Fanout) Broadcast(ctx context.Context, frame []byte) error {
	for _, s := range f.Senders {
		if err := s.Send(ctx, frame); err != nil {
			return err
		}
	}
	return nil
}

// Close sends end-of-stream to every consumer subtask, concurrently, and waits
// for all of them.
func (f *Fanout) Close(ctx context.Context) error {
	errs := make([]error, len(f.Senders))
	var wg sync.WaitGroup
	for i, s := range f.Senders {
		wg.Go(func() { errs[i] = s.Close(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Abort releases every sender without end-of-stream.
func (f *Fanout) Abort() {
	for _, s := range f.Senders {
		s.Abort()
	}
}

// OpenInputs opens the receivers of edge at consumer subtask to from each of
// producers producer subtasks, index = producer subtask.
func OpenInputs(ctx context.Context, t Transport, job string, edge, to, producers int) ([]Receiver, error) {
	rs := make([]Receiver, 0, producers)
	for from := range producers {
		r, err := t.Receiver(ctx, ChannelID{Job: job, Edge: edge, From: from, To: to})
		if err != nil {
			for _, r := range rs {
				_ = r.Close()
			}
			return nil, err
		}
		rs = append(rs, r)
	}
	return rs, nil
}

// Event is one step of a merged input: a frame from input Input, or the
// end-of-stream of that input (EOS true, Frame nil).
type Event struct {
	Input int
	Frame []byte
	EOS   bool
}

// Merged interleaves the frames of several receivers, keeping each receiver's
// order. Each receiver is read by its own goroutine, which holds at most one
// frame, so merging adds one frame per input to the memory bound.
type Merged struct {
	events chan Event
	errs   chan error
	cancel context.CancelFunc
	wg     sync.WaitGroup
	rs     []Receiver
	open   int
}

// Merge starts reading rs. The caller must call Close.
func Merge(ctx context.Context, rs []Receiver) *Merged {
	ctx, cancel := context.WithCancel(ctx)
	m := &Merged{events: make(chan Event, len(rs)), errs: make(chan error, len(rs)), cancel: cancel, rs: rs, open: len(rs)}
	for i, r := range rs {
		m.wg.Go(func() {
			for {
				f, err := r.Recv(ctx)
				if err == io.EOF {
					select {
					case m.events <- Event{Input: i, EOS: true}:
					case <-ctx.Done():
					}
					return
				}
				if err != nil {
					m.errs <- fmt.Errorf("input %d: %w", i, err)
					return
				}
				select {
				case m.events <- Event{Input: i, Frame: f}:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	return m
}

// Next returns the next event, io.EOF once every input has ended, or the first
// error of any input.
func (m *Merged) Next(ctx context.Context) (Event, error) {
	if m.open == 0 {
		return Event{}, io.EOF
	}
	// Errors take precedence so a loss is not hidden behind buffered frames.
	select {
	case err := <-m.errs:
		return Event{}, err
	default:
	}
	select {
	case e := <-m.events:
		if e.EOS {
			m.open--
		}
		return e, nil
	case err := <-m.errs:
		return Event{}, err
	case <-ctx.Done():
		return Event{}, ctx.Err()
	}
}

// Close stops the reading goroutines, waits for them and closes the receivers.
func (m *Merged) Close() error {
	m.cancel()
	m.wg.Wait()
	var errs []error
	for _, r := range m.rs {
		errs = append(errs, r.Close())
	}
	return errors.Join(errs...)
}
