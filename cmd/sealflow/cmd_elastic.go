package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
)

func init() {
	register("infra drain", "move every task off a node to nodes the owners' policies accept, and place none there any more (the operator's key)", runInfraDrain)
	register("infra remove", "drain a node and end its admission (the operator's key)", runInfraRemove)
	register("infra migrate", "move one task of a job to a named node, if every owner's policy accepts it (the operator's key)", runInfraMigrate)
}

// resolveNode finds an admitted node by id, id prefix or name.
func resolveNode(ctx context.Context, c *client.Client, arg string) (party.ID, map[party.ID]string, error) {
	var nodes []api.NodeView
	if err := c.Get(ctx, "/v1/nodes", &nodes); err != nil {
		return "", nil, fmt.Errorf("listing nodes: %w", err)
	}
	names := map[party.ID]string{}
	var found []party.ID
	for _, n := range nodes {
		names[n.ID] = n.Name
		if n.Name == arg || string(n.ID) == arg || len(arg) >= 6 && strings.HasPrefix(string(n.ID), arg) {
			found = append(found, n.ID)
		}
	}
	switch len(found) {
	case 0:
		return "", names, fmt.Errorf("no admitted node is named %q or has an id starting with it (see sealflow infra nodes)", arg)
	case 1:
		return found[0], names, nil
	}
	return "", names, fmt.Errorf("%q names %d nodes; give more of the id", arg, len(found))
}

func printMoves(w io.Writer, res orchestrator.MoveResult, names map[party.ID]string) {
	name := func(id party.ID) string {
		if n := names[id]; n != "" {
			return n + " (" + id.Short() + ")"
		}
		return id.Short()
	}
	for _, mv := range res.Moves {
		if mv.To == "" {
			fmt.Fprintf(w, "task %s of job %s: no node may run it (rule %s); it waits, unplaced, for one\n", mv.Task, mv.Job, mv.Rule)
			continue
		}
		fmt.Fprintf(w, "task %s of job %s: %s → %s\n", mv.Task, mv.Job, name(mv.From), name(mv.To))
	}
	for job, e := range res.ExchangeEpochs {
		fmt.Fprintf(w, "job %s seals its intermediate streams with exchange key epoch %d from now on; the nodes its tasks left never receive it\n", job, e)
	}
}

func runNodeStatement(ctx context.Context, args []string, cmd, typ, verb string) error {
	fs := newFlags(cmd)
	pf := addPartyFlags(fs)
	if err := parseParty(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: name the node (its name, or its id or an id prefix) after the flags", errUsage)
	}
	c, kf, err := pf.signer()
	if err != nil {
		return err
	}
	node, names, err := resolveNode(ctx, c, fs.Arg(0))
	if err != nil {
		return err
	}
	p := newProgress(pf.json)
	p.Step("%s node %s", verb, names[node])
	r, err := submitStatement(ctx, c, kf, typ, orchestrator.NodeRequest{Node: node})
	p.Stop()
	if err != nil {
		return err
	}
	var res orchestrator.MoveResult
	if err := decodeResult(r, &res); err != nil {
		return err
	}
	return pf.emit(r, func(w io.Writer) {
		printMoves(w, res, names)
		fmt.Fprintf(w, "%s node %s: %d tasks moved\n", verb, names[node], len(res.Moves))
	})
}

// runInfraDrain implements `sealflow infra drain --key OPERATOR NODE`.
func runInfraDrain(ctx context.Context, args []string) error {
	return runNodeStatement(ctx, args, "infra drain", orchestrator.TypeNodeDrain, "drained")
}

// runInfraRemove implements `sealflow infra remove --key OPERATOR NODE`.
func runInfraRemove(ctx context.Context, args []string) error {
	return runNodeStatement(ctx, args, "infra remove", orchestrator.TypeNodeRemove, "removed")
}

// runInfraMigrate implements `sealflow infra migrate --key OPERATOR --job J
// --task T --to NODE`: it waits (--wait) until the task reports running on
// the destination and prints how long the move took.
func runInfraMigrate(ctx context.Context, args []string) error {
	fs := newFlags("infra migrate")
	pf := addPartyFlags(fs)
	job := fs.String("job", "", "the job")
	task := fs.String("task", "", "the task to move")
	to := fs.String("to", "", "the destination node (its name, or its id or an id prefix)")
	wait := fs.Bool("wait", true, "wait until the task runs on the destination, showing progress on stderr")
	timeout := fs.Duration("wait-timeout", 2*time.Minute, "how long --wait waits")
	if err := parseParty(fs, args, 0); err != nil {
		return err
	}
	if *job == "" || *task == "" || *to == "" {
		return fmt.Errorf("%w: --job, --task and --to are required", errUsage)
	}
	c, kf, err := pf.signer()
	if err != nil {
		return err
	}
	dest, names, err := resolveNode(ctx, c, *to)
	if err != nil {
		return err
	}
	p := newProgress(pf.json)
	p.Step("moving task %s of job %s to node %s", *task, *job, names[dest])
	start := time.Now()
	r, err := submitStatement(ctx, c, kf, orchestrator.TypeTaskMigrate, orchestrator.MigrateRequest{Job: *job, Task: *task, To: dest})
	if err != nil {
		p.Stop()
		return err
	}
	var res orchestrator.MoveResult
	if err := decodeResult(r, &res); err != nil {
		p.Stop()
		return err
	}
	var took time.Duration
	if *wait {
		took, err = waitTaskOn(ctx, p, c, *job, *task, dest, start, *timeout)
		if err != nil {
			return err
		}
	}
	p.Stop()
	return pf.emit(r, func(w io.Writer) {
		printMoves(w, res, names)
		if *wait {
			fmt.Fprintf(w, "task %s runs on %s, %v after the move was accepted (restored from its last checkpoint)\n", *task, names[dest], took.Round(time.Millisecond))
		}
	})
}

// waitTaskOn polls the job's status until task reports running on node in a
// report received after since; it returns the time from since.
func waitTaskOn(ctx context.Context, p *Progress, c *client.Client, job, task string, node party.ID, since time.Time, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := "no report yet"
	for {
		var st []api.TaskStatus
		if err := c.Get(ctx, "/v1/status?job="+url.QueryEscape(job), &st); err == nil {
			for _, s := range st {
				if s.Task == task && s.Node == node && s.Updated.After(since) {
					last = s.State
					if s.State == "running" || s.State == "finished" {
						return time.Since(since), nil
					}
				}
			}
		}
		p.Update("waiting for task %s on its new node: %s", task, last)
		select {
		case <-ctx.Done():
			p.Stop()
			return 0, fmt.Errorf("task %s was moved, but after %v it does not run on its new node (%s)", task, timeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
