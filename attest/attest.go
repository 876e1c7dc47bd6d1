// Package attest defines the attestation interfaces shared by every TEE backend:
// an Issuer produces Evidence that binds 64 bytes of report data, a Verifier checks
// the evidence cryptographically and returns Claims, and Validate checks Claims
// against ReferenceValues. Parsing, cryptographic verification and policy
// validation are kept apart, as in github.com/google/go-sev-guest (abi, verify,
// validate).
//
// Backends live in sub-packages: sim (software, for development), snp (AMD
// SEV-SNP) and tdx (Intel TDX).
package attest

import (
	"context"
	"crypto/sha512"
	"encoding/binary"
)

// TEE names a trusted execution environment technology.
type TEE string

// The TEE types sealflow knows.
const (
	TEESim TEE = "sim" // software simulation; never a real protection
	TEESNP TEE = "snp" // AMD SEV-SNP
	TEETDX TEE = "tdx" // Intel TDX
)

// Evidence is what an Issuer produces: a backend-specific attestation blob
// (a signed sim report, an SEV-SNP attestation with its certificates, a TDX quote)
// tagged with its TEE type. It is untrusted input until a Verifier accepts it.
type Evidence struct {
	Type TEE    `json:"type"`
	Blob []byte `json:"blob"`
}

// Claims are the verified statements of a piece of evidence.
type Claims struct {
	// TEE is the technology that produced the evidence.
	TEE TEE `json:"tee"`
	// Measurement is the launch measurement of the attested code (sim: SHA-384 of
	// the executable; snp: MEASUREMENT; tdx: MRTD).
	Measurement []byte `json:"measurement"`
	// SVN is a single ordered security version of the platform's TCB, so that
	// policies can say "TCB at least X" in one language for every backend
	// (sim: configured; snp: the reported TCB's SNP firmware SVN; tdx: the TEE TCB
	// SVN's first byte).
	SVN uint64 `json:"svn"`
	// TCB holds the individual TCB components by name (snp: bootloader, tee, snp,
	// microcode; tdx: tee_tcb_svn_N, qe_svn, pce_svn; sim: svn).
	TCB map[string]uint64 `json:"tcb,omitempty"`
	// Debug is true when the TEE allows a host debugger to read its memory.
	Debug bool `json:"debug"`
	// PlatformID identifies the physical platform (sim: platform key hash; snp:
	// CHIP_ID; tdx: the PCK certificate's PPID or FMSPC when available).
	PlatformID []byte `json:"platform_id,omitempty"`
	// ReportData is the 64 bytes the attested party bound into the evidence.
	ReportData [64]byte `json:"report_data"`
	// Extra holds backend-specific values (RTMRs, host data, VMPL, ...), hex encoded.
	Extra map[string]string `json:"extra,omitempty"`
}

// Issuer produces evidence that binds reportData. It blocks on the TEE device.
type Issuer interface {
	Issue(ctx context.Context, reportData [64]byte) (*Evidence, error)
}

// Verifier checks evidence cryptographically, including that it binds exactly
// reportData, and returns its claims. It does not apply reference values: see
// Validate.
type Verifier interface {
	Verify(ctx context.Context, ev *Evidence, reportData [64]byte) (*Claims, error)
}

// BindReportData returns the report data that binds a verifier's fresh nonce and
// the public keys of the attested party: SHA-512 over a domain label and each
// input, length-prefixed, so that no two different inputs collide.
func BindReportData(nonce []byte, publicKeys ...[]byte) [64]byte {
	h := sha512.New()
	h.Write([]byte("sealflow report data v1\x00"))
	var n [8]byte
	for _, b := range append([][]byte{nonce}, publicKeys...) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	var out [64]byte
	copy(out[:], h.Sum(nil))
	return out
}
