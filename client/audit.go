package client

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/url"
	"strconv"

	"github.com/sealflow/sealflow/ledger"
	"github.com/sealflow/sealflow/orchestrator/api"
)

// AuditedEntry is a log entry whose inclusion in the verified tree head was
// proven.
type AuditedEntry struct {
	ledger.Entry
	// Proven is true when the inclusion proof verified.
	Proven bool `json:"proven"`
}

// Audit is the result of auditing the log for one subject.
type Audit struct {
	Subject string `json:"subject"`
	// TreeSize and PreviousSize are the verified tree head's size and the size
	// of the last tree head this client had seen (0 if none).
	TreeSize     int64          `json:"tree_size"`
	PreviousSize int64          `json:"previous_size"`
	Entries      []AuditedEntry `json:"entries"`
}

// Audit fetches every log entry about subject ("stream:meter-1", "node:<id>",
// "job:balance", ...) with inclusion proofs, verifies the signed tree head
// with the pinned key, checks that it is consistent with the last tree head
// the witness saw (a rolled-back or forked orchestrator fails here with
// ledger.ErrRollback or ledger.ErrFork), and checks every proof.
func (c *Client) Audit(ctx context.Context, subject string, w *ledger.Witness) (*Audit, error) {
	var es api.Entries
	if err := c.Get(ctx, "/v1/log/entries?subject="+url.QueryEscape(subject), &es); err != nil {
		return nil, fmt.Errorf("fetching log entries: %w", err)
	}
	checker, err := ledger.NewChecker(c.Trust.LogKey)
	if err != nil {
		return nil, err
	}
	th, err := checker.VerifyTreeHead([]byte(es.TreeHead))
	if err != nil {
		return nil, err
	}
	a := &Audit{Subject: subject, TreeSize: th.Size}
	var proof *ledger.ConsistencyProof
	if last, ok := w.Last(); ok {
		a.PreviousSize = last.Size
		if last.Size > 0 && th.Size > last.Size {
			var p ledger.ConsistencyProof
			if err := c.Get(ctx, "/v1/log/consistency?old="+strconv.FormatInt(last.Size, 10)+"&new="+strconv.FormatInt(th.Size, 10), &p); err != nil {
				return nil, fmt.Errorf("fetching a consistency proof from size %d to %d: %w", last.Size, th.Size, err)
			}
			proof = &p
		}
	}
	if _, err := w.Update([]byte(es.TreeHead), proof); err != nil {
		return nil, err
	}
	for _, e := range es.Entries {
		rec, err := base64.StdEncoding.DecodeString(e.Record)
		if err != nil {
			return nil, fmt.Errorf("entry %d: record is not base64: %w", e.Index, err)
		}
		if e.Proof == nil || e.Proof.Index != e.Index {
			return nil, fmt.Errorf("entry %d: missing or mismatched inclusion proof", e.Index)
		}
		if err := ledger.CheckInclusion(th, rec, e.Proof); err != nil {
			return nil, fmt.Errorf("entry %d: %w", e.Index, err)
		}
		ent, err := ledger.DecodeEntry(rec)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", e.Index, err)
		}
		a.Entries = append(a.Entries, AuditedEntry{Entry: ent, Proven: true})
	}
	return a, nil
}
