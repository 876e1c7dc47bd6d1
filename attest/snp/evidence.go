// Package snp issues and verifies AMD SEV-SNP attestation evidence with
// github.com/google/go-sev-guest.
//
// # Evidence format
//
// attest.Evidence.Blob for Type attest.TEESNP is the binary protobuf encoding of
// go-sev-guest's sevsnp.Attestation message (proto/sevsnp/sevsnp.proto): the
// attestation report plus its certificate chain (VCEK or VLEK, and optionally the
// ASK/ARK that AMD's KDS serves). An AMD certificate revocation list may travel in
// CertificateChain.Extras under the key CRLExtraKey (DER). The verifier never
// trusts the ASK/ARK carried in the evidence: it checks the chain against the AMD
// roots that go-sev-guest embeds (or against roots the caller configures).
//
// # Checks
//
// Verifier.Verify runs its checks in a fixed order and returns the first failure
// as a *attest.Refusal naming the rule (see the Rule constants). Identity checks
// that an operator can act on (report data, measurement) run before the
// signature, so that a replayed report or a wrong build is named as such and not
// as a bad signature; every check must pass for the evidence to be accepted, so
// the order changes only which reason is reported.
package snp

import (
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify/trust"
	"google.golang.org/protobuf/proto"

	"github.com/sealflow/sealflow/attest"
)

// CRLExtraKey is the key under which an AMD CRL (DER) travels in the
// evidence's CertificateChain.Extras. It is a sealflow convention, not an AMD
// GUID; the certificate table AMD firmware returns never contains it.
const CRLExtraKey = "5ea1f10e-c7c1-4a6d-9d2b-0000000c0c71"

// maxEvidenceSize bounds the evidence a verifier decodes: a report (1184 bytes),
// four certificates and a CRL fit easily.
const maxEvidenceSize = 1 << 20

// NewEvidence builds SNP evidence from a raw attestation report (1184 bytes, as
// the firmware returns it) and a certificate table in AMD's GUID-table format
// (the configfs-tsm auxblob or the extended report's certificates). certTable
// may be nil when the certificates are added with AddCertificates.
func NewEvidence(rawReport, certTable []byte) (*attest.Evidence, error) {
	report, err := abi.ReportToProto(rawReport)
	if err != nil {
		return nil, fmt.Errorf("snp: parsing the %d-byte attestation report: %w", len(rawReport), err)
	}
	chain := &spb.CertificateChain{Extras: map[string][]byte{}}
	if len(certTable) > 0 {
		t := new(abi.CertTable)
		if err := t.Unmarshal(certTable); err != nil {
			return nil, fmt.Errorf("snp: parsing the %d-byte certificate table: %w", len(certTable), err)
		}
		chain = t.Proto()
	}
	return encode(&spb.Attestation{Report: report, CertificateChain: chain})
}

// Certificates are DER or PEM certificates to add to evidence: the endorsement
// key certificate (VCEK or VLEK), AMD's ASK and ARK, and an optional CRL.
type Certificates struct {
	VCEK, VLEK, ASK, ARK []byte
	// CRL is the DER revocation list of the product line (from KDS /crl).
	CRL []byte
}

// AddCertificates returns a copy of ev with the given certificates set where
// they are not empty.
func AddCertificates(ev *attest.Evidence, c Certificates) (*attest.Evidence, error) {
	a, err := Decode(ev.Blob)
	if err != nil {
		return nil, err
	}
	ch := a.GetCertificateChain()
	if ch == nil {
		ch = &spb.CertificateChain{}
		a.CertificateChain = ch
	}
	if ch.Extras == nil {
		ch.Extras = map[string][]byte{}
	}
	for _, s := range []struct {
		name string
		in   []byte
		out  *[]byte
	}{{"VCEK", c.VCEK, &ch.VcekCert}, {"VLEK", c.VLEK, &ch.VlekCert}, {"ASK", c.ASK, &ch.AskCert}, {"ARK", c.ARK, &ch.ArkCert}} {
		if len(s.in) == 0 {
			continue
		}
		cert, err := trust.ParseCert(s.in)
		if err != nil {
			return nil, fmt.Errorf("snp: the %s certificate: %w", s.name, err)
		}
		*s.out = cert.Raw
	}
	if len(c.CRL) > 0 {
		if _, err := x509.ParseRevocationList(c.CRL); err != nil {
			return nil, fmt.Errorf("snp: the CRL is not a DER revocation list: %w", err)
		}
		ch.Extras[CRLExtraKey] = c.CRL
	}
	return encode(a)
}

func encode(a *spb.Attestation) (*attest.Evidence, error) {
	blob, err := proto.Marshal(a)
	if err != nil {
		return nil, fmt.Errorf("snp: encoding the attestation: %w", err)
	}
	return &attest.Evidence{Type: attest.TEESNP, Blob: blob}, nil
}

// Decode parses an SNP evidence blob (a binary sevsnp.Attestation) and checks
// that it holds a well-formed report. It does not verify anything: see
// Verifier.
func Decode(blob []byte) (*spb.Attestation, error) {
	if len(blob) == 0 {
		return nil, errors.New("snp: the evidence blob is empty")
	}
	if len(blob) > maxEvidenceSize {
		return nil, fmt.Errorf("snp: the evidence blob is %d bytes, more than the %d an SNP attestation needs", len(blob), maxEvidenceSize)
	}
	a := new(spb.Attestation)
	if err := proto.Unmarshal(blob, a); err != nil {
		return nil, fmt.Errorf("snp: the evidence blob is not a binary sevsnp.Attestation: %w", err)
	}
	if a.GetReport() == nil {
		return nil, errors.New("snp: the evidence holds no attestation report")
	}
	raw, err := abi.ReportToAbiBytes(a.GetReport())
	if err != nil {
		return nil, fmt.Errorf("snp: the attestation report is malformed: %w", err)
	}
	if err := abi.ValidateReportFormat(raw); err != nil {
		return nil, fmt.Errorf("snp: the attestation report is malformed: %w", err)
	}
	// The signature field holds R and S (72 bytes each, little endian); the
	// rest is reserved and must be zero. The signature does not cover it, so
	// a non-zero value would make two different blobs verify as one report.
	if sig := a.GetReport().GetSignature(); len(sig) < sigComponentsSize || !allZero(sig[sigComponentsSize:]) {
		return nil, errors.New("snp: the reserved bytes after the report signature's R and S are not zero")
	}
	if _, err := abi.ParseSignerInfo(a.GetReport().GetSignerInfo()); err != nil {
		return nil, fmt.Errorf("snp: the attestation report's signer info: %w", err)
	}
	return a, nil
}

// sigComponentsSize is the size of R and S in the report's signature field.
const sigComponentsSize = 2 * 72

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
