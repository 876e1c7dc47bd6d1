// Package api serves the orchestrator: it wraps the deterministic state
// machine with everything that does I/O — sealed persistence in a NATS
// key-value bucket, the transparency log, the HTTPS JSON API for the parties
// (served with a TLS key that the orchestrator's evidence binds) and signed
// worker control over NATS. docs/api.md documents the endpoints.
package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/ledger"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/party"
)

// LogName is the name in the orchestrator's signed tree heads.
const LogName = "sealflow-orchestrator"

// Config configures a Server.
type Config struct {
	// Genesis is the founding configuration, bound into the evidence.
	Genesis orchestrator.Genesis
	// Issuer produces the orchestrator's own evidence (its TEE).
	Issuer attest.Issuer
	// SealingKey comes from the TEE's sealing facility; it seals the state.
	SealingKey [32]byte
	// Verifiers verify worker evidence by TEE type.
	Verifiers map[attest.TEE]attest.Verifier
	// Store keeps the sealed state (a NATS key-value bucket in production).
	Store Store
	// Logger receives operational logs; slog.Default() when nil.
	Logger *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Registerer receives the server's metrics; none when nil.
	Registerer prometheus.Registerer
	// NodeTimeout is how long a node holding tasks may stay silent (no
	// status report, no statement) before it is declared lost and its tasks
	// rescheduled (see ServeNATS and CheckLiveness). Zero means
	// DefaultNodeTimeout; a negative value turns the check off.
	NodeTimeout time.Duration
	// OverloadFor is how long a task must report backpressure of at least
	// OverloadBackpressure before it is moved to the next tier its slot
	// allows (orchestrator.Machine.RelieveTask). Zero means
	// DefaultOverloadFor; a negative value turns the check off.
	OverloadFor time.Duration
	// AdaptiveEvery is how often adaptive operators are re-evaluated
	// besides when nodes come and go (see CheckAdaptive). Zero means
	// DefaultAdaptiveEvery; a negative value turns the periodic check off.
	AdaptiveEvery time.Duration
}

// DefaultNodeTimeout is Config.NodeTimeout's default: three missed status
// reports at the workers' default interval of 2 s.
const DefaultNodeTimeout = 6 * time.Second

// Server is a running orchestrator: the state machine, its log and keys.
type Server struct {
	cfg     Config
	log     *slog.Logger
	mu      sync.Mutex
	m       *orchestrator.Machine
	self    *party.KeyFile
	ledger  *ledger.Log
	tlsKey  []byte
	tlsCert tls.Certificate
	spki    [32]byte
	genesis string

	// version counts state changes (under mu); saved is the version the
	// store holds (under saveMu). Submit answers only once a save covers its
	// change, and one save covers every change applied before its snapshot
	// (group commit), so concurrent statements share the cost of persisting.
	version uint64
	saveMu  sync.Mutex
	saved   uint64
	// header is the encoded constant part of the persisted state.
	header []byte

	relMu    sync.Mutex
	releases map[party.ID][]orchestrator.Release
	notify   func(node party.ID, r []orchestrator.Release)
	jobsHint func()

	metrics *metrics
	status  statusBook
	live    liveness
}

// New starts an orchestrator: it restores the sealed state from the store, or
// creates fresh keys (inside the TEE boundary), a fresh TLS key and an empty
// state and log when the store is empty.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Store == nil {
		cfg.Store = &MemStore{}
	}
	if cfg.Issuer == nil {
		return nil, errors.New("orchestrator: no attestation issuer configured")
	}
	if cfg.NodeTimeout == 0 {
		cfg.NodeTimeout = DefaultNodeTimeout
	}
	s := &Server{cfg: cfg, log: cfg.Logger, genesis: cfg.Genesis.Digest(), releases: map[party.ID][]orchestrator.Release{}, metrics: newMetrics(cfg.Registerer)}
	s.live.start(cfg.Now())
	blob, err := cfg.Store.Load(ctx)
	if err != nil {
		return nil, err
	}
	if blob != nil {
		if err := s.restore(blob); err != nil {
			return nil, fmt.Errorf("orchestrator: restoring sealed state: %w", err)
		}
		s.log.Info("orchestrator state restored", "id", s.self.ID().Short(), "log_size", s.ledger.Size(), "applied", s.m.State().Applied)
	} else {
		if err := s.fresh(); err != nil {
			return nil, err
		}
		if err := s.persist(ctx); err != nil {
			return nil, err
		}
		s.log.Info("orchestrator started fresh", "id", s.self.ID().Short(), "genesis", s.genesis[:12])
	}
	return s, nil
}

func (s *Server) fresh() error {
	kf, err := party.Generate(party.RoleOrchestrator, "orchestrator", nil)
	if err != nil {
		return err
	}
	s.self = kf
	m, err := orchestrator.NewMachine(s.cfg.Genesis, kf, s.cfg.Verifiers)
	if err != nil {
		return err
	}
	s.m = m
	signer, err := ledger.NewSigner(LogName, kf.SigningKey())
	if err != nil {
		return err
	}
	s.ledger = ledger.NewLog(signer)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "sealflow orchestrator " + kf.ID().Short()},
		NotBefore:    s.cfg.Now().Add(-time.Hour),
		NotAfter:     s.cfg.Now().Add(10 * 365 * 24 * time.Hour),
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	cert, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	return s.setTLS(der, cert)
}

func (s *Server) setTLS(keyDER, certDER []byte) error {
	key, err := x509.ParseECPrivateKey(keyDER)
	if err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(certDER)
	if err != nil {
		return err
	}
	s.tlsKey = keyDER
	s.tlsCert = tls.Certificate{Certificate: [][]byte{certDER}, PrivateKey: key, Leaf: leaf}
	s.spki = sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	return nil
}

func (s *Server) restore(blob []byte) error {
	plain, err := openBlob(s.cfg.SealingKey, s.genesis, blob)
	if err != nil {
		return err
	}
	p, err := decodePersisted(plain)
	if err != nil {
		return err
	}
	if p.Genesis != s.genesis {
		return fmt.Errorf("the saved state belongs to genesis %s, this orchestrator runs genesis %s", p.Genesis, s.genesis)
	}
	kf, err := party.ParseKeyFile(p.KeyFile)
	if err != nil {
		return err
	}
	s.self = kf
	if s.m, err = orchestrator.Restore(p.State, kf, s.cfg.Verifiers); err != nil {
		return err
	}
	signer, err := ledger.NewSigner(LogName, kf.SigningKey())
	if err != nil {
		return err
	}
	if s.ledger, err = ledger.Unmarshal(p.Log, signer); err != nil {
		return err
	}
	return s.setTLS(p.TLSKey, p.TLSCert)
}

// persist seals and saves everything; callers hold s.mu (or are starting).
func (s *Server) persist(ctx context.Context) error {
	blob, err := s.snapshot()
	if err != nil {
		return err
	}
	return s.cfg.Store.Save(ctx, blob)
}

// flush makes sure the store holds state version ver or later. Callers do
// not hold s.mu.
func (s *Server) flush(ctx context.Context, ver uint64) error {
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	if s.saved >= ver {
		return nil // a save made while this caller waited covered its change
	}
	s.mu.Lock()
	blob, err := s.snapshot()
	cur := s.version
	s.mu.Unlock()
	if err != nil {
		return err
	}
	// The save covers other callers' statements too: a caller that goes
	// away must not abort it.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := s.cfg.Store.Save(sctx, blob); err != nil {
		return err
	}
	s.saved = cur
	return nil
}

// snapshot seals everything into a blob; callers hold s.mu.
func (s *Server) snapshot() ([]byte, error) {
	if s.header == nil {
		kf, err := s.self.MarshalJSON()
		if err != nil {
			return nil, err
		}
		if s.header, err = json.Marshal(persisted{Version: 2, KeyFile: kf, TLSKey: s.tlsKey, TLSCert: s.tlsCert.Certificate[0], Genesis: s.genesis}); err != nil {
			return nil, err
		}
	}
	st, err := s.m.MarshalState()
	if err != nil {
		return nil, err
	}
	return sealBlob(s.cfg.SealingKey, s.genesis, encodePersisted(s.header, st, s.ledger.Marshal()))
}

// Identity returns the orchestrator's public identity.
func (s *Server) Identity() *party.Identity { return s.self.Identity() }

// TLSCertificate returns the certificate the HTTPS API serves; its public key
// is bound into the evidence.
func (s *Server) TLSCertificate() tls.Certificate { return s.tlsCert }

// LogVerifierKey returns the note verifier key of the signed tree heads.
func (s *Server) LogVerifierKey() string {
	k, _ := ledger.VerifierKey(LogName, s.self.Identity().SigningKey)
	return k
}

// OnRelease sets a function called (outside the server's lock) with the keys
// released to each node, for example to push them over NATS.
func (s *Server) OnRelease(f func(node party.ID, r []orchestrator.Release)) {
	s.relMu.Lock()
	s.notify = f
	s.relMu.Unlock()
}

// ReportData returns the report data the orchestrator's evidence binds for a
// client nonce: the nonce, its signing and HPKE keys, its TLS public key and
// its genesis digest.
func ReportData(nonce []byte, id *party.Identity, spki [32]byte, genesisDigest string) [64]byte {
	return attest.BindReportData(nonce, id.SigningKey, id.HPKEKey, spki[:], []byte(genesisDigest))
}

// Attestation is the orchestrator's answer to a client's nonce.
type Attestation struct {
	Evidence      *attest.Evidence     `json:"evidence"`
	Identity      *party.Identity      `json:"identity"`
	Genesis       orchestrator.Genesis `json:"genesis"`
	GenesisDigest string               `json:"genesis_digest"`
	// TLSKeySHA256 is the hex SHA-256 of the TLS certificate's public key.
	TLSKeySHA256 string `json:"tls_key_sha256"`
	// LogKey is the note verifier key of the signed tree heads.
	LogKey string `json:"log_key"`
}

// Attest issues fresh evidence for a client nonce.
func (s *Server) Attest(ctx context.Context, nonce []byte) (*Attestation, error) {
	if len(nonce) < 16 || len(nonce) > 64 {
		return nil, fmt.Errorf("a nonce must have 16 to 64 bytes, got %d", len(nonce))
	}
	id := s.self.Identity()
	ev, err := s.cfg.Issuer.Issue(ctx, ReportData(nonce, id, s.spki, s.genesis))
	if err != nil {
		return nil, fmt.Errorf("issuing the orchestrator's evidence: %w", err)
	}
	return &Attestation{Evidence: ev, Identity: id, Genesis: s.cfg.Genesis, GenesisDigest: s.genesis,
		TLSKeySHA256: hex.EncodeToString(s.spki[:]), LogKey: s.LogVerifierKey()}, nil
}

// Nonce returns a fresh nonce for a worker admission.
func (s *Server) Nonce() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m.Nonce(s.cfg.Now())
}

// Response is the answer to a statement.
type Response struct {
	OK     bool   `json:"ok"`
	Type   string `json:"type"`
	Result any    `json:"result,omitempty"`
	// Error and Rule say why a statement was refused.
	Error string `json:"error,omitempty"`
	Rule  string `json:"rule,omitempty"`
	// LogIndexes are the log entries the statement produced.
	LogIndexes []int64 `json:"log_indexes,omitempty"`
	// Statement is the hex SHA-256 of the signed statement answered, so a
	// receipt cannot be passed off as the answer to another statement.
	Statement string `json:"statement,omitempty"`
	// Receipt is the orchestrator's signed receipt (a party statement of type
	// "receipt" whose body is this response without the receipt).
	Receipt []byte `json:"receipt,omitempty"`
}

// Submit applies a signed statement and returns the signed response. A
// refusal is a Response with OK false (and an error), not a Go error; a Go
// error means the orchestrator failed (persisting, signing).
func (s *Server) Submit(ctx context.Context, signed []byte) (*Response, error) {
	s.mu.Lock()
	now := s.cfg.Now()
	out, err := s.m.Apply(now, signed)
	resp := &Response{OK: err == nil, Statement: requestDigest(signed)}
	if out != nil {
		resp.Type, resp.Result = out.Type, out.Result
	}
	if err != nil {
		resp.Error, resp.Rule = err.Error(), ruleOf(err)
	}
	idx, ver, lerr := s.record(out, err)
	s.mu.Unlock()
	if lerr != nil {
		return nil, lerr
	}
	resp.LogIndexes = idx
	if err == nil {
		// An applied statement proves its issuer alive (a refused one may
		// come from anyone holding an old statement).
		if st, perr := party.PeekUnverified(signed); perr == nil {
			s.live.heard(st.Issuer, now)
		}
	}
	if ver > 0 {
		if perr := s.flush(ctx, ver); perr != nil {
			return nil, fmt.Errorf("orchestrator: persisting state: %w", perr)
		}
	}
	s.metrics.statement(resp)
	s.logRescales(out)
	if out != nil && len(out.Releases) > 0 {
		s.metrics.keyReleases.Add(float64(len(out.Releases)))
		s.deliver(out.Releases, now)
	}
	if err == nil {
		// After the keys: a worker that looks at once finds them.
		s.hintJobs(out)
	}
	if !resp.OK {
		s.log.Info("statement refused", "type", resp.Type, "rule", resp.Rule, "error", resp.Error)
	}
	receipt, rerr := party.Sign(s.self, "receipt", resp, time.Hour, now)
	if rerr != nil {
		return nil, rerr
	}
	resp.Receipt = receipt
	return resp, nil
}

// record appends an output's log entries and counts a state change when the
// output changed the state (err is nil) or logged something; it returns the
// entries' log indexes and the state version to persist (zero for none).
// Callers hold s.mu.
func (s *Server) record(out *orchestrator.Output, err error) ([]int64, uint64, error) {
	if out == nil {
		return nil, 0, nil
	}
	var idx []int64
	for _, e := range out.Entries {
		stored, aerr := s.ledger.AppendEntry(e)
		if aerr != nil {
			return nil, 0, fmt.Errorf("orchestrator: appending to the log: %w", aerr)
		}
		idx = append(idx, stored.Index)
	}
	if err != nil && len(out.Entries) == 0 {
		return idx, 0, nil
	}
	s.version++
	return idx, s.version, nil
}

func ruleOf(err error) string {
	var r interface{ RefusedBy() string }
	if errors.As(err, &r) {
		return r.RefusedBy()
	}
	return "error"
}

// deliver keeps and publishes releases made at now. A node that receives a
// task's keys is counted as heard from at now, so that it has NodeTimeout to
// start the task and report before it could be declared lost. A release
// replaces an earlier one of the same key for the same task (a re-admission
// releases the keys again), so the kept list does not grow.
func (s *Server) deliver(rs []orchestrator.Release, now time.Time) {
	by := map[party.ID][]orchestrator.Release{}
	s.relMu.Lock()
	for _, r := range rs {
		if r.Task == "" {
			continue // recipients get their key in the response
		}
		kept := slices.DeleteFunc(s.releases[r.To], func(o orchestrator.Release) bool {
			return o.Job == r.Job && o.Task == r.Task && o.Purpose == r.Purpose && o.Scope == r.Scope && o.Epoch == r.Epoch
		})
		s.releases[r.To] = append(kept, r)
		by[r.To] = append(by[r.To], r)
	}
	notify := s.notify
	s.relMu.Unlock()
	for node := range by {
		s.live.heard(node, now)
	}
	if notify != nil {
		for node, r := range by {
			notify(node, r)
		}
	}
}

// Releases returns the keys released to a node so far (wrapped to its key).
func (s *Server) Releases(node party.ID) []orchestrator.Release {
	s.relMu.Lock()
	defer s.relMu.Unlock()
	return append([]orchestrator.Release(nil), s.releases[node]...)
}
