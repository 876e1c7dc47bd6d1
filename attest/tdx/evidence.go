// Package tdx issues and verifies Intel TDX attestation evidence with
// github.com/google/go-tdx-guest.
//
// # Evidence format
//
// attest.Evidence.Blob for Type attest.TEETDX is the raw TDX quote, version 4,
// exactly as the quoting enclave returns it (configfs-tsm outblob): header, TD
// quote body, and the ECDSA signature data whose certification data carries the
// QE report and the PCK certificate chain (PCK leaf, PCK platform/processor CA,
// Intel SGX Root CA). The verifier never trusts the root carried in the quote:
// it checks the chain against the Intel SGX Root CA (the certificate that
// go-tdx-guest embeds, copied in intel_sgx_root_ca.pem) or roots the caller
// configures.
//
// # Collateral
//
// Intel's collateral (TCB info, QE identity, PCK and root CA CRLs) is read from
// files (see LoadCollateral) and never fetched. Without collateral the verifier
// still checks the PCK chain, the QE report signature, the binding of the
// attestation key and the quote signature, and it names the collateral checks it
// skipped in Claims.Extra["skipped"].
//
// # Checks
//
// Verifier.Verify runs its checks in a fixed order and returns the first failure
// as a *attest.Refusal naming the rule (see the Rule constants). Identity checks
// an operator can act on (report data, MRTD, RTMRs) run before the signatures,
// so that a replayed quote or a wrong build is named as such and not as a bad
// signature; every check must pass, so the order changes only which reason is
// reported.
package tdx

import (
	"bytes"
	"crypto/x509"
	_ "embed"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"

	"github.com/sealflow/sealflow/attest"
)

// IntelRootCAPEM is the Intel SGX Root CA certificate that TDX PCK chains end
// in (the same certificate go-tdx-guest embeds in verify/trusted_root.pem).
//
//go:embed intel_sgx_root_ca.pem
var IntelRootCAPEM []byte

// maxQuoteSize bounds the quotes a verifier decodes; a v4 quote with its PCK
// chain is about 5 KiB.
const maxQuoteSize = 64 << 10

// NewEvidence wraps a raw v4 quote as TDX evidence after checking that it
// decodes.
func NewEvidence(rawQuote []byte) (*attest.Evidence, error) {
	if _, _, err := Decode(rawQuote); err != nil {
		return nil, err
	}
	return &attest.Evidence{Type: attest.TEETDX, Blob: bytes.Clone(rawQuote)}, nil
}

// Chain is the PCK certificate chain a quote carries, unverified.
type Chain struct {
	PCK          *x509.Certificate // the platform's PCK leaf certificate
	Intermediate *x509.Certificate // the PCK platform or processor CA
	Root         *x509.Certificate // the root the quote claims (checked against trusted roots, never trusted itself)
}

// Decode parses a raw v4 TDX quote and the PCK certificate chain in its
// certification data. It verifies nothing: see Verifier.
func Decode(raw []byte) (*pb.QuoteV4, *Chain, error) {
	if len(raw) == 0 {
		return nil, nil, errors.New("tdx: the quote is empty")
	}
	if len(raw) > maxQuoteSize {
		return nil, nil, fmt.Errorf("tdx: the quote is %d bytes, more than the %d a v4 quote needs", len(raw), maxQuoteSize)
	}
	q, err := abi.QuoteToProto(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("tdx: the %d bytes are not a TDX quote: %w", len(raw), err)
	}
	q4, ok := q.(*pb.QuoteV4)
	if !ok {
		return nil, nil, fmt.Errorf("tdx: quote format %T is not supported; sealflow verifies version 4 quotes", q)
	}
	if err := abi.CheckQuoteV4(q4); err != nil {
		return nil, nil, fmt.Errorf("tdx: the v4 quote is malformed: %w", err)
	}
	if q4.GetHeader().GetTeeType() != abi.TeeTDX {
		return nil, nil, fmt.Errorf("tdx: the quote's TEE type is %#x, not TDX (%#x)", q4.GetHeader().GetTeeType(), abi.TeeTDX)
	}
	chain, err := decodeChain(q4.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetPckCertificateChainData().GetPckCertChain())
	if err != nil {
		return nil, nil, err
	}
	return q4, chain, nil
}

func decodeChain(b []byte) (*Chain, error) {
	if len(b) == 0 {
		return nil, errors.New("tdx: the quote carries no PCK certificate chain (certification data type 5 is required)")
	}
	var certs []*x509.Certificate
	rest := b
	for len(certs) < 3 {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("tdx: the PCK chain holds a %q PEM block, expected CERTIFICATE", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("tdx: certificate %d of the PCK chain does not parse: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) != 3 {
		return nil, fmt.Errorf("tdx: the PCK chain holds %d certificates, expected 3 (PCK, intermediate CA, root CA)", len(certs))
	}
	if len(bytes.Trim(rest, "\x00\n")) != 0 {
		return nil, fmt.Errorf("tdx: %d unexpected bytes follow the PCK chain", len(rest))
	}
	return &Chain{PCK: certs[0], Intermediate: certs[1], Root: certs[2]}, nil
}
