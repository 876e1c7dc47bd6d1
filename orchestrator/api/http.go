package api

import (
	"cmp"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sealflow/sealflow/console"
	"github.com/sealflow/sealflow/ledger"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/policy"
)

// Handler returns the HTTP API (see docs/api.md). gatherer serves /metrics
// when not nil.
func (s *Server) Handler(gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/attest", s.handleAttest)
	mux.HandleFunc("GET /v1/nonce", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"nonce": hex.EncodeToString(s.Nonce())})
	})
	mux.HandleFunc("POST /v1/statements", s.handleStatement)
	mux.HandleFunc("GET /v1/log/head", s.handleHead)
	mux.HandleFunc("GET /v1/log/entries", s.handleEntries)
	mux.HandleFunc("GET /v1/log/consistency", s.handleConsistency)
	mux.HandleFunc("GET /v1/streams", s.view(func(st *orchestrator.State) any { return StreamViews(st) }))
	mux.HandleFunc("GET /v1/nodes", s.view(func(st *orchestrator.State) any { return NodeViews(st) }))
	mux.HandleFunc("GET /v1/services", s.view(func(st *orchestrator.State) any { return ServiceViews(st) }))
	mux.HandleFunc("GET /v1/jobs", s.view(func(st *orchestrator.State) any { return JobViews(st) }))
	mux.HandleFunc("GET /v1/savepoints", s.view(func(st *orchestrator.State) any { return orchestrator.SavepointViews(st) }))
	mux.HandleFunc("GET /v1/parties", s.view(func(st *orchestrator.State) any { return PartyViews(st) }))
	mux.HandleFunc("GET /v1/releases", s.handleReleases)
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, ok := s.JobStatus(r.URL.Query().Get("job"))
		if !ok {
			writeJSON(w, http.StatusNotFound, APIError{Error: fmt.Sprintf("job %q is not deployed", r.URL.Query().Get("job"))})
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET /v1/checkpoints", func(w http.ResponseWriter, r *http.Request) {
		v, ok := s.JobCheckpoints(r.URL.Query().Get("job"))
		if !ok {
			writeJSON(w, http.StatusNotFound, APIError{Error: fmt.Sprintf("job %q is not deployed", r.URL.Query().Get("job"))})
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc("GET /v1/policy/explain", s.handleExplain)
	mux.Handle("GET /console/", console.Handler(s.ledger))
	if gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	}
	return mux
}

// APIError is the body of every error response.
type APIError struct {
	Error string `json:"error"`
	Rule  string `json:"rule,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func badRequest(w http.ResponseWriter, format string, args ...any) {
	writeJSON(w, http.StatusBadRequest, APIError{Error: fmt.Sprintf(format, args...)})
}

func (s *Server) handleAttest(w http.ResponseWriter, r *http.Request) {
	nonce, err := hex.DecodeString(r.URL.Query().Get("nonce"))
	if err != nil {
		badRequest(w, "nonce: want hex: %v", err)
		return
	}
	a, err := s.Attest(r.Context(), nonce)
	if err != nil {
		badRequest(w, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

func (s *Server) handleStatement(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, party.MaxStatement))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeJSON(w, http.StatusRequestEntityTooLarge, APIError{Error: fmt.Sprintf("statement larger than %d bytes", party.MaxStatement), Rule: party.RuleMalformed})
			return
		}
		badRequest(w, "reading the statement: %v", err)
		return
	}
	resp, err := s.Submit(r.Context(), body)
	if err != nil {
		s.log.Error("statement failed", "err", err)
		writeJSON(w, http.StatusInternalServerError, APIError{Error: err.Error()})
		return
	}
	code := http.StatusOK
	if !resp.OK {
		code = http.StatusForbidden
		if resp.Rule == party.RuleMalformed || resp.Rule == "statement.body" {
			code = http.StatusBadRequest
		}
	}
	writeJSON(w, code, resp)
}

func (s *Server) handleHead(w http.ResponseWriter, r *http.Request) {
	head, err := s.ledger.SignedTreeHead()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, APIError{Error: err.Error()})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write(head)
}

// LogEntry is an entry with its inclusion proof.
type LogEntry struct {
	Index  int64                  `json:"index"`
	Record string                 `json:"record"` // base64 of the exact record bytes
	Proof  *ledger.InclusionProof `json:"proof"`
}

// Entries is the answer to GET /v1/log/entries.
type Entries struct {
	TreeHead string     `json:"tree_head"`
	Entries  []LogEntry `json:"entries"`
}

func (s *Server) handleEntries(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	// Sign the head first and prove against its size, so proofs and head agree
	// even while entries are appended.
	head, err := s.ledger.SignedTreeHead()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, APIError{Error: err.Error()})
		return
	}
	size, err := treeSize(head)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, APIError{Error: err.Error()})
		return
	}
	var idx []int64
	if subj := q.Get("subject"); subj != "" {
		idx = s.ledger.About(subj)
	} else {
		from, _ := strconv.ParseInt(q.Get("from"), 10, 64)
		for i := max(from, 0); i < size && len(idx) < 1000; i++ {
			idx = append(idx, i)
		}
	}
	out := Entries{TreeHead: string(head)}
	for _, i := range idx {
		if i >= size {
			break
		}
		rec, err := s.ledger.Record(i)
		if err != nil {
			continue
		}
		p, err := s.ledger.ProveInclusion(i, size)
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, APIError{Error: err.Error()})
			return
		}
		out.Entries = append(out.Entries, LogEntry{Index: i, Record: base64.StdEncoding.EncodeToString(rec), Proof: p})
	}
	writeJSON(w, http.StatusOK, out)
}

// treeSize reads the size line of a signed tree head.
func treeSize(head []byte) (int64, error) {
	lines := strings.SplitN(string(head), "\n", 3)
	if len(lines) < 3 {
		return 0, errors.New("parsing own tree head: too few lines")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing own tree head: %w", err)
	}
	return size, nil
}

func (s *Server) handleConsistency(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	oldSize, err1 := strconv.ParseInt(q.Get("old"), 10, 64)
	newSize, err2 := strconv.ParseInt(q.Get("new"), 10, 64)
	if err1 != nil || err2 != nil {
		badRequest(w, "old and new must be tree sizes")
		return
	}
	p, err := s.ledger.ProveConsistency(oldSize, newSize)
	if err != nil {
		badRequest(w, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *Server) view(f func(*orchestrator.State) any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		v := f(s.m.State())
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, v)
	}
}

func (s *Server) handleReleases(w http.ResponseWriter, r *http.Request) {
	id := party.ID(r.URL.Query().Get("node"))
	if !id.Valid() {
		badRequest(w, "node: want a 64-hex-digit node id")
		return
	}
	writeJSON(w, http.StatusOK, s.Releases(id))
}

func (s *Server) handleExplain(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	d, err := s.Explain(q.Get("stream"), q.Get("service"), q.Get("node"))
	if err != nil {
		writeJSON(w, http.StatusNotFound, APIError{Error: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// Explain evaluates a stream's placement policy for a service (by id or
// digest) on a node, with the whole trace.
func (s *Server) Explain(stream, service, node string) (*policy.Decision, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.m.State()
	p, ok := s.m.Policy(stream)
	if !ok {
		return nil, fmt.Errorf("stream %q is not registered", stream)
	}
	var svc *orchestrator.Service
	for _, v := range st.Services {
		if v.Manifest.ID == service || v.Digest == service {
			svc = v
		}
	}
	if svc == nil {
		return nil, fmt.Errorf("no service with id or digest %q", service)
	}
	n, ok := st.Nodes[party.ID(node)]
	if !ok {
		for id, v := range st.Nodes {
			if id.Short() == node || (v.Identity != nil && v.Identity.Name == node) {
				n, node, ok = v, string(id), true
			}
		}
		if !ok {
			return nil, fmt.Errorf("no admitted node %q", node)
		}
	}
	in := policy.Input{Service: orchestrator.ServiceInput(svc), Node: policy.NodeFromClaims(node, &n.Claims, n.Location)}
	d := p.Evaluate(policy.StagePlacement, in)
	return &d, nil
}

// StreamView is the public view of a stream (no keys).
type StreamView struct {
	Name         string               `json:"name"`
	Owner        party.ID             `json:"owner"`
	Schema       []orchestrator.Field `json:"schema"`
	Partitions   int                  `json:"partitions"`
	Epoch        uint32               `json:"epoch"`
	PolicyDigest string               `json:"policy_digest"`
	Policy       json.RawMessage      `json:"policy"`
	Approved     []string             `json:"approved"`
	Revoked      []string             `json:"revoked"`
}

// StreamViews lists the streams.
func StreamViews(st *orchestrator.State) []StreamView {
	var out []StreamView
	for _, s := range st.Streams {
		v := StreamView{Name: s.Name, Owner: s.Owner, Schema: s.Schema, Partitions: s.Partitions, Epoch: s.Epoch, PolicyDigest: s.PolicyDigest, Policy: s.Policy}
		for d := range s.Approved {
			v.Approved = append(v.Approved, d)
		}
		for d := range s.Revoked {
			v.Revoked = append(v.Revoked, d)
		}
		slices.Sort(v.Approved)
		slices.Sort(v.Revoked)
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b StreamView) int { return cmpString(a.Name, b.Name) })
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// NodeView is the public view of an admitted node.
type NodeView struct {
	ID          party.ID        `json:"id"`
	Name        string          `json:"name"`
	TEE         string          `json:"tee"`
	Measurement string          `json:"measurement"`
	SVN         uint64          `json:"svn"`
	Debug       bool            `json:"debug"`
	Location    policy.Location `json:"location"`
	Slots       int             `json:"slots"`
	AdmittedAt  string          `json:"admitted_at"`
	Expires     string          `json:"expires"`
	Identity    *party.Identity `json:"identity"`
}

// NodeViews lists the admitted nodes.
func NodeViews(st *orchestrator.State) []NodeView {
	var out []NodeView
	for id, n := range st.Nodes {
		out = append(out, NodeView{ID: id, Name: n.Identity.Name, TEE: string(n.Claims.TEE), Measurement: hex.EncodeToString(n.Claims.Measurement),
			SVN: n.Claims.SVN, Debug: n.Claims.Debug, Location: n.Location, Slots: n.Slots,
			AdmittedAt: n.AdmittedAt.Format("2006-01-02T15:04:05Z07:00"), Expires: n.Expires.Format("2006-01-02T15:04:05Z07:00"), Identity: n.Identity})
	}
	slices.SortFunc(out, func(a, b NodeView) int { return cmpString(a.Name+string(a.ID), b.Name+string(b.ID)) })
	return out
}

// ServiceViews lists the submitted services with their manifests: every
// version, by id then version (jobs may still run an earlier one).
func ServiceViews(st *orchestrator.State) []*orchestrator.Service {
	var out []*orchestrator.Service
	for _, s := range st.Services {
		out = append(out, s)
	}
	// Earlier versions: jobs may still run them.
	for d, s := range st.Versions {
		if cur := st.Services[s.Manifest.ID]; cur == nil || cur.Digest != d {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b *orchestrator.Service) int {
		if c := cmpString(a.Manifest.ID, b.Manifest.ID); c != 0 {
			return c
		}
		return cmp.Compare(a.Manifest.Version, b.Manifest.Version)
	})
	return out
}

// JobView is the public view of a job (no keys).
type JobView struct {
	ID      string              `json:"id"`
	Service string              `json:"service"`
	Digest  string              `json:"digest"`
	Tasks   map[string]party.ID `json:"tasks"`
	Epoch   uint32              `json:"epoch"`
	// Unplaced says, by task id, why a task of a lost node runs nowhere yet.
	Unplaced map[string]string `json:"unplaced,omitempty"`
	// Deployed is when the job was deployed: a job stopped and deployed
	// again under the same id is another deployment.
	Deployed time.Time `json:"deployed"`
	// Scale and Generations are the operators' parallelism overrides and
	// the tasks' run generations (job.scale).
	Scale       map[string]map[string]int `json:"scale,omitempty"`
	Generations map[string]uint64         `json:"generations,omitempty"`
	// Adaptive holds, by task then operator, the bounds of adaptive
	// operators and when the orchestrator last rescaled them.
	Adaptive map[string]map[string]*orchestrator.Adaptive `json:"adaptive,omitempty"`
}

// JobViews lists the deployed jobs.
func JobViews(st *orchestrator.State) []JobView {
	var out []JobView
	for _, j := range st.Jobs {
		out = append(out, JobView{ID: j.ID, Service: j.Service, Digest: j.Digest, Tasks: j.Tasks, Epoch: j.Epoch, Unplaced: j.Unplaced, Deployed: j.Deployed, Scale: j.Scale, Generations: j.Generations, Adaptive: j.Adaptive})
	}
	slices.SortFunc(out, func(a, b JobView) int { return cmpString(a.ID, b.ID) })
	return out
}

// PartyViews lists the registered parties' public identities (the genesis
// operator included), sorted by name then id.
func PartyViews(st *orchestrator.State) []*party.Identity {
	out := make([]*party.Identity, 0, len(st.Parties))
	for _, p := range st.Parties {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *party.Identity) int { return cmpString(a.Name+string(a.ID()), b.Name+string(b.ID())) })
	return out
}
