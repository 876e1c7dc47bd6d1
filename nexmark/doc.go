// Package nexmark implements the Nexmark benchmark for sealflow: a generator
// faithful to the Nexmark model of online auctions (persons, auctions and bids
// in the proportion 1:3:46, hot auctions, hot bidders and hot sellers, ids that
// refer to existing or soon-to-exist entities, event times advancing at a fixed
// rate), JSON-lines encoding of events and results, straightforward reference
// computations of the queries, and the queries as sealflow JobSpecs.
//
// The generator follows the Apache Beam / Flink Nexmark generator
// (org.apache.beam.sdk.nexmark.sources.generator and nexmark/nexmark-flink):
// the kind and ids of event number n are a pure function of n, and every other
// field is drawn from a random source seeded by (seed, n), so any event can be
// produced on its own and a generator can be split across parallel sources
// without coordination. Strings are drawn as substrings of per-seed random
// pools rather than built character by character, which keeps generation
// allocation-free for bids (see DESIGN notes in generator.go).
//
// Times are epoch milliseconds. Windows are aligned to the epoch and half-open,
// [start, end).
//
// The queries (Queries, Columns, Reference, JobSpec):
//
//	q0   every bid: auction, bidder, price, channel, url, dateTime, extra
//	q1   auction, bidder, price = 0.908 × price as a float64 (not rounded), dateTime, extra
//	q2   auction, price of bids with auction % 123 == 0
//	q3   name, city, state, id: category-10 auctions by sellers in OR, ID or CA
//	     (regular join, any arrival order)
//	q5   auction, num, window_start, window_end: per 10 s window sliding by 2 s,
//	     the auctions with the most bids (ties all reported)
//	q7   auction, price, bidder, dateTime, extra: per 10 s tumbling window, the
//	     bids at the window's highest price
//	q8   id, name, window_start: persons who opened an auction in the 10 s
//	     tumbling window in which they registered
//	q11  bidder, bid_count, window_start, window_end: bids per bidder session
//	     (gap 10 s; bids exactly 10 s apart share a session)
//
// Run executes a query on the engine (engine/runtime) over generated or given
// events; "sealflow nexmark gen" and "sealflow nexmark run" are the CLI.
package nexmark
