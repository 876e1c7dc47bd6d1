package tdx

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// The files LoadCollateral reads from a collateral directory. Each is what
// Intel's PCS (or a PCCS cache) serves; the issuer chains are the values of the
// response headers, URL-decoded, as PEM (signing certificate first, then root).
const (
	FileTCBInfo            = "tcb_info.json"                // GET /tdx/certification/v4/tcb?fmspc=FMSPC (body)
	FileTCBInfoChain       = "tcb_info_issuer_chain.pem"    // its TCB-Info-Issuer-Chain header
	FileQEIdentity         = "qe_identity.json"             // GET /tdx/certification/v4/qe/identity (body)
	FileQEIdentityChain    = "qe_identity_issuer_chain.pem" // its SGX-Enclave-Identity-Issuer-Chain header
	FilePCKCRL             = "pck_crl.der"                  // GET /sgx/certification/v4/pckcrl?ca=platform|processor&encoding=der
	FilePCKCRLChain        = "pck_crl_issuer_chain.pem"     // its SGX-PCK-CRL-Issuer-Chain header
	FileRootCACRL          = "root_ca_crl.der"              // https://certificates.trustedservices.intel.com/IntelSGXRootCA.der
	maxCollateralFileBytes = 1 << 20
)

// Collateral is Intel's collateral for verifying a quote, read from files.
// A nil *Collateral means none: the collateral checks are skipped and named.
type Collateral struct {
	TCBInfo, TCBInfoChain       []byte
	QEIdentity, QEIdentityChain []byte
	// The CRLs are optional; without them revocation is not checked.
	PCKCRL, PCKCRLChain, RootCACRL []byte
}

// LoadCollateral reads collateral from dir (see the File constants).
// tcb_info.json and qe_identity.json with their issuer chains are required;
// the three CRL files are optional but go together.
func LoadCollateral(dir string) (*Collateral, error) {
	c := &Collateral{}
	for _, f := range []struct {
		name     string
		dst      *[]byte
		required bool
	}{
		{FileTCBInfo, &c.TCBInfo, true}, {FileTCBInfoChain, &c.TCBInfoChain, true},
		{FileQEIdentity, &c.QEIdentity, true}, {FileQEIdentityChain, &c.QEIdentityChain, true},
		{FilePCKCRL, &c.PCKCRL, false}, {FilePCKCRLChain, &c.PCKCRLChain, false}, {FileRootCACRL, &c.RootCACRL, false},
	} {
		p := filepath.Join(dir, f.name)
		b, err := readLimited(p)
		if errors.Is(err, fs.ErrNotExist) && !f.required {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("tdx: collateral directory %s: %w", dir, err)
		}
		*f.dst = b
	}
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("tdx: collateral directory %s: %w", dir, err)
	}
	return c, nil
}

func readLimited(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Size() > maxCollateralFileBytes {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d collateral needs", path, st.Size(), maxCollateralFileBytes)
	}
	return os.ReadFile(path)
}

// check parses what it can so that a malformed file is named before
// verification.
func (c *Collateral) check() error {
	for name, b := range map[string][]byte{FileTCBInfo: c.TCBInfo, FileQEIdentity: c.QEIdentity} {
		var v map[string]json.RawMessage
		if err := json.Unmarshal(b, &v); err != nil {
			return fmt.Errorf("%s is not JSON: %w", name, err)
		}
	}
	for name, b := range map[string][]byte{FileTCBInfoChain: c.TCBInfoChain, FileQEIdentityChain: c.QEIdentityChain, FilePCKCRLChain: c.PCKCRLChain} {
		if name == FilePCKCRLChain && len(b) == 0 {
			continue
		}
		if err := checkChainPEM(b); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	n := 0
	for _, b := range [][]byte{c.PCKCRL, c.PCKCRLChain, c.RootCACRL} {
		if len(b) > 0 {
			n++
		}
	}
	if n != 0 && n != 3 {
		return fmt.Errorf("revocation needs all of %s, %s and %s; only some are present", FilePCKCRL, FilePCKCRLChain, FileRootCACRL)
	}
	for name, b := range map[string][]byte{FilePCKCRL: c.PCKCRL, FileRootCACRL: c.RootCACRL} {
		if len(b) == 0 {
			continue
		}
		if _, err := x509.ParseRevocationList(b); err != nil {
			return fmt.Errorf("%s is not a DER CRL: %w", name, err)
		}
	}
	return nil
}

func checkChainPEM(b []byte) error {
	n := 0
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %w", n+1, err)
		}
		n++
	}
	if n != 2 {
		return fmt.Errorf("holds %d PEM certificates, expected 2 (signing certificate, then root)", n)
	}
	return nil
}

// revocation reports whether the CRLs are present.
func (c *Collateral) revocation() bool { return c != nil && len(c.PCKCRL) > 0 }

// getter serves the collateral to go-tdx-guest as if it came from Intel PCS,
// and refuses every other URL: verification stays offline.
type getter struct{ c *Collateral }

func header(name string, chain []byte) map[string][]string {
	return map[string][]string{name: {url.QueryEscape(string(chain))}}
}

// Get implements go-tdx-guest's trust.HTTPSGetter.
func (g getter) Get(u string) (map[string][]string, []byte, error) {
	switch {
	case strings.Contains(u, "/tcb?fmspc="):
		return header("Tcb-Info-Issuer-Chain", g.c.TCBInfoChain), g.c.TCBInfo, nil
	case strings.Contains(u, "/qe/identity"):
		return header("Sgx-Enclave-Identity-Issuer-Chain", g.c.QEIdentityChain), g.c.QEIdentity, nil
	case strings.Contains(u, "/pckcrl?") && len(g.c.PCKCRL) > 0:
		return header("Sgx-Pck-Crl-Issuer-Chain", g.c.PCKCRLChain), g.c.PCKCRL, nil
	case strings.HasSuffix(u, ".der") && strings.Contains(u, "RootCA") && len(g.c.RootCACRL) > 0:
		return nil, g.c.RootCACRL, nil
	}
	return nil, nil, fmt.Errorf("tdx: verification is offline; no collateral file serves %s", u)
}
