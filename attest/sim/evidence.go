package sim

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/sealflow/sealflow/attest"
)

// Wire format of sim evidence (attest.Evidence.Blob), all integers big endian:
//
//	magic        4 bytes  "sfsm"
//	report     163 bytes  (signed)
//	  version       2     ReportVersion
//	  measurement  48     SHA-384 of the attested executable
//	  svn           8     simulated TCB security version
//	  debug         1     0 or 1
//	  platform id  32     SHA-256 of the platform certificate's SubjectPublicKeyInfo
//	  report data  64
//	  issued at     8     Unix time in nanoseconds
//	sig length   2 bytes  1..MaxSignatureSize
//	signature             ECDSA P-384 over SHA-384, ASN.1 DER
//	cert length  2 bytes  1..MaxCertSize
//	certificate           the platform certificate, DER
//
// Nothing may follow the certificate.
const (
	// ReportVersion is the only report version this package issues and accepts.
	ReportVersion = 1
	// MaxSignatureSize bounds the signature field (an ASN.1 ECDSA P-384
	// signature is at most 104 bytes).
	MaxSignatureSize = 132
	// MaxCertSize bounds the platform certificate field.
	MaxCertSize = 4096
	// MaxBlobSize bounds a whole evidence blob.
	MaxBlobSize = len(magic) + reportSize + 2 + MaxSignatureSize + 2 + MaxCertSize

	reportSize = 2 + 48 + 8 + 1 + 32 + 64 + 8
)

var magic = [4]byte{'s', 'f', 's', 'm'}

// signDomain separates sim report signatures from any other use of the
// platform key.
const signDomain = "sealflow sim report v1\x00"

// Report is the signed body of sim evidence.
type Report struct {
	// Version is ReportVersion.
	Version uint16
	// Measurement is the SHA-384 of the attested executable.
	Measurement [48]byte
	// SVN is the simulated TCB security version.
	SVN uint64
	// Debug says whether the simulated TEE claims to be debuggable.
	Debug bool
	// PlatformID is the SHA-256 of the platform key's SubjectPublicKeyInfo.
	PlatformID [32]byte
	// ReportData is what the attested party bound (see attest.BindReportData).
	ReportData [64]byte
	// IssuedAt is the issuer's clock at issue, in Unix nanoseconds. It is
	// informational: freshness comes from the nonce in ReportData.
	IssuedAt int64
}

// Attestation is decoded, not yet verified, sim evidence.
type Attestation struct {
	// Report is the signed body.
	Report Report
	// Signature is the platform key's ASN.1 ECDSA signature over Digest().
	Signature []byte
	// PlatformCert is the DER platform certificate, to be chained to a root.
	PlatformCert []byte
}

// marshalReport appends the fixed-size encoding of r to b.
func (r *Report) marshal(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, r.Version)
	b = append(b, r.Measurement[:]...)
	b = binary.BigEndian.AppendUint64(b, r.SVN)
	if r.Debug {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = append(b, r.PlatformID[:]...)
	b = append(b, r.ReportData[:]...)
	return binary.BigEndian.AppendUint64(b, uint64(r.IssuedAt))
}

// Digest returns the SHA-384 digest that the platform key signs: a domain
// label followed by the encoded report.
func (r *Report) Digest() [48]byte {
	return sha512.Sum384(r.marshal([]byte(signDomain)))
}

// IssuedTime returns IssuedAt as a time.Time.
func (r *Report) IssuedTime() time.Time { return time.Unix(0, r.IssuedAt).UTC() }

// Marshal returns the wire encoding of a (the inverse of Parse).
func (a *Attestation) Marshal() []byte {
	b := make([]byte, 0, len(magic)+reportSize+4+len(a.Signature)+len(a.PlatformCert))
	b = append(b, magic[:]...)
	b = a.Report.marshal(b)
	b = binary.BigEndian.AppendUint16(b, uint16(len(a.Signature)))
	b = append(b, a.Signature...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(a.PlatformCert)))
	return append(b, a.PlatformCert...)
}

func malformed(format string, args ...any) error {
	return &attest.Refusal{Rule: attest.RuleMalformed, Reason: "sim evidence: " + fmt.Sprintf(format, args...)}
}

// Parse decodes a sim evidence blob strictly: the magic, the version, every
// length and the debug flag must be exact, and no byte may follow. It checks
// no signature (see Verifier). Errors are *attest.Refusal with rule
// attest.malformed.
func Parse(blob []byte) (*Attestation, error) {
	if len(blob) > MaxBlobSize {
		return nil, malformed("blob is %d bytes, more than the maximum %d", len(blob), MaxBlobSize)
	}
	if len(blob) < len(magic)+reportSize {
		return nil, malformed("blob is %d bytes, shorter than the %d-byte header and report", len(blob), len(magic)+reportSize)
	}
	if [4]byte(blob[:4]) != magic {
		return nil, malformed("blob starts with %x, not the sim magic %x", blob[:4], magic[:])
	}
	rest := blob[4:]
	a := &Attestation{}
	r := &a.Report
	r.Version = binary.BigEndian.Uint16(rest)
	if r.Version != ReportVersion {
		return nil, malformed("report version %d, this verifier reads only version %d", r.Version, ReportVersion)
	}
	rest = rest[2:]
	rest = rest[copy(r.Measurement[:], rest):]
	r.SVN = binary.BigEndian.Uint64(rest)
	rest = rest[8:]
	switch rest[0] {
	case 0:
	case 1:
		r.Debug = true
	default:
		return nil, malformed("debug flag is %d, want 0 or 1", rest[0])
	}
	rest = rest[1:]
	rest = rest[copy(r.PlatformID[:], rest):]
	rest = rest[copy(r.ReportData[:], rest):]
	r.IssuedAt = int64(binary.BigEndian.Uint64(rest))
	rest = rest[8:]

	var err error
	if a.Signature, rest, err = field(rest, "signature", MaxSignatureSize); err != nil {
		return nil, err
	}
	if a.PlatformCert, rest, err = field(rest, "platform certificate", MaxCertSize); err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, malformed("%d unexpected bytes after the platform certificate", len(rest))
	}
	return a, nil
}

// field reads a 2-byte length and that many bytes (1..max) from b.
func field(b []byte, name string, max int) (val, rest []byte, err error) {
	if len(b) < 2 {
		return nil, nil, malformed("truncated before the %s length", name)
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if n == 0 || n > max {
		return nil, nil, malformed("%s length %d is outside 1..%d", name, n, max)
	}
	if len(b) < n {
		return nil, nil, malformed("%s is %d bytes but only %d remain", name, n, len(b))
	}
	return bytes.Clone(b[:n]), b[n:], nil
}
