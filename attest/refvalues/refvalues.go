// Package refvalues reads and writes signed reference-values files: the
// measurements, minimum TCB versions and debug/sim switches a release of
// sealflow is accepted with, signed by a release signer with Ed25519. The
// orchestrator uses them to admit workers, and clients use them to accept the
// orchestrator.
//
// # File format
//
// A reference-values file is JSON:
//
//	{
//	  "payload":   "<base64 of the payload JSON>",
//	  "signer":    "<base64 of the signer's Ed25519 public key>",
//	  "signature": "<base64 Ed25519 signature>"
//	}
//
// The signature covers the domain label "sealflow reference values v1" and a
// zero byte followed by the exact payload bytes, so no JSON canonicalisation is
// needed. The payload is
//
//	{"release": "v1.2.0", "issued_at": "2026-11-25T23:00:00Z", "values": <attest.ReferenceValues>,
//	 "tdx_rtmrs": {"1": ["HEX"], "2": ["HEX"]}}
//
// Unknown fields in the payload are rejected, so a newer format is never read
// as an older one with a rule silently dropped.
package refvalues

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/sealflow/sealflow/attest"
)

// The rules Parse refuses by (attest.Refusal.Rule).
const (
	RuleSigner    = "refvalues.signer"    // the file is signed by a key that is not trusted
	RuleSignature = "refvalues.signature" // the signature does not verify
)

// domain separates these signatures from any other use of a release key.
const domain = "sealflow reference values v1\x00"

// MaxFileSize bounds the files Parse reads.
const MaxFileSize = 1 << 20

// File is the signed content of a reference-values file.
type File struct {
	// Release names the sealflow release the values are for ("v1.2.0").
	Release string `json:"release"`
	// IssuedAt is when the release signer signed the values.
	IssuedAt time.Time `json:"issued_at"`
	// Values are the accepted reference values.
	Values attest.ReferenceValues `json:"values"`
	// TDXRTMRs lists, per RTMR index (0 to 3), the accepted values (hex of 48
	// bytes). TDX's MRTD measures only the TD firmware; the kernel, initrd
	// and command line of a release are measured into RTMR1 and RTMR2, so a
	// release that runs on TDX lists them here.
	TDXRTMRs map[int][]string `json:"tdx_rtmrs,omitempty"`
}

type envelope struct {
	Payload   []byte `json:"payload"`
	Signer    []byte `json:"signer"`
	Signature []byte `json:"signature"`
}

// measurementSize is the launch-measurement length of each TEE: SHA-384 for
// sim, SEV-SNP MEASUREMENT and TDX MRTD.
var measurementSize = map[attest.TEE]int{attest.TEESim: 48, attest.TEESNP: 48, attest.TEETDX: 48}

// Check reports what is wrong with f's content: an empty release, an unknown
// TEE, a measurement that is not hex of the TEE's measurement size, or a
// platform id that is not hex.
func (f *File) Check() error {
	if f.Release == "" {
		return errors.New("refvalues: the release is empty")
	}
	if f.IssuedAt.IsZero() {
		return fmt.Errorf("refvalues: release %s has no issued_at time", f.Release)
	}
	for tee, ms := range f.Values.Measurements {
		size, ok := measurementSize[tee]
		if !ok {
			return fmt.Errorf("refvalues: release %s lists measurements for unknown TEE %q (known: sim, snp, tdx)", f.Release, tee)
		}
		for i, m := range ms {
			b, err := hex.DecodeString(m)
			if err != nil || len(b) != size {
				return fmt.Errorf("refvalues: release %s: %s measurement %d (%q) is not %d hex-encoded bytes", f.Release, tee, i, m, size)
			}
		}
	}
	for tee := range f.Values.MinSVN {
		if _, ok := measurementSize[tee]; !ok {
			return fmt.Errorf("refvalues: release %s sets a minimum SVN for unknown TEE %q", f.Release, tee)
		}
	}
	for idx, vs := range f.TDXRTMRs {
		if idx < 0 || idx > 3 {
			return fmt.Errorf("refvalues: release %s lists values for RTMR%d; TDX has RTMR0 to RTMR3", f.Release, idx)
		}
		for i, v := range vs {
			if b, err := hex.DecodeString(v); err != nil || len(b) != 48 {
				return fmt.Errorf("refvalues: release %s: RTMR%d value %d (%q) is not 48 hex-encoded bytes", f.Release, idx, i, v)
			}
		}
	}
	for i, p := range f.Values.PlatformIDs {
		if _, err := hex.DecodeString(p); err != nil || p == "" {
			return fmt.Errorf("refvalues: release %s: platform id %d (%q) is not hex", f.Release, i, p)
		}
	}
	return nil
}

// Sign checks f and returns the signed file bytes.
func Sign(f *File, key ed25519.PrivateKey) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("refvalues: the signing key is %d bytes, want an Ed25519 private key of %d", len(key), ed25519.PrivateKeySize)
	}
	if err := f.Check(); err != nil {
		return nil, err
	}
	payload, err := json.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("refvalues: encoding release %s: %w", f.Release, err)
	}
	env := envelope{
		Payload:   payload,
		Signer:    key.Public().(ed25519.PublicKey),
		Signature: ed25519.Sign(key, append([]byte(domain), payload...)),
	}
	out, err := json.MarshalIndent(env, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// Parse verifies a signed reference-values file against the trusted signer
// keys and returns its content. A file signed by an untrusted key or with a
// bad signature is refused with a *attest.Refusal (RuleSigner,
// RuleSignature); malformed content is an ordinary error.
func Parse(data []byte, trusted []ed25519.PublicKey) (*File, error) {
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("refvalues: the file is %d bytes, more than %d", len(data), MaxFileSize)
	}
	var env envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return nil, fmt.Errorf("refvalues: the file is not a signed reference-values envelope: %w", err)
	}
	if dec.More() {
		return nil, errors.New("refvalues: data follows the signed envelope")
	}
	if len(env.Signer) != ed25519.PublicKeySize || len(env.Signature) != ed25519.SignatureSize {
		return nil, fmt.Errorf("refvalues: signer (%d bytes) or signature (%d bytes) has the wrong size for Ed25519", len(env.Signer), len(env.Signature))
	}
	signer := ed25519.PublicKey(env.Signer)
	known := false
	for _, k := range trusted {
		if k.Equal(signer) {
			known = true
			break
		}
	}
	if !known {
		return nil, &attest.Refusal{Rule: RuleSigner, Reason: fmt.Sprintf("the file is signed by %s, which is not among the %d trusted release signers", base64.StdEncoding.EncodeToString(signer), len(trusted))}
	}
	if !ed25519.Verify(signer, append([]byte(domain), env.Payload...), env.Signature) {
		return nil, &attest.Refusal{Rule: RuleSignature, Reason: fmt.Sprintf("the signature by %s does not verify over the payload", base64.StdEncoding.EncodeToString(signer))}
	}
	var f File
	pdec := json.NewDecoder(bytes.NewReader(env.Payload))
	pdec.DisallowUnknownFields()
	if err := pdec.Decode(&f); err != nil {
		return nil, fmt.Errorf("refvalues: the signed payload does not decode: %w", err)
	}
	if _, err := pdec.Token(); err != io.EOF {
		return nil, errors.New("refvalues: data follows the signed payload")
	}
	if err := f.Check(); err != nil {
		return nil, err
	}
	return &f, nil
}

// LoadFile reads and verifies the reference-values file at path.
func LoadFile(path string, trusted []ed25519.PublicKey) (*File, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("refvalues: %w", err)
	}
	if st.Size() > MaxFileSize {
		return nil, fmt.Errorf("refvalues: %s is %d bytes, more than %d", path, st.Size(), MaxFileSize)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("refvalues: %w", err)
	}
	f, err := Parse(data, trusted)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Load reads and verifies the reference-values file at path and returns its
// reference values.
func Load(path string, trusted []ed25519.PublicKey) (*attest.ReferenceValues, error) {
	f, err := LoadFile(path, trusted)
	if err != nil {
		return nil, err
	}
	return &f.Values, nil
}
