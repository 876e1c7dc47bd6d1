package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
)

// cliOut is where the party commands print; tests replace it.
var cliOut io.Writer = os.Stdout

// partyFlags are the flags every party command takes.
type partyFlags struct {
	json  bool
	trust string
	key   string
}

// addPartyFlags adds --json, --trust and --key to fs.
func addPartyFlags(fs *flag.FlagSet) *partyFlags {
	p := &partyFlags{}
	fs.BoolVar(&p.json, "json", false, "print the result as JSON")
	fs.StringVar(&p.trust, "trust", defaultTrustPath(), "the trust file written by 'sealflow verify' ($SEALFLOW_TRUST)")
	fs.StringVar(&p.key, "key", "", "the party's key file (from 'sealflow keygen')")
	return p
}

// defaultTrustPath is $SEALFLOW_TRUST, or ~/.sealflow/trust.json.
func defaultTrustPath() string {
	if p := os.Getenv("SEALFLOW_TRUST"); p != "" {
		return p
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(".sealflow", "trust.json")
	}
	return filepath.Join(home, ".sealflow", "trust.json")
}

// parseParty parses a party command's flags and refuses positional arguments
// beyond nargs.
func parseParty(fs *flag.FlagSet, args []string, nargs int) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > nargs {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args()[nargs:])
	}
	return nil
}

// client loads the trust file and returns a client pinned to the verified
// orchestrator. Without a trust file it refuses: no command talks to an
// orchestrator it has not verified.
func (p *partyFlags) client() (*client.Client, error) {
	t, err := client.LoadTrust(p.trust)
	if err != nil {
		return nil, err
	}
	return client.New(t), nil
}

// signer returns the pinned client and the party's key file: what every
// command that signs a statement needs. The trust file is checked first.
func (p *partyFlags) signer() (*client.Client, *party.KeyFile, error) {
	c, err := p.client()
	if err != nil {
		return nil, nil, err
	}
	kf, err := p.keyFile()
	if err != nil {
		return nil, nil, err
	}
	return c, kf, nil
}

// keyFile loads the party key file named by --key.
func (p *partyFlags) keyFile() (*party.KeyFile, error) {
	if p.key == "" {
		return nil, fmt.Errorf("%w: --key is required (the party's key file from 'sealflow keygen')", errUsage)
	}
	kf, err := party.Load(p.key)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", p.key, err)
	}
	return kf, nil
}

// emit prints v as indented JSON with --json, and otherwise calls text.
func (p *partyFlags) emit(v any, text func(w io.Writer)) error {
	if p.json {
		return printJSON(cliOut, v)
	}
	text(cliOut)
	return nil
}

// submitStatement signs and submits a statement. A refusal is returned as an
// error that names the statement and the rule (and unwraps to a
// *client.RefusedError), together with the response.
func submitStatement(ctx context.Context, c *client.Client, kf *party.KeyFile, typ string, body any) (*api.Response, error) {
	r, err := c.Submit(ctx, kf, typ, body)
	var re *client.RefusedError
	if errors.As(err, &re) {
		if !strings.Contains(re.Message, re.Rule) {
			return r, fmt.Errorf("the orchestrator refused %s by rule %s: %w", typ, re.Rule, err)
		}
		return r, fmt.Errorf("the orchestrator refused %s: %w", typ, err)
	}
	return r, err
}

// resultMap returns a response's result as a JSON object.
func resultMap(r *api.Response) map[string]any {
	if r == nil {
		return nil
	}
	m, _ := r.Result.(map[string]any)
	return m
}

// decodeResult re-decodes a response's result into v.
func decodeResult(r *api.Response, v any) error {
	b, err := json.Marshal(r.Result)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
