// Package client is the SDK of sealflow's parties: data owners and their
// devices or gateways, service providers, recipients and the operator. It
// verifies an orchestrator's evidence before trusting it and pins its keys
// (Verify, Trust), talks to it only over TLS with the pinned key (Client),
// signs statements, seals records at the source, and audits the transparency
// log with proofs.
package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
)

// Trust is what a client pins after verifying an orchestrator: its URL, its
// identity, the TLS key its evidence binds, its genesis and its log key. It is
// saved as JSON in a trust file.
type Trust struct {
	URL           string          `json:"url"`
	Identity      *party.Identity `json:"identity"`
	TLSKeySHA256  string          `json:"tls_key_sha256"`
	GenesisDigest string          `json:"genesis_digest"`
	LogKey        string          `json:"log_key"`
	TEE           attest.TEE      `json:"tee"`
	Measurement   string          `json:"measurement"`
	VerifiedAt    time.Time       `json:"verified_at"`
}

// VerifyOptions say what evidence a client accepts from an orchestrator.
type VerifyOptions struct {
	// Measurement, when set, is the only accepted measurement (hex).
	Measurement string
	// AllowSim accepts evidence from the sim backend. Sim evidence protects
	// nothing; use it only for development.
	AllowSim bool
	// Verifiers verify evidence by TEE type (the sim verifier needs the sim
	// root certificate of the development directory).
	Verifiers map[attest.TEE]attest.Verifier
	// Reference, when set, are signed reference values of orchestrator
	// releases (see attest/refvalues): the claims must meet them, instead of
	// Measurement and AllowSim.
	Reference *attest.ReferenceValues
	// HTTPClient is used for the first, unpinned request; the evidence then
	// proves which TLS key is genuine.
	HTTPClient *http.Client
}

// Verify fetches the orchestrator's evidence for a fresh nonce, checks it with
// the verifiers, checks that it binds the TLS key the connection was made
// with, the orchestrator's keys and its genesis, and returns what to pin.
func Verify(ctx context.Context, url string, opts VerifyOptions) (*Trust, *attest.Claims, error) {
	nonce := make([]byte, 32)
	rand.Read(nonce)
	hc := opts.HTTPClient
	var seen [32]byte
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			InsecureSkipVerify: true, // the evidence authenticates the key below
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return errors.New("the orchestrator presented no certificate")
				}
				seen = sha256.Sum256(cs.PeerCertificates[0].RawSubjectPublicKeyInfo)
				return nil
			}}}}
	}
	var a api.Attestation
	if err := getJSON(ctx, hc, strings.TrimSuffix(url, "/")+"/v1/attest?nonce="+hex.EncodeToString(nonce), &a); err != nil {
		return nil, nil, fmt.Errorf("fetching the orchestrator's evidence: %w", err)
	}
	if a.Evidence == nil || a.Identity == nil {
		return nil, nil, errors.New("the orchestrator's answer has no evidence or identity")
	}
	if err := a.Identity.Validate(); err != nil {
		return nil, nil, fmt.Errorf("orchestrator identity: %w", err)
	}
	if a.Identity.Role != party.RoleOrchestrator {
		return nil, nil, &attest.Refusal{Rule: "verify.role", Reason: fmt.Sprintf("the identity has role %s, not orchestrator", a.Identity.Role)}
	}
	if a.Genesis.Digest() != a.GenesisDigest {
		return nil, nil, &attest.Refusal{Rule: "verify.genesis", Reason: "the genesis configuration does not match its digest"}
	}
	spki, err := hex.DecodeString(a.TLSKeySHA256)
	if err != nil || len(spki) != 32 {
		return nil, nil, &attest.Refusal{Rule: "verify.tls", Reason: "the TLS key hash is not 32 bytes of hex"}
	}
	if opts.HTTPClient == nil && !bytes.Equal(seen[:], spki) {
		return nil, nil, &attest.Refusal{Rule: "verify.tls", Reason: "the TLS key of this connection is not the one the evidence binds (a man in the middle?)"}
	}
	v := opts.Verifiers[a.Evidence.Type]
	if v == nil {
		return nil, nil, &attest.Refusal{Rule: "attest.tee", Reason: fmt.Sprintf("no verifier for TEE type %q", a.Evidence.Type)}
	}
	claims, err := v.Verify(ctx, a.Evidence, api.ReportData(nonce, a.Identity, [32]byte(spki), a.GenesisDigest))
	if err != nil {
		return nil, nil, err
	}
	rv := attest.ReferenceValues{AllowSim: opts.AllowSim, Measurements: map[attest.TEE][]string{}}
	if opts.Reference != nil {
		rv = *opts.Reference
	} else if opts.Measurement != "" {
		rv.Measurements[claims.TEE] = []string{strings.ToLower(opts.Measurement)}
	} else if opts.AllowSim && claims.TEE == attest.TEESim {
		rv.Measurements[claims.TEE] = []string{hex.EncodeToString(claims.Measurement)}
	} else {
		return nil, nil, &attest.Refusal{Rule: "verify.measurement", Reason: "no expected measurement given: pass the release's measurement (or --allow-sim for development)"}
	}
	if err := attest.Validate(claims, &rv); err != nil {
		return nil, nil, err
	}
	return &Trust{URL: strings.TrimSuffix(url, "/"), Identity: a.Identity, TLSKeySHA256: a.TLSKeySHA256, GenesisDigest: a.GenesisDigest,
		LogKey: a.LogKey, TEE: claims.TEE, Measurement: hex.EncodeToString(claims.Measurement), VerifiedAt: time.Now().UTC()}, claims, nil
}

// Save writes the trust file (mode 0600).
func (t *Trust) Save(path string) error {
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// LoadTrust reads a trust file written by Save.
func LoadTrust(path string) (*Trust, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no trust file at %s: run 'sealflow verify --orchestrator URL' first; no command talks to an orchestrator it has not verified", path)
	}
	if err != nil {
		return nil, err
	}
	var t Trust
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("trust file %s: %w", path, err)
	}
	if t.Identity == nil || t.TLSKeySHA256 == "" || t.URL == "" {
		return nil, fmt.Errorf("trust file %s is incomplete: verify the orchestrator again", path)
	}
	return &t, nil
}

// Client talks to a verified orchestrator over TLS pinned to the key its
// evidence bound.
type Client struct {
	Trust *Trust
	HTTP  *http.Client
}

// New returns a client for a verified orchestrator. Every connection must
// present the pinned TLS key.
func New(t *Trust) *Client {
	want := t.TLSKeySHA256
	hc := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		InsecureSkipVerify: true, // replaced by the pin below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("no certificate")
			}
			c, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			got := sha256.Sum256(c.RawSubjectPublicKeyInfo)
			if hex.EncodeToString(got[:]) != want {
				return fmt.Errorf("the orchestrator's TLS key %x is not the pinned one: it is not the orchestrator you verified", got[:8])
			}
			return nil
		}}}}
	return &Client{Trust: t, HTTP: hc}
}

// Get fetches a JSON resource of the API into v.
func (c *Client) Get(ctx context.Context, path string, v any) error {
	return getJSON(ctx, c.HTTP, c.Trust.URL+path, v)
}

// GetRaw fetches a resource as bytes.
func (c *Client) GetRaw(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Trust.URL+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, apiError(resp.StatusCode, b)
	}
	return b, nil
}

// RefusedError is a statement the orchestrator refused.
type RefusedError struct {
	Rule    string
	Message string
}

// Error implements error.
func (e *RefusedError) Error() string { return e.Message }

// RefusedBy names the rule that refused.
func (e *RefusedError) RefusedBy() string { return e.Rule }

// Submit signs and sends a statement; a refusal is a *RefusedError. The
// response's receipt is checked against the pinned orchestrator key.
func (c *Client) Submit(ctx context.Context, kf *party.KeyFile, typ string, body any) (*api.Response, error) {
	signed, err := party.Sign(kf, typ, body, 5*time.Minute, time.Now())
	if err != nil {
		return nil, err
	}
	return c.SubmitSigned(ctx, signed)
}

// SubmitSigned sends an already signed statement.
func (c *Client) SubmitSigned(ctx context.Context, signed []byte) (*api.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.Trust.URL+"/v1/statements", bytes.NewReader(signed))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("sending statement to the orchestrator: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	var r api.Response
	if err := json.Unmarshal(b, &r); err != nil || (r.Type == "" && r.Error == "" && !r.OK) {
		return nil, apiError(resp.StatusCode, b)
	}
	if len(r.Receipt) > 0 {
		if _, err := party.Verify(r.Receipt, party.Directory{c.Trust.Identity.ID(): c.Trust.Identity}.Lookup, time.Now()); err != nil {
			return nil, fmt.Errorf("the orchestrator's receipt does not verify against the pinned key: %w", err)
		}
	} else if resp.StatusCode == http.StatusOK {
		return nil, errors.New("the orchestrator sent no signed receipt")
	}
	if !r.OK {
		return &r, &RefusedError{Rule: r.Rule, Message: r.Error}
	}
	return &r, nil
}

func getJSON(ctx context.Context, hc *http.Client, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return apiError(resp.StatusCode, b)
	}
	return json.Unmarshal(b, v)
}

func apiError(code int, body []byte) error {
	var e api.APIError
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		if e.Rule != "" {
			return &RefusedError{Rule: e.Rule, Message: e.Error}
		}
		return fmt.Errorf("orchestrator answered %d: %s", code, e.Error)
	}
	return fmt.Errorf("orchestrator answered %d: %.200s", code, body)
}

// remarshal converts a decoded JSON value (a map) into v.
func remarshal(from, v any) error {
	b, err := json.Marshal(from)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
