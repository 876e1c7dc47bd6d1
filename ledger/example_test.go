package ledger_test

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sealflow/sealflow/ledger"
)

func Example() {
	// Orchestrator side: a log signed by the orchestrator's key.
	priv := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	signer, _ := ledger.NewSigner("orchestrator", priv)
	log := ledger.NewLog(signer)
	e, _ := log.AppendEntry(ledger.Entry{Time: time.Unix(0, 0).UTC(), Type: "stream.register", Subjects: []string{"households/meter"}})
	sth1, _ := log.SignedTreeHead()
	log.AppendEntry(ledger.Entry{Time: time.Unix(1, 0).UTC(), Type: "key.release", Subjects: []string{"households/meter", "node-7"}})
	sth2, _ := log.SignedTreeHead()

	// Owner side: pin the key, keep the last tree head in a file.
	vkey, _ := ledger.VerifierKey("orchestrator", priv.Public().(ed25519.PublicKey))
	checker, _ := ledger.NewChecker(vkey)
	dir, _ := os.MkdirTemp("", "witness")
	defer os.RemoveAll(dir)
	w, _ := ledger.OpenWitness(checker, filepath.Join(dir, "last-tree-head.json"))
	w.Update(sth1, nil)
	proof, _ := log.ProveConsistency(1, 2)
	th, err := w.Update(sth2, proof)
	fmt.Println("tree size", th.Size, err)

	// Check that the first entry is in the log, then read it.
	rec, _ := log.Record(e.Index)
	ip, _ := log.ProveInclusion(e.Index, th.Size)
	fmt.Println("included:", w.CheckEntry(rec, ip) == nil, "entries about the stream:", log.About("households/meter"))

	// A rolled-back orchestrator shows an older tree head.
	_, err = w.Update(sth1, nil)
	fmt.Println(errors.Is(err, ledger.ErrRollback))
	// Output:
	// tree size 2 <nil>
	// included: true entries about the stream: [0 1]
	// true
}
