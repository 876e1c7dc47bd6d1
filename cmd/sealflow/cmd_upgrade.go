package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/orchestrator"
)

func init() {
	register("service upgrade", "submit a new version (FILE.yaml) and move the running job to it once every owner approved it, carrying its state across", runServiceUpgrade)
	register("service rollback", "return an upgraded job to the version it ran before and the savepoint taken at the upgrade", runServiceRollback)
}

// runServiceUpgrade implements `sealflow service upgrade --key F [--job J]
// FILE.yaml`: it submits the manifest (unless that version is submitted
// already) and asks the orchestrator to upgrade the job. While an owner has
// not approved the new version, the old one keeps running and the command
// names who is pending.
func runServiceUpgrade(ctx context.Context, args []string) error {
	fs := newFlags("service upgrade")
	pf := addPartyFlags(fs)
	nats := natsFlag(fs)
	jobFlag := fs.String("job", "", "the job to upgrade (default: the service id)")
	wf := addWaitFlags(fs)
	c, kf, man, err := manifestArg(ctx, fs, pf, args, "give the new version's manifest: sealflow service upgrade --key F FILE.yaml")
	if err != nil {
		return err
	}
	job := *jobFlag
	if job == "" {
		job = man.ID
	}
	p := newProgress(pf.json)
	p.Step("submitting version %d of service %s", man.Version, man.ID)
	// Submitting the same manifest again is accepted (run the command
	// again once the owners approved); another manifest at a version
	// already submitted is refused, and the job must not move to whatever
	// the latest version is instead of FILE.
	r, err := submitManifest(ctx, c, kf, fs.Arg(0), man, *nats)
	if err != nil {
		p.Stop()
		return err
	}
	var sub struct {
		Digest string `json:"digest"`
	}
	if err := decodeResult(r, &sub); err != nil {
		p.Stop()
		return err
	}
	var re *client.RefusedError
	p.Step("asking the orchestrator to move job %s to version %d", job, man.Version)
	r, err = submitStatement(ctx, c, kf, orchestrator.TypeJobUpgrade, orchestrator.UpgradeRequest{Job: job, Digest: sub.Digest})
	p.Stop()
	if errors.As(err, &re) && re.Rule == "approval.pending" {
		pending := pendingOwners(ctx, c, r)
		if pf.json {
			_ = printJSON(cliOut, map[string]any{"ok": false, "rule": re.Rule, "error": re.Message, "pending": pending, "digest": sub.Digest})
		} else {
			fmt.Fprintf(cliOut, "version %d of %s is not approved by every input owner; the running version keeps running. Pending:\n", man.Version, man.ID)
			for _, o := range pending {
				fmt.Fprintf(cliOut, "  stream %-20s owner %s %s\n", o.Stream, o.Owner.Short(), o.Name)
			}
			fmt.Fprintf(cliOut, "run this command again once they approved (sealflow owner approve --stream S --service %s)\n", sub.Digest)
		}
		return err
	}
	if err != nil {
		return err
	}
	var res orchestrator.UpgradeResult
	if err := decodeResult(r, &res); err != nil {
		return err
	}
	if err := wf.run(ctx, pf, c, job, res.Tasks, nodeNames(ctx, c)); err != nil {
		return err
	}
	return pf.emit(r, func(w io.Writer) {
		fmt.Fprintf(w, "job %s runs version %d (digest %s) instead of version %d, from savepoint %s; its tasks restore their state there\n",
			res.Job, res.ToVersion, res.ToDigest[:min(12, len(res.ToDigest))], res.FromVersion, res.Savepoint)
		fmt.Fprintf(w, "roll back with: sealflow service rollback --key F %s\n", res.Job)
	})
}

// runServiceRollback implements `sealflow service rollback --key F JOB`.
func runServiceRollback(ctx context.Context, args []string) error {
	fs := newFlags("service rollback")
	pf := addPartyFlags(fs)
	jobFlag := fs.String("job", "", "the job (or give it as the argument after the flags)")
	wf := addWaitFlags(fs)
	if err := parseParty(fs, args, 1); err != nil {
		return err
	}
	job, err := jobArg(fs, *jobFlag)
	if err != nil {
		return err
	}
	c, kf, err := pf.signer()
	if err != nil {
		return err
	}
	p := newProgress(pf.json)
	p.Step("rolling job %s back", job)
	r, err := submitStatement(ctx, c, kf, orchestrator.TypeJobRollback, orchestrator.RollbackRequest{Job: job})
	p.Stop()
	if err != nil {
		return err
	}
	var res orchestrator.UpgradeResult
	if err := decodeResult(r, &res); err != nil {
		return err
	}
	if err := wf.run(ctx, pf, c, job, res.Tasks, nodeNames(ctx, c)); err != nil {
		return err
	}
	return pf.emit(r, func(w io.Writer) {
		fmt.Fprintf(w, "job %s runs version %d again, from savepoint %s (output after that savepoint is produced again)\n", res.Job, res.ToVersion, res.Savepoint)
	})
}
