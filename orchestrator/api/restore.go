package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/party"
)

// SubjectRestore takes a restore.request statement signed by a node and
// answers with a restore.point statement signed by the orchestrator (or an
// APIError naming the refusing rule): the task's latest accepted snapshot.
const SubjectRestore = "sealflow.control.restore"

// Statement types of the restore-point query.
const (
	// TypeRestoreRequest is signed by the node a task is placed on.
	TypeRestoreRequest = "restore.request"
	// TypeRestorePoint is the orchestrator's signed answer.
	TypeRestorePoint = "restore.point"
)

// restoreTTL is how long a restore request or answer is valid.
const restoreTTL = time.Minute

// RestoreRequest is the body of a restore.request statement.
type RestoreRequest struct {
	Job  string `json:"job"`
	Task string `json:"task"`
}

// RestoreAnswer is the body of a restore.point statement. Request is the hex
// SHA-256 of the signed request it answers, which carries a fresh nonce, so
// an answer recorded earlier (an older restore point) cannot be fed back to
// a later request. Point is null when the task has no accepted checkpoint:
// the task starts from its initial state, and the orchestrator signs that
// too.
type RestoreAnswer struct {
	Node    party.ID                   `json:"node"`
	Job     string                     `json:"job"`
	Task    string                     `json:"task"`
	Request string                     `json:"request"`
	Point   *orchestrator.RestorePoint `json:"point"`
}

func requestDigest(signed []byte) string {
	d := sha256.Sum256(signed)
	return hex.EncodeToString(d[:])
}

// RestorePoint answers a node's signed restore request: only an admitted node
// the task is placed on may ask. It returns the signed restore.point
// statement.
func (s *Server) RestorePoint(signed []byte) ([]byte, error) {
	s.mu.Lock()
	now := s.cfg.Now()
	st := s.m.State()
	lookup := func(id party.ID) (*party.Identity, error) {
		if n, ok := st.Nodes[id]; ok {
			return n.Identity, nil
		}
		return nil, &attest.Refusal{Rule: party.RuleUnknownParty, Reason: "not an admitted node"}
	}
	var (
		req  RestoreRequest
		rp   *orchestrator.RestorePoint
		stmt *party.Statement
	)
	err := func() error {
		var err error
		if stmt, err = party.Verify(signed, lookup, now); err != nil {
			return err
		}
		if stmt.Type != TypeRestoreRequest {
			return &attest.Refusal{Rule: "restore.type", Reason: fmt.Sprintf("a restore request has type %q, want %q", stmt.Type, TypeRestoreRequest)}
		}
		dec := json.NewDecoder(bytes.NewReader(stmt.Body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return &attest.Refusal{Rule: "statement.body", Reason: fmt.Sprintf("restore request body: %v", err)}
		}
		rp, err = s.m.RestorePointFor(now, stmt.Issuer, req.Job, req.Task)
		return err
	}()
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	s.live.heard(stmt.Issuer, now)
	return party.Sign(s.self, TypeRestorePoint, RestoreAnswer{Node: stmt.Issuer, Job: req.Job, Task: req.Task, Request: requestDigest(signed), Point: rp}, restoreTTL, now)
}

func (s *Server) natsRestore(m *nats.Msg) {
	if len(m.Data) > party.MaxStatement {
		s.respond(m, APIError{Error: fmt.Sprintf("request of %d bytes is larger than %d bytes", len(m.Data), party.MaxStatement), Rule: party.RuleMalformed})
		return
	}
	b, err := s.RestorePoint(m.Data)
	if err != nil {
		s.log.Info("restore point refused", "rule", ruleOf(err), "error", err)
		s.respond(m, APIError{Error: err.Error(), Rule: ruleOf(err)})
		return
	}
	if m.Reply != "" {
		if err := m.Respond(b); err != nil {
			s.log.Warn("answering a restore request", "err", err)
		}
	}
}

// RestorePoint asks the orchestrator for the latest accepted snapshot of a
// task placed on node, signing the request with node's key. It returns nil
// and no error when the task has no accepted checkpoint (start fresh): that
// answer is signed too, so the infrastructure cannot make a task forget its
// state. A refusal (the task is not placed on node, the node is not
// admitted) is a *RefusedError.
func (c *ControlClient) RestorePoint(ctx context.Context, node *party.KeyFile, job, task string) (*orchestrator.RestorePoint, error) {
	req, err := party.Sign(node, TypeRestoreRequest, RestoreRequest{Job: job, Task: task}, restoreTTL, c.now())
	if err != nil {
		return nil, err
	}
	b, err := c.request(ctx, SubjectRestore, req)
	if err != nil {
		return nil, err
	}
	var e APIError
	if len(b) > 0 && b[0] == '{' && json.Unmarshal(b, &e) == nil && e.Error != "" {
		if e.Rule != "" {
			return nil, &RefusedError{Rule: e.Rule, Message: e.Error}
		}
		return nil, fmt.Errorf("the orchestrator failed: %s", e.Error)
	}
	return c.OpenRestorePoint(node.ID(), req, b)
}

// OpenRestorePoint verifies the orchestrator's answer to a signed restore
// request: signed by the verified orchestrator, of type restore.point,
// unexpired, and answering exactly this request (node, job, task and the
// request's digest, so an older answer cannot be replayed).
func (c *ControlClient) OpenRestorePoint(node party.ID, request, signed []byte) (*orchestrator.RestorePoint, error) {
	st, err := party.Verify(signed, party.Directory{c.orch.ID(): c.orch}.Lookup, c.now())
	if err != nil {
		return nil, fmt.Errorf("restore point: %w", err)
	}
	if st.Type != TypeRestorePoint {
		return nil, &attest.Refusal{Rule: "restore.type", Reason: fmt.Sprintf("a restore answer has type %q, want %q", st.Type, TypeRestorePoint)}
	}
	req, err := party.PeekUnverified(request)
	if err != nil {
		return nil, err
	}
	var want RestoreRequest
	if err := json.Unmarshal(req.Body, &want); err != nil {
		return nil, fmt.Errorf("decoding the restore request: %w", err)
	}
	var a RestoreAnswer
	if err := json.Unmarshal(st.Body, &a); err != nil {
		return nil, &attest.Refusal{Rule: "restore.body", Reason: fmt.Sprintf("decoding a restore answer: %v", err)}
	}
	if a.Request != requestDigest(request) || a.Node != node || a.Job != want.Job || a.Task != want.Task {
		return nil, &attest.Refusal{Rule: "restore.request", Reason: "the restore answer does not answer this request"}
	}
	if p := a.Point; p != nil && (p.Job != want.Job || p.Task != want.Task) {
		return nil, &attest.Refusal{Rule: "restore.request", Reason: fmt.Sprintf("the restore point is for task %s of job %s", p.Task, p.Job)}
	}
	return a.Point, nil
}

// AckCheckpoint signs a checkpoint.ack with node's key, submits it and
// returns the orchestrator's verified answer. A task commits the output of
// the checkpoint only after this returns without error; a refusal (a
// *RefusedError: checkpoint.node when the task was moved to another node,
// checkpoint.stale when the checkpoint is not newer than the task's latest
// accepted one, ...) means it must not.
func (c *ControlClient) AckCheckpoint(ctx context.Context, node *party.KeyFile, ack orchestrator.CheckpointAck) (*orchestrator.CheckpointAckResult, error) {
	signed, err := party.Sign(node, orchestrator.TypeCheckpointAck, ack, time.Minute, c.now())
	if err != nil {
		return nil, err
	}
	r, err := c.Submit(ctx, signed)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(r.Result)
	if err != nil {
		return nil, err
	}
	var res orchestrator.CheckpointAckResult
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, fmt.Errorf("decoding the checkpoint answer: %w", err)
	}
	if res.Job != ack.Job || res.Task != ack.Task || res.Checkpoint != ack.Checkpoint {
		return nil, fmt.Errorf("the orchestrator's answer is for checkpoint %d of task %s of job %s", res.Checkpoint, res.Task, res.Job)
	}
	return &res, nil
}
