package ledger

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// The distinct failures a client reports. Errors returned by Checker and
// Witness wrap one of them (test with errors.Is) and implement
// RefusedBy() string, naming the rule: ledger.signature, ledger.inclusion,
// ledger.rollback or ledger.fork.
var (
	// ErrSignature: a tree head is not signed by the pinned orchestrator key.
	ErrSignature = errors.New("tree head is not signed by the pinned orchestrator key")
	// ErrInclusion: a record is not in the tree its proof claims.
	ErrInclusion = errors.New("record is not included in the tree head")
	// ErrRollback: the log is smaller than a tree head seen before, or has a
	// different hash at a size seen before.
	ErrRollback = errors.New("log was rolled back")
	// ErrFork: a larger tree head does not extend the one seen before.
	ErrFork = errors.New("log was forked")
)

// Refusal is a failed check of the transparency log. It wraps one of
// ErrSignature, ErrInclusion, ErrRollback or ErrFork.
type Refusal struct {
	// Rule is "ledger.signature", "ledger.inclusion", "ledger.rollback" or
	// "ledger.fork".
	Rule string
	// Reason says what was seen.
	Reason string
	kind   error
}

// Error implements error.
func (r *Refusal) Error() string {
	return fmt.Sprintf("refused by rule %s: %s: %s", r.Rule, r.kind, r.Reason)
}

// RefusedBy returns the rule that refused.
func (r *Refusal) RefusedBy() string { return r.Rule }

// Unwrap returns the sentinel error of the refusal's kind.
func (r *Refusal) Unwrap() error { return r.kind }

func refuse(kind error, format string, args ...any) error {
	rule := map[error]string{ErrSignature: "ledger.signature", ErrInclusion: "ledger.inclusion",
		ErrRollback: "ledger.rollback", ErrFork: "ledger.fork"}[kind]
	return &Refusal{Rule: rule, Reason: fmt.Sprintf(format, args...), kind: kind}
}

// MaxProofHashes bounds the hashes in a decoded proof: a proof for a tree of
// up to 2^63 records needs at most 2·63.
const MaxProofHashes = 128

// InclusionProof proves that record Index is in the tree of size TreeSize.
type InclusionProof struct {
	// Index is the record's index; TreeSize the size of the tree it is in.
	Index    int64 `json:"index"`
	TreeSize int64 `json:"tree_size"`
	// Hashes is the tlog record proof.
	Hashes []tlog.Hash `json:"hashes"`
}

// ConsistencyProof proves that the tree of size OldSize is a prefix of the
// tree of size NewSize.
type ConsistencyProof struct {
	// OldSize and NewSize are the sizes of the two trees.
	OldSize int64 `json:"old_size"`
	NewSize int64 `json:"new_size"`
	// Hashes is the tlog tree proof.
	Hashes []tlog.Hash `json:"hashes"`
}

func decodeStrict(data []byte, v any, what string) error {
	if len(data) > 64<<10 {
		return fmt.Errorf("ledger: %s is %d bytes, larger than 64 KiB", what, len(data))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("ledger: decoding %s: %w", what, err)
	}
	if dec.More() {
		return fmt.Errorf("ledger: decoding %s: trailing data", what)
	}
	return nil
}

// ParseInclusionProof decodes the JSON form of an InclusionProof and checks
// its shape.
func ParseInclusionProof(data []byte) (*InclusionProof, error) {
	var p InclusionProof
	if err := decodeStrict(data, &p, "inclusion proof"); err != nil {
		return nil, err
	}
	if p.Index < 0 || p.TreeSize <= p.Index || len(p.Hashes) > MaxProofHashes {
		return nil, fmt.Errorf("ledger: inclusion proof for record %d in tree size %d with %d hashes is malformed", p.Index, p.TreeSize, len(p.Hashes))
	}
	return &p, nil
}

// ParseConsistencyProof decodes the JSON form of a ConsistencyProof and checks
// its shape.
func ParseConsistencyProof(data []byte) (*ConsistencyProof, error) {
	var p ConsistencyProof
	if err := decodeStrict(data, &p, "consistency proof"); err != nil {
		return nil, err
	}
	if p.OldSize < 1 || p.NewSize < p.OldSize || len(p.Hashes) > MaxProofHashes {
		return nil, fmt.Errorf("ledger: consistency proof from tree size %d to %d with %d hashes is malformed", p.OldSize, p.NewSize, len(p.Hashes))
	}
	return &p, nil
}

// TreeHead is a verified tree head: the size and hash of the log at the time
// the orchestrator signed it, with the signed note itself.
type TreeHead struct {
	// Size is the number of records in the tree.
	Size int64 `json:"size"`
	// Hash is the Merkle tree hash of those records.
	Hash tlog.Hash `json:"hash"`
	// Signed is the signed note the head was read from.
	Signed []byte `json:"signed"`
}

// Checker verifies what an orchestrator publishes against its pinned key.
type Checker struct {
	verifier note.Verifier
}

// NewChecker returns a checker that trusts the note verifier key vkey
// ("name+hash+base64", see VerifierKey) and nothing else.
func NewChecker(vkey string) (*Checker, error) {
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("ledger: verifier key %q: %w", vkey, err)
	}
	return &Checker{verifier: v}, nil
}

// NewCheckerForKey returns a checker for an Ed25519 public key under name.
func NewCheckerForKey(name string, pub ed25519.PublicKey) (*Checker, error) {
	vkey, err := VerifierKey(name, pub)
	if err != nil {
		return nil, err
	}
	return NewChecker(vkey)
}

// VerifyTreeHead checks that signed is a tree head signed by the pinned key
// and returns it. A note signed by another key, or not signed, or with a
// signature that does not verify, is refused with ErrSignature; a note whose
// text is not a tree head is an ordinary error.
func (c *Checker) VerifyTreeHead(signed []byte) (TreeHead, error) {
	if len(signed) > 64<<10 {
		return TreeHead{}, fmt.Errorf("ledger: signed tree head is %d bytes, larger than 64 KiB", len(signed))
	}
	n, err := note.Open(signed, note.VerifierList(c.verifier))
	if err != nil {
		var unverified *note.UnverifiedNoteError
		var invalid *note.InvalidSignatureError
		if errors.As(err, &unverified) || errors.As(err, &invalid) {
			return TreeHead{}, refuse(ErrSignature, "tree head not verified by %s: %v", c.verifier.Name(), err)
		}
		return TreeHead{}, fmt.Errorf("ledger: signed tree head is malformed: %w", err)
	}
	t, err := tlog.ParseTree([]byte(n.Text))
	if err != nil {
		return TreeHead{}, fmt.Errorf("ledger: signed note is not a tree head: %w", err)
	}
	return TreeHead{Size: t.N, Hash: t.Hash, Signed: bytes.Clone(signed)}, nil
}

// CheckInclusion checks that record is record p.Index of the tree th. It
// refuses with ErrInclusion when the proof does not lead to th's hash.
func CheckInclusion(th TreeHead, record []byte, p *InclusionProof) error {
	if p == nil {
		return errors.New("ledger: no inclusion proof")
	}
	if p.TreeSize != th.Size {
		return fmt.Errorf("ledger: inclusion proof is for tree size %d, the tree head has size %d", p.TreeSize, th.Size)
	}
	if p.Index < 0 || p.Index >= th.Size {
		return fmt.Errorf("ledger: inclusion proof for record %d is outside tree size %d", p.Index, th.Size)
	}
	if err := tlog.CheckRecord(p.Hashes, th.Size, th.Hash, p.Index, tlog.RecordHash(record)); err != nil {
		return refuse(ErrInclusion, "record %d (%d bytes) in tree size %d: %v", p.Index, len(record), th.Size, err)
	}
	return nil
}

// CheckConsistency checks that newer extends older. It refuses with
// ErrRollback when newer is smaller than older or has the same size and a
// different hash, and with ErrFork when newer is larger but p does not prove
// that older is its prefix.
func CheckConsistency(older, newer TreeHead, p *ConsistencyProof) error {
	switch {
	case newer.Size < older.Size:
		return refuse(ErrRollback, "tree size went from %d to %d", older.Size, newer.Size)
	case newer.Size == older.Size:
		if newer.Hash != older.Hash {
			return refuse(ErrRollback, "tree size %d was seen with hash %s and now has hash %s", older.Size, older.Hash, newer.Hash)
		}
		return nil
	case older.Size == 0:
		return nil // the empty tree is a prefix of every tree
	}
	if p == nil {
		return fmt.Errorf("ledger: a consistency proof from tree size %d to %d is needed", older.Size, newer.Size)
	}
	if p.OldSize != older.Size || p.NewSize != newer.Size {
		return fmt.Errorf("ledger: consistency proof is from tree size %d to %d, want %d to %d", p.OldSize, p.NewSize, older.Size, newer.Size)
	}
	if err := tlog.CheckTree(p.Hashes, newer.Size, newer.Hash, older.Size, older.Hash); err != nil {
		return refuse(ErrFork, "tree size %d (hash %s) does not extend tree size %d (hash %s): %v", newer.Size, newer.Hash, older.Size, older.Hash, err)
	}
	return nil
}
