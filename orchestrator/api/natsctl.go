package api

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/party"
)

// NATS subjects of worker control. Workers only dial out: they send requests
// to the orchestrator and subscribe to their own release subject.
const (
	// SubjectNonce answers any request with a fresh admission nonce
	// ({"nonce": "<hex>"}).
	SubjectNonce = "sealflow.control.nonce"
	// SubjectStatement takes a signed statement as the request body and
	// answers with a Response (signed receipt included), as POST
	// /v1/statements does.
	SubjectStatement = "sealflow.control.statement"
	// SubjectReleases takes a node id (64 hex digits) as the request body and
	// answers with a signed release batch of every key released to the node so
	// far, for a worker that subscribed after a deployment.
	SubjectReleases = "sealflow.control.releases"
	// queueGroup lets several orchestrator connections share the control subjects.
	queueGroup = "sealflow-orchestrator"
)

// TypeKeyReleases is the statement type of a release batch the orchestrator
// signs and publishes on ReleaseSubject.
const TypeKeyReleases = "key.releases"

// ReleaseSubject returns the subject on which the keys released to node are
// published: sealflow.node.<node-id>.releases.
func ReleaseSubject(node party.ID) string { return "sealflow.node." + string(node) + ".releases" }

// ReleaseBatch is the body of a key.releases statement: keys released to one
// node, each wrapped to the node's attested HPKE key. The statement is signed
// by the orchestrator, so a worker accepts only keys the orchestrator it
// verified released (HPKE alone does not authenticate the sender).
type ReleaseBatch struct {
	Node     party.ID               `json:"node"`
	Releases []orchestrator.Release `json:"releases"`
}

// maxInFlight bounds the statements ServeNATS handles at once.
const maxInFlight = 64

// releaseTTL is how long a signed release batch is valid.
const releaseTTL = 5 * time.Minute

// ServeNATS answers worker control requests on nc (SubjectNonce,
// SubjectStatement, SubjectReleases, SubjectRestore), takes status reports
// (SubjectStatus), declares lost the nodes holding tasks that stay silent
// for longer than Config.NodeTimeout (CheckLiveness), and publishes each
// node's key releases on ReleaseSubject(node) until ctx ends; then it drains
// its subscriptions and returns nil. It replaces any function set with
// OnRelease.
func (s *Server) ServeNATS(ctx context.Context, nc *nats.Conn) error {
	if nc == nil {
		return errors.New("orchestrator: ServeNATS needs a NATS connection")
	}
	// Statements are handled concurrently (nats.go delivers a subscription's
	// messages one at a time), so that admissions share saves of the sealed
	// state; at most maxInFlight at once, all finished before ServeNATS
	// returns.
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		closed bool
	)
	sem := make(chan struct{}, maxInFlight)
	handlers := map[string]nats.MsgHandler{
		SubjectNonce: func(m *nats.Msg) {
			s.respond(m, map[string]string{"nonce": hex.EncodeToString(s.Nonce())})
		},
		SubjectStatement: func(m *nats.Msg) {
			mu.Lock()
			if closed {
				mu.Unlock()
				return
			}
			wg.Add(1)
			mu.Unlock()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				wg.Done()
				return
			}
			go func() {
				defer func() { <-sem; wg.Done() }()
				s.natsStatement(ctx, m)
			}()
		},
		SubjectReleases: s.natsReleases,
		SubjectRestore:  s.natsRestore,
	}
	// Status reports go to every orchestrator instance, not one of a queue.
	statusSub, err := nc.Subscribe(SubjectStatus, s.natsStatus)
	if err != nil {
		return fmt.Errorf("orchestrator: subscribing to %s: %w", SubjectStatus, err)
	}
	subs := []*nats.Subscription{statusSub}
	defer func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
		mu.Lock()
		closed = true
		mu.Unlock()
		wg.Wait()
	}()
	for subj, h := range handlers {
		sub, err := nc.QueueSubscribe(subj, queueGroup, h)
		if err != nil {
			return fmt.Errorf("orchestrator: subscribing to %s: %w", subj, err)
		}
		subs = append(subs, sub)
	}
	s.OnRelease(func(node party.ID, rs []orchestrator.Release) {
		b, err := s.signReleases(node, rs)
		if err != nil {
			s.log.Error("signing key releases", "node", node.Short(), "err", err)
			return
		}
		if err := nc.Publish(ReleaseSubject(node), b); err != nil {
			s.log.Error("publishing key releases", "node", node.Short(), "err", err)
		}
	})
	defer s.OnRelease(nil)
	s.OnJobsChanged(func() {
		if err := nc.Publish(SubjectJobsChanged, nil); err != nil {
			s.log.Error("publishing the jobs-changed hint", "err", err)
		}
	})
	defer s.OnJobsChanged(nil)
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("orchestrator: NATS control subscriptions: %w", err)
	}
	// Nodes that hold tasks and fall silent are declared lost; their status
	// reports arrive on the subscription above.
	lctx, lcancel := context.WithCancel(ctx)
	lwg := sync.WaitGroup{}
	lwg.Go(func() { s.watchLiveness(lctx) })
	lwg.Go(func() { s.watchOverload(lctx) })
	lwg.Go(func() { s.watchAdaptive(lctx) })
	defer lwg.Wait()
	defer lcancel()
	s.log.Info("serving worker control over NATS", "url", nc.ConnectedUrlRedacted())
	<-ctx.Done()
	return nil
}

func (s *Server) signReleases(node party.ID, rs []orchestrator.Release) ([]byte, error) {
	if rs == nil {
		rs = []orchestrator.Release{}
	}
	return party.Sign(s.self, TypeKeyReleases, ReleaseBatch{Node: node, Releases: rs}, releaseTTL, s.cfg.Now())
}

func (s *Server) respond(m *nats.Msg, v any) {
	if m.Reply == "" {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		s.log.Error("encoding a NATS control answer", "subject", m.Subject, "err", err)
		return
	}
	if err := m.Respond(b); err != nil {
		s.log.Warn("answering a NATS control request", "subject", m.Subject, "err", err)
	}
}

func (s *Server) natsStatement(ctx context.Context, m *nats.Msg) {
	if len(m.Data) > party.MaxStatement {
		s.respond(m, APIError{Error: fmt.Sprintf("statement of %d bytes is larger than %d bytes", len(m.Data), party.MaxStatement), Rule: party.RuleMalformed})
		return
	}
	resp, err := s.Submit(ctx, m.Data)
	if err != nil {
		s.log.Error("statement over NATS failed", "err", err)
		s.respond(m, APIError{Error: err.Error()})
		return
	}
	s.respond(m, resp)
}

func (s *Server) natsReleases(m *nats.Msg) {
	id := party.ID(m.Data)
	if !id.Valid() {
		s.respond(m, APIError{Error: fmt.Sprintf("a releases request carries a 64-hex-digit node id, got %d bytes", len(m.Data))})
		return
	}
	b, err := s.signReleases(id, s.Releases(id))
	if err != nil {
		s.respond(m, APIError{Error: err.Error()})
		return
	}
	if m.Reply != "" {
		_ = m.Respond(b)
	}
}

// RefusedError is a statement the orchestrator refused, as answered over NATS.
type RefusedError struct {
	Rule    string
	Message string
}

// Error implements error.
func (e *RefusedError) Error() string { return e.Message }

// RefusedBy names the rule that refused.
func (e *RefusedError) RefusedBy() string { return e.Rule }

// ControlClient is a worker's side of control over NATS. Every answer that
// matters is checked against the orchestrator identity the worker verified
// (with client.Verify over the attested HTTPS API): receipts and release
// batches must carry its signature, and a release batch is accepted once.
type ControlClient struct {
	nc     *nats.Conn
	orch   *party.Identity
	replay *party.ReplayGuard
	now    func() time.Time
}

// NewControlClient returns a control client over nc that trusts only the
// verified orchestrator identity orch.
func NewControlClient(nc *nats.Conn, orch *party.Identity) *ControlClient {
	return &ControlClient{nc: nc, orch: orch, replay: party.NewReplayGuard(1 << 16), now: time.Now}
}

func (c *ControlClient) request(ctx context.Context, subj string, data []byte) ([]byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	m, err := c.nc.RequestWithContext(ctx, subj, data)
	if err != nil {
		return nil, fmt.Errorf("request on %s: %w", subj, err)
	}
	return m.Data, nil
}

// Nonce asks the orchestrator for a fresh admission nonce.
func (c *ControlClient) Nonce(ctx context.Context) ([]byte, error) {
	b, err := c.request(ctx, SubjectNonce, nil)
	if err != nil {
		return nil, err
	}
	var a struct {
		Nonce string `json:"nonce"`
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("decoding the nonce answer: %w", err)
	}
	n, err := hex.DecodeString(a.Nonce)
	if err != nil || len(n) < 16 {
		return nil, fmt.Errorf("the orchestrator's nonce %q is not at least 16 bytes of hex", a.Nonce)
	}
	return n, nil
}

// Submit sends a signed statement and returns the orchestrator's response
// after checking its signed receipt. A refusal returns the response and a
// *RefusedError naming the rule.
func (c *ControlClient) Submit(ctx context.Context, signed []byte) (*Response, error) {
	b, err := c.request(ctx, SubjectStatement, signed)
	if err != nil {
		return nil, err
	}
	var r Response
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decoding the statement answer: %w", err)
	}
	if len(r.Receipt) == 0 {
		var e APIError
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			if e.Rule != "" {
				return nil, &RefusedError{Rule: e.Rule, Message: e.Error}
			}
			return nil, fmt.Errorf("the orchestrator failed: %s", e.Error)
		}
		return nil, errors.New("the orchestrator's answer carries no signed receipt")
	}
	rst, err := party.Verify(r.Receipt, party.Directory{c.orch.ID(): c.orch}.Lookup, c.now())
	if err != nil {
		return nil, fmt.Errorf("the receipt is not signed by the verified orchestrator: %w", err)
	}
	if err := receiptMatches(rst, &r, requestDigest(signed)); err != nil {
		return nil, err
	}
	if !r.OK {
		return &r, &RefusedError{Rule: r.Rule, Message: r.Error}
	}
	return &r, nil
}

// receiptMatches checks that the signed receipt says what the unsigned answer
// says and answers the statement sent (its digest), so an untrusted relay
// can neither alter the outcome nor replay another statement's receipt.
func receiptMatches(st *party.Statement, r *Response, statement string) error {
	if st.Type != "receipt" {
		return fmt.Errorf("the receipt has type %q, want receipt", st.Type)
	}
	var signed Response
	if err := json.Unmarshal(st.Body, &signed); err != nil {
		return fmt.Errorf("decoding the receipt: %w", err)
	}
	a, _ := json.Marshal(signed.Result)
	b, _ := json.Marshal(r.Result)
	if signed.OK != r.OK || signed.Type != r.Type || signed.Rule != r.Rule || string(a) != string(b) {
		return errors.New("the answer differs from the orchestrator's signed receipt")
	}
	if signed.Statement != statement {
		return errors.New("the orchestrator's signed receipt answers another statement")
	}
	return nil
}

// Admit attests a worker over NATS: it asks for a nonce, has issuer produce
// evidence binding the nonce and the worker's public keys, signs a node.admit
// statement with the operator's signed node claims and returns the admission.
func (c *ControlClient) Admit(ctx context.Context, worker *party.KeyFile, issuer attest.Issuer, claims []byte) (*orchestrator.Admission, error) {
	nonce, err := c.Nonce(ctx)
	if err != nil {
		return nil, err
	}
	id := worker.Identity()
	ev, err := issuer.Issue(ctx, attest.BindReportData(nonce, id.SigningKey, id.HPKEKey))
	if err != nil {
		return nil, fmt.Errorf("issuing the worker's evidence: %w", err)
	}
	signed, err := party.Sign(worker, orchestrator.TypeNodeAdmit,
		orchestrator.Admit{Identity: orchestrator.Identity{Identity: id}, Nonce: nonce, Evidence: *ev, Claims: claims}, time.Minute, c.now())
	if err != nil {
		return nil, err
	}
	r, err := c.Submit(ctx, signed)
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(r.Result)
	var a orchestrator.Admission
	if err := json.Unmarshal(b, &a); err != nil || a.Node != worker.ID() {
		return nil, fmt.Errorf("the admission names node %s, not this worker (%v)", a.Node.Short(), err)
	}
	return &a, nil
}

// OpenReleases verifies a signed release batch for node: signed by the
// verified orchestrator, of type key.releases, for this node, unexpired and
// not seen before.
func (c *ControlClient) OpenReleases(node party.ID, signed []byte) ([]orchestrator.Release, error) {
	now := c.now()
	st, err := party.Verify(signed, party.Directory{c.orch.ID(): c.orch}.Lookup, now)
	if err != nil {
		return nil, fmt.Errorf("release batch: %w", err)
	}
	if st.Type != TypeKeyReleases {
		return nil, &attest.Refusal{Rule: "release.type", Reason: fmt.Sprintf("a release batch has type %q, want %q", st.Type, TypeKeyReleases)}
	}
	if err := c.replay.Check(st, now); err != nil {
		return nil, err
	}
	var b ReleaseBatch
	if err := json.Unmarshal(st.Body, &b); err != nil {
		return nil, &attest.Refusal{Rule: "release.body", Reason: fmt.Sprintf("decoding a release batch: %v", err)}
	}
	if b.Node != node {
		return nil, &attest.Refusal{Rule: "release.node", Reason: fmt.Sprintf("the release batch is for node %s, not %s", b.Node.Short(), node.Short())}
	}
	for _, r := range b.Releases {
		if r.To != node {
			return nil, &attest.Refusal{Rule: "release.node", Reason: fmt.Sprintf("release %s is wrapped to %s, not %s", r.KeyID(), r.To.Short(), node.Short())}
		}
	}
	return b.Releases, nil
}

// FetchReleases asks for every key released to node so far.
func (c *ControlClient) FetchReleases(ctx context.Context, node party.ID) ([]orchestrator.Release, error) {
	b, err := c.request(ctx, SubjectReleases, []byte(node))
	if err != nil {
		return nil, err
	}
	var e APIError
	if len(b) > 0 && b[0] == '{' && json.Unmarshal(b, &e) == nil && e.Error != "" {
		return nil, fmt.Errorf("the orchestrator refused the releases request: %s", e.Error)
	}
	return c.OpenReleases(node, b)
}

// SubscribeReleases calls f with each verified batch of keys released to node
// until the subscription is unsubscribed. Batches that do not verify are
// passed to bad (which may be nil) and dropped.
func (c *ControlClient) SubscribeReleases(node party.ID, f func([]orchestrator.Release), bad func(error)) (*nats.Subscription, error) {
	sub, err := c.nc.Subscribe(ReleaseSubject(node), func(m *nats.Msg) {
		rs, err := c.OpenReleases(node, m.Data)
		if err != nil {
			if bad != nil {
				bad(err)
			}
			return
		}
		f(rs)
	})
	if err != nil {
		return nil, fmt.Errorf("subscribing to %s: %w", ReleaseSubject(node), err)
	}
	if err := c.nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("subscribing to %s: %w", ReleaseSubject(node), err)
	}
	return sub, nil
}
