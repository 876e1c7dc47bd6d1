package snp

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/sealflow/sealflow/attest"
)

// The rules an SNP Verifier refuses by (attest.Refusal.Rule).
const (
	RuleType        = "snp.type"         // the evidence is not SNP evidence
	RuleFormat      = "snp.format"       // the blob does not decode to a well-formed report
	RuleMissingCert = "snp.missing-cert" // the VCEK/VLEK certificate is absent (never fetched)
	RuleRoot        = "snp.root"         // the V[CL]EK does not chain to a trusted AMD root
	RuleCertExpired = "snp.cert-expired" // a certificate of the chain is not valid at the verification time
	RuleCRL         = "snp.crl"          // the carried CRL is malformed, not signed by the ARK, or not current
	RuleRevoked     = "snp.revoked"      // the CRL revokes the ASK or the V[CL]EK
	RuleReportData  = "snp.report-data"  // REPORT_DATA is not the expected report data
	RuleMeasurement = "snp.measurement"  // MEASUREMENT is not among the accepted ones
	RuleSignature   = "snp.signature"    // the report signature does not verify with the V[CL]EK
	RuleCertificate = "snp.certificate"  // the V[CL]EK fails go-sev-guest's KDS certificate checks
	RuleDebug       = "snp.debug"        // the guest policy allows debugging and debug is not allowed
	RuleSMT         = "snp.smt"          // the guest policy allows SMT and SMT is denied
	RuleVMPL        = "snp.vmpl"         // the report's VMPL is not the required one
	RuleHostData    = "snp.host-data"    // HOST_DATA is not the required value
	RuleChipID      = "snp.chip-id"      // CHIP_ID is not in the allowlist
	RuleMinTCB      = "snp.min-tcb"      // the reported TCB is below the minimum
	RulePolicy      = "snp.policy"       // go-sev-guest's validate package refused the report
)

// Options configure a Verifier. The zero value verifies against the embedded
// AMD roots at the current time, refuses debug guests, and checks neither
// measurement, VMPL, host data nor chip id (attest.Validate applies reference
// values afterwards).
type Options struct {
	// At is the time at which certificates must be valid; zero means now. Set it
	// to verify archived evidence (such as go-sev-guest's sample) whose
	// certificates have since expired.
	At time.Time
	// Roots replaces the AMD roots embedded in go-sev-guest, by product line
	// ("Milan", "Genoa", "Turin"). Only tests and private deployments set it.
	Roots map[string][]*trust.AMDRootCerts
	// AllowDebug accepts guests whose policy allows a host debugger.
	AllowDebug bool
	// DenySMT refuses guests whose policy allows simultaneous multithreading.
	// SMT is allowed by default: side channels are outside sealflow's threat
	// model, and most cloud confidential VMs run with SMT allowed.
	DenySMT bool
	// Measurements, when not empty, lists the accepted MEASUREMENT values
	// (48 bytes each).
	Measurements [][]byte
	// MinTCB is the minimum reported TCB, compared component by component.
	MinTCB kds.TCBParts
	// VMPL, when not nil, is the VMPL the report must have been requested at.
	VMPL *int
	// HostData, when not empty, is the required HOST_DATA (32 bytes).
	HostData []byte
	// ChipIDs, when not empty, is an allowlist of CHIP_ID values (64 bytes each).
	ChipIDs [][]byte
	// PermitProvisionalFirmware accepts a committed TCB below the current TCB.
	PermitProvisionalFirmware bool
}

// Verifier verifies SNP evidence offline: it never contacts AMD's KDS.
// It implements attest.Verifier and is safe for concurrent use.
type Verifier struct {
	opts Options
}

// NewVerifier returns a Verifier with the given options.
func NewVerifier(opts Options) *Verifier { return &Verifier{opts: opts} }

var _ attest.Verifier = (*Verifier)(nil)

func refuse(rule, format string, args ...any) error {
	return &attest.Refusal{Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

// offlineGetter refuses every fetch: sealflow verifies SNP evidence with the
// certificates it carries, never with AMD's KDS.
type offlineGetter struct{}

// Get implements trust.HTTPSGetter by refusing.
func (offlineGetter) Get(url string) ([]byte, error) {
	return nil, fmt.Errorf("snp: verification is offline; refusing to fetch %s (carry the certificate in the evidence)", url)
}

// Verify checks ev cryptographically and against the verifier's options, and
// returns its claims. reportData must equal the report's REPORT_DATA.
// Refusals are *attest.Refusal values naming one of the Rule constants.
func (v *Verifier) Verify(ctx context.Context, ev *attest.Evidence, reportData [64]byte) (*attest.Claims, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if ev == nil {
		return nil, refuse(RuleType, "no evidence")
	}
	if ev.Type != attest.TEESNP {
		return nil, refuse(RuleType, "evidence type is %q, this verifier accepts %q", ev.Type, attest.TEESNP)
	}
	a, err := Decode(ev.Blob)
	if err != nil {
		return nil, refuse(RuleFormat, "%v", err)
	}
	report := a.GetReport()
	raw, _ := abi.ReportToAbiBytes(report) // Decode checked it
	info, _ := abi.ParseSignerInfo(report.GetSignerInfo())
	at := v.opts.At
	if at.IsZero() {
		at = time.Now()
	}

	ekCert, root, err := v.chain(a, info.SigningKey, at)
	if err != nil {
		return nil, err
	}
	if err := checkCRL(a, root, ekCert, at); err != nil {
		return nil, err
	}
	if !bytes.Equal(report.GetReportData(), reportData[:]) {
		return nil, refuse(RuleReportData, "REPORT_DATA is %x, expected %x", report.GetReportData(), reportData[:])
	}
	if len(v.opts.Measurements) > 0 && !contains(v.opts.Measurements, report.GetMeasurement()) {
		return nil, refuse(RuleMeasurement, "MEASUREMENT %x is not among the %d accepted", report.GetMeasurement(), len(v.opts.Measurements))
	}
	if err := verify.SnpReportSignature(raw, ekCert); err != nil {
		return nil, refuse(RuleSignature, "the report signature does not verify with the %v certificate (serial %x): %v", info.SigningKey, ekCert.SerialNumber, err)
	}
	// go-sev-guest's own verification, offline, for the KDS certificate checks
	// (extensions, product, issuer names) the steps above do not repeat.
	vopts := &verify.Options{
		DisableCertFetching: true,
		Getter:              offlineGetter{},
		Now:                 at,
		TrustedRoots:        map[string][]*trust.AMDRootCerts{root.GetProductLine(): {root}},
	}
	if err := verify.SnpAttestationContext(ctx, a, vopts); err != nil {
		return nil, refuse(RuleCertificate, "go-sev-guest verification: %v", err)
	}
	if err := v.policy(a, ekCert, info.SigningKey); err != nil {
		return nil, err
	}
	return claims(a, info.SigningKey, root.GetProductLine()), nil
}

// chain finds the endorsement key certificate, the trusted root of its product
// line, and checks validity periods and the chain.
func (v *Verifier) chain(a *spb.Attestation, key abi.ReportSigner, at time.Time) (*x509.Certificate, *trust.AMDRootCerts, error) {
	var der []byte
	switch key {
	case abi.VcekReportSigner:
		der = a.GetCertificateChain().GetVcekCert()
	case abi.VlekReportSigner:
		der = a.GetCertificateChain().GetVlekCert()
	default:
		return nil, nil, refuse(RuleFormat, "the report is signed by %v; only VCEK and VLEK signed reports are verifiable", key)
	}
	if len(der) == 0 {
		return nil, nil, refuse(RuleMissingCert, "the evidence carries no %v certificate; sealflow verifies offline and never fetches from AMD KDS: issue evidence with the certificate table (configfs-tsm auxblob) or add the certificate with snp.AddCertificates", key)
	}
	ek, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, refuse(RuleFormat, "the %v certificate does not parse: %v", key, err)
	}
	line := ""
	if fms := a.GetReport().GetCpuid1EaxFms(); fms != 0 {
		line = kds.ProductLineFromFms(fms)
	} else {
		exts, err := kds.CertificateExtensions(ek, key)
		if err != nil {
			return nil, nil, refuse(RuleCertificate, "the %v certificate has no valid AMD extensions: %v", key, err)
		}
		product, err := kds.ParseProductName(exts.ProductName, key)
		if err != nil {
			return nil, nil, refuse(RuleCertificate, "the %v certificate names product %q: %v", key, exts.ProductName, err)
		}
		line = kds.ProductLine(product)
	}
	roots := v.opts.Roots[line]
	if v.opts.Roots == nil {
		r, err := embeddedRoot(line)
		if err != nil {
			return nil, nil, refuse(RuleRoot, "%v", err)
		}
		roots = []*trust.AMDRootCerts{r}
	}
	if len(roots) == 0 {
		return nil, nil, refuse(RuleRoot, "no trusted root configured for product line %q", line)
	}
	if err := validAt(key.String(), ek, at); err != nil {
		return nil, nil, err
	}
	var lastErr error
	for _, r := range roots {
		if r.ProductCerts == nil || r.ProductCerts.Ark == nil {
			lastErr = errors.New("root has no ARK certificate")
			continue
		}
		ica := r.ProductCerts.Ask
		icaName := "ASK"
		if key == abi.VlekReportSigner {
			ica, icaName = r.ProductCerts.Asvk, "ASVK"
		}
		if ica == nil {
			lastErr = fmt.Errorf("root has no %s certificate", icaName)
			continue
		}
		opts := r.X509Options(at, key)
		if _, err := ek.Verify(*opts); err != nil {
			// Distinguish an expired intermediate or root from a foreign chain.
			if ek.CheckSignatureFrom(ica) == nil {
				if err := validAt(icaName, ica, at); err != nil {
					return nil, nil, err
				}
				if err := validAt("ARK", r.ProductCerts.Ark, at); err != nil {
					return nil, nil, err
				}
			}
			lastErr = err
			continue
		}
		return ek, r, nil
	}
	return nil, nil, refuse(RuleRoot, "the %v certificate (issuer %q) does not chain to a trusted AMD %s root: %v", key, ek.Issuer, line, lastErr)
}

func validAt(name string, c *x509.Certificate, at time.Time) error {
	if at.Before(c.NotBefore) {
		return refuse(RuleCertExpired, "the %s certificate is not valid before %s; verification time is %s", name, c.NotBefore.Format(time.RFC3339), at.Format(time.RFC3339))
	}
	if at.After(c.NotAfter) {
		return refuse(RuleCertExpired, "the %s certificate expired at %s; verification time is %s", name, c.NotAfter.Format(time.RFC3339), at.Format(time.RFC3339))
	}
	return nil
}

// checkCRL applies a CRL carried in the evidence: it must be signed by the
// trusted ARK and revoke neither the ASK/ASVK nor the endorsement key.
func checkCRL(a *spb.Attestation, root *trust.AMDRootCerts, ek *x509.Certificate, at time.Time) error {
	der := a.GetCertificateChain().GetExtras()[CRLExtraKey]
	if len(der) == 0 {
		return nil
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return refuse(RuleCRL, "the carried CRL does not parse: %v", err)
	}
	if err := crl.CheckSignatureFrom(root.ProductCerts.Ark); err != nil {
		return refuse(RuleCRL, "the carried CRL is not signed by the %s ARK: %v", root.GetProductLine(), err)
	}
	if at.Before(crl.ThisUpdate) {
		return refuse(RuleCRL, "the carried CRL was issued at %s, after the verification time %s", crl.ThisUpdate.Format(time.RFC3339), at.Format(time.RFC3339))
	}
	if !crl.NextUpdate.IsZero() && at.After(crl.NextUpdate) {
		return refuse(RuleCRL, "the carried CRL is stale: its next update was due at %s, before the verification time %s (carry a current CRL)", crl.NextUpdate.Format(time.RFC3339), at.Format(time.RFC3339))
	}
	for _, bad := range crl.RevokedCertificateEntries {
		for name, c := range map[string]*x509.Certificate{"ASK": root.ProductCerts.Ask, "ASVK": root.ProductCerts.Asvk, "endorsement key": ek} {
			if c != nil && c.SerialNumber.Cmp(bad.SerialNumber) == 0 && !bad.RevocationTime.After(at) {
				return refuse(RuleRevoked, "the %s certificate (serial %x) was revoked at %s", name, c.SerialNumber, bad.RevocationTime.Format(time.RFC3339))
			}
		}
	}
	return nil
}

// policy applies the guest policy, VMPL, host data, chip id and TCB rules,
// then go-sev-guest's validate package with the same expectations.
func (v *Verifier) policy(a *spb.Attestation, ek *x509.Certificate, key abi.ReportSigner) error {
	report := a.GetReport()
	pol, err := abi.ParseSnpPolicy(report.GetPolicy())
	if err != nil {
		return refuse(RuleFormat, "the guest policy %#x does not parse: %v", report.GetPolicy(), err)
	}
	if pol.Debug && !v.opts.AllowDebug {
		return refuse(RuleDebug, "the guest policy %#x allows a host debugger and debug is not allowed", report.GetPolicy())
	}
	if pol.SMT && v.opts.DenySMT {
		return refuse(RuleSMT, "the guest policy %#x allows SMT and SMT is denied", report.GetPolicy())
	}
	if v.opts.VMPL != nil && report.GetVmpl() != uint32(*v.opts.VMPL) {
		return refuse(RuleVMPL, "the report was requested at VMPL %d, required %d", report.GetVmpl(), *v.opts.VMPL)
	}
	if len(v.opts.HostData) > 0 && !bytes.Equal(report.GetHostData(), v.opts.HostData) {
		return refuse(RuleHostData, "HOST_DATA is %x, required %x", report.GetHostData(), v.opts.HostData)
	}
	if len(v.opts.ChipIDs) > 0 && !contains(v.opts.ChipIDs, report.GetChipId()) {
		return refuse(RuleChipID, "CHIP_ID %x is not among the %d allowed", report.GetChipId(), len(v.opts.ChipIDs))
	}
	reported := kds.DecomposeTCBVersion(kds.TCBVersion(report.GetReportedTcb()))
	if !kds.TCBPartsLE(v.opts.MinTCB, reported) {
		return refuse(RuleMinTCB, "reported TCB %s is below the minimum %s", tcbString(reported), tcbString(v.opts.MinTCB))
	}
	vo := &validate.Options{
		GuestPolicy: abi.SnpPolicy{
			ABIMajor: 0, ABIMinor: 0,
			Debug:        v.opts.AllowDebug,
			SMT:          !v.opts.DenySMT,
			MigrateMA:    false,
			SingleSocket: false,
			CXLAllowed:   true,
		},
		ReportData:                report.GetReportData(),
		HostData:                  v.opts.HostData,
		MinimumTCB:                v.opts.MinTCB,
		VMPL:                      v.opts.VMPL,
		PermitProvisionalFirmware: v.opts.PermitProvisionalFirmware,
	}
	if err := validate.SnpAttestation(a, vo); err != nil {
		return refuse(RulePolicy, "go-sev-guest validation: %v", err)
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

func tcbString(p kds.TCBParts) string {
	return fmt.Sprintf("{bootloader %d, tee %d, snp %d, microcode %d}", p.BlSpl, p.TeeSpl, p.SnpSpl, p.UcodeSpl)
}

// claims maps a verified attestation to attest.Claims.
func claims(a *spb.Attestation, key abi.ReportSigner, productLine string) *attest.Claims {
	r := a.GetReport()
	tcb := kds.DecomposeTCBVersion(kds.TCBVersion(r.GetReportedTcb()))
	pol, _ := abi.ParseSnpPolicy(r.GetPolicy())
	c := &attest.Claims{
		TEE:         attest.TEESNP,
		Measurement: bytes.Clone(r.GetMeasurement()),
		SVN:         uint64(tcb.SnpSpl),
		TCB: map[string]uint64{
			"bootloader": uint64(tcb.BlSpl),
			"tee":        uint64(tcb.TeeSpl),
			"snp":        uint64(tcb.SnpSpl),
			"microcode":  uint64(tcb.UcodeSpl),
		},
		Debug:      pol.Debug,
		PlatformID: bytes.Clone(r.GetChipId()),
		Extra: map[string]string{
			"vmpl":         strconv.FormatUint(uint64(r.GetVmpl()), 10),
			"host_data":    hex.EncodeToString(r.GetHostData()),
			"policy":       strconv.FormatUint(r.GetPolicy(), 16),
			"guest_svn":    strconv.FormatUint(uint64(r.GetGuestSvn()), 10),
			"family_id":    hex.EncodeToString(r.GetFamilyId()),
			"image_id":     hex.EncodeToString(r.GetImageId()),
			"report_id":    hex.EncodeToString(r.GetReportId()),
			"version":      strconv.FormatUint(uint64(r.GetVersion()), 10),
			"signer":       key.String(),
			"product_line": productLine,
			"smt":          strconv.FormatBool(pol.SMT),
		},
	}
	copy(c.ReportData[:], r.GetReportData())
	return c
}

// embeddedBundles are the KDS cert_chain bundles go-sev-guest embeds, per
// product line: the VCEK chain (ASK, ARK) and the VLEK chain (ASVK, ARK).
var embeddedBundles = map[string][2][]byte{
	"Milan": {trust.AskArkMilanVcekBytes, trust.AskArkMilanVlekBytes},
	"Genoa": {trust.AskArkGenoaVcekBytes, trust.AskArkGenoaVlekBytes},
	"Turin": {trust.AskArkTurinVcekBytes, trust.AskArkTurinVlekBytes},
}

// embeddedRoot returns the AMD root of a product line with both
// intermediates, so that VCEK- and VLEK-signed reports verify.
// (trust.GetDefaultRootCerts holds only the ASK.)
func embeddedRoot(line string) (*trust.AMDRootCerts, error) {
	b, ok := embeddedBundles[line]
	if !ok {
		return nil, fmt.Errorf("no embedded AMD root for product line %q (known: Milan, Genoa, Turin)", line)
	}
	vcek, vlek := new(trust.ProductCerts), new(trust.ProductCerts)
	// bytes.TrimSpace: the embedded Turin VLEK bundle ends in extra newlines,
	// which kds.ParseProductCertChain treats as trailing data.
	if err := vcek.FromKDSCertBytes(bytes.TrimSpace(b[0])); err != nil {
		return nil, fmt.Errorf("the embedded %s VCEK chain: %w", line, err)
	}
	if err := vlek.FromKDSCertBytes(bytes.TrimSpace(b[1])); err != nil {
		return nil, fmt.Errorf("the embedded %s VLEK chain: %w", line, err)
	}
	if !vcek.Ark.Equal(vlek.Ark) {
		return nil, fmt.Errorf("the embedded %s VCEK and VLEK chains name different ARKs", line)
	}
	r := trust.AMDRootCertsProduct(line)
	r.ProductCerts = &trust.ProductCerts{Ask: vcek.Ask, Asvk: vlek.Asvk, Ark: vcek.Ark}
	return r, nil
}
