package main

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/attest/refvalues"
	"github.com/sealflow/sealflow/attest/snp"
	"github.com/sealflow/sealflow/attest/tdx"
)

func init() {
	register("attest verify", "verify SEV-SNP or TDX evidence offline and print its claims or the check that failed", runAttestVerify)
	register("attest refvalues keygen", "generate a release signer's Ed25519 key for reference-values files", runRefvaluesKeygen)
	register("attest refvalues sign", "sign reference values (measurements, minimum SVNs) for a release", runRefvaluesSign)
}

// runRefvaluesKeygen implements `sealflow attest refvalues keygen --out FILE`:
// the file holds the base64 Ed25519 seed (mode 0600); the public key, which
// verifiers pass as --signer, is printed.
func runRefvaluesKeygen(ctx context.Context, args []string) error {
	fs := newFlags("attest refvalues keygen")
	out := fs.String("out", "", "the key file to create (mode 0600); an existing file is never overwritten")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() > 0 {
		return fmt.Errorf("%w: --out FILE is required and nothing else", errUsage)
	}
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating the key file (an existing file is never overwritten): %w", err)
	}
	if _, err := fmt.Fprintln(f, base64.StdEncoding.EncodeToString(priv.Seed())); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stdout, "wrote %s\nsigner: %s\n", *out, base64.StdEncoding.EncodeToString(pub))
	return nil
}

// runRefvaluesSign implements `sealflow attest refvalues sign --values FILE
// --release NAME --key FILE --out FILE`: the values file is the JSON of
// attest.ReferenceValues.
func runRefvaluesSign(ctx context.Context, args []string) error {
	fs := newFlags("attest refvalues sign")
	valuesPath := fs.String("values", "", `the reference values as JSON: {"measurements": {"snp": ["HEX"], "tdx": ["HEX"]}, "min_svn": {"snp": 8}, "allow_debug": false, "allow_sim": false}`)
	release := fs.String("release", "", "the release the values are for, e.g. v1.2.0")
	keyPath := fs.String("key", "", "the release signer's key file (from attest refvalues keygen)")
	out := fs.String("out", "", "the signed file to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *valuesPath == "" || *release == "" || *keyPath == "" || *out == "" || fs.NArg() > 0 {
		return fmt.Errorf("%w: --values, --release, --key and --out are required", errUsage)
	}
	kb, err := os.ReadFile(*keyPath)
	if err != nil {
		return err
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(kb)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return fmt.Errorf("%s is not a release signer key (base64 of a %d-byte Ed25519 seed)", *keyPath, ed25519.SeedSize)
	}
	vb, err := os.ReadFile(*valuesPath)
	if err != nil {
		return err
	}
	var rv attest.ReferenceValues
	dec := json.NewDecoder(strings.NewReader(string(vb)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rv); err != nil {
		return fmt.Errorf("%s: not reference values JSON: %w", *valuesPath, err)
	}
	data, err := refvalues.Sign(&refvalues.File{Release: *release, IssuedAt: time.Now().UTC().Truncate(time.Second), Values: rv}, ed25519.NewKeyFromSeed(seed))
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, data, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stdout, "wrote %s (release %s)\n", *out, *release)
	return nil
}

// multiFlag collects a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

// attestResult is the --json output of attest verify.
type attestResult struct {
	Verified bool           `json:"verified"`
	Rule     string         `json:"rule,omitempty"`
	Reason   string         `json:"reason,omitempty"`
	Claims   *attest.Claims `json:"claims,omitempty"`
	// ReportDataChecked is false when no --report-data was given: the claims
	// then show the report data the evidence carries, bound to nothing.
	ReportDataChecked bool   `json:"report_data_checked"`
	VerifiedAt        string `json:"verified_at"`
	Release           string `json:"release,omitempty"`
}

// runAttestVerify implements `sealflow attest verify --evidence FILE
// [--type snp|tdx] [--collateral DIR] [--at TIME] [--report-data HEX] [--json]
// [--allow-debug] [--measurement HEX]... [--refvalues FILE --signer KEY...]
// [--vcek FILE --ask-ark FILE]`.
func runAttestVerify(ctx context.Context, args []string) error {
	fs := newFlags("attest verify")
	evPath := fs.String("evidence", "", "the evidence file: sealflow evidence JSON {\"type\",\"blob\"}, a raw TDX v4 quote, a binary sevsnp.Attestation, or a raw 1184-byte SEV-SNP report (with --vcek)")
	typ := fs.String("type", "", "the evidence type, snp or tdx (detected when omitted)")
	collDir := fs.String("collateral", "", "tdx: a directory of Intel collateral (tcb_info.json, qe_identity.json, their *_issuer_chain.pem, optional pck_crl.der, pck_crl_issuer_chain.pem, root_ca_crl.der); without it the collateral checks are skipped and listed")
	at := fs.String("at", "", "verify as of this time (RFC 3339, e.g. 2024-01-01T00:00:00Z) instead of now, for archived evidence")
	rdHex := fs.String("report-data", "", "the expected report data in hex (up to 64 bytes, zero-padded on the right); when omitted the evidence's report data is shown but not checked")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	allowDebug := fs.Bool("allow-debug", false, "accept a debuggable guest (go-sev-guest's sample is one)")
	var measurements, signers multiFlag
	fs.Var(&measurements, "measurement", "an accepted measurement (SNP MEASUREMENT or TDX MRTD) in hex; repeatable")
	rvPath := fs.String("refvalues", "", "a signed reference-values file to validate the claims against (needs --signer)")
	fs.Var(&signers, "signer", "a trusted release signer's Ed25519 public key (base64 or hex); repeatable")
	vcekPath := fs.String("vcek", "", "snp: a VCEK certificate (DER or PEM) to add to a raw report")
	askArkPath := fs.String("ask-ark", "", "snp: the product line's ASK and ARK (KDS cert_chain PEM) to add to a raw report")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	if *evPath == "" {
		return fmt.Errorf("%w: --evidence is required", errUsage)
	}
	when := time.Now()
	if *at != "" {
		t, err := time.Parse(time.RFC3339, *at)
		if err != nil {
			return fmt.Errorf("%w: --at %q is not an RFC 3339 time (2024-01-01T00:00:00Z): %v", errUsage, *at, err)
		}
		when = t
	}
	var rd [64]byte
	rdChecked := *rdHex != ""
	if rdChecked {
		b, err := hex.DecodeString(*rdHex)
		if err != nil || len(b) > 64 {
			return fmt.Errorf("%w: --report-data must be at most 64 bytes of hex, got %q", errUsage, *rdHex)
		}
		copy(rd[:], b)
	}
	var ms [][]byte
	for _, m := range measurements {
		b, err := hex.DecodeString(m)
		if err != nil || len(b) != 48 {
			return fmt.Errorf("%w: --measurement %q is not 48 bytes of hex", errUsage, m)
		}
		ms = append(ms, b)
	}
	var rvFile *refvalues.File
	if *rvPath != "" {
		keys, err := parseSigners(signers)
		if err != nil {
			return err
		}
		rvFile, err = refvalues.LoadFile(*rvPath, keys)
		if err != nil {
			return err
		}
	} else if len(signers) > 0 {
		return fmt.Errorf("%w: --signer is only used with --refvalues", errUsage)
	}

	raw, err := os.ReadFile(*evPath)
	if err != nil {
		return err
	}
	ev, err := readEvidence(raw, attest.TEE(*typ), *vcekPath, *askArkPath)
	if err != nil {
		return fmt.Errorf("%s: %w", *evPath, err)
	}
	if !rdChecked {
		if rd, err = evidenceReportData(ev); err != nil {
			return fmt.Errorf("%s: %w", *evPath, err)
		}
	}
	if rvFile != nil {
		*allowDebug = *allowDebug || rvFile.Values.AllowDebug
		for _, m := range rvFile.Values.Measurements[ev.Type] {
			b, _ := hex.DecodeString(m) // refvalues checked the format
			ms = append(ms, b)
		}
	}

	var v attest.Verifier
	switch ev.Type {
	case attest.TEESNP:
		if *collDir != "" {
			return fmt.Errorf("%w: --collateral is for tdx evidence; SNP evidence carries its certificates", errUsage)
		}
		v = snp.NewVerifier(snp.Options{At: when, AllowDebug: *allowDebug, Measurements: ms})
	case attest.TEETDX:
		opts := tdx.Options{At: when, AllowDebug: *allowDebug, Measurements: ms}
		if rvFile != nil {
			for idx, vs := range rvFile.TDXRTMRs {
				for _, h := range vs {
					b, _ := hex.DecodeString(h) // refvalues checked the format
					opts.RTMRs[idx] = append(opts.RTMRs[idx], b)
				}
			}
		}
		if *collDir != "" {
			if opts.Collateral, err = tdx.LoadCollateral(*collDir); err != nil {
				return err
			}
		}
		if v, err = tdx.NewVerifier(opts); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: evidence type %q: attest verify handles snp and tdx", errUsage, ev.Type)
	}
	res := attestResult{ReportDataChecked: rdChecked, VerifiedAt: when.UTC().Format(time.RFC3339)}
	c, err := v.Verify(ctx, ev, rd)
	if err == nil && rvFile != nil {
		res.Release = rvFile.Release
		err = attest.Validate(c, &rvFile.Values)
	}
	if err != nil {
		var r *attest.Refusal
		if errors.As(err, &r) {
			res.Rule, res.Reason = r.Rule, r.Reason
		}
		if *asJSON {
			printJSON(os.Stdout, res)
		}
		return err
	}
	res.Verified, res.Claims = true, c
	if *asJSON {
		return printJSON(os.Stdout, res)
	}
	printClaims(os.Stdout, res)
	return nil
}

func parseSigners(in []string) ([]ed25519.PublicKey, error) {
	if len(in) == 0 {
		return nil, fmt.Errorf("%w: --refvalues needs at least one --signer", errUsage)
	}
	var keys []ed25519.PublicKey
	for _, s := range in {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(b) != ed25519.PublicKeySize {
			b, err = hex.DecodeString(s)
		}
		if err != nil || len(b) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("%w: --signer %q is not a 32-byte Ed25519 public key in base64 or hex", errUsage, s)
		}
		keys = append(keys, ed25519.PublicKey(b))
	}
	return keys, nil
}

// readEvidence recognises the evidence encodings attest verify accepts.
func readEvidence(raw []byte, typ attest.TEE, vcekPath, askArkPath string) (*attest.Evidence, error) {
	var ev attest.Evidence
	if len(raw) > 0 && raw[0] == '{' {
		if err := json.Unmarshal(raw, &ev); err != nil {
			return nil, fmt.Errorf("not sealflow evidence JSON: %w", err)
		}
		if typ != "" && typ != ev.Type {
			return nil, fmt.Errorf("the evidence says type %q, --type says %q", ev.Type, typ)
		}
		return &ev, nil
	}
	if typ == "" {
		switch {
		case len(raw) >= 8 && binary.LittleEndian.Uint16(raw) == 4 && binary.LittleEndian.Uint32(raw[4:]) == 0x81:
			typ = attest.TEETDX
		default:
			typ = attest.TEESNP
		}
	}
	switch typ {
	case attest.TEETDX:
		return tdx.NewEvidence(raw)
	case attest.TEESNP:
		var e *attest.Evidence
		if len(raw) == abi.ReportSize {
			var err error
			if e, err = snp.NewEvidence(raw, nil); err != nil {
				return nil, err
			}
		} else {
			if _, err := snp.Decode(raw); err != nil {
				return nil, err
			}
			e = &attest.Evidence{Type: attest.TEESNP, Blob: raw}
		}
		var certs snp.Certificates
		if vcekPath != "" {
			b, err := os.ReadFile(vcekPath)
			if err != nil {
				return nil, err
			}
			certs.VCEK = b
		}
		if askArkPath != "" {
			b, err := os.ReadFile(askArkPath)
			if err != nil {
				return nil, err
			}
			if certs.ASK, certs.ARK, err = kds.ParseProductCertChain(b); err != nil {
				return nil, fmt.Errorf("--ask-ark %s: %w", askArkPath, err)
			}
		}
		if vcekPath == "" && askArkPath == "" {
			return e, nil
		}
		return snp.AddCertificates(e, certs)
	}
	return nil, fmt.Errorf("--type %q: want snp or tdx", typ)
}

// evidenceReportData reads the report data the evidence carries, unverified.
func evidenceReportData(ev *attest.Evidence) ([64]byte, error) {
	var rd [64]byte
	switch ev.Type {
	case attest.TEESNP:
		a, err := snp.Decode(ev.Blob)
		if err != nil {
			return rd, err
		}
		copy(rd[:], a.GetReport().GetReportData())
	case attest.TEETDX:
		q, _, err := tdx.Decode(ev.Blob)
		if err != nil {
			return rd, err
		}
		copy(rd[:], q.GetTdQuoteBody().GetReportData())
	}
	return rd, nil
}

func printJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func printClaims(w io.Writer, res attestResult) {
	c := res.Claims
	fmt.Fprintf(w, "verified %s evidence as of %s\n", c.TEE, res.VerifiedAt)
	if res.Release != "" {
		fmt.Fprintf(w, "accepted by the reference values of release %s\n", res.Release)
	}
	fmt.Fprintf(w, "%-15s %x\n", "measurement:", c.Measurement)
	fmt.Fprintf(w, "%-15s %d\n", "svn:", c.SVN)
	names := make([]string, 0, len(c.TCB))
	for k := range c.TCB {
		names = append(names, k)
	}
	sort.Strings(names)
	var tcb []string
	for _, k := range names {
		tcb = append(tcb, fmt.Sprintf("%s=%d", k, c.TCB[k]))
	}
	fmt.Fprintf(w, "%-15s %s\n", "tcb:", strings.Join(tcb, " "))
	fmt.Fprintf(w, "%-15s %v\n", "debug:", c.Debug)
	fmt.Fprintf(w, "%-15s %x\n", "platform id:", c.PlatformID)
	note := ""
	if !res.ReportDataChecked {
		note = " (not checked: pass --report-data to require it)"
	}
	fmt.Fprintf(w, "%-15s %x%s\n", "report data:", c.ReportData, note)
	names = names[:0]
	for k := range c.Extra {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(w, "%-15s %s\n", k+":", c.Extra[k])
	}
}
