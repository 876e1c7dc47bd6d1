package ledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// Witness is a client's memory of the log: the last tree head it accepted,
// persisted to a file, so that a rolled-back or forked orchestrator is
// detected even across restarts of the client. It is safe for concurrent use.
type Witness struct {
	mu      sync.Mutex
	checker *Checker
	path    string
	last    *TreeHead
}

// witnessState is the persisted form of a Witness.
type witnessState struct {
	Version  int    `json:"version"`
	TreeHead []byte `json:"tree_head"` // the signed note, re-verified on load
}

// maxStateSize bounds a witness state file.
const maxStateSize = 64 << 10

// OpenWitness returns a witness that checks tree heads with checker and keeps
// its state in path. When path exists, the tree head in it is re-verified
// with the checker; a missing file means nothing was seen yet.
func OpenWitness(checker *Checker, path string) (*Witness, error) {
	w := &Witness{checker: checker, path: path}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return w, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ledger: reading witness state: %w", err)
	}
	th, err := decodeWitnessState(checker, data)
	if err != nil {
		return nil, fmt.Errorf("ledger: witness state %s: %w", path, err)
	}
	w.last = &th
	return w, nil
}

// decodeWitnessState parses and re-verifies a persisted witness state.
func decodeWitnessState(checker *Checker, data []byte) (TreeHead, error) {
	if len(data) > maxStateSize {
		return TreeHead{}, fmt.Errorf("state is %d bytes, larger than %d", len(data), maxStateSize)
	}
	var st witnessState
	if err := decodeStrict(data, &st, "witness state"); err != nil {
		return TreeHead{}, err
	}
	if st.Version != 1 {
		return TreeHead{}, fmt.Errorf("unsupported witness state version %d (want 1)", st.Version)
	}
	return checker.VerifyTreeHead(st.TreeHead)
}

// Last returns the last tree head the witness accepted, and false when it has
// seen none.
func (w *Witness) Last() (TreeHead, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.last == nil {
		return TreeHead{}, false
	}
	return *w.last, true
}

// Update verifies a signed tree head and, when it is consistent with the last
// one seen (p proves it; p may be nil when the size did not grow or nothing was
// seen yet), persists it as the new last tree head and returns it. It refuses
// with ErrSignature, ErrRollback or ErrFork (see CheckConsistency) and then
// keeps the old state, so that every later tree head is checked against the
// last good one.
func (w *Witness) Update(signed []byte, p *ConsistencyProof) (TreeHead, error) {
	th, err := w.checker.VerifyTreeHead(signed)
	if err != nil {
		return TreeHead{}, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.last != nil {
		if err := CheckConsistency(*w.last, th, p); err != nil {
			return TreeHead{}, err
		}
		if th.Size == w.last.Size {
			return *w.last, nil
		}
	}
	if err := w.persist(th); err != nil {
		return TreeHead{}, err
	}
	w.last = &th
	return th, nil
}

// CheckEntry checks that record is included in the last tree head the witness
// accepted. p must be a proof for that tree size.
func (w *Witness) CheckEntry(record []byte, p *InclusionProof) error {
	last, ok := w.Last()
	if !ok {
		return errors.New("ledger: the witness has seen no tree head yet; call Update first")
	}
	return CheckInclusion(last, record, p)
}

// persist writes the state atomically: a temporary file in the same directory,
// synced, then renamed over path.
func (w *Witness) persist(th TreeHead) error {
	data, err := json.Marshal(witnessState{Version: 1, TreeHead: th.Signed})
	if err != nil {
		return fmt.Errorf("ledger: encoding witness state: %w", err)
	}
	dir := filepath.Dir(w.path)
	f, err := os.CreateTemp(dir, filepath.Base(w.path)+".tmp*")
	if err != nil {
		return fmt.Errorf("ledger: saving witness state: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, w.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("ledger: saving witness state to %s: %w", w.path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
