package ledger

import (
	"encoding/json"
	"fmt"
	"slices"
)

// AuditItem is one record with its inclusion proof, as the orchestrator
// serves it to an owner auditing a subject.
type AuditItem struct {
	// Record is the log record (an Entry's JSON).
	Record []byte `json:"record"`
	// Proof proves the record's inclusion in the audited tree.
	Proof *InclusionProof `json:"proof"`
}

// MaxAuditItems bounds one audit response.
const MaxAuditItems = 10_000

// Audit returns the records whose entry subjects include subject, among the
// first treeSize records, each with its inclusion proof in the tree of that
// size. The client checks them with CheckAudit against a tree head of that
// size.
func (l *Log) Audit(subject string, treeSize int64) ([]AuditItem, error) {
	idx := l.About(subject)
	n := 0
	for n < len(idx) && idx[n] < treeSize {
		n++
	}
	if n > MaxAuditItems {
		return nil, fmt.Errorf("ledger: %d entries about %s, more than %d in one audit", n, subject, MaxAuditItems)
	}
	out := make([]AuditItem, 0, n)
	for _, i := range idx[:n] {
		rec, err := l.Record(i)
		if err != nil {
			return nil, err
		}
		p, err := l.ProveInclusion(i, treeSize)
		if err != nil {
			return nil, err
		}
		out = append(out, AuditItem{Record: rec, Proof: p})
	}
	return out, nil
}

// ParseAudit decodes the JSON form of an audit response.
func ParseAudit(data []byte) ([]AuditItem, error) {
	if len(data) > 64<<20 {
		return nil, fmt.Errorf("ledger: audit response is %d bytes, larger than 64 MiB", len(data))
	}
	var items []AuditItem
	if err := json.Unmarshal(data, &items); err != nil {
		return nil, fmt.Errorf("ledger: decoding audit response: %w", err)
	}
	for i, it := range items {
		if it.Proof != nil && len(it.Proof.Hashes) > MaxProofHashes {
			return nil, fmt.Errorf("ledger: audit item %d: proof has %d hashes, more than %d", i, len(it.Proof.Hashes), MaxProofHashes)
		}
	}
	return items, nil
}

// CheckAudit checks an audit response against a verified tree head: every
// record is included at its proof's index, decodes as an Entry whose index is
// that position, and names subject; indexes strictly increase. It returns the
// entries. Inclusion proves that the entries are in the log, not that the
// response lists every entry about subject: a client that needs completeness
// reads the whole log up to th.Size.
func CheckAudit(th TreeHead, subject string, items []AuditItem) ([]Entry, error) {
	if len(items) > MaxAuditItems {
		return nil, fmt.Errorf("ledger: audit response has %d items, more than %d", len(items), MaxAuditItems)
	}
	out := make([]Entry, 0, len(items))
	last := int64(-1)
	for i, it := range items {
		if it.Proof == nil {
			return nil, fmt.Errorf("ledger: audit item %d has no proof", i)
		}
		if it.Proof.Index <= last {
			return nil, fmt.Errorf("ledger: audit item %d: index %d does not follow %d", i, it.Proof.Index, last)
		}
		last = it.Proof.Index
		if err := CheckInclusion(th, it.Record, it.Proof); err != nil {
			return nil, err
		}
		e, err := DecodeEntry(it.Record)
		if err != nil {
			return nil, fmt.Errorf("ledger: audit item %d (record %d): %w", i, it.Proof.Index, err)
		}
		if e.Index != it.Proof.Index {
			return nil, fmt.Errorf("ledger: audit item %d: entry says index %d, proof says %d", i, e.Index, it.Proof.Index)
		}
		if !slices.Contains(e.Subjects, subject) {
			return nil, fmt.Errorf("ledger: audit item %d (record %d) is not about %s", i, e.Index, subject)
		}
		out = append(out, e)
	}
	return out, nil
}
