// Package examples holds example sealflow UDFs, each a command built as a
// WebAssembly reactor module with the local Go toolchain. The compiled
// modules are committed in testdata so tests do not rebuild them; run
// `go generate ./udf/examples` after changing an example or the SDK, and
// SEALFLOW_REBUILD_WASM=1 go test ./udf checks that the committed modules
// match a fresh build.
//
//   - cost: a map UDF pricing kWh by time of day.
//   - scorer: a stateful scorer keeping an EWMA per meter (guest-side state).
//   - anomaly: an anomaly detector with embedded logistic regression weights.
//   - hostile: a Go guest that loops forever or allocates without bound on
//     request, for the sandbox tests.
package examples

//go:generate env GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared "-ldflags=-s -w" -trimpath -o testdata/cost.wasm ./cost
//go:generate env GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared "-ldflags=-s -w" -trimpath -o testdata/scorer.wasm ./scorer
//go:generate env GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared "-ldflags=-s -w" -trimpath -o testdata/anomaly.wasm ./anomaly
//go:generate env GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared "-ldflags=-s -w" -trimpath -o testdata/hostile.wasm ./hostile
