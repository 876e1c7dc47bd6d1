package nexmark

import (
	"fmt"
	"slices"
	"strings"

	"github.com/sealflow/sealflow/engine/record"
)

// Result is the output of a query: named columns and rows of values in
// column order. Results are compared as multisets (row order is not part of
// a streaming query's contract).
type Result struct {
	Columns []string
	Rows    [][]record.Value
}

// Window parameters of the queries, in milliseconds.
const (
	Q5WindowSize  = 10_000
	Q5WindowSlide = 2_000
	Q7WindowSize  = 10_000
	Q8WindowSize  = 10_000
	// Q11SessionGap closes a bidder's session after this long without bids;
	// bids exactly this far apart share a session (as in Flink).
	Q11SessionGap = 10_000
)

// Q1Rate is the dollar-to-euro rate of q1. q1's price column is the float64
// product Q1Rate * float64(price), not rounded: both the engine and the
// reference compute that one IEEE-754 multiplication, so they agree exactly.
const Q1Rate = 0.908

// Q2Modulus is q2's filter: auction % Q2Modulus == 0.
const Q2Modulus = 123

// Q3Category is the auction category of q3; Q3States are its sellers' states.
const Q3Category = 10

// Q3States are the states whose sellers q3 reports.
var Q3States = []string{"OR", "ID", "CA"}

// Columns returns the output columns of a query, or nil if the query is unknown.
func Columns(query string) []string {
	switch query {
	case "q0":
		return []string{"auction", "bidder", "price", "channel", "url", "dateTime", "extra"}
	case "q1":
		return []string{"auction", "bidder", "price", "dateTime", "extra"}
	case "q2":
		return []string{"auction", "price"}
	case "q3":
		return []string{"name", "city", "state", "id"}
	case "q5":
		return []string{"auction", "num", "window_start", "window_end"}
	case "q7":
		return []string{"auction", "price", "bidder", "dateTime", "extra"}
	case "q8":
		return []string{"id", "name", "window_start"}
	case "q11":
		return []string{"bidder", "bid_count", "window_start", "window_end"}
	}
	return nil
}

// Queries lists the queries this package implements, in order.
var Queries = []string{"q0", "q1", "q2", "q3", "q5", "q7", "q8", "q11"}

// Reference computes a query over events with plain maps and loops: the
// obviously-correct computation that the engine's output is checked against.
// Windows are aligned to the epoch and half-open; every window with input is
// reported (the input is bounded, so all windows close).
func Reference(query string, events []Event) (Result, error) {
	res := Result{Columns: Columns(query)}
	if res.Columns == nil {
		return res, fmt.Errorf("unknown query %q (want one of %s)", query, strings.Join(Queries, ", "))
	}
	I, S := record.Int, record.String
	switch query {
	case "q0":
		for i := range events {
			if b := &events[i].Bid; events[i].Kind == KindBid {
				res.Rows = append(res.Rows, []record.Value{I(b.Auction), I(b.Bidder), I(b.Price),
					S(b.Channel), S(b.URL), I(b.DateTime), S(b.Extra)})
			}
		}
	case "q1":
		for i := range events {
			if b := &events[i].Bid; events[i].Kind == KindBid {
				res.Rows = append(res.Rows, []record.Value{I(b.Auction), I(b.Bidder),
					record.Float(Q1Rate * float64(b.Price)), I(b.DateTime), S(b.Extra)})
			}
		}
	case "q2":
		for i := range events {
			if b := &events[i].Bid; events[i].Kind == KindBid && b.Auction%Q2Modulus == 0 {
				res.Rows = append(res.Rows, []record.Value{I(b.Auction), I(b.Price)})
			}
		}
	case "q3":
		persons := map[int64][]*Person{}
		for i := range events {
			if p := &events[i].Person; events[i].Kind == KindPerson && slices.Contains(Q3States, p.State) {
				persons[p.ID] = append(persons[p.ID], p)
			}
		}
		for i := range events {
			a := &events[i].Auction
			if events[i].Kind != KindAuction || a.Category != Q3Category {
				continue
			}
			for _, p := range persons[a.Seller] {
				res.Rows = append(res.Rows, []record.Value{S(p.Name), S(p.City), S(p.State), I(a.ID)})
			}
		}
	case "q5":
		counts := map[int64]map[int64]int64{} // window start -> auction -> bids
		for i := range events {
			if events[i].Kind != KindBid {
				continue
			}
			b := &events[i].Bid
			for start := floorTo(b.DateTime, Q5WindowSlide); start > b.DateTime-Q5WindowSize; start -= Q5WindowSlide {
				if counts[start] == nil {
					counts[start] = map[int64]int64{}
				}
				counts[start][b.Auction]++
			}
		}
		for start, byAuction := range counts {
			var top int64
			for _, n := range byAuction {
				top = max(top, n)
			}
			for auction, n := range byAuction {
				if n == top {
					res.Rows = append(res.Rows, []record.Value{I(auction), I(n), I(start), I(start + Q5WindowSize)})
				}
			}
		}
	case "q7":
		top := map[int64]int64{}
		seen := map[int64]bool{}
		for i := range events {
			if b := &events[i].Bid; events[i].Kind == KindBid {
				w := floorTo(b.DateTime, Q7WindowSize)
				if !seen[w] || b.Price > top[w] {
					top[w], seen[w] = b.Price, true
				}
			}
		}
		for i := range events {
			if b := &events[i].Bid; events[i].Kind == KindBid && b.Price == top[floorTo(b.DateTime, Q7WindowSize)] {
				res.Rows = append(res.Rows, []record.Value{I(b.Auction), I(b.Price), I(b.Bidder),
					I(b.DateTime), S(b.Extra)})
			}
		}
	case "q8":
		type key struct{ window, person int64 }
		sold := map[key]bool{}
		for i := range events {
			if a := &events[i].Auction; events[i].Kind == KindAuction {
				sold[key{floorTo(a.DateTime, Q8WindowSize), a.Seller}] = true
			}
		}
		reported := map[key]bool{}
		for i := range events {
			p := &events[i].Person
			if events[i].Kind != KindPerson {
				continue
			}
			k := key{floorTo(p.DateTime, Q8WindowSize), p.ID}
			if sold[k] && !reported[k] {
				reported[k] = true
				res.Rows = append(res.Rows, []record.Value{I(p.ID), S(p.Name), I(k.window)})
			}
		}
	case "q11":
		times := map[int64][]int64{}
		for i := range events {
			if b := &events[i].Bid; events[i].Kind == KindBid {
				times[b.Bidder] = append(times[b.Bidder], b.DateTime)
			}
		}
		for bidder, ts := range times {
			slices.Sort(ts)
			start, n := ts[0], int64(1)
			for j := 1; j <= len(ts); j++ {
				if j < len(ts) && ts[j]-ts[j-1] <= Q11SessionGap {
					n++
					continue
				}
				res.Rows = append(res.Rows, []record.Value{I(bidder), I(n), I(start), I(ts[j-1] + Q11SessionGap)})
				if j < len(ts) {
					start, n = ts[j], 1
				}
			}
		}
	}
	return res, nil
}

// floorTo returns the start of the epoch-aligned window of the given size
// that holds t (floor division, also for times before the epoch).
func floorTo(t, size int64) int64 {
	w := t / size * size
	if t < 0 && w != t {
		w -= size
	}
	return w
}

// RowKey returns a canonical string for a row, for multiset comparison.
func RowKey(vals []record.Value) string {
	return string(appendValues(nil, vals))
}

func appendValues(dst []byte, vals []record.Value) []byte {
	dst = append(dst, '[')
	for i, v := range vals {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = AppendValue(dst, v)
	}
	return append(dst, ']')
}

// Diff compares two results as multisets of rows and describes up to limit
// differences; it returns "" when they are equal.
func Diff(want, got Result, limit int) string {
	var sb strings.Builder
	if !slices.Equal(want.Columns, got.Columns) {
		fmt.Fprintf(&sb, "columns: want %v, got %v\n", want.Columns, got.Columns)
	}
	counts := map[string]int{}
	for _, r := range want.Rows {
		counts[RowKey(r)]++
	}
	for _, r := range got.Rows {
		counts[RowKey(r)]--
	}
	keys := make([]string, 0, len(counts))
	for k, n := range counts {
		if n != 0 {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	if len(keys) > 0 {
		fmt.Fprintf(&sb, "%d rows expected, %d rows produced, %d distinct rows differ\n", len(want.Rows), len(got.Rows), len(keys))
	}
	for i, k := range keys {
		if i == limit {
			fmt.Fprintf(&sb, "...\n")
			break
		}
		if n := counts[k]; n > 0 {
			fmt.Fprintf(&sb, "missing %d× %s\n", n, k)
		} else {
			fmt.Fprintf(&sb, "unexpected %d× %s\n", -n, k)
		}
	}
	return sb.String()
}
