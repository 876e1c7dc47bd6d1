package nexmark

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"

	"github.com/sealflow/sealflow/engine/record"
)

// AppendJSON appends ev as one JSON object (no newline) with a "type" field
// ("person", "auction" or "bid") followed by the Nexmark field names.
func AppendJSON(dst []byte, ev *Event) []byte {
	dst = append(dst, `{"type":"`...)
	dst = append(dst, ev.Kind.String()...)
	dst = append(dst, '"')
	s := Schema(ev.Kind)
	if s == nil {
		return append(dst, '}')
	}
	var rec record.Record
	var vals [10]record.Value
	rec.Values = vals[:0]
	ev.Record(&rec)
	for i, f := range s.Fields {
		dst = append(dst, ',')
		dst = record.AppendJSONString(dst, f.Name)
		dst = append(dst, ':')
		dst = AppendValue(dst, rec.Values[i])
	}
	return append(dst, '}')
}

// AppendRowJSON appends one result row as a JSON object whose keys are cols.
func AppendRowJSON(dst []byte, cols []string, vals []record.Value) []byte {
	dst = append(dst, '{')
	for i, c := range cols {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = record.AppendJSONString(dst, c)
		dst = append(dst, ':')
		if i < len(vals) {
			dst = AppendValue(dst, vals[i])
		} else {
			dst = append(dst, "null"...)
		}
	}
	return append(dst, '}')
}

// AppendValue appends v as a JSON value. Floats are written in the shortest
// form that reads back to the same float64; NaN and infinities, which JSON
// cannot hold, are written as null.
func AppendValue(dst []byte, v record.Value) []byte {
	switch v.T {
	case record.TypeInt:
		return strconv.AppendInt(dst, v.I, 10)
	case record.TypeFloat:
		if math.IsNaN(v.F) || math.IsInf(v.F, 0) {
			return append(dst, "null"...)
		}
		// Plain decimal notation where JavaScript uses it, exponent otherwise.
		if a := math.Abs(v.F); a == 0 || (a >= 1e-6 && a < 1e21) {
			return strconv.AppendFloat(dst, v.F, 'f', -1, 64)
		}
		return strconv.AppendFloat(dst, v.F, 'g', -1, 64)
	case record.TypeString:
		return record.AppendJSONString(dst, v.S)
	case record.TypeBool:
		return strconv.AppendBool(dst, v.I != 0)
	}
	return append(dst, "null"...)
}

// WriteEvents writes n events from g as JSON lines to w. It stops early with
// ctx's error when ctx is cancelled.
func WriteEvents(ctx context.Context, w io.Writer, g *Generator, n int64) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	var ev Event
	buf := make([]byte, 0, 1024)
	for i := range n {
		if i%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		g.Next(&ev)
		buf = AppendJSON(buf[:0], &ev)
		buf = append(buf, '\n')
		if _, err := bw.Write(buf); err != nil {
			return fmt.Errorf("nexmark: write events: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("nexmark: write events: %w", err)
	}
	return nil
}

// jsonEvent is the wire form of an event; pointers tell absent fields from zeros.
type jsonEvent struct {
	Type         *string `json:"type"`
	ID           *int64  `json:"id"`
	Name         *string `json:"name"`
	EmailAddress *string `json:"emailAddress"`
	CreditCard   *string `json:"creditCard"`
	City         *string `json:"city"`
	State        *string `json:"state"`
	DateTime     *int64  `json:"dateTime"`
	Extra        *string `json:"extra"`
	ItemName     *string `json:"itemName"`
	Description  *string `json:"description"`
	InitialBid   *int64  `json:"initialBid"`
	Reserve      *int64  `json:"reserve"`
	Expires      *int64  `json:"expires"`
	Seller       *int64  `json:"seller"`
	Category     *int64  `json:"category"`
	Auction      *int64  `json:"auction"`
	Bidder       *int64  `json:"bidder"`
	Price        *int64  `json:"price"`
	Channel      *string `json:"channel"`
	URL          *string `json:"url"`
}

// ParseEvent decodes one JSON event as written by AppendJSON. Every field of
// the event's type must be present with the right JSON type; fields of other
// types are ignored. The error names the missing or malformed field.
func ParseEvent(line []byte) (Event, error) {
	var j jsonEvent
	if err := json.Unmarshal(line, &j); err != nil {
		return Event{}, fmt.Errorf("malformed event: %w", err)
	}
	if j.Type == nil {
		return Event{}, errors.New(`malformed event: missing "type"`)
	}
	k, err := ParseKind(*j.Type)
	if err != nil {
		return Event{}, fmt.Errorf("malformed event: %w", err)
	}
	var missing string
	i64 := func(name string, p *int64) int64 {
		if p == nil {
			if missing == "" {
				missing = name
			}
			return 0
		}
		return *p
	}
	str := func(name string, p *string) string {
		if p == nil {
			if missing == "" {
				missing = name
			}
			return ""
		}
		return *p
	}
	ev := Event{Kind: k}
	switch k {
	case KindPerson:
		ev.Person = Person{ID: i64("id", j.ID), Name: str("name", j.Name),
			EmailAddress: str("emailAddress", j.EmailAddress), CreditCard: str("creditCard", j.CreditCard),
			City: str("city", j.City), State: str("state", j.State), DateTime: i64("dateTime", j.DateTime),
			Extra: str("extra", j.Extra)}
	case KindAuction:
		ev.Auction = Auction{ID: i64("id", j.ID), ItemName: str("itemName", j.ItemName),
			Description: str("description", j.Description), InitialBid: i64("initialBid", j.InitialBid),
			Reserve: i64("reserve", j.Reserve), DateTime: i64("dateTime", j.DateTime),
			Expires: i64("expires", j.Expires), Seller: i64("seller", j.Seller),
			Category: i64("category", j.Category), Extra: str("extra", j.Extra)}
	case KindBid:
		ev.Bid = Bid{Auction: i64("auction", j.Auction), Bidder: i64("bidder", j.Bidder),
			Price: i64("price", j.Price), Channel: str("channel", j.Channel), URL: str("url", j.URL),
			DateTime: i64("dateTime", j.DateTime), Extra: str("extra", j.Extra)}
	}
	if missing != "" {
		return Event{}, fmt.Errorf("malformed %s event: missing field %q", k, missing)
	}
	return ev, nil
}

// ReadEvents reads JSON-lines events from r (blank lines are skipped). It
// stops at the first malformed line and names it. It holds every event in
// memory and decodes by reflection: to run a query over a large file, stream
// it with Input.Open instead.
func ReadEvents(r io.Reader) ([]Event, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<16), 1<<24)
	var out []Event
	for line := 1; sc.Scan(); line++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		ev, err := ParseEvent(b)
		if err != nil {
			return out, fmt.Errorf("line %d: %w", line, err)
		}
		out = append(out, ev)
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("nexmark: read events: %w", err)
	}
	return out, nil
}

// Generate returns events 0..n-1 of g's configuration (a convenience for
// tests and reference computations).
func Generate(cfg Config, n int) ([]Event, error) {
	g, err := NewGenerator(cfg)
	if err != nil {
		return nil, err
	}
	out := make([]Event, n)
	for i := range out {
		g.Next(&out[i])
	}
	return out, nil
}
