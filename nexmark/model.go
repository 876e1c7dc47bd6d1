package nexmark

import (
	"fmt"

	"github.com/sealflow/sealflow/engine/record"
)

// Kind is the kind of a Nexmark event.
type Kind uint8

// The event kinds.
const (
	KindPerson Kind = iota + 1
	KindAuction
	KindBid
)

// String returns the kind as written in the JSON "type" field: "person",
// "auction" or "bid".
func (k Kind) String() string {
	switch k {
	case KindPerson:
		return "person"
	case KindAuction:
		return "auction"
	case KindBid:
		return "bid"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// ParseKind parses the JSON "type" field of an event.
func ParseKind(s string) (Kind, error) {
	switch s {
	case "person":
		return KindPerson, nil
	case "auction":
		return KindAuction, nil
	case "bid":
		return KindBid, nil
	}
	return 0, fmt.Errorf("unknown event type %q (want person, auction or bid)", s)
}

// Person is a person who may sell or bid. Times are epoch milliseconds.
type Person struct {
	ID           int64
	Name         string
	EmailAddress string
	CreditCard   string
	City         string
	State        string
	DateTime     int64
	Extra        string
}

// Auction is an item put up for auction by a seller (a person id). Prices are
// in cents; times are epoch milliseconds.
type Auction struct {
	ID          int64
	ItemName    string
	Description string
	InitialBid  int64
	Reserve     int64
	DateTime    int64
	Expires     int64
	Seller      int64
	Category    int64
	Extra       string
}

// Bid is a bid by a person (bidder) on an auction. Price is in cents.
type Bid struct {
	Auction  int64
	Bidder   int64
	Price    int64
	Channel  string
	URL      string
	DateTime int64
	Extra    string
}

// Event is one Nexmark event: exactly the member selected by Kind is
// meaningful. The members are values, not pointers, so that a slice of events
// is one allocation.
type Event struct {
	Kind    Kind
	Person  Person
	Auction Auction
	Bid     Bid
}

// Time returns the event time of the event in epoch milliseconds.
func (e *Event) Time() int64 {
	switch e.Kind {
	case KindPerson:
		return e.Person.DateTime
	case KindAuction:
		return e.Auction.DateTime
	default:
		return e.Bid.DateTime
	}
}

// PersonSchema is the schema of person records, in the Nexmark field order.
var PersonSchema = record.Schema{Fields: []record.Field{
	{Name: "id", Type: record.TypeInt},
	{Name: "name", Type: record.TypeString},
	{Name: "emailAddress", Type: record.TypeString},
	{Name: "creditCard", Type: record.TypeString},
	{Name: "city", Type: record.TypeString},
	{Name: "state", Type: record.TypeString},
	{Name: "dateTime", Type: record.TypeInt},
	{Name: "extra", Type: record.TypeString},
}}

// AuctionSchema is the schema of auction records, in the Nexmark field order.
var AuctionSchema = record.Schema{Fields: []record.Field{
	{Name: "id", Type: record.TypeInt},
	{Name: "itemName", Type: record.TypeString},
	{Name: "description", Type: record.TypeString},
	{Name: "initialBid", Type: record.TypeInt},
	{Name: "reserve", Type: record.TypeInt},
	{Name: "dateTime", Type: record.TypeInt},
	{Name: "expires", Type: record.TypeInt},
	{Name: "seller", Type: record.TypeInt},
	{Name: "category", Type: record.TypeInt},
	{Name: "extra", Type: record.TypeString},
}}

// BidSchema is the schema of bid records, in the Nexmark field order.
var BidSchema = record.Schema{Fields: []record.Field{
	{Name: "auction", Type: record.TypeInt},
	{Name: "bidder", Type: record.TypeInt},
	{Name: "price", Type: record.TypeInt},
	{Name: "channel", Type: record.TypeString},
	{Name: "url", Type: record.TypeString},
	{Name: "dateTime", Type: record.TypeInt},
	{Name: "extra", Type: record.TypeString},
}}

// Schema returns the record schema of events of kind k.
func Schema(k Kind) *record.Schema {
	switch k {
	case KindPerson:
		return &PersonSchema
	case KindAuction:
		return &AuctionSchema
	case KindBid:
		return &BidSchema
	}
	return nil
}

// Record fills rec with the event's fields in the order of Schema(e.Kind), and
// its event time. It reuses rec.Values' storage when it is large enough, so a
// source that emits records one at a time allocates nothing.
func (e *Event) Record(rec *record.Record) {
	v := rec.Values[:0]
	switch e.Kind {
	case KindPerson:
		p := &e.Person
		v = append(v, record.Int(p.ID), record.String(p.Name), record.String(p.EmailAddress),
			record.String(p.CreditCard), record.String(p.City), record.String(p.State),
			record.Int(p.DateTime), record.String(p.Extra))
		rec.Time = p.DateTime
	case KindAuction:
		a := &e.Auction
		v = append(v, record.Int(a.ID), record.String(a.ItemName), record.String(a.Description),
			record.Int(a.InitialBid), record.Int(a.Reserve), record.Int(a.DateTime),
			record.Int(a.Expires), record.Int(a.Seller), record.Int(a.Category), record.String(a.Extra))
		rec.Time = a.DateTime
	case KindBid:
		b := &e.Bid
		v = append(v, record.Int(b.Auction), record.Int(b.Bidder), record.Int(b.Price),
			record.String(b.Channel), record.String(b.URL), record.Int(b.DateTime), record.String(b.Extra))
		rec.Time = b.DateTime
	}
	rec.Values = v
}
