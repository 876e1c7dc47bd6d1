package nexmark

import (
	"github.com/sealflow/sealflow/engine/record"
)

// KindOf returns the kind of event number n without generating it.
func (g *Generator) KindOf(n int64) Kind {
	rem := g.adjusted(n) % ProportionDenominator
	switch {
	case rem < PersonProportion:
		return KindPerson
	case rem < PersonProportion+AuctionProportion:
		return KindAuction
	}
	return KindBid
}

// Source produces the records of one event kind for one parallel subtask:
// subtask i of p takes event numbers i, i+p, i+2p, ... below a limit, so that
// all subtasks advance through event time together and every event is
// produced by exactly one subtask. It generates directly into record values
// and allocates nothing per bid.
type Source struct {
	g     *Generator
	kind  Kind
	next  int64
	step  int64
	limit int64
	ev    Event
}

// NewSource returns the source of kind's records among events [0, events)
// for subtask i of p. The generator's tables are shared, not copied.
func NewSource(g *Generator, kind Kind, events int64, subtask, parallelism int) *Source {
	if parallelism < 1 {
		parallelism = 1
	}
	return &Source{g: g.Clone(), kind: kind, next: int64(subtask), step: int64(parallelism), limit: events}
}

// Fill appends up to max records to b, reusing the storage of records already
// in b's capacity, and reports whether the source has more to give.
func (s *Source) Fill(b *record.Batch, max int) bool {
	return s.FillBefore(b, max, s.limit)
}

// FillBefore is Fill restricted to event numbers below before (for pacing).
func (s *Source) FillBefore(b *record.Batch, max int, before int64) bool {
	before = min(before, s.limit)
	for b.Len() < max && s.next < before {
		n := s.next
		s.next += s.step
		if s.g.KindOf(n) != s.kind {
			continue
		}
		s.g.Event(n, &s.ev)
		if len(b.Records) < cap(b.Records) {
			b.Records = b.Records[:len(b.Records)+1]
		} else {
			b.Records = append(b.Records, record.Record{})
		}
		s.ev.Record(&b.Records[len(b.Records)-1])
	}
	return s.next < s.limit
}

// Next returns the event number the source considers next.
func (s *Source) Next() int64 { return s.next }

// Watermark returns a lower bound of the event time of every record the
// source will still produce.
func (s *Source) Watermark() int64 { return s.g.Watermark(s.next) }

// Split partitions events by kind and subtask the way Source does for
// generated events (event i goes to subtask i mod p), as records: the input
// of a job that reads a file of events.
func Split(events []Event, parallelism int) map[Kind][][]record.Record {
	if parallelism < 1 {
		parallelism = 1
	}
	out := map[Kind][][]record.Record{}
	for _, k := range []Kind{KindPerson, KindAuction, KindBid} {
		out[k] = make([][]record.Record, parallelism)
	}
	for i := range events {
		var rec record.Record
		events[i].Record(&rec)
		parts := out[events[i].Kind]
		if parts == nil {
			continue
		}
		parts[i%parallelism] = append(parts[i%parallelism], rec)
	}
	return out
}
