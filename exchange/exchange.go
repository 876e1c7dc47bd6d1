// Package exchange moves frames between the tasks of a stream job: from each
// subtask of a producing task to each subtask of a consuming task.
//
// A frame is an opaque byte slice. The runtime encodes a batch of records into a
// frame and, for confidential pipelines, seals it before the exchange sees it;
// the exchange adds only its own sequence number and never looks inside.
//
// One producer subtask and one consumer subtask are joined by a channel: a
// [Sender] at one end and a [Receiver] at the other, opened from a [Transport]
// by [ChannelID]. Two transports exist:
//
//   - [Local]: bounded in-process Go channels, for tasks in one process.
//   - [NATS]: core NATS subjects with credit-based flow control, for tasks in
//     one process or across machines and sites.
//
// Both give the same guarantees: a producer blocks (context-aware) while its
// consumer has no room, so a slow consumer slows its producer and the memory
// held by a channel is bounded; frames arrive exactly once and in order, or the
// receiver reports an error ([ErrFrameLoss]); the producer's Close delivers an
// end-of-stream that the receiver reports as io.EOF.
//
// [Fanout] gives a producer subtask the senders of all consumer subtasks, for
// partitioned (by key group), broadcast and forward patterns; [Merge] gives a
// consumer subtask one stream of frames from all its input channels.
package exchange

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ChannelID names one channel: the frames from subtask From of an edge's
// producing task to subtask To of its consuming task.
type ChannelID struct {
	// Job identifies the running job (its run id); channels of different runs
	// never meet. NATS channels use it as a subject token, so it must not
	// contain '.', '*', '>' or whitespace.
	Job string
	// Edge is the index of the exchange edge in the job's task graph.
	Edge int
	// From is the producing subtask, To the consuming subtask.
	From, To int
}

// String returns job/edge/from->to, for logs and errors.
func (c ChannelID) String() string {
	return c.Job + "/e" + strconv.Itoa(c.Edge) + "/" + strconv.Itoa(c.From) + "->" + strconv.Itoa(c.To)
}

// Validate reports whether the id can name a channel on every transport.
func (c ChannelID) Validate() error {
	if c.Job == "" {
		return fmt.Errorf("exchange: channel %s has an empty job id", c)
	}
	if strings.ContainsAny(c.Job, ".*> \t\r\n") {
		return fmt.Errorf("exchange: job id %q of channel %s contains one of . * > or whitespace, which NATS subjects do not allow", c.Job, c)
	}
	if c.Edge < 0 || c.From < 0 || c.To < 0 {
		return fmt.Errorf("exchange: channel %s has a negative edge or subtask index", c)
	}
	return nil
}

// Sender is the producing end of a channel. It is used by one goroutine.
type Sender interface {
	// Send ships one frame, blocking while the consumer has granted no credit,
	// until ctx ends. The frame must not be modified after Send returns: a
	// local channel hands the slice itself to the consumer.
	Send(ctx context.Context, frame []byte) error
	// Close sends end-of-stream and, where the transport can tell, waits until
	// the consumer has received it. No Send may follow.
	Close(ctx context.Context) error
	// Abort releases the sender without sending end-of-stream, when the job
	// failed: the consumer never mistakes an aborted channel for a complete
	// one. No Send may follow.
	Abort()
}

// Receiver is the consuming end of a channel. It is used by one goroutine.
type Receiver interface {
	// Recv returns the next frame, blocking until one arrives or ctx ends. It
	// returns io.EOF after the producer's end-of-stream, and an error wrapping
	// ErrFrameLoss if a frame was lost. The frame belongs to the caller, who
	// must treat it as read-only (a broadcast shares it between consumers).
	Recv(ctx context.Context) ([]byte, error)
	// Close releases the receiver's resources. Frames not yet received are
	// discarded.
	Close() error
}

// Transport opens the two ends of channels. Either end may be opened first.
type Transport interface {
	// Sender opens the producing end of a channel.
	Sender(ctx context.Context, id ChannelID) (Sender, error)
	// Receiver opens the consuming end of a channel.
	Receiver(ctx context.Context, id ChannelID) (Receiver, error)
}

// ErrFrameLoss is wrapped by errors reporting that a channel lost, duplicated
// or reordered frames. Core NATS may drop messages (a slow-consumer cut-off, a
// reconnect); the exchange does not retransmit, it reports the loss so the job
// fails and recovers from its last checkpoint instead of computing on
// incomplete input.
var ErrFrameLoss = errors.New("exchange: frames lost")

// ErrFrameTooLarge is wrapped by errors from Send for frames above the
// transport's maximum frame size.
var ErrFrameTooLarge = errors.New("exchange: frame too large")

// ErrClosed is returned by Send after Close.
var ErrClosed = errors.New("exchange: send on closed channel")
