package nexmark

import (
	"strings"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

func person(id int64, name, state string, t int64) Event {
	return Event{Kind: KindPerson, Person: Person{ID: id, Name: name, City: "Boise", State: state, DateTime: t}}
}

func auction(id, seller, category, t int64) Event {
	return Event{Kind: KindAuction, Auction: Auction{ID: id, Seller: seller, Category: category, DateTime: t}}
}

func bid(auction, bidder, price, t int64) Event {
	return Event{Kind: KindBid, Bid: Bid{Auction: auction, Bidder: bidder, Price: price, Channel: "c", URL: "u", DateTime: t, Extra: "x"}}
}

// rows builds expected rows from Go values (int, int64, float64, string).
func rows(rs ...[]any) [][]record.Value {
	var out [][]record.Value
	for _, r := range rs {
		var vals []record.Value
		for _, v := range r {
			switch v := v.(type) {
			case int:
				vals = append(vals, record.Int(int64(v)))
			case int64:
				vals = append(vals, record.Int(v))
			case float64:
				vals = append(vals, record.Float(v))
			case string:
				vals = append(vals, record.String(v))
			}
		}
		out = append(out, vals)
	}
	return out
}

func r(v ...any) []any { return v }

func TestReferenceQueries(t *testing.T) {
	tests := []struct {
		query  string
		events []Event
		want   [][]record.Value
	}{
		{"q0", []Event{person(1, "a", "OR", 0), bid(5, 6, 700, 8)},
			rows(r(5, 6, 700, "c", "u", 8, "x"))},
		{"q1", []Event{bid(5, 6, 1000, 8), bid(5, 6, 7, 9), auction(1, 1, 10, 3)},
			rows(r(5, 6, 908.0, 8, "x"), r(5, 6, 0.908*7, 9, "x"))},
		{"q2", []Event{bid(246, 1, 10, 0), bid(247, 1, 11, 0), bid(0, 2, 12, 0), bid(-123, 2, 13, 0)},
			rows(r(246, 10), r(0, 12), r(-123, 13))},
		// Auction before and after its seller; wrong category; wrong state; unknown seller.
		{"q3", []Event{
			auction(100, 1, 10, 0), person(1, "ann", "OR", 5), person(2, "bob", "WA", 6),
			auction(101, 2, 10, 7), auction(102, 1, 11, 8), auction(103, 3, 10, 9),
			person(3, "cat", "CA", 10), auction(104, 1, 10, 11)},
			rows(r("ann", "Boise", "OR", 100), r("ann", "Boise", "OR", 104), r("cat", "Boise", "CA", 103))},
		// Bids at 0 and 1999 fall in windows starting -8000..0, at 2000 in -6000..2000:
		// auctions 1 and 2 tie in the first window, auction 2 leads the others.
		{"q5", []Event{bid(1, 0, 0, 0), bid(2, 0, 0, 1999), bid(2, 0, 0, 2000)},
			rows(
				r(1, 1, -8000, 2000), r(2, 1, -8000, 2000),
				r(2, 2, -6000, 4000), r(2, 2, -4000, 6000), r(2, 2, -2000, 8000), r(2, 2, 0, 10000),
				r(2, 1, 2000, 12000))},
		// Ties at the max are all reported; 10000 opens a new window.
		{"q7", []Event{bid(1, 1, 50, 0), bid(2, 2, 90, 3000), bid(3, 3, 90, 9999), bid(4, 4, 10, 10000), person(1, "p", "OR", 1)},
			rows(r(2, 90, 2, 3000, "x"), r(3, 90, 3, 9999, "x"), r(4, 10, 4, 10000, "x"))},
		// Person 1 sells twice in its window (one row); person 2 sells only in the next window.
		{"q8", []Event{person(1, "ann", "OR", 100), auction(10, 1, 10, 200), auction(11, 1, 12, 9000),
			person(2, "bob", "WA", 9999), auction(12, 2, 10, 10000), person(3, "cat", "CA", 10001), auction(13, 3, 10, 19999)},
			rows(r(1, "ann", 0), r(3, "cat", 10000))},
		// Bidder 1: 0 and 10000 touch (one session), 20001 starts another; bidder 2 alone.
		{"q11", []Event{bid(9, 1, 5, 10000), bid(9, 1, 5, 0), bid(9, 2, 5, 3), bid(9, 1, 5, 20001)},
			rows(r(1, 2, 0, 20000), r(1, 1, 20001, 30001), r(2, 1, 3, 10003))},
	}
	for _, tc := range tests {
		t.Run(tc.query, func(t *testing.T) {
			got, err := Reference(tc.query, tc.events)
			if err != nil {
				t.Fatal(err)
			}
			if d := Diff(Result{Columns: Columns(tc.query), Rows: tc.want}, got, 10); d != "" {
				t.Error(d)
			}
		})
	}
}

func TestReferenceUnknownQuery(t *testing.T) {
	if _, err := Reference("q99", nil); err == nil || !strings.Contains(err.Error(), `"q99"`) {
		t.Errorf("Reference(q99) error = %v, want one naming the query", err)
	}
}

func TestDiff(t *testing.T) {
	a := Result{Columns: []string{"x"}, Rows: rows(r(1), r(1), r(2))}
	b := Result{Columns: []string{"x"}, Rows: rows(r(2), r(1), r(1))}
	if d := Diff(a, b, 5); d != "" {
		t.Errorf("equal multisets reported different: %s", d)
	}
	c := Result{Columns: []string{"x"}, Rows: rows(r(1), r(2), r(2))}
	if d := Diff(a, c, 5); !strings.Contains(d, "missing 1× [1]") || !strings.Contains(d, "unexpected 1× [2]") {
		t.Errorf("Diff = %q, want a missing [1] and an unexpected [2]", d)
	}
}

func TestFloorTo(t *testing.T) {
	for _, tc := range []struct{ t, size, want int64 }{
		{0, 10, 0}, {9, 10, 0}, {10, 10, 10}, {-1, 10, -10}, {-10, 10, -10}, {-11, 10, -20},
	} {
		if got := floorTo(tc.t, tc.size); got != tc.want {
			t.Errorf("floorTo(%d, %d) = %d, want %d", tc.t, tc.size, got, tc.want)
		}
	}
}
