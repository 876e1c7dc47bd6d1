package orchestrator

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/ledger"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/policy"
	"github.com/sealflow/sealflow/seal"
)

// Statement types the machine applies.
const (
	TypePartyRegister  = "party.register"
	TypeStreamRegister = "stream.register"
	TypeStreamKey      = "stream.key"
	TypeServiceSubmit  = "service.submit"
	TypeServiceApprove = "service.approve"
	TypeServiceRevoke  = "service.revoke"
	TypeNodeClaims     = "node.claims"
	TypeNodeAdmit      = "node.admit"
	TypeJobDeploy      = "job.deploy"
	TypeOutputRequest  = "output.request"
	TypeFrameRejected  = "frame.rejected"
)

// StageService is the policy stage that decides whether a service may read a
// stream at all (variables: service). A policy with no service rules admits
// only services the owner approved explicitly.
const StageService policy.Stage = "service"

// Release is one key released to a node or a recipient, wrapped to its
// attested HPKE key. The wrapped key is all that leaves the orchestrator.
type Release struct {
	// To is the node or recipient id.
	To party.ID `json:"to"`
	// Job and Task say what the key is for (Task is empty for recipients).
	Job  string `json:"job"`
	Task string `json:"task,omitempty"`
	// Purpose, Scope and Epoch name the key ("stream", "exchange",
	// "checkpoint", "output"; the stream or job scope; its epoch).
	Purpose string `json:"purpose"`
	Scope   string `json:"scope"`
	Epoch   uint32 `json:"epoch"`
	// Wrapped is the key wrapped with seal.WrapInfo{Purpose, KeyID, To}.
	Wrapped seal.Wrapped `json:"wrapped"`
}

// KeyID returns the id the release's WrapInfo uses.
func (r *Release) KeyID() string { return fmt.Sprintf("%s/%d", r.Scope, r.Epoch) }

// Output is what applying one statement produced.
type Output struct {
	// Type is the statement's type.
	Type string `json:"type"`
	// Result is the answer to the issuer (for example the admitted node id).
	Result any `json:"result,omitempty"`
	// Entries are the log entries to append, in order.
	Entries []ledger.Entry `json:"-"`
	// Releases are keys to deliver.
	Releases []Release `json:"-"`
}

// Machine is the orchestrator's deterministic governance state machine. It
// does no I/O: callers pass signed statements and the time and act on the
// Output (append entries to the log, deliver releases, persist the state).
// Apply is not safe for concurrent use; the server serializes calls.
type Machine struct {
	self      *party.KeyFile
	st        *State
	verifiers map[attest.TEE]attest.Verifier
	nonces    *attest.Nonces
	replay    *party.ReplayGuard
	policies  map[string]*policy.Policy
}

// NewMachine returns a machine with a fresh state for genesis. Verifiers verify
// worker evidence by TEE type.
func NewMachine(g Genesis, self *party.KeyFile, verifiers map[attest.TEE]attest.Verifier) (*Machine, error) {
	if g.Operator == nil {
		return nil, errors.New("orchestrator: the genesis configuration names no operator")
	}
	if err := g.Operator.Validate(); err != nil {
		return nil, fmt.Errorf("orchestrator: genesis operator: %w", err)
	}
	st := newState(g)
	st.Parties[g.Operator.ID()] = g.Operator
	return restore(st, self, verifiers)
}

// Restore returns a machine over a state saved from an earlier run (see
// MarshalState). Policies are recompiled.
func Restore(data []byte, self *party.KeyFile, verifiers map[attest.TEE]attest.Verifier) (*Machine, error) {
	st := &State{}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("orchestrator: decoding saved state: %w", err)
	}
	return restore(st, self, verifiers)
}

func restore(st *State, self *party.KeyFile, verifiers map[attest.TEE]attest.Verifier) (*Machine, error) {
	if self == nil {
		return nil, errors.New("orchestrator: no orchestrator key file")
	}
	m := &Machine{
		self:      self,
		st:        st,
		verifiers: verifiers,
		nonces:    attest.NewNonces(5*time.Minute, 1<<16),
		replay:    party.NewReplayGuard(0),
		policies:  map[string]*policy.Policy{},
	}
	if st.Recent == nil {
		st.Recent = map[string]time.Time{}
	}
	for k, exp := range st.Recent {
		issuer, nonce, _ := strings.Cut(k, "/")
		n, _ := hex.DecodeString(nonce)
		// Every remembered statement was unexpired when the last one was seen.
		_ = m.replay.Check(&party.Statement{Issuer: party.ID(issuer), Nonce: n, Expires: exp}, st.LastSeen)
	}
	for name, s := range st.Streams {
		p, err := policy.CompileBytes(s.Policy)
		if err != nil {
			return nil, fmt.Errorf("orchestrator: saved policy of stream %s: %w", name, err)
		}
		m.policies[name] = p
	}
	return m, nil
}

// Self returns the orchestrator's own identity.
func (m *Machine) Self() *party.Identity { return m.self.Identity() }

// MarshalState returns the state as JSON, to be sealed and persisted.
func (m *Machine) MarshalState() ([]byte, error) { return json.Marshal(m.st) }

// State returns the machine's state. Callers must not modify it.
func (m *Machine) State() *State { return m.st }

// Policy returns the compiled policy of a stream.
func (m *Machine) Policy(stream string) (*policy.Policy, bool) {
	p, ok := m.policies[stream]
	return p, ok
}

// Nonce issues a fresh attestation nonce for a worker's admission.
func (m *Machine) Nonce(now time.Time) []byte { return m.nonces.Issue(now) }

func refuse(rule, format string, args ...any) error {
	return &attest.Refusal{Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

// Apply verifies a signed statement, checks the issuer's authority and applies
// it. On success the state has changed and Output says what to log and deliver.
// On refusal the state is unchanged; Output may still hold log entries (a
// refusal that concerns an owner's data is logged) and the error names the rule.
func (m *Machine) Apply(now time.Time, signed []byte) (*Output, error) {
	st, err := party.Verify(signed, m.lookup(signed), now)
	if err != nil {
		return nil, err
	}
	if err := m.replay.Check(st, now); err != nil {
		return nil, err
	}
	m.remember(st, now)
	issuer := m.identity(st.Issuer, signed)
	out := &Output{Type: st.Type}
	switch st.Type {
	case TypePartyRegister:
		err = m.registerParty(now, st, issuer, out)
	case TypeStreamRegister:
		err = m.registerStream(now, st, issuer, out)
	case TypeStreamKey:
		err = m.streamKey(now, st, issuer, out)
	case TypeServiceSubmit:
		err = m.submitService(now, st, issuer, out)
	case TypeServiceApprove:
		err = m.approve(now, st, issuer, out)
	case TypeServiceRevoke:
		err = m.revoke(now, st, issuer, out)
	case TypeNodeAdmit:
		err = m.admit(now, st, issuer, out)
	case TypeJobDeploy:
		err = m.deploy(now, st, issuer, out)
	case TypeOutputRequest:
		err = m.outputRequest(now, st, issuer, out)
	case TypeFrameRejected:
		err = m.frameRejected(now, st, issuer, out)
	case TypeCheckpointAck:
		err = m.checkpointAck(now, st, issuer, out)
	case TypeJobSavepoint:
		err = m.savepoint(now, st, issuer, out)
	case TypeJobStop:
		err = m.stopJob(now, st, issuer, out)
	case TypeJobScale:
		err = m.scale(now, st, issuer, out)
	case TypeJobUpgrade:
		err = m.upgrade(now, st, issuer, out)
	case TypeJobRollback:
		err = m.rollback(now, st, issuer, out)
	case TypeTaskMigrate:
		err = m.migrate(now, st, out)
	case TypeNodeDrain:
		err = m.drain(now, st, out)
	case TypeNodeRemove:
		err = m.removeNode(now, st, out)
	default:
		err = refuse("statement.type", "unknown statement type %q", st.Type)
	}
	if err == nil {
		m.st.Applied++
	}
	return out, err
}

// lookup resolves statement issuers: registered parties and admitted nodes,
// plus the self-certifying identity carried by registrations and admissions.
func (m *Machine) lookup(signed []byte) func(party.ID) (*party.Identity, error) {
	return func(id party.ID) (*party.Identity, error) {
		if p, ok := m.st.Parties[id]; ok {
			return p, nil
		}
		if n, ok := m.st.Nodes[id]; ok {
			return n.Identity, nil
		}
		if self := selfIdentity(signed); self != nil && self.ID() == id {
			return self, nil
		}
		return nil, refuse(party.RuleUnknownParty, "party %s is not registered", id.Short())
	}
}

func (m *Machine) identity(id party.ID, signed []byte) *party.Identity {
	if p, ok := m.st.Parties[id]; ok {
		return p
	}
	if n, ok := m.st.Nodes[id]; ok {
		return n.Identity
	}
	return selfIdentity(signed)
}

// selfIdentity extracts the identity a registration or admission carries. It
// parses the payload before the signature is checked, which is safe: the result
// is only used as the candidate key for that very check.
func selfIdentity(signed []byte) *party.Identity {
	st, err := party.PeekUnverified(signed)
	if err != nil || (st.Type != TypePartyRegister && st.Type != TypeNodeAdmit) {
		return nil
	}
	var body struct {
		Identity json.RawMessage `json:"identity"`
	}
	if json.Unmarshal(st.Body, &body) != nil || body.Identity == nil {
		return nil
	}
	id, err := party.ParseIdentity(body.Identity)
	if err != nil {
		return nil
	}
	return id
}

// remember records a statement in the persisted replay set and drops the
// expired ones.
func (m *Machine) remember(st *party.Statement, now time.Time) {
	for k, exp := range m.st.Recent {
		if !now.Before(exp) {
			delete(m.st.Recent, k)
		}
	}
	m.st.Recent[string(st.Issuer)+"/"+hex.EncodeToString(st.Nonce)] = st.Expires
	if now.After(m.st.LastSeen) {
		m.st.LastSeen = now.UTC()
	}
}

func decodeBody(st *party.Statement, v any) error {
	if err := strictJSON(st.Body, v); err != nil {
		return refuse("statement.body", "%s body: %v", st.Type, err)
	}
	return nil
}

func requireRole(issuer *party.Identity, roles ...party.Role) error {
	if issuer == nil || !slices.Contains(roles, issuer.Role) {
		got := party.Role("unknown")
		if issuer != nil {
			got = issuer.Role
		}
		return refuse("authority.role", "this action needs role %v, the issuer is %s", roles, got)
	}
	return nil
}

func entry(now time.Time, typ string, subjects []string, body any) ledger.Entry {
	b, _ := json.Marshal(body)
	s := slices.Clone(subjects)
	sort.Strings(s)
	return ledger.Entry{Time: now.UTC(), Type: typ, Subjects: slices.Compact(s), Body: b}
}

func digestJSON(v any) string {
	b, _ := json.Marshal(v)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// RegisterParty is the body of a party.register statement.
type RegisterParty struct {
	Identity Identity `json:"identity"`
}

func (m *Machine) registerParty(now time.Time, st *party.Statement, _ *party.Identity, out *Output) error {
	var b RegisterParty
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	if b.Identity.Identity == nil || b.Identity.ID() != st.Issuer {
		return refuse("party.self-signed", "a registration must be signed by the key it registers")
	}
	switch b.Identity.Role {
	case party.RoleOwner, party.RoleProvider, party.RoleRecipient:
	default:
		return refuse("party.role", "role %s cannot register itself (operators come from genesis, workers are admitted)", b.Identity.Role)
	}
	if old, ok := m.st.Parties[st.Issuer]; ok {
		out.Result = map[string]any{"id": old.ID(), "already": true}
		return nil
	}
	m.st.Parties[st.Issuer] = b.Identity.Identity
	out.Result = map[string]any{"id": b.Identity.ID()}
	out.Entries = append(out.Entries, entry(now, "party.registered", []string{"party:" + string(st.Issuer)},
		map[string]any{"id": st.Issuer, "role": b.Identity.Role, "name": b.Identity.Name}))
	return nil
}

// RegisterStream is the body of a stream.register statement.
type RegisterStream struct {
	Name       string          `json:"name"`
	Schema     []Field         `json:"schema"`
	Partitions int             `json:"partitions"`
	Site       string          `json:"site,omitempty"`
	Policy     json.RawMessage `json:"policy"`
}

func (m *Machine) registerStream(now time.Time, st *party.Statement, issuer *party.Identity, out *Output) error {
	if err := requireRole(issuer, party.RoleOwner); err != nil {
		return err
	}
	var b RegisterStream
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	if b.Name == "" || len(b.Name) > 200 {
		return refuse("stream.name", "a stream needs a name of 1 to 200 bytes")
	}
	if old, ok := m.st.Streams[b.Name]; ok && old.Owner != st.Issuer {
		return refuse("stream.owner", "stream %s belongs to another owner", b.Name)
	}
	if b.Partitions <= 0 {
		b.Partitions = 1
	}
	if len(b.Schema) == 0 {
		return refuse("stream.schema", "stream %s has no schema fields", b.Name)
	}
	doc, err := policy.Decode(b.Policy)
	if err != nil {
		return refuse("stream.policy", "%v", err)
	}
	if doc.Stream != b.Name {
		return refuse("stream.policy", "the policy governs stream %q, not %q", doc.Stream, b.Name)
	}
	p, err := policy.Compile(doc)
	if err != nil {
		return refuse("stream.policy", "%v", err)
	}
	s, ok := m.st.Streams[b.Name]
	if !ok {
		s = &Stream{Name: b.Name, Owner: st.Issuer, Keys: map[uint32][]byte{}, Approved: map[string]bool{}, Revoked: map[string]bool{}}
		m.st.Streams[b.Name] = s
	}
	s.Schema, s.Partitions, s.Site = b.Schema, b.Partitions, b.Site
	s.Policy, s.PolicyDigest = b.Policy, p.Digest()
	m.policies[b.Name] = p
	out.Result = map[string]any{"stream": b.Name, "policy_digest": p.Digest()}
	out.Entries = append(out.Entries, entry(now, "stream.registered", []string{"stream:" + b.Name, "party:" + string(st.Issuer)},
		map[string]any{"stream": b.Name, "owner": st.Issuer, "partitions": b.Partitions, "policy_digest": p.Digest()}))
	return nil
}

// StreamKey is the body of a stream.key statement: a data-key epoch of a
// stream, wrapped to the orchestrator's HPKE key with
// seal.WrapInfo{Purpose: "stream-key", KeyID: "<stream>/<epoch>", Recipient: orchestrator id}.
type StreamKey struct {
	Stream  string       `json:"stream"`
	Epoch   uint32       `json:"epoch"`
	Wrapped seal.Wrapped `json:"wrapped"`
}

func (m *Machine) streamKey(now time.Time, st *party.Statement, issuer *party.Identity, out *Output) error {
	if err := requireRole(issuer, party.RoleOwner); err != nil {
		return err
	}
	var b StreamKey
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	s, err := m.ownedStream(b.Stream, st.Issuer, "upload its keys")
	if err != nil {
		return err
	}
	if _, dup := s.Keys[b.Epoch]; dup {
		return refuse("stream.epoch", "stream %s already has a key for epoch %d", b.Stream, b.Epoch)
	}
	if b.Epoch < s.Epoch {
		return refuse("stream.epoch", "epoch %d is older than the current epoch %d of stream %s", b.Epoch, s.Epoch, b.Stream)
	}
	key, err := seal.Unwrap(m.self.HPKEKey(), StreamKeyInfo(b.Stream, b.Epoch, m.self.ID()).Bytes(), b.Wrapped)
	if err != nil {
		return err
	}
	if len(key) != seal.KeySize {
		return refuse("stream.key-size", "a stream key has %d bytes, want %d", len(key), seal.KeySize)
	}
	s.Keys[b.Epoch] = key
	s.Epoch = b.Epoch
	out.Result = map[string]any{"stream": b.Stream, "epoch": b.Epoch}
	out.Entries = append(out.Entries, entry(now, "stream.key", []string{"stream:" + b.Stream},
		map[string]any{"stream": b.Stream, "epoch": b.Epoch, "key_digest": keyDigest(key)}))
	return nil
}

// StreamKeyInfo is the HPKE info an owner wraps a stream's data-key epoch with
// for the orchestrator.
func StreamKeyInfo(stream string, epoch uint32, orchestrator party.ID) seal.WrapInfo {
	return seal.WrapInfo{Purpose: "stream-key", KeyID: fmt.Sprintf("%s/%d", stream, epoch), Recipient: string(orchestrator)}
}

// keyDigest identifies a key in the log without revealing it.
func keyDigest(key []byte) string {
	h := sha256.Sum256(append([]byte("sealflow key digest\x00"), key...))
	return hex.EncodeToString(h[:8])
}

func (m *Machine) submitService(now time.Time, st *party.Statement, issuer *party.Identity, out *Output) error {
	if err := requireRole(issuer, party.RoleProvider); err != nil {
		return err
	}
	var sub SubmitService
	if err := decodeBody(st, &sub); err != nil {
		return err
	}
	man := sub.Manifest
	switch {
	case man.ID == "":
		return refuse("service.manifest", "the manifest has no id")
	case len(man.Inputs) == 0:
		return refuse("service.manifest", "service %s reads no stream", man.ID)
	case len(man.Tasks) == 0:
		return refuse("service.manifest", "service %s has no tasks", man.ID)
	}
	for _, in := range man.Inputs {
		if _, ok := m.st.Streams[in]; !ok {
			return refuse("stream.unknown", "service %s reads stream %q, which is not registered", man.ID, in)
		}
	}
	if err := checkSpecs(&man); err != nil {
		return err
	}
	if err := m.checkCode(&sub); err != nil {
		return err
	}
	if old, ok := m.st.Services[man.ID]; ok && old.Provider != st.Issuer {
		return refuse("service.owner", "service id %s belongs to another provider", man.ID)
	}
	svc := &Service{Manifest: man, Provider: st.Issuer, Digest: digestJSON(man), Submitted: now.UTC()}
	if old, ok := m.st.Services[man.ID]; ok && old.Digest != svc.Digest && man.Version <= old.Manifest.Version {
		return refuse("service.version", "service %s version %d is submitted already with another manifest; a new manifest needs a higher version", man.ID, old.Manifest.Version)
	}
	if m.st.Versions == nil {
		m.st.Versions = map[string]*Service{}
	}
	// A state saved before versions were kept has only the latest version
	// of a service: keep it before replacing it, since jobs may run it.
	if old, ok := m.st.Services[man.ID]; ok && m.st.Versions[old.Digest] == nil {
		m.st.Versions[old.Digest] = old
	}
	m.st.Services[man.ID] = svc
	m.st.Versions[svc.Digest] = svc
	m.storeCodeKey(man.ID, sub.CodeKey)
	m.storeCodeKey(svc.Digest, sub.CodeKey)
	out.Result = map[string]any{"service": man.ID, "digest": svc.Digest, "pending": m.pendingOwners(svc)}
	subjects := []string{"service:" + man.ID, "party:" + string(st.Issuer)}
	for _, in := range man.Inputs {
		subjects = append(subjects, "stream:"+in)
	}
	out.Entries = append(out.Entries, entry(now, "service.submitted", subjects,
		map[string]any{"service": man.ID, "version": man.Version, "digest": svc.Digest, "job_digest": man.JobDigest, "inputs": man.Inputs, "recipients": man.Recipients}))
	return nil
}

// ServiceInput is the policy view of a service: the `service` variable of
// every policy stage.
func ServiceInput(svc *Service) policy.Service {
	return policy.Service{ID: svc.Manifest.ID, Provider: string(svc.Provider), Version: svc.Manifest.Version,
		SecurityVersion: svc.Manifest.SecurityVersion, Digest: svc.Digest, CodeDigests: svc.Manifest.CodeDigests}
}

// pendingOwners lists the input streams whose owner neither approved the
// service's exact digest nor has a service rule that admits it, and the
// streams that revoked it.
func (m *Machine) pendingOwners(svc *Service) []string {
	var pending []string
	for _, in := range svc.Manifest.Inputs {
		s := m.st.Streams[in]
		if s == nil || s.Revoked[svc.Manifest.ID] {
			pending = append(pending, in)
			continue
		}
		if s.Approved[svc.Digest] {
			continue
		}
		if p := m.policies[in]; p != nil && hasStage(p, StageService) && p.Evaluate(StageService, policy.Input{Service: ServiceInput(svc)}).Allowed {
			continue
		}
		pending = append(pending, in)
	}
	return pending
}

func hasStage(p *policy.Policy, stage policy.Stage) bool {
	for _, r := range p.Document().Rules {
		if r.Stage == stage {
			return true
		}
	}
	return false
}

// ownedStream returns the registered stream name if issuer owns it, or the
// refusal naming what the issuer tried to do.
func (m *Machine) ownedStream(name string, issuer party.ID, action string) (*Stream, error) {
	s, ok := m.st.Streams[name]
	if !ok {
		return nil, refuse("stream.unknown", "stream %q is not registered", name)
	}
	if s.Owner != issuer {
		return nil, refuse("stream.owner", "only the owner of stream %s may %s", name, action)
	}
	return s, nil
}

// Approve is the body of a service.approve statement.
type Approve struct {
	Stream string `json:"stream"`
	// Digest is the exact service digest approved.
	Digest string `json:"digest"`
}

func (m *Machine) approve(now time.Time, st *party.Statement, issuer *party.Identity, out *Output) error {
	if err := requireRole(issuer, party.RoleOwner); err != nil {
		return err
	}
	var b Approve
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	s, err := m.ownedStream(b.Stream, st.Issuer, "approve services for it")
	if err != nil {
		return err
	}
	s.Approved[b.Digest] = true
	out.Result = map[string]any{"stream": b.Stream, "digest": b.Digest}
	out.Entries = append(out.Entries, entry(now, "service.approved", []string{"stream:" + b.Stream},
		map[string]any{"stream": b.Stream, "digest": b.Digest, "owner": st.Issuer}))
	return nil
}

// Revoke is the body of a service.revoke statement.
type Revoke struct {
	Stream  string `json:"stream"`
	Service string `json:"service"`
}

func (m *Machine) revoke(now time.Time, st *party.Statement, issuer *party.Identity, out *Output) error {
	if err := requireRole(issuer, party.RoleOwner); err != nil {
		return err
	}
	var b Revoke
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	s, err := m.ownedStream(b.Stream, st.Issuer, "revoke services")
	if err != nil {
		return err
	}
	// A revoked service is never deployed on this stream again, so it never
	// receives the next epoch, which the owner uploads and publishes with.
	s.Revoked[b.Service] = true
	for d := range s.Approved {
		if svc := m.serviceByDigest(d); svc != nil && svc.Manifest.ID == b.Service {
			delete(s.Approved, d)
		}
	}
	// The service's running jobs that read the stream stop now: the job and
	// its keys are forgotten here, and its workers, which poll the jobs they
	// run, stop their tasks and drop the keys.
	var stopped []string
	for id, j := range m.st.Jobs {
		svc := m.jobService(j)
		if j.Service == b.Service && svc != nil && slices.Contains(svc.Manifest.Inputs, b.Stream) {
			m.removeJob(j)
			stopped = append(stopped, id)
			out.Entries = append(out.Entries, entry(now, "job.stopped", []string{"stream:" + b.Stream, "job:" + id, "service:" + b.Service},
				map[string]any{"job": id, "service": b.Service, "reason": "revoked by the owner of " + b.Stream, "tasks": j.Tasks}))
		}
	}
	slices.Sort(stopped)
	out.Result = map[string]any{"stream": b.Stream, "service": b.Service, "next_epoch": s.Epoch + 1, "stopped_jobs": stopped}
	out.Entries = append(out.Entries, entry(now, "service.revoked", []string{"stream:" + b.Stream, "service:" + b.Service},
		map[string]any{"stream": b.Stream, "service": b.Service, "owner": st.Issuer, "next_epoch": s.Epoch + 1}))
	return nil
}

// jobService returns the version of the service a job runs (the latest
// submitted version may be newer: an upgrade waiting for approvals).
func (m *Machine) jobService(job *Job) *Service {
	if s := m.st.Versions[job.Digest]; s != nil {
		return s
	}
	return m.st.Services[job.Service]
}

func (m *Machine) serviceByDigest(d string) *Service {
	if s := m.st.Versions[d]; s != nil {
		return s
	}
	for _, s := range m.st.Services {
		if s.Digest == d {
			return s
		}
	}
	return nil
}

// NodeClaims is the body of a node.claims statement, signed by the operator:
// where a node is. TEEs do not attest location; this is the operator's word,
// optionally bound to the node's platform id, and it is logged.
type NodeClaims struct {
	Name       string `json:"name"`
	Tier       string `json:"tier"`
	Region     string `json:"region"`
	Site       string `json:"site"`
	PlatformID string `json:"platform_id,omitempty"`
	Slots      int    `json:"slots,omitempty"`
}

// Admit is the body of a node.admit statement, signed by the node's fresh key.
type Admit struct {
	Identity Identity        `json:"identity"`
	Nonce    []byte          `json:"nonce"`
	Evidence attest.Evidence `json:"evidence"`
	// Claims is the operator's signed node.claims statement.
	Claims []byte `json:"claims"`
}

// Admission is the result of an admission: the node's identity and its expiry.
type Admission struct {
	Node    party.ID        `json:"node"`
	Expires time.Time       `json:"expires"`
	Claims  attest.Claims   `json:"claims"`
	Where   policy.Location `json:"where"`
}

func (m *Machine) admit(now time.Time, st *party.Statement, issuer *party.Identity, out *Output) error {
	var b Admit
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	if b.Identity.Identity == nil || b.Identity.ID() != st.Issuer || b.Identity.Role != party.RoleWorker {
		return refuse("node.self-signed", "an admission must be signed by the worker key it admits")
	}
	err := m.checkAdmission(now, &b, out)
	if err != nil {
		out.Entries = append(out.Entries, entry(now, "node.refused", []string{"node:" + string(st.Issuer)},
			map[string]any{"node": st.Issuer, "rule": ruleOf(err), "reason": err.Error()}))
	}
	return err
}

func ruleOf(err error) string {
	var r interface{ RefusedBy() string }
	if errors.As(err, &r) {
		return r.RefusedBy()
	}
	return "error"
}

func (m *Machine) checkAdmission(now time.Time, b *Admit, out *Output) error {
	if err := m.nonces.Consume(b.Nonce, now); err != nil {
		return err
	}
	v := m.verifiers[b.Evidence.Type]
	if v == nil {
		return refuse("attest.tee", "no verifier for TEE type %q", b.Evidence.Type)
	}
	claims, err := v.Verify(context.Background(), &b.Evidence, attest.BindReportData(b.Nonce, b.Identity.SigningKey, b.Identity.HPKEKey))
	if err != nil {
		return err
	}
	if err := attest.Validate(claims, &m.st.Genesis.Workers); err != nil {
		return err
	}
	op := m.st.Genesis.Operator
	cst, err := party.Verify(b.Claims, party.Directory{op.ID(): op}.Lookup, now)
	if err != nil {
		return refuse("node.claims", "the node's location claims are not the operator's: %v", err)
	}
	if cst.Type != TypeNodeClaims {
		return refuse("node.claims", "the claims statement has type %q, want %q", cst.Type, TypeNodeClaims)
	}
	var nc NodeClaims
	if err := strictJSON(cst.Body, &nc); err != nil {
		return refuse("node.claims", "node claims: %v", err)
	}
	if nc.PlatformID != "" && nc.PlatformID != hex.EncodeToString(claims.PlatformID) {
		return refuse("node.platform", "the operator bound these claims to platform %s, the evidence comes from %x", nc.PlatformID, claims.PlatformID)
	}
	if nc.Slots <= 0 {
		nc.Slots = 4
	}
	id := b.Identity.ID()
	loc := policy.Location{Tier: nc.Tier, Region: nc.Region, Site: nc.Site}
	n := &Node{Identity: b.Identity.Identity, Claims: *claims, Location: loc, Slots: nc.Slots, AdmittedAt: now.UTC(), Expires: now.UTC().Add(m.st.Genesis.nodeTTL())}
	old, readmitted := m.st.Nodes[id]
	// A node declared lost is admitted afresh; a re-attesting node keeps
	// its tasks.
	readmitted = readmitted && old.Lost.IsZero()
	if readmitted {
		n.AdmittedAt = old.AdmittedAt
	}
	m.st.Nodes[id] = n
	out.Result = Admission{Node: id, Expires: n.Expires, Claims: *claims, Where: loc}
	out.Entries = append(out.Entries, entry(now, "node.admitted", []string{"node:" + string(id)},
		map[string]any{"node": id, "name": nc.Name, "tee": claims.TEE, "measurement": hex.EncodeToString(claims.Measurement),
			"svn": claims.SVN, "debug": claims.Debug, "tier": nc.Tier, "region": nc.Region, "site": nc.Site, "expires": n.Expires}))
	if readmitted {
		// A restarted worker with the same identity gets its tasks' keys
		// again and restarts them (a running one ignores keys it holds).
		if err := m.releaseAgain(now, id, out); err != nil {
			return err
		}
	}
	m.placeUnplaced(now, "node "+id.Short()+" admitted", out)
	if !readmitted {
		// New capacity: tasks pushed to a less preferred tier come back.
		m.rebalancePreferred(now, "node "+id.Short()+" of a preferred tier admitted", out)
	}
	// Adaptive operators follow the slots the node offers.
	m.adapt(now, "node "+id.Short()+" admitted", out)
	return nil
}

// Deploy is the body of a job.deploy statement.
type Deploy struct {
	Service string `json:"service"`
	// Job names the job; the service id when empty.
	Job string `json:"job,omitempty"`
	// FromSavepoint, if set, starts the job from a savepoint of a job of the
	// same id and service (possibly of an older version): its tasks restore
	// their state and positions from it and it keeps that job's keys.
	FromSavepoint string `json:"from_savepoint,omitempty"`
}

func (m *Machine) deploy(now time.Time, st *party.Statement, issuer *party.Identity, out *Output) error {
	if err := requireRole(issuer, party.RoleProvider); err != nil {
		return err
	}
	var b Deploy
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	svc, ok := m.st.Services[b.Service]
	if !ok {
		return refuse("service.unknown", "service %q is not submitted", b.Service)
	}
	if svc.Provider != st.Issuer {
		return refuse("service.owner", "service %s belongs to another provider", b.Service)
	}
	if b.Job == "" {
		b.Job = b.Service
	}
	if _, dup := m.st.Jobs[b.Job]; dup {
		return refuse("job.exists", "job %s is already deployed", b.Job)
	}
	return m.startJob(now, svc, b, nil, out)
}

// startJob deploys svc as job b.Job (from savepoint b.FromSavepoint, if
// set): approvals, placement under every owner's policy, keys and their
// release. It changes the state only when it succeeds. relieved are the
// relief holds of the job's tasks (an upgrade's, see Job.Relieved): the
// tasks are placed off the nodes they are held from, unless they cannot all
// be, when the holds are ignored.
func (m *Machine) startJob(now time.Time, svc *Service, b Deploy, relieved map[string]map[party.ID]time.Time, out *Output) error {
	subjects := []string{"service:" + svc.Manifest.ID, "job:" + b.Job}
	for _, in := range svc.Manifest.Inputs {
		subjects = append(subjects, "stream:"+in)
	}
	logRefusal := func(err error) error {
		out.Entries = append(out.Entries, entry(now, "job.refused", subjects,
			map[string]any{"job": b.Job, "service": svc.Manifest.ID, "digest": svc.Digest, "rule": ruleOf(err), "reason": err.Error()}))
		return err
	}
	if pending := m.pendingOwners(svc); len(pending) > 0 {
		// The provider learns which input streams still need their owner's
		// approval (see the api's Response.Result of a refusal).
		out.Result = map[string]any{"pending": pending, "digest": svc.Digest}
		return logRefusal(refuse("approval.pending", "service %s (digest %s) is not approved by the owners of %v: every input owner must approve it or have a service rule that admits it", svc.Manifest.ID, svc.Digest[:12], pending))
	}
	for _, in := range svc.Manifest.Inputs {
		if len(m.st.Streams[in].Keys) == 0 {
			return logRefusal(refuse("stream.no-key", "stream %s has no key epoch uploaded yet", in))
		}
	}
	slots, cands, check := pinSources(svc.Manifest.Tasks, m.st.Streams), m.candidates(now), m.placementCheck(svc)
	placement, err := Schedule(slots, cands, check, WithGeo(m.geo(svc)))
	if hold := (&Job{Relieved: relieved}); err == nil && len(relieved) > 0 {
		unheld, uerr := Schedule(slots, cands, func(t TaskSlot, c Candidate) error {
			if hold.held(t.ID, party.ID(c.ID), now) {
				return refuse("relief.hold", "task %s was relieved from node %s less than %s ago", t.ID, party.ID(c.ID).Short(), ReliefHold)
			}
			return check(t, c)
		}, WithGeo(m.geo(svc)))
		if uerr == nil {
			placement = unheld
		}
	}
	if err != nil {
		return logRefusal(err)
	}
	job := &Job{ID: b.Job, Service: svc.Manifest.ID, Digest: svc.Digest, Tasks: map[string]party.ID{}, Keys: map[string][]byte{}, Deployed: now.UTC()}
	// A job starts without checkpoints, or from a savepoint's.
	var (
		fresh []string
		cps   *JobCheckpoints
	)
	if b.FromSavepoint != "" {
		if cps, fresh, err = m.fromSavepoint(now, job, svc, b.FromSavepoint); err != nil {
			return logRefusal(err)
		}
	}
	for _, purpose := range append([]string{"exchange", "checkpoint"}, prefixed("output:", svc.Manifest.Outputs)...) {
		if job.Keys[purpose] != nil {
			continue
		}
		k := make([]byte, seal.KeySize)
		rand.Read(k)
		job.Keys[purpose] = k
	}
	for _, t := range svc.Manifest.Tasks {
		node := party.ID(placement[t.ID])
		job.Tasks[t.ID] = node
		if err := m.releaseTask(now, out, job, svc, t, node, ""); err != nil {
			var r *attest.Refusal
			if errors.As(err, &r) {
				return logRefusal(err)
			}
			return err
		}
	}
	m.st.Jobs[b.Job] = job
	delete(m.st.Checkpoints, b.Job)
	if cps != nil {
		if m.st.Checkpoints == nil {
			m.st.Checkpoints = map[string]*JobCheckpoints{}
		}
		m.st.Checkpoints[b.Job] = cps
	}
	// The result is read (signed into the receipt) after the machine's lock
	// is released, while a task may move: it gets a copy of the placement.
	out.Result = map[string]any{"job": b.Job, "tasks": maps.Clone(job.Tasks)}
	body := map[string]any{"job": b.Job, "service": svc.Manifest.ID, "digest": svc.Digest, "tasks": job.Tasks}
	if b.FromSavepoint != "" {
		body["from_savepoint"] = b.FromSavepoint
		body["fresh_tasks"] = fresh
		out.Result = map[string]any{"job": b.Job, "tasks": maps.Clone(job.Tasks), "from_savepoint": b.FromSavepoint, "fresh_tasks": fresh}
	}
	out.Entries = append(out.Entries, entry(now, "job.deployed", subjects, body))
	return nil
}

func prefixed(p string, s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = p + v
	}
	return out
}

func (m *Machine) policyDigests(svc *Service) map[string]string {
	d := map[string]string{}
	for _, in := range svc.Manifest.Inputs {
		d[in] = m.st.Streams[in].PolicyDigest
	}
	return d
}

// WrapInfoFor returns the HPKE info a release of (purpose, scope, epoch) to
// recipient is wrapped with.
func WrapInfoFor(purpose, scope string, epoch uint32, to party.ID) seal.WrapInfo {
	return seal.WrapInfo{Purpose: purpose + "-key", KeyID: fmt.Sprintf("%s/%d", scope, epoch), Recipient: string(to)}
}

func (m *Machine) wrapFor(to *party.Identity, job, task, purpose, scope string, epoch uint32, key []byte) (Release, error) {
	pub, err := to.HPKEPublicKey()
	if err != nil {
		return Release{}, fmt.Errorf("orchestrator: HPKE key of %s: %w", to.ID().Short(), err)
	}
	w, err := seal.Wrap(pub, WrapInfoFor(purpose, scope, epoch, to.ID()).Bytes(), key)
	if err != nil {
		return Release{}, fmt.Errorf("orchestrator: wrapping %s key for %s: %w", purpose, to.ID().Short(), err)
	}
	return Release{To: to.ID(), Job: job, Task: task, Purpose: purpose, Scope: scope, Epoch: epoch, Wrapped: w}, nil
}

// OutputRequest is the body of an output.request statement: a recipient asks
// for the key of a job's output stream.
type OutputRequest struct {
	Job    string `json:"job"`
	Output string `json:"output"`
}

func (m *Machine) outputRequest(now time.Time, st *party.Statement, issuer *party.Identity, out *Output) error {
	if issuer == nil {
		return refuse(party.RuleUnknownParty, "unknown issuer")
	}
	var b OutputRequest
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	job, ok := m.st.Jobs[b.Job]
	if !ok {
		return refuse("job.unknown", "job %q is not deployed", b.Job)
	}
	svc := m.jobService(job)
	key, ok := job.Keys["output:"+b.Output]
	if !ok {
		return refuse("job.output", "job %s has no output %q", b.Job, b.Output)
	}
	subjects := []string{"job:" + b.Job, "party:" + string(st.Issuer)}
	for _, in := range svc.Manifest.Inputs {
		subjects = append(subjects, "stream:"+in)
	}
	err := func() error {
		if !slices.Contains(svc.Manifest.Recipients, st.Issuer) {
			return refuse("recipient.manifest", "party %s is not a recipient named by service %s", st.Issuer.Short(), svc.Manifest.ID)
		}
		in := policy.Input{Service: ServiceInput(svc), Recipient: policy.Recipient{ID: string(st.Issuer), Name: issuer.Name, Role: string(issuer.Role)}}
		for _, s := range svc.Manifest.Inputs {
			if d := m.policies[s].Evaluate(policy.StageRecipient, in); !d.Allowed {
				return d.Err()
			}
		}
		return nil
	}()
	if err != nil {
		out.Entries = append(out.Entries, entry(now, "output.refused", subjects,
			map[string]any{"job": b.Job, "output": b.Output, "recipient": st.Issuer, "rule": ruleOf(err), "reason": err.Error()}))
		return err
	}
	r, err := m.wrapFor(issuer, b.Job, "", "output", b.Output, 0, key)
	if err != nil {
		return err
	}
	out.Releases = append(out.Releases, r)
	out.Result = r
	out.Entries = append(out.Entries, entry(now, "key.released", subjects,
		map[string]any{"key": r.KeyID(), "purpose": "output", "key_digest": keyDigest(key), "recipient": st.Issuer, "service_digest": svc.Digest, "policy_digests": m.policyDigests(svc)}))
	return nil
}

// FrameRejected is the body of a frame.rejected statement: a worker reports
// frames it refused (tampered, replayed, foreign, ...).
type FrameRejected struct {
	Scope  string `json:"scope"`
	Reason string `json:"reason"`
	Count  int    `json:"count"`
	Detail string `json:"detail,omitempty"`
}

func (m *Machine) frameRejected(now time.Time, st *party.Statement, issuer *party.Identity, out *Output) error {
	if err := requireRole(issuer, party.RoleWorker); err != nil {
		return err
	}
	var b FrameRejected
	if err := decodeBody(st, &b); err != nil {
		return err
	}
	subj := []string{"node:" + string(st.Issuer)}
	if _, ok := m.st.Streams[b.Scope]; ok {
		subj = append(subj, "stream:"+b.Scope)
	} else if _, ok := m.st.Jobs[b.Scope]; ok {
		subj = append(subj, "job:"+b.Scope)
	}
	out.Entries = append(out.Entries, entry(now, "frame.rejected", subj,
		map[string]any{"node": st.Issuer, "scope": b.Scope, "reason": b.Reason, "count": b.Count, "detail": b.Detail}))
	return nil
}

// checkSpecs type-checks the JobSpecs of a manifest: the single Spec, or the
// stage specs every task names. A spec that does not type-check is refused
// with the rule and location the jobspec package names.
func checkSpecs(man *Manifest) error {
	check := func(what string, raw json.RawMessage) error {
		spec, err := jobspec.Parse(raw)
		if err != nil {
			return refuse("jobspec.parse", "%s: %v", what, err)
		}
		if err := spec.Validate(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
	if len(man.Spec) > 0 {
		if err := check("spec", man.Spec); err != nil {
			return err
		}
	}
	for name, raw := range man.Stages {
		if err := check("stage "+name, raw); err != nil {
			return err
		}
	}
	for _, t := range man.Tasks {
		if len(man.StageSpec(&t)) == 0 {
			if t.Stage == "" {
				return refuse("service.manifest", "task %s has no JobSpec: the manifest has no spec", t.ID)
			}
			return refuse("service.manifest", "task %s names stage %q, which the manifest does not define", t.ID, t.Stage)
		}
	}
	return nil
}

// pinSources places each task that reads an owner's stream registered with a
// site at that site (sources run where the records enter), unless the
// manifest pinned it already. A task reading streams of different sites is
// left unpinned: no single site holds all its inputs.
func pinSources(tasks []TaskSlot, streams map[string]*Stream) []TaskSlot {
	out := slices.Clone(tasks)
	for i := range out {
		if out[i].Site != "" {
			continue
		}
		site := ""
		for _, in := range out[i].Reads {
			s := streams[in]
			if s == nil || s.Site == "" || (site != "" && s.Site != site) {
				site = ""
				break
			}
			site = s.Site
		}
		out[i].Site = site
	}
	return out
}
