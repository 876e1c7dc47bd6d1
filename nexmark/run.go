package nexmark

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
)

// Input is the events a query runs over: generated, or given.
type Input struct {
	// Events is the number of events to generate with Config (ignored when
	// Given is set).
	Events int64
	// Config configures the generator.
	Config Config
	// Given, if not nil, are the events to run over instead (read from a
	// file, for example).
	Given []Event
	// Open, if not nil (and Given is nil), opens a JSON-lines file of events
	// as written by WriteEvents (FileOpener opens a path) to stream the
	// input from: it is called once by every source subtask, which reads the
	// whole file and decodes its own share of the lines (see Sources), so
	// memory stays bounded whatever the file's size. A malformed line fails
	// the run with an error naming the line; rows already written stay
	// written.
	Open func() (io.ReadCloser, error)
	// Pace, if positive, paces generated events: event n is emitted no
	// earlier than Start + n/Pace seconds of wall-clock time, and sources
	// flush partial batches rather than wait. With Config.EventsPerSecond
	// equal to Pace, event time tracks wall time (see DueTime), so result
	// latency can be measured.
	Pace int64
	// Start is the wall-clock origin of pacing (time.Now() when Sources is
	// called, if zero).
	Start time.Time
	// Read holds the number of events in an Open input once a source has
	// read all of it (Sources sets a new counter if nil; set one before calling Run, which
	// takes the Input by value, to read the count afterwards).
	Read *atomic.Int64
}

// DueTime returns when, under pacing, the event with event time t was due:
// Start + (t - BaseTime) ms. It is meaningful when Config.EventsPerSecond
// equals Pace.
func (in *Input) DueTime(t int64) time.Time {
	return in.Start.Add(time.Duration(t-in.Config.withDefaults().BaseTime) * time.Millisecond)
}

// Len returns the number of events of the input; for an Open input, the
// number in the file once a source has read all of it (after a successful
// run), 0 before.
func (in *Input) Len() int64 {
	if in.Given != nil {
		return int64(len(in.Given))
	}
	if in.Open != nil {
		if in.Read == nil {
			return 0
		}
		return in.Read.Load()
	}
	return in.Events
}

// Sources returns the runtime sources of the three Nexmark streams for in.
// Generated events are produced by each source subtask directly into record
// batches (subtask i of p takes event numbers ≡ i mod p); given events are
// split by kind and then by position; events of an Open input are split the
// same way as given ones, streaming.
func Sources(in *Input, batchSize int) (map[string]runtime.Source, error) {
	if batchSize <= 0 {
		batchSize = 512
	}
	srcs := map[string]runtime.Source{}
	kinds := []Kind{KindPerson, KindAuction, KindBid}
	if in.Given != nil {
		byKind := map[Kind][]record.Record{}
		for i := range in.Given {
			var rec record.Record
			in.Given[i].Record(&rec)
			byKind[in.Given[i].Kind] = append(byKind[in.Given[i].Kind], rec)
		}
		for _, k := range kinds {
			srcs[Stream(k)] = runtime.SliceSource(byKind[k], batchSize)
		}
		return srcs, nil
	}
	if in.Open != nil {
		if in.Read == nil {
			in.Read = new(atomic.Int64)
		}
		for _, k := range kinds {
			srcs[Stream(k)] = streamSource(in.Open, k, batchSize, in.Read)
		}
		return srcs, nil
	}
	g, err := NewGenerator(in.Config)
	if err != nil {
		return nil, err
	}
	n := in.Events
	if in.Start.IsZero() {
		in.Start = time.Now()
	}
	start, pace := in.Start, in.Pace
	for _, k := range kinds {
		srcs[Stream(k)] = func(ctx context.Context, split runtime.Split, emit func(*record.Batch) error) error {
			s := NewSource(g, k, n, split.Subtask, split.Parallelism)
			b := &record.Batch{Records: make([]record.Record, 0, batchSize)}
			var timer *time.Timer
			for more := true; more; {
				if err := ctx.Err(); err != nil {
					return err
				}
				before := n
				if pace > 0 {
					// Events due by now; if none, wait for the next one.
					before = int64(time.Since(start).Seconds()*float64(pace)) + 1
					if s.Next() >= before {
						wait := time.Until(start.Add(time.Duration(float64(s.Next()) / float64(pace) * float64(time.Second))))
						if timer == nil {
							timer = time.NewTimer(wait)
							defer timer.Stop()
						} else {
							timer.Reset(wait)
						}
						select {
						case <-ctx.Done():
							return ctx.Err()
						case <-timer.C:
						}
						continue
					}
				}
				b.Reset()
				more = s.FillBefore(b, batchSize, before)
				if b.Len() > 0 {
					if err := emit(b); err != nil {
						return err
					}
				}
			}
			return nil
		}
	}
	return srcs, nil
}

// RunOptions configure Run.
type RunOptions struct {
	// Query is q0, q1, ... (see Queries).
	Query string
	// Query options: parallelism, out-of-orderness.
	QueryOptions
	// Input is what the query runs over.
	Input Input
	// Engine holds the runtime options (transport, codec, batch size). Run
	// sets Sources and Sinks itself.
	Engine runtime.Options
	// Row receives every result row, in the order of Columns(Query), with
	// its event time (for windows, the window's end - 1). It is called from
	// one goroutine at a time; vals is valid only during the call. Nil
	// discards the rows.
	Row func(t int64, vals []record.Value) error
}

// Run runs a query on the engine over the input and reports the engine's
// counters.
func Run(ctx context.Context, o RunOptions) (*runtime.Result, error) {
	spec, err := JobSpec(o.Query, o.QueryOptions)
	if err != nil {
		return nil, err
	}
	srcs, err := Sources(&o.Input, o.Engine.BatchSize)
	if err != nil {
		return nil, err
	}
	eo := o.Engine
	eo.Sources = srcs
	var mu sync.Mutex
	eo.Sinks = map[string]runtime.Sink{OutputStream: func(_ runtime.Split, b *record.Batch) error {
		if o.Row == nil {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		for i := range b.Records {
			if err := o.Row(b.Records[i].Time, b.Records[i].Values); err != nil {
				return err
			}
		}
		return nil
	}}
	res, err := runtime.Run(ctx, spec, eo)
	if err != nil {
		return nil, fmt.Errorf("nexmark %s: %w", o.Query, err)
	}
	return res, nil
}
