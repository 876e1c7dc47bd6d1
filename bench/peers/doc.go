// Package peers holds the side-by-side comparison of sealflow with other
// stream processors on the same machine and the same Nexmark events. It is a
// separate Go module so that the sealflow product does not depend on them.
//
// benthosq runs Nexmark q0, q1 and q2 on Benthos (redpanda-data/benthos v4)
// over a JSON-lines file written by "sealflow nexmark gen"; rowcmp checks two
// JSON-lines outputs hold the same rows as a multiset; run.sh builds both and
// runs sealflow and Benthos on the same file.
//
// beamq runs Nexmark q5 and q7 with the Apache Beam Go SDK on its Prism
// runner, in process, over the same file, with the same event-time windows;
// beam.sh runs sealflow and beamq on the same file and compares their rows.
package peers
