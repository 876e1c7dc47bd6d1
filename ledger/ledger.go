// Package ledger is sealflow's transparency log: every state change and key
// release of the orchestrator is a record in an append-only Merkle log
// (golang.org/x/mod/sumdb/tlog, the RFC 6962 tree used by the Go checksum
// database), and the orchestrator publishes signed tree heads in the note
// format (golang.org/x/mod/sumdb/note) under its Ed25519 key.
//
// The orchestrator side is Log: Append, SignedTreeHead, ProveInclusion and
// ProveConsistency. The client side is Checker (verify a signed tree head with
// the pinned key, check inclusion and consistency proofs) and Witness, which
// persists the last tree head it saw and detects a rolled-back or forked
// orchestrator with the distinct errors ErrRollback and ErrFork.
//
// Records are opaque bytes; Entry is the JSON form sealflow uses for them, with
// the subjects (streams, nodes, services) an entry concerns, so that owners can
// fetch the entries about their streams.
package ledger

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// MaxRecordSize is the largest record the log accepts, in bytes.
const MaxRecordSize = 1 << 20

// Entry is the JSON form of a log record.
type Entry struct {
	// Index is the record's position in the log, starting at 0.
	Index int64 `json:"index"`
	// Time is when the orchestrator applied the change (supplied by the caller:
	// the state machine owns time).
	Time time.Time `json:"time"`
	// Type names the change, for example "stream.register" or "key.release".
	Type string `json:"type"`
	// Subjects are the stream names, node ids and service ids the entry
	// concerns.
	Subjects []string `json:"subjects,omitempty"`
	// Body holds the change's details.
	Body json.RawMessage `json:"body,omitempty"`
}

// DecodeEntry parses a record as an Entry. Records come from the untrusted
// network: check their inclusion first (Checker.CheckInclusion), then decode.
func DecodeEntry(record []byte) (Entry, error) {
	var e Entry
	if len(record) > MaxRecordSize {
		return e, fmt.Errorf("ledger: record is %d bytes, larger than the limit of %d", len(record), MaxRecordSize)
	}
	dec := json.NewDecoder(bytes.NewReader(record))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return e, fmt.Errorf("ledger: decoding entry: %w", err)
	}
	if dec.More() {
		return e, errors.New("ledger: decoding entry: trailing data after the JSON object")
	}
	if e.Type == "" {
		return e, errors.New("ledger: entry has no type")
	}
	if e.Index < 0 {
		return e, fmt.Errorf("ledger: entry has negative index %d", e.Index)
	}
	return e, nil
}

// Log is the orchestrator's transparency log, held in memory. It is safe for
// concurrent use. Persist it with Marshal and restore it with Unmarshal (the
// orchestrator seals the bytes); hashes are recomputed on restore, never
// trusted from storage.
type Log struct {
	mu       sync.RWMutex
	signer   note.Signer
	records  [][]byte
	hashes   []tlog.Hash // tlog stored hashes, tlog.StoredHashCount(len(records)) of them
	subjects map[string][]int64
	store    Store
}

// Store persists records as the log appends them, for an orchestrator that
// keeps its log in durable (sealed) storage instead of re-marshalling it. The
// log calls Append for each record, in index order, before the record becomes
// visible; when Append fails, the log is unchanged. Restore a log from its
// stored records with FromRecords.
type Store interface {
	Append(index int64, record []byte) error
}

// Option configures a Log.
type Option func(*Log)

// WithStore makes the log write every appended record through to s.
func WithStore(s Store) Option { return func(l *Log) { l.store = s } }

// NewSigner returns a note signer named name for an Ed25519 private key. The
// name appears in every signed tree head (for example "sealflow-orchestrator");
// it must be non-empty and contain no spaces or '+'.
func NewSigner(name string, priv ed25519.PrivateKey) (note.Signer, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("ledger: Ed25519 private key is %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
	}
	vkey, err := VerifierKey(name, priv.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, err
	}
	// vkey is name+hash+base64(alg||pub); a signer key is PRIVATE+KEY+name+hash+base64(alg||seed).
	hash := vkeyHash(vkey, name)
	skey := fmt.Sprintf("PRIVATE+KEY+%s+%s+%s", name, hash, base64.StdEncoding.EncodeToString(append([]byte{1}, priv.Seed()...)))
	s, err := note.NewSigner(skey)
	if err != nil {
		return nil, fmt.Errorf("ledger: signer %q: %w", name, err)
	}
	return s, nil
}

func vkeyHash(vkey, name string) string {
	rest := vkey[len(name)+1:]
	return rest[:8]
}

// VerifierKey returns the note verifier key ("name+hash+base64") of an Ed25519
// public key: the string clients pin.
func VerifierKey(name string, pub ed25519.PublicKey) (string, error) {
	vkey, err := note.NewEd25519VerifierKey(name, pub)
	if err != nil {
		return "", fmt.Errorf("ledger: verifier key %q: %w", name, err)
	}
	if _, err := note.NewVerifier(vkey); err != nil {
		return "", fmt.Errorf("ledger: verifier key name %q is invalid (no spaces or '+'): %w", name, err)
	}
	return vkey, nil
}

// NewLog returns an empty log that signs tree heads with signer.
func NewLog(signer note.Signer, opts ...Option) *Log {
	l := &Log{signer: signer, subjects: map[string][]int64{}}
	for _, o := range opts {
		o(l)
	}
	return l
}

// FromRecords rebuilds a log from its records, in index order (as a Store
// kept them), recomputing every hash. Options apply to later appends only: the
// given records are not written to a store again.
func FromRecords(signer note.Signer, records [][]byte, opts ...Option) (*Log, error) {
	l := NewLog(signer)
	for i, r := range records {
		if _, err := l.appendLocked(r, nil, false); err != nil {
			return nil, fmt.Errorf("ledger: restoring record %d: %w", i, err)
		}
	}
	for _, o := range opts {
		o(l)
	}
	return l, nil
}

// hashReader reads stored hashes; the caller holds l.mu.
func (l *Log) hashReader() tlog.HashReader {
	return tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			if x < 0 || x >= int64(len(l.hashes)) {
				return nil, fmt.Errorf("ledger: stored hash %d out of range (have %d)", x, len(l.hashes))
			}
			out[i] = l.hashes[x]
		}
		return out, nil
	})
}

// Append adds a record and returns its index.
func (l *Log) Append(record []byte) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.appendLocked(record, nil, true)
}

// appendLocked appends a record. subjects, when not nil, are the record's
// subjects; otherwise the record is decoded as an Entry to find them. The
// caller holds l.mu.
func (l *Log) appendLocked(record []byte, subjects []string, store bool) (int64, error) {
	if len(record) > MaxRecordSize {
		return 0, fmt.Errorf("ledger: record is %d bytes, larger than the limit of %d", len(record), MaxRecordSize)
	}
	n := int64(len(l.records))
	hs, err := tlog.StoredHashes(n, record, l.hashReader())
	if err != nil {
		return 0, fmt.Errorf("ledger: hashing record %d: %w", n, err)
	}
	if store && l.store != nil {
		if err := l.store.Append(n, record); err != nil {
			return 0, fmt.Errorf("ledger: storing record %d: %w", n, err)
		}
	}
	l.records = append(l.records, bytes.Clone(record))
	l.hashes = append(l.hashes, hs...)
	if subjects == nil {
		if e, err := DecodeEntry(record); err == nil {
			subjects = e.Subjects
		}
	}
	for _, s := range uniq(subjects) {
		l.subjects[s] = append(l.subjects[s], n)
	}
	return n, nil
}

func uniq(s []string) []string {
	seen := make(map[string]bool, len(s))
	out := s[:0:0]
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// AppendEntry sets e.Index to the next index, appends e's JSON and returns the
// entry as stored.
func (l *Log) AppendEntry(e Entry) (Entry, error) {
	if e.Type == "" {
		return e, errors.New("ledger: entry has no type")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e.Index = int64(len(l.records))
	rec, err := json.Marshal(e)
	if err != nil {
		return e, fmt.Errorf("ledger: encoding entry of type %s: %w", e.Type, err)
	}
	subjects := e.Subjects
	if subjects == nil {
		subjects = []string{} // known: no need to decode the record again
	}
	if _, err := l.appendLocked(rec, subjects, true); err != nil {
		return e, err
	}
	return e, nil
}

// Size returns the number of records.
func (l *Log) Size() int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return int64(len(l.records))
}

// Record returns the record at index.
func (l *Log) Record(index int64) ([]byte, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if index < 0 || index >= int64(len(l.records)) {
		return nil, fmt.Errorf("ledger: record %d does not exist (log size %d)", index, len(l.records))
	}
	return bytes.Clone(l.records[index]), nil
}

// About returns the indexes of the entries whose subjects include subject, in
// order.
func (l *Log) About(subject string) []int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return append([]int64(nil), l.subjects[subject]...)
}

// TreeHash returns the Merkle tree hash of the first n records.
func (l *Log) TreeHash(n int64) (tlog.Hash, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if n < 0 || n > int64(len(l.records)) {
		return tlog.Hash{}, fmt.Errorf("ledger: tree size %d out of range (log size %d)", n, len(l.records))
	}
	return tlog.TreeHash(n, l.hashReader())
}

// SignedTreeHead returns the current tree head (tlog.FormatTree) signed by the
// orchestrator's key in note format.
func (l *Log) SignedTreeHead() ([]byte, error) {
	l.mu.RLock()
	n := int64(len(l.records))
	h, err := tlog.TreeHash(n, l.hashReader())
	l.mu.RUnlock()
	if err != nil {
		return nil, fmt.Errorf("ledger: tree hash at size %d: %w", n, err)
	}
	if l.signer == nil {
		return nil, errors.New("ledger: the log has no signer")
	}
	msg, err := note.Sign(&note.Note{Text: string(tlog.FormatTree(tlog.Tree{N: n, Hash: h}))}, l.signer)
	if err != nil {
		return nil, fmt.Errorf("ledger: signing tree head at size %d: %w", n, err)
	}
	return msg, nil
}

// ProveInclusion returns the proof that record index is in the tree of size
// treeSize.
func (l *Log) ProveInclusion(index, treeSize int64) (*InclusionProof, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if treeSize < 1 || treeSize > int64(len(l.records)) || index < 0 || index >= treeSize {
		return nil, fmt.Errorf("ledger: no inclusion proof for record %d in tree size %d (log size %d)", index, treeSize, len(l.records))
	}
	p, err := tlog.ProveRecord(treeSize, index, l.hashReader())
	if err != nil {
		return nil, fmt.Errorf("ledger: proving record %d in tree size %d: %w", index, treeSize, err)
	}
	return &InclusionProof{Index: index, TreeSize: treeSize, Hashes: p}, nil
}

// ProveConsistency returns the proof that the tree of size oldSize is a prefix
// of the tree of size newSize.
func (l *Log) ProveConsistency(oldSize, newSize int64) (*ConsistencyProof, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if oldSize < 1 || oldSize > newSize || newSize > int64(len(l.records)) {
		return nil, fmt.Errorf("ledger: no consistency proof from tree size %d to %d (log size %d)", oldSize, newSize, len(l.records))
	}
	p, err := tlog.ProveTree(newSize, oldSize, l.hashReader())
	if err != nil {
		return nil, fmt.Errorf("ledger: proving consistency from %d to %d: %w", oldSize, newSize, err)
	}
	return &ConsistencyProof{OldSize: oldSize, NewSize: newSize, Hashes: p}, nil
}

var marshalMagic = []byte("sealflow-ledger v1\n")

// Marshal encodes the log's records (not its key and not its hashes, which
// Unmarshal recomputes): a magic line, then each record as a uvarint length
// and its bytes, then a SHA-256 of everything before it.
func (l *Log) Marshal() []byte {
	l.mu.RLock()
	defer l.mu.RUnlock()
	size := len(marshalMagic) + binary.MaxVarintLen64 + sha256.Size
	for _, r := range l.records {
		size += binary.MaxVarintLen64 + len(r)
	}
	out := make([]byte, 0, size)
	out = append(out, marshalMagic...)
	out = binary.AppendUvarint(out, uint64(len(l.records)))
	for _, r := range l.records {
		out = binary.AppendUvarint(out, uint64(len(r)))
		out = append(out, r...)
	}
	sum := sha256.Sum256(out)
	return append(out, sum[:]...)
}

// Unmarshal restores a log from Marshal's encoding, recomputing every hash,
// and signs with signer from then on. A log restored from an older encoding is
// a rolled-back log: witnesses detect it. Options apply to later appends.
func Unmarshal(data []byte, signer note.Signer, opts ...Option) (*Log, error) {
	if len(data) < len(marshalMagic)+1+sha256.Size || !bytes.HasPrefix(data, marshalMagic) {
		return nil, errors.New("ledger: restoring log: not a sealflow ledger encoding (bad magic or too short)")
	}
	body, sum := data[:len(data)-sha256.Size], data[len(data)-sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return nil, errors.New("ledger: restoring log: checksum mismatch (truncated or corrupted)")
	}
	rest := body[len(marshalMagic):]
	count, k := binary.Uvarint(rest)
	if k <= 0 || k != uvarintLen(count) || count > uint64(len(rest)) {
		return nil, fmt.Errorf("ledger: restoring log: bad record count")
	}
	rest = rest[k:]
	l := NewLog(signer)
	for i := range count {
		n, k := binary.Uvarint(rest)
		if k <= 0 || k != uvarintLen(n) || n > uint64(len(rest)-k) {
			return nil, fmt.Errorf("ledger: restoring log: record %d: bad length", i)
		}
		if _, err := l.appendLocked(rest[k:k+int(n)], nil, false); err != nil {
			return nil, fmt.Errorf("ledger: restoring log: record %d: %w", i, err)
		}
		rest = rest[k+int(n):]
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("ledger: restoring log: %d bytes of trailing data", len(rest))
	}
	for _, o := range opts {
		o(l)
	}
	return l, nil
}

// uvarintLen is the length of the minimal uvarint encoding of v; Unmarshal
// accepts only minimal encodings, so that one log has one encoding.
func uvarintLen(v uint64) int { return len(binary.AppendUvarint(nil, v)) }
