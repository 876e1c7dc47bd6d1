package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/attest/refvalues"
	"github.com/sealflow/sealflow/attest/sim"
	"github.com/sealflow/sealflow/attest/snp"
	"github.com/sealflow/sealflow/attest/tdx"
	"github.com/sealflow/sealflow/client"
)

func init() {
	register("verify", "verify an orchestrator's attestation evidence and pin its keys in the trust file", runVerify)
}

// verifyResult is what `sealflow verify --json` prints.
type verifyResult struct {
	TrustFile string         `json:"trust_file"`
	Trust     *client.Trust  `json:"trust"`
	Claims    *attest.Claims `json:"claims"`
}

// runVerify implements `sealflow verify --orchestrator URL [--measurement HEX
// | --allow-sim] [--sim-dir DIR] [--trust FILE] [--json]`.
func runVerify(ctx context.Context, args []string) error {
	fs := newFlags("verify")
	pf := addPartyFlags(fs)
	url := fs.String("orchestrator", "", "the orchestrator's HTTPS URL")
	meas := fs.String("measurement", "", "the orchestrator release's measurement (hex); the only one accepted")
	allowSim := fs.Bool("allow-sim", false, "accept sim evidence (development only: it protects nothing)")
	simDir := fs.String("sim-dir", "", "the sim platform directory whose root certifies sim evidence (the orchestrator's DIR/sim)")
	refFile := fs.String("refvalues", "", "a signed reference-values file of orchestrator releases (attest refvalues sign): accept what it accepts")
	var signers multiFlag
	fs.Var(&signers, "signer", "a release signer's Ed25519 public key (base64 or hex) trusted for --refvalues; repeatable")
	if err := parseParty(fs, args, 0); err != nil {
		return err
	}
	var ref *attest.ReferenceValues
	if *refFile != "" {
		keys, err := parseSigners(signers)
		if err != nil {
			return err
		}
		if ref, err = refvalues.Load(*refFile, keys); err != nil {
			return fmt.Errorf("--refvalues %s: %w", *refFile, err)
		}
		*allowSim = *allowSim || ref.AllowSim
	}
	if *url == "" {
		return fmt.Errorf("%w: --orchestrator URL is required", errUsage)
	}
	if *meas == "" && !*allowSim && ref == nil {
		return fmt.Errorf("%w: give the expected --measurement HEX of the orchestrator release (or --allow-sim for development)", errUsage)
	}
	var ms [][]byte
	if *meas != "" {
		b, err := hex.DecodeString(*meas)
		if err != nil || (len(b) != 48 && len(b) != 32) {
			return fmt.Errorf("%w: --measurement %q: want 48 (or 32) bytes of hex", errUsage, *meas)
		}
		ms = append(ms, b)
	}
	verifiers := map[attest.TEE]attest.Verifier{
		attest.TEESNP: snp.NewVerifier(snp.Options{Measurements: ms}),
	}
	if v, err := tdx.NewVerifier(tdx.Options{Measurements: ms}); err == nil {
		verifiers[attest.TEETDX] = v
	}
	if *allowSim {
		v, err := simVerifier(*simDir)
		if err != nil {
			return err
		}
		verifiers[attest.TEESim] = v
	}
	tr, claims, err := client.Verify(ctx, *url, client.VerifyOptions{Measurement: *meas, AllowSim: *allowSim, Reference: ref, Verifiers: verifiers})
	if err != nil {
		return fmt.Errorf("orchestrator at %s not verified: %w", *url, err)
	}
	if err := tr.Save(pf.trust); err != nil {
		return fmt.Errorf("saving the trust file: %w", err)
	}
	return pf.emit(verifyResult{TrustFile: pf.trust, Trust: tr, Claims: claims}, func(w io.Writer) {
		fmt.Fprintf(w, "verified the orchestrator at %s\n", tr.URL)
		fmt.Fprintf(w, "%-15s %s\n", "tee:", claims.TEE)
		fmt.Fprintf(w, "%-15s %x\n", "measurement:", claims.Measurement)
		fmt.Fprintf(w, "%-15s %d\n", "svn:", claims.SVN)
		fmt.Fprintf(w, "%-15s %v\n", "debug:", claims.Debug)
		fmt.Fprintf(w, "%-15s %x\n", "platform id:", claims.PlatformID)
		fmt.Fprintf(w, "%-15s %s\n", "identity:", tr.Identity.ID())
		fmt.Fprintf(w, "%-15s %s\n", "genesis:", tr.GenesisDigest)
		fmt.Fprintf(w, "%-15s %s\n", "tls key:", tr.TLSKeySHA256)
		fmt.Fprintf(w, "%-15s %s\n", "log key:", tr.LogKey)
		fmt.Fprintf(w, "pinned in %s\n", pf.trust)
		if claims.TEE == attest.TEESim {
			fmt.Fprintln(w, "WARNING: sim evidence comes from software, not a TEE: use it for development only")
		}
	})
}

// simVerifier trusts the sim root of a platform directory without creating
// anything there.
func simVerifier(dir string) (attest.Verifier, error) {
	if dir == "" {
		dir = os.Getenv("SEALFLOW_SIM_DIR")
	}
	if dir == "" {
		return nil, fmt.Errorf("%w: --allow-sim needs --sim-dir DIR (the orchestrator's DIR/sim), whose root certifies sim evidence", errUsage)
	}
	if _, err := os.Stat(filepath.Join(dir, sim.RootFile)); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("--sim-dir %s holds no sim root (%s): give the orchestrator's DIR/sim", dir, sim.RootFile)
	}
	p, err := sim.LoadOrCreate(dir)
	if err != nil {
		return nil, err
	}
	return sim.NewVerifier(p.RootCertPEM())
}
