package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
)

func init() {
	register("service submit", "submit a signed service manifest (FILE.yaml) for the owners' approval", runServiceSubmit)
	register("service deploy", "deploy a submitted service as a job once every input owner approved it", runServiceDeploy)
	register("service status", "show a job's tasks and the nodes they run on", runServiceStatus)
}

// manifestFile is a service manifest as a provider writes it (YAML or JSON).
// Recipients are party names or ids; the JobSpec is inline (job) or in a file
// (job_file, relative to the manifest).
type manifestFile struct {
	ID              string                  `json:"id"`
	Version         int64                   `json:"version"`
	SecurityVersion int64                   `json:"security_version,omitempty"`
	Inputs          []string                `json:"inputs"`
	Outputs         []string                `json:"outputs,omitempty"`
	Recipients      []string                `json:"recipients,omitempty"`
	CodeDigests     []string                `json:"code_digests,omitempty"`
	Tasks           []orchestrator.TaskSlot `json:"tasks"`
	Job             json.RawMessage         `json:"job,omitempty"`
	JobFile         string                  `json:"job_file,omitempty"`
	// Stages split the service into JobSpecs by name (inline), each run by
	// the tasks whose stage names it.
	Stages map[string]json.RawMessage `json:"stages,omitempty"`
	// JobDigest, when set, must equal the digest computed from the JobSpec.
	JobDigest string `json:"job_digest,omitempty"`
	// Modules names the WebAssembly modules the JobSpecs' udf nodes run
	// (name → .wasm path, relative to the manifest); submit encrypts them
	// (modules.go).
	Modules map[string]string `json:"modules,omitempty"`
}

// maxManifestFile bounds a manifest file.
const maxManifestFile = 4 << 20

// loadManifest reads a manifest file and computes its JobSpec digest;
// recipients are resolved against the registered parties by resolve.
func loadManifest(path string, resolve func(string) (party.ID, error)) (*orchestrator.Manifest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(data) > maxManifestFile {
		return nil, fmt.Errorf("manifest %s is %d bytes, larger than %d", path, len(data), maxManifestFile)
	}
	var mf manifestFile
	if err := yaml.UnmarshalStrict(data, &mf); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	switch {
	case mf.ID == "":
		return nil, fmt.Errorf("manifest %s has no id", path)
	case len(mf.Inputs) == 0:
		return nil, fmt.Errorf("manifest %s: service %s reads no inputs", path, mf.ID)
	case len(mf.Tasks) == 0:
		return nil, fmt.Errorf("manifest %s: service %s has no tasks", path, mf.ID)
	case len(mf.Job) > 0 && mf.JobFile != "":
		return nil, fmt.Errorf("manifest %s: give the JobSpec inline (job) or by path (job_file), not both", path)
	case len(mf.Job) == 0 && mf.JobFile == "" && len(mf.Stages) == 0:
		return nil, fmt.Errorf("manifest %s: no JobSpec: add job (inline), job_file or stages", path)
	}
	var canon, digest string
	if len(mf.Job) > 0 || mf.JobFile != "" {
		specData := []byte(mf.Job)
		if mf.JobFile != "" {
			p := mf.JobFile
			if !filepath.IsAbs(p) {
				p = filepath.Join(filepath.Dir(path), p)
			}
			var err error
			if specData, err = os.ReadFile(p); err != nil {
				return nil, fmt.Errorf("manifest %s: job_file: %w", path, err)
			}
		}
		c, d, err := canonicalSpec(specData)
		if err != nil {
			return nil, fmt.Errorf("manifest %s: %w", path, err)
		}
		canon, digest = c, d
		if mf.JobDigest != "" && mf.JobDigest != digest {
			return nil, fmt.Errorf("manifest %s: job_digest %s is not the JobSpec's digest %s", path, mf.JobDigest, digest)
		}
	}
	stages := map[string]json.RawMessage{}
	for name, raw := range mf.Stages {
		c, _, err := canonicalSpec(raw)
		if err != nil {
			return nil, fmt.Errorf("manifest %s: stage %s: %w", path, name, err)
		}
		stages[name] = json.RawMessage(c)
	}
	m := &orchestrator.Manifest{ID: mf.ID, Version: mf.Version, SecurityVersion: mf.SecurityVersion, JobDigest: digest,
		CodeDigests: mf.CodeDigests, Inputs: mf.Inputs, Outputs: mf.Outputs, Tasks: mf.Tasks}
	if canon != "" {
		m.Spec = json.RawMessage(canon)
	}
	if len(stages) > 0 {
		m.Stages = stages
	}
	for _, r := range mf.Recipients {
		id, err := resolve(r)
		if err != nil {
			return nil, fmt.Errorf("manifest %s: recipient %q: %w", path, r, err)
		}
		m.Recipients = append(m.Recipients, id)
	}
	return m, nil
}

// canonicalSpec parses and validates a JobSpec and returns its canonical
// JSON and digest.
func canonicalSpec(data []byte) (string, string, error) {
	spec, err := jobspec.Parse(data)
	if err != nil {
		return "", "", err
	}
	if err := spec.Validate(); err != nil {
		return "", "", fmt.Errorf("invalid JobSpec: %w", err)
	}
	digest, err := spec.Digest()
	if err != nil {
		return "", "", fmt.Errorf("JobSpec digest: %w", err)
	}
	canon, err := spec.JSON()
	if err != nil {
		return "", "", err
	}
	return string(canon), digest, nil
}

// partyResolver resolves party names or ids against the registered parties.
func partyResolver(ctx context.Context, c *client.Client) func(string) (party.ID, error) {
	var parties []*party.Identity
	var loadErr error
	loaded := false
	return func(ref string) (party.ID, error) {
		if !loaded {
			loadErr = c.Get(ctx, "/v1/parties", &parties)
			loaded = true
		}
		if loadErr != nil {
			return "", fmt.Errorf("listing parties: %w", loadErr)
		}
		var found []party.ID
		for _, p := range parties {
			if string(p.ID()) == ref || p.Name == ref {
				found = append(found, p.ID())
			}
		}
		switch len(found) {
		case 0:
			return "", fmt.Errorf("no registered party has this name or id")
		case 1:
			return found[0], nil
		}
		return "", fmt.Errorf("%d registered parties have this name; give the id", len(found))
	}
}

// runServiceSubmit implements `sealflow service submit --key F FILE.yaml`.
func runServiceSubmit(ctx context.Context, args []string) error {
	fs := newFlags("service submit")
	pf := addPartyFlags(fs)
	nats := natsFlag(fs) // where modules' ciphertext is stored
	c, kf, man, err := manifestArg(ctx, fs, pf, args, "give the manifest file: sealflow service submit --key F FILE.yaml")
	if err != nil {
		return err
	}
	r, err := submitManifest(ctx, c, kf, fs.Arg(0), man, *nats)
	if err != nil {
		return err
	}
	var res struct {
		Service string   `json:"service"`
		Digest  string   `json:"digest"`
		Pending []string `json:"pending"`
	}
	if err := decodeResult(r, &res); err != nil {
		return err
	}
	return pf.emit(r, func(w io.Writer) {
		fmt.Fprintf(w, "submitted service %s\ndigest:     %s\njob digest: %s\n", res.Service, res.Digest, man.JobDigest)
		for _, d := range man.CodeDigests {
			fmt.Fprintf(w, "code:       %s (stored encrypted; its key goes only to attested workers of this service)\n", d)
		}
		if len(res.Pending) > 0 {
			fmt.Fprintf(w, "awaiting approval by the owners of: %v\n", res.Pending)
			fmt.Fprintf(w, "each owner runs: sealflow owner approve --stream S --service %s\n", res.Digest)
		}
	})
}

// manifestArg parses a command's party flags and its one argument, a
// manifest file, and returns the signing client, the key and the manifest
// (provider names resolved to ids); usage says what to give when the
// argument is missing.
func manifestArg(ctx context.Context, fs *flag.FlagSet, pf *partyFlags, args []string, usage string) (*client.Client, *party.KeyFile, *orchestrator.Manifest, error) {
	if err := parseParty(fs, args, 1); err != nil {
		return nil, nil, nil, err
	}
	if fs.NArg() != 1 {
		return nil, nil, nil, fmt.Errorf("%w: %s", errUsage, usage)
	}
	c, kf, err := pf.signer()
	if err != nil {
		return nil, nil, nil, err
	}
	man, err := loadManifest(fs.Arg(0), partyResolver(ctx, c))
	if err != nil {
		return nil, nil, nil, err
	}
	return c, kf, man, nil
}

// submitManifest signs and submits the manifest loaded from path, with its
// modules encrypted and stored (see submitBody).
func submitManifest(ctx context.Context, c *client.Client, kf *party.KeyFile, path string, man *orchestrator.Manifest, natsURL string) (*api.Response, error) {
	body, err := submitBody(ctx, c.Trust, path, man, natsURL)
	if err != nil {
		return nil, err
	}
	return submitStatement(ctx, c, kf, orchestrator.TypeServiceSubmit, body)
}

// pendingOwner is an input stream whose owner has not approved a service.
type pendingOwner struct {
	Stream string   `json:"stream"`
	Owner  party.ID `json:"owner"`
	Name   string   `json:"owner_name,omitempty"`
}

// runServiceDeploy implements `sealflow service deploy --key F --service ID
// [--job J]`.
func runServiceDeploy(ctx context.Context, args []string) error {
	fs := newFlags("service deploy")
	pf := addPartyFlags(fs)
	service := fs.String("service", "", "the submitted service's id")
	job := fs.String("job", "", "the job's name (the service id when empty)")
	fromSavepoint := fs.String("from-savepoint", "", "start the job from this savepoint (of a job with the same name and service): its tasks restore their state and positions")
	wait := addWaitFlags(fs)
	if err := parseParty(fs, args, 0); err != nil {
		return err
	}
	if *service == "" {
		return fmt.Errorf("%w: --service is required", errUsage)
	}
	c, kf, err := pf.signer()
	if err != nil {
		return err
	}
	r, err := submitStatement(ctx, c, kf, orchestrator.TypeJobDeploy, orchestrator.Deploy{Service: *service, Job: *job, FromSavepoint: *fromSavepoint})
	var re *client.RefusedError
	if errors.As(err, &re) && re.Rule == "approval.pending" {
		pending := pendingOwners(ctx, c, r)
		if pf.json {
			_ = printJSON(cliOut, map[string]any{"ok": false, "rule": re.Rule, "error": re.Message, "pending": pending})
		} else {
			fmt.Fprintf(cliOut, "service %s is not approved by every input owner; pending:\n", *service)
			for _, p := range pending {
				fmt.Fprintf(cliOut, "  stream %-20s owner %s %s\n", p.Stream, p.Owner.Short(), p.Name)
			}
		}
		return err
	}
	if err != nil {
		return err
	}
	var res struct {
		Job   string              `json:"job"`
		Tasks map[string]party.ID `json:"tasks"`
	}
	if err := decodeResult(r, &res); err != nil {
		return err
	}
	names := nodeNames(ctx, c)
	if err := pf.emit(r, func(w io.Writer) {
		fmt.Fprintf(w, "deployed job %s\n", res.Job)
		printTasks(w, res.Tasks, names)
	}); err != nil {
		return err
	}
	return wait.run(ctx, pf, c, res.Job, res.Tasks, names)
}

// pendingOwners lists the streams a deploy refusal names as pending, with
// their owners.
func pendingOwners(ctx context.Context, c *client.Client, r *api.Response) []pendingOwner {
	var res struct {
		Pending []string `json:"pending"`
	}
	if r == nil || decodeResult(r, &res) != nil {
		return nil
	}
	var streams []api.StreamView
	_ = c.Get(ctx, "/v1/streams", &streams)
	var parties []*party.Identity
	_ = c.Get(ctx, "/v1/parties", &parties)
	var out []pendingOwner
	for _, s := range res.Pending {
		p := pendingOwner{Stream: s}
		for _, v := range streams {
			if v.Name == s {
				p.Owner = v.Owner
			}
		}
		for _, id := range parties {
			if id.ID() == p.Owner {
				p.Name = id.Name
			}
		}
		out = append(out, p)
	}
	return out
}

func nodeNames(ctx context.Context, c *client.Client) map[party.ID]string {
	var nodes []api.NodeView
	_ = c.Get(ctx, "/v1/nodes", &nodes)
	names := map[party.ID]string{}
	for _, n := range nodes {
		names[n.ID] = n.Name
	}
	return names
}

func printTasks(w io.Writer, tasks map[string]party.ID, names map[party.ID]string) {
	ids := make([]string, 0, len(tasks))
	for t := range tasks {
		ids = append(ids, t)
	}
	sort.Strings(ids)
	for _, t := range ids {
		fmt.Fprintf(w, "  %-32s on node %s %s\n", t, tasks[t].Short(), names[tasks[t]])
	}
}

// runServiceStatus implements `sealflow service status JOB`.
func runServiceStatus(ctx context.Context, args []string) error {
	fs := newFlags("service status")
	pf := addPartyFlags(fs)
	if err := parseParty(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: give the job: sealflow service status JOB", errUsage)
	}
	c, err := pf.client()
	if err != nil {
		return err
	}
	var jobs []api.JobView
	if err := c.Get(ctx, "/v1/jobs", &jobs); err != nil {
		return fmt.Errorf("listing jobs: %w", err)
	}
	i := slices.IndexFunc(jobs, func(j api.JobView) bool { return j.ID == fs.Arg(0) })
	if i < 0 {
		return fmt.Errorf("no deployed job %q", fs.Arg(0))
	}
	j := jobs[i]
	var status []api.TaskStatus
	if err := c.Get(ctx, "/v1/status?job="+url.QueryEscape(j.ID), &status); err != nil {
		return fmt.Errorf("task status: %w", err)
	}
	names := nodeNames(ctx, c)
	out := struct {
		api.JobView
		Status []api.TaskStatus `json:"status"`
	}{j, status}
	return pf.emit(out, func(w io.Writer) {
		fmt.Fprintf(w, "job %s: service %s (digest %s), key epoch %d, %d tasks\n", j.ID, j.Service, j.Digest, j.Epoch, len(j.Tasks))
		fmt.Fprintf(w, "  %-28s %-22s %-10s %12s %12s %10s %10s %10s %6s\n", "task", "node", "state", "records in", "records out", "in/s", "out/s", "wm lag", "bp")
		for _, t := range status {
			lag := "-"
			if l, ok := t.WatermarkLag(); ok {
				lag = fmt.Sprintf("%.1fs", l)
			}
			fmt.Fprintf(w, "  %-28s %-22s %-10s %12d %12d %10.0f %10.0f %10s %5.0f%%\n", t.Task, names[t.Node], t.State, t.RecordsIn, t.RecordsOut, t.InPerSecond, t.OutPerSecond, lag, 100*t.Backpressure)
		}
		for _, l := range scaleLines(j) {
			fmt.Fprintln(w, "  "+l)
		}
	})
}

// scaleLines describes, one line per operator in task and operator order,
// the parallelism overrides of a job (service scale) and the bounds of its
// adaptive operators.
func scaleLines(j api.JobView) []string {
	type op struct{ task, node string }
	var ops []op
	seen := map[op]bool{}
	for task, m := range j.Scale {
		for node := range m {
			ops = append(ops, op{task, node})
			seen[op{task, node}] = true
		}
	}
	for task, m := range j.Adaptive {
		for node := range m {
			if !seen[op{task, node}] {
				ops = append(ops, op{task, node})
			}
		}
	}
	slices.SortFunc(ops, func(a, b op) int { return cmp.Or(cmp.Compare(a.task, b.task), cmp.Compare(a.node, b.node)) })
	var out []string
	for _, o := range ops {
		l := fmt.Sprintf("scaled: task %s operator %s", o.task, o.node)
		if p, ok := j.Scale[o.task][o.node]; ok {
			l += fmt.Sprintf(" parallelism %d", p)
		}
		if a := j.Adaptive[o.task][o.node]; a != nil {
			cd := time.Duration(a.Cooldown)
			if cd == 0 {
				cd = orchestrator.DefaultAdaptiveCooldown
			}
			l += fmt.Sprintf(" (adaptive %d..%d, cool-down %s", a.Min, a.Max, cd)
			if !a.Last.IsZero() {
				l += ", last rescaled " + a.Last.UTC().Format(time.RFC3339)
			}
			l += ")"
		}
		out = append(out, l)
	}
	return out
}
