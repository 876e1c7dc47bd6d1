package sim

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/sealflow/sealflow/attest"
)

// Verifier checks sim evidence against a fixed set of trusted simulated
// roots. It implements attest.Verifier and is safe for concurrent use.
type Verifier struct {
	roots *x509.CertPool
	n     int
}

// NewVerifier returns a Verifier that trusts only the root certificates in
// rootCertPEM (each argument may hold several PEM certificates, as returned
// by Platform.RootCertPEM). Every certificate must be a CA.
func NewVerifier(rootCertPEM ...[]byte) (*Verifier, error) {
	v := &Verifier{roots: x509.NewCertPool()}
	for i, data := range rootCertPEM {
		for {
			var b *pem.Block
			b, data = pem.Decode(data)
			if b == nil {
				break
			}
			if b.Type != pemCert {
				return nil, fmt.Errorf("sim: root %d: PEM block %q, want %q", i, b.Type, pemCert)
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("sim: root %d: %w", i, err)
			}
			if !c.IsCA {
				return nil, fmt.Errorf("sim: root %d (%s) is not a CA certificate", i, c.Subject)
			}
			v.roots.AddCert(c)
			v.n++
		}
		if len(bytes.TrimSpace(data)) != 0 {
			return nil, fmt.Errorf("sim: root %d: bytes that are not PEM", i)
		}
	}
	if v.n == 0 {
		return nil, errors.New("sim: NewVerifier: no root certificate given; pass Platform.RootCertPEM() of the platforms to trust")
	}
	return v, nil
}

func refuse(rule, format string, args ...any) error {
	return &attest.Refusal{Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

// Verify implements attest.Verifier. It decodes ev strictly, checks that the
// platform certificate chains to a trusted root, that the report is signed by
// that platform's key and names that platform, and that it binds exactly
// reportData. Refusals are *attest.Refusal naming attest.malformed,
// attest.root, attest.signature or attest.report-data.
func (v *Verifier) Verify(ctx context.Context, ev *attest.Evidence, reportData [64]byte) (*attest.Claims, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if ev == nil {
		return nil, malformed("no evidence")
	}
	if ev.Type != attest.TEESim {
		return nil, malformed("evidence type is %q, this verifier reads only %q", ev.Type, attest.TEESim)
	}
	a, err := Parse(ev.Blob)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(a.PlatformCert)
	if err != nil {
		return nil, malformed("platform certificate: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:     v.roots,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, refuse(attest.RuleRoot, "platform certificate %q does not chain to any of the %d trusted sim roots: %v", cert.Subject.CommonName, v.n, err)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P384() {
		return nil, refuse(attest.RuleSignature, "platform certificate %q has a %T key, want ECDSA P-384", cert.Subject.CommonName, cert.PublicKey)
	}
	r := &a.Report
	if id := platformID(cert); id != r.PlatformID {
		return nil, refuse(attest.RuleSignature, "report names platform %x but carries the certificate of platform %x", r.PlatformID[:8], id[:8])
	}
	d := r.Digest()
	if !ecdsa.VerifyASN1(pub, d[:], a.Signature) {
		return nil, refuse(attest.RuleSignature, "report signature does not verify under the key of platform %x", r.PlatformID[:8])
	}
	if r.ReportData != reportData {
		return nil, refuse(attest.RuleReportData, "evidence binds report data %x…, want %x…: it was issued for another nonce or other keys", r.ReportData[:8], reportData[:8])
	}
	return &attest.Claims{
		TEE:         attest.TEESim,
		Measurement: bytes.Clone(r.Measurement[:]),
		SVN:         r.SVN,
		TCB:         map[string]uint64{"svn": r.SVN},
		Debug:       r.Debug,
		PlatformID:  bytes.Clone(r.PlatformID[:]),
		ReportData:  r.ReportData,
		Extra:       map[string]string{"issued_at": r.IssuedTime().Format(time.RFC3339Nano)},
	}, nil
}
