package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/ledger"
)

func init() {
	register("audit", "audit the transparency log about a stream, with inclusion and consistency proofs", runAudit)
}

// auditResult is what `sealflow audit --json` prints.
type auditResult struct {
	*client.Audit
	Witness string `json:"witness"`
	OK      bool   `json:"ok"`
	// Problem is "rollback" or "fork" when the log is not consistent with the
	// tree head seen before.
	Problem string `json:"problem,omitempty"`
	Error   string `json:"error,omitempty"`
}

// defaultWitnessPath keeps the witness next to the trust file, one per
// orchestrator identity.
func defaultWitnessPath(trustPath string, t *client.Trust) string {
	return filepath.Join(filepath.Dir(trustPath), "witness-"+t.Identity.ID().Short()+".json")
}

// runAudit implements `sealflow audit --stream S [--subject SUBJ] [--witness FILE]`.
func runAudit(ctx context.Context, args []string) error {
	fs := newFlags("audit")
	pf := addPartyFlags(fs)
	stream := fs.String("stream", "", "the stream whose log entries to audit")
	subject := fs.String("subject", "", `another log subject to audit instead ("node:<id>", "job:<id>", "service:<id>", "party:<id>")`)
	witnessPath := fs.String("witness", "", "the file remembering the last tree head seen (default: next to the trust file)")
	if err := parseParty(fs, args, 0); err != nil {
		return err
	}
	subj := *subject
	if *stream != "" {
		if subj != "" {
			return fmt.Errorf("%w: give --stream or --subject, not both", errUsage)
		}
		subj = "stream:" + *stream
	}
	if subj == "" || !strings.Contains(subj, ":") {
		return fmt.Errorf("%w: --stream S (or --subject KIND:ID) is required", errUsage)
	}
	c, err := pf.client()
	if err != nil {
		return err
	}
	if *witnessPath == "" {
		*witnessPath = defaultWitnessPath(pf.trust, c.Trust)
	}
	checker, err := ledger.NewChecker(c.Trust.LogKey)
	if err != nil {
		return fmt.Errorf("the trust file's log key: %w", err)
	}
	w, err := ledger.OpenWitness(checker, *witnessPath)
	if err != nil {
		return err
	}
	a, err := c.Audit(ctx, subj, w)
	if err != nil {
		res := auditResult{Witness: *witnessPath, Error: err.Error()}
		switch {
		case errors.Is(err, ledger.ErrRollback):
			res.Problem = "rollback"
		case errors.Is(err, ledger.ErrFork):
			res.Problem = "fork"
		}
		if res.Problem == "" {
			return fmt.Errorf("auditing %s: %w", subj, err)
		}
		if pf.json {
			_ = printJSON(cliOut, res)
		} else {
			fmt.Fprintf(cliOut, "LOG %s DETECTED: the orchestrator's log is not consistent with the tree head remembered in %s\n", strings.ToUpper(res.Problem), *witnessPath)
		}
		return fmt.Errorf("the orchestrator's log was %s: %w", map[string]string{"rollback": "rolled back", "fork": "forked"}[res.Problem], err)
	}
	return pf.emit(auditResult{Audit: a, Witness: *witnessPath, OK: true}, func(out io.Writer) {
		fmt.Fprintf(out, "tree size %d (previously seen %d): consistent\n", a.TreeSize, a.PreviousSize)
		for _, e := range a.Entries {
			status := "proof FAILED"
			if e.Proven {
				status = "proof ok"
			}
			fmt.Fprintf(out, "%6d  %s  %-18s %s  %s\n", e.Index, e.Time.Format("2006-01-02T15:04:05Z"), e.Type, status, e.Body)
		}
		fmt.Fprintf(out, "%d entries about %s, each proven included; tree head remembered in %s\n", len(a.Entries), subj, *witnessPath)
	})
}
