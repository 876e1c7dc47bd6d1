// Package bench is sealflow's benchmark suite: it runs the Nexmark queries
// sealed and in plaintext on the same events, each run in its own child
// process so CPU time and peak RSS are the run's own, takes medians over
// repeated runs, checks that every run of a query produced the same rows, and
// renders the figures as a Markdown section and an SVG bar chart for
// docs/benchmarks.md.
//
// Suite runs the plan through a Launcher (normally the sealflow binary
// itself, "sealflow nexmark run"); RunQuery runs one query in this process,
// with generator settings the CLI does not expose and optional CPU and
// allocation profiles ("sealflow bench query"); Scaling measures throughput
// against parallelism, keys and state size, and memory as the stream grows.
// The comparison with other stream processors lives in the separate module
// bench/peers.
package bench
