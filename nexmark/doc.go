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
package nexmark
