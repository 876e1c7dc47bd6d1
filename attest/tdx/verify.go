package tdx

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/validate"
	"github.com/google/go-tdx-guest/verify"

	"github.com/sealflow/sealflow/attest"
)

// The rules a TDX Verifier refuses by (attest.Refusal.Rule).
const (
	RuleType        = "tdx.type"         // the evidence is not TDX evidence
	RuleFormat      = "tdx.format"       // the blob is not a well-formed v4 quote with a PCK chain
	RuleCertExpired = "tdx.cert-expired" // a PCK chain certificate is not valid at the verification time
	RuleRoot        = "tdx.root"         // the PCK chain does not end in a trusted Intel root
	RuleReportData  = "tdx.report-data"  // REPORTDATA is not the expected report data
	RuleMeasurement = "tdx.measurement"  // MRTD is not among the accepted ones
	RuleRTMR        = "tdx.rtmr"         // an RTMR is not among the accepted values
	RuleSignature   = "tdx.signature"    // the quote signature over header and TD body does not verify
	RuleQE          = "tdx.qe-signature" // the QE report is not signed by the PCK or does not bind the attestation key
	RuleCollateral  = "tdx.collateral"   // the collateral is invalid, expired, or rejects the TCB/QE identity
	RuleTCBStatus   = "tdx.tcb-status"   // Intel's TCB info or QE identity rates the platform's TCB not up to date
	RuleRevoked     = "tdx.revoked"      // a CRL revokes a certificate of the chain
	RuleDebug       = "tdx.debug"        // the TD is debuggable and debug is not allowed
	RuleMinTCB      = "tdx.min-tcb"      // TEE_TCB_SVN is below the minimum
	RuleMinQESVN    = "tdx.min-qe-svn"   // the QE's ISV SVN is below the minimum
	RulePolicy      = "tdx.policy"       // go-tdx-guest's validate package refused the quote
	RuleQuote       = "tdx.quote"        // go-tdx-guest refused the quote for another reason
)

// Options configure a Verifier. The zero value verifies against the Intel SGX
// Root CA at the current time without collateral (and says so in the claims),
// refuses debug TDs, and checks neither MRTD nor RTMRs (attest.Validate applies
// reference values afterwards).
type Options struct {
	// At is the time at which certificates and collateral must be valid; zero
	// means now. Set it to verify archived evidence.
	At time.Time
	// Roots replaces the Intel SGX Root CA. Only tests and private deployments
	// set it.
	Roots []*x509.Certificate
	// Collateral is Intel's collateral from files (LoadCollateral); nil skips
	// the TCB-status, QE-identity and revocation checks and names them.
	Collateral *Collateral
	// AllowDebug accepts TDs whose TD attributes have the DEBUG bit.
	AllowDebug bool
	// Measurements, when not empty, lists the accepted MRTD values (48 bytes).
	Measurements [][]byte
	// RTMRs lists, per index, the accepted RTMR0..3 values (48 bytes each); an
	// empty list leaves that RTMR unchecked. MRTD measures only the TD
	// firmware (TDVF): the kernel, initrd and command line are measured into
	// RTMR1 and RTMR2, so pinning a sealflow build on TDX needs them.
	RTMRs [4][][]byte
	// MinTEETCBSVN is the minimum TEE_TCB_SVN (up to 16 bytes), compared byte
	// by byte.
	MinTEETCBSVN []byte
	// MinQESVN is the minimum ISV SVN of the quoting enclave.
	MinQESVN uint16
}

// Verifier verifies TDX quotes offline: it never contacts Intel PCS.
// It implements attest.Verifier and is safe for concurrent use.
type Verifier struct {
	opts  Options
	roots *x509.CertPool
}

// NewVerifier returns a Verifier with the given options.
func NewVerifier(opts Options) (*Verifier, error) {
	roots := x509.NewCertPool()
	if len(opts.Roots) == 0 {
		if !roots.AppendCertsFromPEM(IntelRootCAPEM) {
			return nil, errors.New("tdx: the embedded Intel SGX Root CA does not parse")
		}
	}
	for _, r := range opts.Roots {
		roots.AddCert(r)
	}
	if len(opts.MinTEETCBSVN) > 16 {
		return nil, fmt.Errorf("tdx: MinTEETCBSVN has %d bytes; TEE_TCB_SVN has 16", len(opts.MinTEETCBSVN))
	}
	return &Verifier{opts: opts, roots: roots}, nil
}

var _ attest.Verifier = (*Verifier)(nil)

func refuse(rule, format string, args ...any) error {
	return &attest.Refusal{Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

// SkippedWithoutCollateral names the checks a verifier without collateral does
// not make (Claims.Extra["skipped"]).
const SkippedWithoutCollateral = "tcb-info (TDX module and platform TCB level status from Intel's signed TCB info), " +
	"qe-identity (quoting enclave MRSIGNER, attributes and TCB status from Intel's signed QE identity), " +
	"pck-crl (PCK certificate revocation), root-ca-crl (PCK CA revocation)"

// SkippedWithoutCRLs names the checks skipped when collateral has no CRLs.
const SkippedWithoutCRLs = "pck-crl (PCK certificate revocation), root-ca-crl (PCK CA revocation)"

// Verify checks ev cryptographically and against the verifier's options, and
// returns its claims. reportData must equal the quote's REPORTDATA.
// Refusals are *attest.Refusal values naming one of the Rule constants.
func (v *Verifier) Verify(ctx context.Context, ev *attest.Evidence, reportData [64]byte) (*attest.Claims, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if ev == nil {
		return nil, refuse(RuleType, "no evidence")
	}
	if ev.Type != attest.TEETDX {
		return nil, refuse(RuleType, "evidence type is %q, this verifier accepts %q", ev.Type, attest.TEETDX)
	}
	q, chain, err := Decode(ev.Blob)
	if err != nil {
		return nil, refuse(RuleFormat, "%v", err)
	}
	at := v.opts.At
	if at.IsZero() {
		at = time.Now()
	}
	for _, c := range []struct {
		name string
		cert *x509.Certificate
	}{{"PCK", chain.PCK}, {"PCK CA", chain.Intermediate}, {"root CA", chain.Root}} {
		if at.Before(c.cert.NotBefore) {
			return nil, refuse(RuleCertExpired, "the %s certificate is not valid before %s; verification time is %s", c.name, c.cert.NotBefore.Format(time.RFC3339), at.Format(time.RFC3339))
		}
		if at.After(c.cert.NotAfter) {
			return nil, refuse(RuleCertExpired, "the %s certificate expired at %s; verification time is %s", c.name, c.cert.NotAfter.Format(time.RFC3339), at.Format(time.RFC3339))
		}
	}
	inter := x509.NewCertPool()
	inter.AddCert(chain.Intermediate)
	if _, err := chain.PCK.Verify(x509.VerifyOptions{Roots: v.roots, Intermediates: inter, CurrentTime: at}); err != nil {
		return nil, refuse(RuleRoot, "the PCK certificate (issuer %q, chain root %q) does not chain to a trusted Intel root: %v", chain.PCK.Issuer, chain.Root.Subject, err)
	}
	body := q.GetTdQuoteBody()
	if !bytes.Equal(body.GetReportData(), reportData[:]) {
		return nil, refuse(RuleReportData, "REPORTDATA is %x, expected %x", body.GetReportData(), reportData[:])
	}
	if len(v.opts.Measurements) > 0 && !contains(v.opts.Measurements, body.GetMrTd()) {
		return nil, refuse(RuleMeasurement, "MRTD %x is not among the %d accepted", body.GetMrTd(), len(v.opts.Measurements))
	}
	for i, accepted := range v.opts.RTMRs {
		if len(accepted) > 0 && !contains(accepted, body.GetRtmrs()[i]) {
			return nil, refuse(RuleRTMR, "RTMR%d %x is not among the %d accepted", i, body.GetRtmrs()[i], len(accepted))
		}
	}
	vo := &verify.Options{
		Now:              at,
		TrustedRoots:     v.roots,
		GetCollateral:    v.opts.Collateral != nil,
		CheckRevocations: v.opts.Collateral.revocation(),
		Getter:           getter{v.opts.Collateral},
	}
	if err := verify.TdxQuote(q, vo); err != nil {
		return nil, v.classify(err)
	}
	if err := v.policy(q); err != nil {
		return nil, err
	}
	c := claims(q, chain)
	switch {
	case v.opts.Collateral == nil:
		c.Extra["skipped"] = SkippedWithoutCollateral
	case !v.opts.Collateral.revocation():
		c.Extra["skipped"] = SkippedWithoutCRLs
	}
	return c, nil
}

// classify names the rule behind a go-tdx-guest verification error.
func (v *Verifier) classify(err error) error {
	msg := err.Error()
	switch {
	case errors.Is(err, verify.ErrHashVerificationFail):
		return refuse(RuleSignature, "the quote signature over the header and TD quote body does not verify with the attestation key: %v", err)
	case strings.Contains(msg, "QE report") || strings.Contains(msg, "QE Report") || errors.Is(err, verify.ErrSHA56VerificationFail):
		return refuse(RuleQE, "go-tdx-guest: %v", err)
	case strings.Contains(msg, "TCB status check"):
		return refuse(RuleTCBStatus, "go-tdx-guest: %v", err)
	case strings.Contains(msg, "revoked"):
		return refuse(RuleRevoked, "go-tdx-guest: %v", err)
	case v.opts.Collateral != nil && (strings.Contains(msg, "ollateral") || strings.Contains(msg, "tcbInfo") || strings.Contains(msg, "QeIdentity") ||
		strings.Contains(msg, "TCB") || strings.Contains(msg, "CRL") || strings.Contains(msg, "QE Identity")):
		return refuse(RuleCollateral, "go-tdx-guest collateral check: %v", err)
	}
	return refuse(RuleQuote, "go-tdx-guest: %v", err)
}

// tdAttrDebug is bit 0 of TD_ATTRIBUTES (TUD.DEBUG).
const tdAttrDebug = 1

func (v *Verifier) policy(q *pb.QuoteV4) error {
	body := q.GetTdQuoteBody()
	attrs := binary.LittleEndian.Uint64(body.GetTdAttributes())
	if attrs&tdAttrDebug != 0 && !v.opts.AllowDebug {
		return refuse(RuleDebug, "TD_ATTRIBUTES %x has DEBUG set and debug is not allowed", body.GetTdAttributes())
	}
	svn := body.GetTeeTcbSvn()
	for i, m := range v.opts.MinTEETCBSVN {
		if svn[i] < m {
			return refuse(RuleMinTCB, "TEE_TCB_SVN %x is below the minimum %x (byte %d: %d < %d)", svn, v.opts.MinTEETCBSVN, i, svn[i], m)
		}
	}
	qe := q.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetQeReport()
	if qe.GetIsvSvn() < uint32(v.opts.MinQESVN) {
		return refuse(RuleMinQESVN, "the quoting enclave's ISV SVN %d is below the minimum %d", qe.GetIsvSvn(), v.opts.MinQESVN)
	}
	min := make([]byte, 16)
	copy(min, v.opts.MinTEETCBSVN)
	vo := &validate.Options{TdQuoteBodyOptions: validate.TdQuoteBodyOptions{
		MinimumTeeTcbSvn: min,
		ReportData:       body.GetReportData(),
	}}
	if err := validate.TdxQuote(q, vo); err != nil {
		return refuse(RulePolicy, "go-tdx-guest validation: %v", err)
	}
	return nil
}

func contains(list [][]byte, b []byte) bool {
	for _, x := range list {
		if bytes.Equal(x, b) {
			return true
		}
	}
	return false
}

// claims maps a verified quote to attest.Claims.
func claims(q *pb.QuoteV4, chain *Chain) *attest.Claims {
	body := q.GetTdQuoteBody()
	qe := q.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetQeReport()
	svn := body.GetTeeTcbSvn()
	c := &attest.Claims{
		TEE:         attest.TEETDX,
		Measurement: bytes.Clone(body.GetMrTd()),
		SVN:         uint64(svn[0]),
		TCB: map[string]uint64{
			"qe_svn":  uint64(qe.GetIsvSvn()),
			"pce_svn": uint64(binary.LittleEndian.Uint16(q.GetHeader().GetPceSvn())),
		},
		Debug: binary.LittleEndian.Uint64(body.GetTdAttributes())&tdAttrDebug != 0,
		Extra: map[string]string{
			"mrconfigid":    hex.EncodeToString(body.GetMrConfigId()),
			"mrowner":       hex.EncodeToString(body.GetMrOwner()),
			"mrownerconfig": hex.EncodeToString(body.GetMrOwnerConfig()),
			"mrseam":        hex.EncodeToString(body.GetMrSeam()),
			"mrsignerseam":  hex.EncodeToString(body.GetMrSignerSeam()),
			"td_attributes": hex.EncodeToString(body.GetTdAttributes()),
			"xfam":          hex.EncodeToString(body.GetXfam()),
			"tee_tcb_svn":   hex.EncodeToString(svn),
			"quote_version": strconv.FormatUint(uint64(q.GetHeader().GetVersion()), 10),
		},
	}
	for i, b := range svn {
		c.TCB[fmt.Sprintf("tee_tcb_svn_%d", i)] = uint64(b)
	}
	for i, r := range body.GetRtmrs() {
		c.Extra[fmt.Sprintf("rtmr%d", i)] = hex.EncodeToString(r)
	}
	if exts, err := pcs.PckCertificateExtensions(chain.PCK); err == nil {
		c.Extra["fmspc"] = exts.FMSPC
		if ppid, err := hex.DecodeString(exts.PPID); err == nil && len(ppid) > 0 {
			c.PlatformID = ppid
		} else if fmspc, err := hex.DecodeString(exts.FMSPC); err == nil {
			c.PlatformID = fmspc
		}
	}
	copy(c.ReportData[:], body.GetReportData())
	return c
}
