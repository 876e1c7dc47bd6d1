package nexmark

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
)

// EventDecoder decodes JSON-lines events, as written by WriteEvents, straight
// into records of PersonSchema, AuctionSchema or BidSchema (no reflection, no
// Event in between). Every field of the event's type must be present and not
// null; members of other types are ignored. It is not safe for concurrent use.
type EventDecoder struct {
	typ  *record.JSONDecoder
	kind [4]*record.JSONDecoder
	tmp  record.Record
}

// timeMissing is record.JSONDecoder's message for a missing time field.
const timeMissing = "time field is missing or null"

var typeSchema = record.Schema{Fields: []record.Field{{Name: "type", Type: record.TypeString}}}

// NewEventDecoder returns a decoder of event lines.
func NewEventDecoder() *EventDecoder {
	d := &EventDecoder{}
	must := func(s *record.Schema, tf string) *record.JSONDecoder {
		dec, err := record.NewJSONDecoder(s, tf)
		if err != nil {
			panic(fmt.Sprintf("nexmark: schema: %v", err)) // the schemas are fixed
		}
		return dec
	}
	d.typ = must(&typeSchema, "")
	d.kind[KindPerson] = must(&PersonSchema, "dateTime")
	d.kind[KindAuction] = must(&AuctionSchema, "dateTime")
	d.kind[KindBid] = must(&BidSchema, "dateTime")
	return d
}

// Kind returns the kind named by line's "type" member. Lines that begin
// {"type":"bid", (and so for person and auction), as WriteEvents writes them,
// are recognised without parsing the rest; other lines are parsed for their
// "type" member. lineNo names the line in errors.
func (d *EventDecoder) Kind(line []byte, lineNo int) (Kind, error) {
	const prefix = `{"type":"`
	if rest, ok := bytes.CutPrefix(line, []byte(prefix)); ok {
		for _, k := range []Kind{KindBid, KindPerson, KindAuction} {
			name := k.String()
			if len(rest) > len(name)+1 && string(rest[:len(name)]) == name && rest[len(name)] == '"' &&
				(rest[len(name)+1] == ',' || rest[len(name)+1] == '}') {
				return k, nil
			}
		}
	}
	if err := d.typ.Decode(line, lineNo, &d.tmp); err != nil {
		return 0, eventError(lineNo, "", err)
	}
	v := d.tmp.Values[0]
	if v.T != record.TypeString {
		return 0, fmt.Errorf(`line %d: malformed event: missing "type"`, lineNo)
	}
	k, err := ParseKind(v.S)
	if err != nil {
		return 0, fmt.Errorf("line %d: malformed event: %w", lineNo, err)
	}
	return k, nil
}

// Decode decodes line, an event of kind k (as Kind returned), into rec,
// reusing rec.Values; rec.Time is the event's dateTime. The error names the
// line and the missing or malformed field.
func (d *EventDecoder) Decode(line []byte, lineNo int, k Kind, rec *record.Record) error {
	s := Schema(k)
	if s == nil {
		return fmt.Errorf("line %d: malformed event: unknown kind %s", lineNo, k)
	}
	err := d.kind[k].Decode(line, lineNo, rec)
	var je *record.JSONError
	if err != nil && !(errors.As(err, &je) && je.Msg == timeMissing) {
		return eventError(lineNo, k.String()+" ", err)
	}
	// The whole line was read: name the first missing field in schema order.
	for i := range rec.Values {
		if rec.Values[i].T == record.TypeNull {
			return fmt.Errorf("line %d: malformed %s event: missing field %q", lineNo, k, s.Fields[i].Name)
		}
	}
	return nil
}

// eventError restates a record.JSONError as a malformed-event error naming
// the line first.
func eventError(lineNo int, kind string, err error) error {
	var je *record.JSONError
	if errors.As(err, &je) {
		if je.Field != "" {
			return fmt.Errorf("line %d: malformed %sevent: field %q: %s", lineNo, kind, je.Field, je.Msg)
		}
		return fmt.Errorf("line %d: malformed %sevent: byte %d: %s", lineNo, kind, je.Offset, je.Msg)
	}
	return fmt.Errorf("line %d: malformed %sevent: %w", lineNo, kind, err)
}

// FileOpener returns an Input.Open that opens the file at path.
func FileOpener(path string) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return os.Open(path) }
}

// streamSource returns the source of kind's records read from the events that
// open yields. Each source subtask opens the input itself and scans every
// line, decoding only the lines of its kind and partition (the i-th event of
// a kind goes to subtask i mod p, as for Given events), so sources advance
// independently of one another and memory is bounded by one batch per
// subtask. A line whose type cannot be read fails every subtask; a malformed
// event of a known type fails the subtask that owns it. Every error names
// the line. Once a subtask has read the whole input, count is at least the
// number of events in it (of every kind: a query may not read every stream).
func streamSource(open func() (io.ReadCloser, error), k Kind, batchSize int, count *atomic.Int64) runtime.Source {
	return func(ctx context.Context, split runtime.Split, emit func(*record.Batch) error) error {
		r, err := open()
		if err != nil {
			return fmt.Errorf("nexmark input: %w", err)
		}
		defer r.Close()
		p := max(split.Parallelism, 1)
		dec := NewEventDecoder()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 0, 1<<20), 1<<24)
		b := &record.Batch{Records: make([]record.Record, 0, batchSize)}
		var nth, total int64 // events of kind k seen, events of all kinds seen
		flush := func() error {
			if b.Len() == 0 {
				return nil
			}
			if err := emit(b); err != nil {
				return err
			}
			b.Records = b.Records[:0]
			return nil
		}
		for lineNo := 1; sc.Scan(); lineNo++ {
			if lineNo%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) == 0 {
				continue
			}
			lk, err := dec.Kind(line, lineNo)
			if err != nil {
				return err
			}
			total++
			if lk != k {
				continue
			}
			mine := nth%int64(p) == int64(split.Subtask)
			nth++
			if !mine {
				continue
			}
			n := len(b.Records)
			b.Records = b.Records[:n+1] // capacity is batchSize
			if err := dec.Decode(line, lineNo, k, &b.Records[n]); err != nil {
				return err
			}
			if n+1 == batchSize {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("nexmark input: %w", err)
		}
		if err := flush(); err != nil {
			return err
		}
		for c := count.Load(); c < total && !count.CompareAndSwap(c, total); c = count.Load() {
		}
		return nil
	}
}
