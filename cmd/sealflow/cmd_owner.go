package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"strings"

	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/policy"
	"github.com/sealflow/sealflow/seal"
)

func init() {
	register("owner register", "register a party (owner, provider or recipient) with the orchestrator", runOwnerRegister)
	register("owner register-stream", "register a stream with its schema and policy, and upload its first data key", runOwnerRegisterStream)
	register("owner approve", "approve a service's exact digest for reading a stream", runOwnerApprove)
	register("owner revoke", "revoke a service's access to a stream from the next key epoch", runOwnerRevoke)
	register("owner policy explain", "explain a stream policy's placement decision for a service on a node", runOwnerPolicyExplain)
}

// runOwnerRegister implements `sealflow owner register --key F`. Providers and
// recipients register the same way.
func runOwnerRegister(ctx context.Context, args []string) error {
	fs := newFlags("owner register")
	pf := addPartyFlags(fs)
	if err := parseParty(fs, args, 0); err != nil {
		return err
	}
	return registerParty(ctx, pf)
}

func registerParty(ctx context.Context, pf *partyFlags) error {
	c, kf, err := pf.signer()
	if err != nil {
		return err
	}
	r, err := submitStatement(ctx, c, kf, orchestrator.TypePartyRegister, orchestrator.RegisterParty{Identity: orchestrator.Identity{Identity: kf.Identity()}})
	if err != nil {
		return err
	}
	already, _ := resultMap(r)["already"].(bool)
	return pf.emit(r, func(w io.Writer) {
		verb := "registered"
		if already {
			verb = "already registered"
		}
		fmt.Fprintf(w, "%s %s %q as %s (log %v)\n", verb, kf.Identity().Role, kf.Identity().Name, kf.ID(), r.LogIndexes)
	})
}

var fieldRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// parseSchema parses "kwh:float,household:string".
func parseSchema(s string) ([]orchestrator.Field, error) {
	var out []orchestrator.Field
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		name, typ, ok := strings.Cut(part, ":")
		if !ok || !fieldRE.MatchString(name) {
			return nil, fmt.Errorf("schema field %q: want NAME:TYPE with a name of letters, digits and _", part)
		}
		if _, err := record.ParseType(typ); err != nil {
			return nil, fmt.Errorf("schema field %s: %v", name, err)
		}
		if seen[name] {
			return nil, fmt.Errorf("schema field %s appears twice", name)
		}
		seen[name] = true
		out = append(out, orchestrator.Field{Name: name, Type: typ})
	}
	return out, nil
}

// registerStreamResult is what `owner register-stream --json` prints.
type registerStreamResult struct {
	Stream       string `json:"stream"`
	PolicyDigest string `json:"policy_digest"`
	Epoch        uint32 `json:"epoch"`
	KeyUploaded  bool   `json:"key_uploaded"`
	Keystore     string `json:"keystore"`
}

// runOwnerRegisterStream implements `sealflow owner register-stream --key F
// --stream S --schema "kwh:float,household:string" [--partitions N] [--site S]
// --policy FILE`.
func runOwnerRegisterStream(ctx context.Context, args []string) error {
	fs := newFlags("owner register-stream")
	pf := addPartyFlags(fs)
	stream := fs.String("stream", "", "the stream's name")
	schema := fs.String("schema", "", `the record schema, "name:type,..." (types int, float, string, bool)`)
	partitions := fs.Int("partitions", 1, "the number of partitions")
	site := fs.String("site", "", "the site where the stream's records enter (sources are placed there)")
	policyFile := fs.String("policy", "", "the stream's policy document (YAML or JSON, see docs/api.md)")
	if err := parseParty(fs, args, 0); err != nil {
		return err
	}
	if *stream == "" || *schema == "" || *policyFile == "" {
		return fmt.Errorf("%w: --stream, --schema and --policy are required", errUsage)
	}
	if *partitions < 1 || *partitions > 4096 {
		return fmt.Errorf("%w: --partitions %d: want 1 to 4096", errUsage, *partitions)
	}
	fields, err := parseSchema(*schema)
	if err != nil {
		return fmt.Errorf("%w: --schema: %v", errUsage, err)
	}
	data, err := os.ReadFile(*policyFile)
	if err != nil {
		return fmt.Errorf("--policy: %w", err)
	}
	doc, err := policy.Decode(data)
	if err != nil {
		return fmt.Errorf("policy file %s: %w", *policyFile, err)
	}
	if doc.Stream != *stream {
		return fmt.Errorf("policy file %s governs stream %q, not %q", *policyFile, doc.Stream, *stream)
	}
	if _, err := policy.Compile(doc); err != nil {
		return fmt.Errorf("policy file %s: %w", *policyFile, err)
	}
	pol, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	c, kf, err := pf.signer()
	if err != nil {
		return err
	}
	r, err := submitStatement(ctx, c, kf, orchestrator.TypeStreamRegister, orchestrator.RegisterStream{
		Name: *stream, Schema: fields, Partitions: *partitions, Site: *site, Policy: pol})
	if err != nil {
		return err
	}
	res := registerStreamResult{Stream: *stream, Keystore: client.KeystorePath(pf.key)}
	res.PolicyDigest, _ = resultMap(r)["policy_digest"].(string)
	res.Epoch, res.KeyUploaded, err = uploadFirstKey(ctx, c, kf, pf.key, *stream)
	if err != nil {
		return err
	}
	return pf.emit(res, func(w io.Writer) {
		fmt.Fprintf(w, "registered stream %s (policy %s)\n", res.Stream, res.PolicyDigest)
		if res.KeyUploaded {
			fmt.Fprintf(w, "uploaded data key epoch %d, wrapped to the orchestrator %s\n", res.Epoch, c.Trust.Identity.ID().Short())
		} else {
			fmt.Fprintf(w, "the orchestrator already holds data key epoch %d\n", res.Epoch)
		}
		fmt.Fprintf(w, "kept the data key in %s\n", res.Keystore)
	})
}

// uploadFirstKey makes sure the stream has a data key epoch: it generates
// epoch 1 into the owner's keystore (saved before the upload, so the key is
// never lost), wraps it to the pinned orchestrator's HPKE key and uploads it.
// A stream whose keys were already uploaded is left alone.
func uploadFirstKey(ctx context.Context, c *client.Client, kf *party.KeyFile, keyPath, stream string) (uint32, bool, error) {
	var streams []api.StreamView
	if err := c.Get(ctx, "/v1/streams", &streams); err != nil {
		return 0, false, fmt.Errorf("listing streams: %w", err)
	}
	for _, s := range streams {
		if s.Name == stream && s.Epoch > 0 {
			return s.Epoch, false, nil
		}
	}
	ksPath := client.KeystorePath(keyPath)
	ks, err := client.LoadOwnerKeys(ksPath)
	if err != nil {
		return 0, false, err
	}
	const epoch = 1
	key, ok := ks.Key(stream, epoch)
	if !ok {
		key = make([]byte, seal.KeySize)
		rand.Read(key)
		ks.Put(stream, epoch, key)
		if err := ks.Save(ksPath); err != nil {
			return 0, false, fmt.Errorf("saving the data key before uploading it: %w", err)
		}
	}
	pub, err := c.Trust.Identity.HPKEPublicKey()
	if err != nil {
		return 0, false, fmt.Errorf("the pinned orchestrator's HPKE key: %w", err)
	}
	info := seal.WrapInfo{Purpose: "stream-key", KeyID: fmt.Sprintf("%s/%d", stream, epoch), Recipient: string(c.Trust.Identity.ID())}
	w, err := seal.Wrap(pub, info.Bytes(), key)
	if err != nil {
		return 0, false, err
	}
	if _, err := submitStatement(ctx, c, kf, orchestrator.TypeStreamKey, orchestrator.StreamKey{Stream: stream, Epoch: epoch, Wrapped: w}); err != nil {
		return 0, false, err
	}
	return epoch, true, nil
}

var digestRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// serviceDigest resolves --service to a service digest: a 64-hex-digit
// digest is taken as is, anything else is looked up as a service id.
func serviceDigest(ctx context.Context, c *client.Client, service string) (string, error) {
	if digestRE.MatchString(service) {
		return service, nil
	}
	var svcs []*orchestrator.Service
	if err := c.Get(ctx, "/v1/services", &svcs); err != nil {
		return "", fmt.Errorf("listing services: %w", err)
	}
	for _, s := range svcs {
		if s.Manifest.ID == service {
			return s.Digest, nil
		}
	}
	return "", fmt.Errorf("no submitted service with id %q (give its id or its 64-hex-digit digest)", service)
}

// runOwnerApprove implements `sealflow owner approve --key F --stream S
// --service DIGEST|ID`.
func runOwnerApprove(ctx context.Context, args []string) error {
	fs := newFlags("owner approve")
	pf := addPartyFlags(fs)
	stream := fs.String("stream", "", "the stream the service may read")
	service := fs.String("service", "", "the service digest to approve (a service id is resolved to its current digest)")
	if err := parseParty(fs, args, 0); err != nil {
		return err
	}
	if *stream == "" || *service == "" {
		return fmt.Errorf("%w: --stream and --service are required", errUsage)
	}
	c, kf, err := pf.signer()
	if err != nil {
		return err
	}
	digest, err := serviceDigest(ctx, c, *service)
	if err != nil {
		return err
	}
	r, err := submitStatement(ctx, c, kf, orchestrator.TypeServiceApprove, orchestrator.Approve{Stream: *stream, Digest: digest})
	if err != nil {
		return err
	}
	return pf.emit(r, func(w io.Writer) {
		fmt.Fprintf(w, "approved service digest %s for stream %s (log %v)\n", digest, *stream, r.LogIndexes)
	})
}

// runOwnerRevoke implements `sealflow owner revoke --key F --stream S
// --service ID`.
func runOwnerRevoke(ctx context.Context, args []string) error {
	fs := newFlags("owner revoke")
	pf := addPartyFlags(fs)
	stream := fs.String("stream", "", "the stream")
	service := fs.String("service", "", "the service id to revoke")
	if err := parseParty(fs, args, 0); err != nil {
		return err
	}
	if *stream == "" || *service == "" {
		return fmt.Errorf("%w: --stream and --service are required", errUsage)
	}
	c, kf, err := pf.signer()
	if err != nil {
		return err
	}
	r, err := submitStatement(ctx, c, kf, orchestrator.TypeServiceRevoke, orchestrator.Revoke{Stream: *stream, Service: *service})
	if err != nil {
		return err
	}
	next, _ := resultMap(r)["next_epoch"].(float64)
	// Advance the stream's key epoch: publishers switch to it, and it is
	// never released to the revoked service.
	ksPath := client.KeystorePath(pf.key)
	ks, err := client.LoadOwnerKeys(ksPath)
	if err != nil {
		return err
	}
	key := make([]byte, seal.KeySize)
	rand.Read(key)
	if err := c.UploadStreamKey(ctx, kf, *stream, uint32(next), key); err != nil {
		return fmt.Errorf("revoked, but uploading epoch %d failed (run 'owner revoke' again or upload it): %w", int(next), err)
	}
	ks.Put(*stream, uint32(next), key)
	if err := ks.Save(ksPath); err != nil {
		return err
	}
	stopped := resultMap(r)["stopped_jobs"]
	return pf.emit(r, func(w io.Writer) {
		fmt.Fprintf(w, "revoked service %s on stream %s; stopped jobs: %v\n", *service, *stream, stopped)
		fmt.Fprintf(w, "advanced the stream to key epoch %d (kept in %s); 'owner publish' seals with it from now on, and it is never released to %s\n", int(next), ksPath, *service)
	})
}

// runOwnerPolicyExplain implements `sealflow owner policy explain --stream S
// --service DIGEST|ID --node ID|NAME`.
func runOwnerPolicyExplain(ctx context.Context, args []string) error {
	fs := newFlags("owner policy explain")
	pf := addPartyFlags(fs)
	stream := fs.String("stream", "", "the stream whose policy decides")
	service := fs.String("service", "", "the service id or digest")
	node := fs.String("node", "", "the admitted node's id, short id or name")
	if err := parseParty(fs, args, 0); err != nil {
		return err
	}
	if *stream == "" || *service == "" || *node == "" {
		return fmt.Errorf("%w: --stream, --service and --node are required", errUsage)
	}
	c, err := pf.client()
	if err != nil {
		return err
	}
	q := url.Values{"stream": {*stream}, "service": {*service}, "node": {*node}}
	var d policy.Decision
	if err := c.Get(ctx, "/v1/policy/explain?"+q.Encode(), &d); err != nil {
		var re *client.RefusedError
		if errors.As(err, &re) {
			return err
		}
		return fmt.Errorf("explaining stream %s for service %s on node %s: %w", *stream, *service, *node, err)
	}
	return pf.emit(d, func(w io.Writer) { fmt.Fprint(w, policy.Explain(d)) })
}
