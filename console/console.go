// Package console is sealflow's web console, served by the orchestrator on
// its attested TLS listener under /console/: plain HTML and JavaScript
// embedded in the binary (no framework, no build step) that polls the JSON
// API every two seconds and shows
//
//   - the topology: sites and nodes by tier, with TEE type, measurement,
//     admission time and the tasks placed on each node;
//   - the jobs: each job's graph of tasks (reads, stages, writes) and the
//     nodes they run on, and per task its operators (JobSpec nodes, edges
//     from their inputs) with rates, watermark lag and backpressure from
//     the nodes' signed status reports, and its latest checkpoint's age;
//   - the transparency log: entries and the signed tree head;
//   - an owner's view: given only the owner's public identity id, every node
//     and recipient that received a key to the owner's streams (or to a job
//     that reads them), with each key.released entry's inclusion proof
//     verified in the browser (RFC 6962 hashing with WebCrypto SHA-256)
//     against the tree head, whose Ed25519 note signature the browser checks
//     with the log key from the orchestrator's attestation.
//
// The owner view is computed in Go by BuildOwnerView from the log alone and
// served at GET /console/api/owner; the page recomputes it from the entries
// it verified and flags any difference.
package console

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"slices"

	"github.com/sealflow/sealflow/ledger"
	"github.com/sealflow/sealflow/party"
)

//go:embed static
var static embed.FS

// Log is the part of the transparency log the console reads; *ledger.Log
// implements it.
type Log interface {
	// Record returns the record at index.
	Record(index int64) ([]byte, error)
	// About returns the indexes of the entries about subject, in order.
	About(subject string) []int64
}

// MaxStreamName is the longest stream name the owner endpoint accepts.
const MaxStreamName = 256

// Handler returns the console: the page and its assets under /console/ and
// the owner view at GET /console/api/owner?owner=<party id> (or
// ?stream=<name> for one stream). Mount it on the orchestrator's mux at
// "GET /console/".
func Handler(l Log) http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree always has static/
	}
	files := http.StripPrefix("/console/", http.FileServerFS(sub))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /console/api/owner", func(w http.ResponseWriter, r *http.Request) {
		v, code, err := ownerView(l, r.URL.Query().Get("owner"), r.URL.Query().Get("stream"))
		if err != nil {
			writeJSON(w, code, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
	mux.Handle("GET /console/", files)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// Only the console's own scripts run; nothing is framed or sniffed.
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		mux.ServeHTTP(w, r)
	})
}

// ownerView answers GET /console/api/owner: it validates the query, reads
// the entries about the owner and its streams, and builds the view.
func ownerView(l Log, owner, stream string) (*OwnerView, int, error) {
	switch {
	case owner != "" && stream != "":
		return nil, http.StatusBadRequest, fmt.Errorf("give owner or stream, not both")
	case owner == "" && stream == "":
		return nil, http.StatusBadRequest, fmt.Errorf("give owner=<64-hex party id> or stream=<name>")
	case owner != "" && !party.ID(owner).Valid():
		return nil, http.StatusBadRequest, fmt.Errorf("owner %.80q is not a party id: want 64 lowercase hex digits (the SHA-256 of the signing key)", owner)
	case len(stream) > MaxStreamName:
		return nil, http.StatusBadRequest, fmt.Errorf("stream name is %d bytes, longer than %d", len(stream), MaxStreamName)
	}
	read := func(idx []int64) ([]ledger.Entry, error) {
		out := make([]ledger.Entry, 0, len(idx))
		for _, i := range idx {
			rec, err := l.Record(i)
			if err != nil {
				return nil, err
			}
			e, err := ledger.DecodeEntry(rec)
			if err != nil {
				return nil, fmt.Errorf("log entry %d: %w", i, err)
			}
			e.Index = i
			out = append(out, e)
		}
		return out, nil
	}
	var streams []string
	if owner != "" {
		regs, err := read(l.About("party:" + owner))
		if err != nil {
			return nil, http.StatusInternalServerError, err
		}
		streams = OwnerStreams(owner, regs)
		if len(streams) == 0 {
			return nil, http.StatusNotFound, fmt.Errorf("party %s registered no streams (the log has no stream.registered entry naming it)", owner[:12])
		}
	} else {
		if len(l.About("stream:"+stream)) == 0 {
			return nil, http.StatusNotFound, fmt.Errorf("the log has no entry about stream %q", stream)
		}
		streams = []string{stream}
	}
	var idx []int64
	for _, s := range streams {
		idx = append(idx, l.About("stream:"+s)...)
	}
	slices.Sort(idx)
	entries, err := read(slices.Compact(idx))
	if err != nil {
		return nil, http.StatusInternalServerError, err
	}
	return BuildOwnerView(owner, streams, entries), http.StatusOK, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
