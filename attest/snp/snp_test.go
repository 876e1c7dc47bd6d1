package snp

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sgtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify/trust"
	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	"github.com/sealflow/sealflow/attest"
)

// sampleReportData is the REPORT_DATA go-sev-guest's sample report binds
// (its own test passes the nonce 1,2,3,4,5).
var sampleReportData = [64]byte{1, 2, 3, 4, 5}

// sampleTime is a time at which every certificate of the sample is valid.
var sampleTime = time.Date(2024, time.January, 1, 0, 0, 0, 0, time.UTC)

// sampleEvidence builds SNP evidence from go-sev-guest's real sample report,
// its VCEK and the Milan ASK/ARK (testdata/README.md).
func sampleEvidence(t testing.TB) *attest.Evidence {
	t.Helper()
	raw := readFile(t, "testdata/attestation.bin")
	ev, err := NewEvidence(raw, nil)
	if err != nil {
		t.Fatal(err)
	}
	ask, ark, err := kds.ParseProductCertChain(readFile(t, "testdata/milan.testcer"))
	if err != nil {
		t.Fatal(err)
	}
	ev, err = AddCertificates(ev, Certificates{VCEK: readFile(t, "testdata/vcek.testcer"), ASK: ask, ARK: ark})
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mutate decodes ev, applies f to the attestation and re-encodes it.
func mutate(t testing.TB, ev *attest.Evidence, f func(a *spb.Attestation)) *attest.Evidence {
	t.Helper()
	a, err := Decode(ev.Blob)
	if err != nil {
		t.Fatal(err)
	}
	f(a)
	out, err := encode(a)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

func TestSampleVerifies(t *testing.T) {
	raw := readFile(t, "testdata/attestation.bin")
	want, err := abi.ReportToProto(raw)
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(Options{At: sampleTime, AllowDebug: true, Measurements: [][]byte{want.GetMeasurement()}, ChipIDs: [][]byte{want.GetChipId()}})
	c, err := v.Verify(context.Background(), sampleEvidence(t), sampleReportData)
	if err != nil {
		t.Fatalf("the go-sev-guest sample does not verify: %v", err)
	}
	tcb := kds.DecomposeTCBVersion(kds.TCBVersion(want.GetReportedTcb()))
	if c.TEE != attest.TEESNP || !bytes.Equal(c.Measurement, want.GetMeasurement()) || !bytes.Equal(c.PlatformID, want.GetChipId()) {
		t.Errorf("claims %+v do not carry the report's measurement and chip id", c)
	}
	if c.SVN != uint64(tcb.SnpSpl) || c.TCB["microcode"] != uint64(tcb.UcodeSpl) || c.TCB["bootloader"] != uint64(tcb.BlSpl) {
		t.Errorf("claims TCB %v, SVN %d; want the reported TCB %+v", c.TCB, c.SVN, tcb)
	}
	if !c.Debug || c.ReportData != sampleReportData || c.Extra["vmpl"] != "0" || c.Extra["signer"] != "VCEK" || c.Extra["product_line"] != "Milan" {
		t.Errorf("claims %+v: want debug, the sample report data, vmpl 0, VCEK, Milan", c)
	}
	// The same evidence verifies today too: the sample's certificates expire in 2029.
	if time.Now().Before(time.Date(2029, 9, 1, 0, 0, 0, 0, time.UTC)) {
		if _, err := NewVerifier(Options{AllowDebug: true}).Verify(context.Background(), sampleEvidence(t), sampleReportData); err != nil {
			t.Errorf("the sample does not verify at the current time: %v", err)
		}
	}
}

// fakeRoot returns a go-sev-guest test-only AMD chain (a fake ARK/ASK/VCEK).
func fakeRoot(t testing.TB) (*sgtest.AmdSigner, map[string][]*trust.AMDRootCerts) {
	t.Helper()
	signer, err := sgtest.DefaultTestOnlyCertChain(kds.ProductName(abi.DefaultSevProduct()), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	r := trust.AMDRootCertsProduct("Milan")
	r.ProductCerts = &trust.ProductCerts{Ark: signer.Ark, Ask: signer.Ask, Asvk: signer.Asvk}
	return signer, map[string][]*trust.AMDRootCerts{"Milan": {r}}
}

// fakeReport returns a raw report with reportData and policy, signed by signer.
func fakeReport(t testing.TB, signer *sgtest.AmdSigner, reportData [64]byte, policy abi.SnpPolicy) []byte {
	t.Helper()
	r := sgtest.CreateRawReport(&sgtest.TestReportOptions{ReportData: reportData[:]})
	raw := r[:abi.ReportSize]
	p := abi.SnpPolicyToBytes(policy)
	for i := range 8 {
		raw[0x08+i] = byte(p >> (8 * i))
	}
	R, S, err := signer.Sign(abi.SignedComponent(raw))
	if err != nil {
		t.Fatal(err)
	}
	if err := abi.SetSignature(R, S, raw); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(raw)
}

func fakeEvidence(t testing.TB, signer *sgtest.AmdSigner, reportData [64]byte, policy abi.SnpPolicy) *attest.Evidence {
	t.Helper()
	ev, err := NewEvidence(fakeReport(t, signer, reportData, policy), nil)
	if err != nil {
		t.Fatal(err)
	}
	ev, err = AddCertificates(ev, Certificates{VCEK: signer.Vcek.Raw, ASK: signer.Ask.Raw, ARK: signer.Ark.Raw})
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestRefusals(t *testing.T) {
	sample := sampleEvidence(t)
	sampleReport, err := Decode(sample.Blob)
	if err != nil {
		t.Fatal(err)
	}
	signer, fakeRoots := fakeRoot(t)
	now := time.Now()
	var fakeData [64]byte
	copy(fakeData[:], "fresh nonce")
	one := 1

	// A CRL that the genuine ARK did not sign.
	otherKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	otherCA := selfSigned(t, otherKey)
	foreignCRL, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: sampleTime.Add(-time.Hour), NextUpdate: sampleTime.Add(time.Hour)}, otherCA, otherKey)
	if err != nil {
		t.Fatal(err)
	}
	// A genuine-looking CRL from the fake ARK that revokes the fake VCEK.
	fakeEv := fakeEvidence(t, signer, fakeData, abi.SnpPolicy{SMT: true})
	revokingCRL, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(2), ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: signer.Vcek.SerialNumber, RevocationTime: now.Add(-time.Minute)}},
		SignatureAlgorithm:        x509.SHA384WithRSAPSS,
	}, signer.Ark, signer.Keys.Ark)
	if err != nil {
		t.Fatal(err)
	}
	// A current CRL from the fake ARK that revokes nothing.
	currentCRL, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(3), ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(time.Hour),
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
	}, signer.Ark, signer.Keys.Ark)
	if err != nil {
		t.Fatal(err)
	}
	futureCRL, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(4), ThisUpdate: now.Add(time.Hour), NextUpdate: now.Add(2 * time.Hour),
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
	}, signer.Ark, signer.Keys.Ark)
	if err != nil {
		t.Fatal(err)
	}
	withCRL := func(ev *attest.Evidence, crl []byte) *attest.Evidence {
		out, err := AddCertificates(ev, Certificates{CRL: crl})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	cases := []struct {
		name       string
		ev         *attest.Evidence
		reportData [64]byte
		opts       Options
		rule       string
	}{
		{"signature bit flipped", mutate(t, sample, func(a *spb.Attestation) {
			a.Report.Signature = flip(a.Report.Signature, 3)
		}), sampleReportData, Options{At: sampleTime, AllowDebug: true}, RuleSignature},
		{"measurement bit flipped, measurement pinned", mutate(t, sample, func(a *spb.Attestation) {
			a.Report.Measurement = flip(a.Report.Measurement, 0)
		}), sampleReportData, Options{At: sampleTime, AllowDebug: true, Measurements: [][]byte{sampleReport.Report.Measurement}}, RuleMeasurement},
		{"measurement bit flipped, signature catches it", mutate(t, sample, func(a *spb.Attestation) {
			a.Report.Measurement = flip(a.Report.Measurement, 0)
		}), sampleReportData, Options{At: sampleTime, AllowDebug: true}, RuleSignature},
		{"report data bit flipped", mutate(t, sample, func(a *spb.Attestation) {
			a.Report.ReportData = flip(a.Report.ReportData, 10)
		}), sampleReportData, Options{At: sampleTime, AllowDebug: true}, RuleReportData},
		{"report data flipped to match, signature catches it", mutate(t, sample, func(a *spb.Attestation) {
			a.Report.ReportData = flip(a.Report.ReportData, 10)
		}), [64]byte(flip(sampleReportData[:], 10)), Options{At: sampleTime, AllowDebug: true}, RuleSignature},
		{"other nonce", sample, [64]byte{9}, Options{At: sampleTime, AllowDebug: true}, RuleReportData},
		{"debug guest, debug not allowed", sample, sampleReportData, Options{At: sampleTime}, RuleDebug},
		{"debug guest under a fake root, debug not allowed", fakeEvidence(t, signer, fakeData, abi.SnpPolicy{Debug: true}), fakeData, Options{Roots: fakeRoots}, RuleDebug},
		{"fake AMD root", fakeEv, fakeData, Options{}, RuleRoot},
		{"sample against a foreign root", sample, sampleReportData, Options{At: sampleTime, AllowDebug: true, Roots: fakeRoots}, RuleRoot},
		{"certificate expired (--at after VCEK expiry)", sample, sampleReportData, Options{At: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), AllowDebug: true}, RuleCertExpired},
		{"certificate not yet valid", sample, sampleReportData, Options{At: time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC), AllowDebug: true}, RuleCertExpired},
		{"VCEK missing", mutate(t, sample, func(a *spb.Attestation) { a.CertificateChain.VcekCert = nil }), sampleReportData, Options{At: sampleTime, AllowDebug: true}, RuleMissingCert},
		{"not SNP", &attest.Evidence{Type: attest.TEETDX, Blob: sample.Blob}, sampleReportData, Options{}, RuleType},
		{"reserved signature bytes set", mutate(t, sample, func(a *spb.Attestation) {
			a.Report.Signature = flip(a.Report.Signature, 0xc0)
		}), sampleReportData, Options{At: sampleTime, AllowDebug: true}, RuleFormat},
		{"garbage", &attest.Evidence{Type: attest.TEESNP, Blob: []byte("not a proto")}, sampleReportData, Options{}, RuleFormat},
		{"minimum TCB above the reported one", sample, sampleReportData, Options{At: sampleTime, AllowDebug: true, MinTCB: kds.TCBParts{SnpSpl: 6}}, RuleMinTCB},
		{"VMPL 1 required", sample, sampleReportData, Options{At: sampleTime, AllowDebug: true, VMPL: &one}, RuleVMPL},
		{"host data required", sample, sampleReportData, Options{At: sampleTime, AllowDebug: true, HostData: bytes.Repeat([]byte{7}, 32)}, RuleHostData},
		{"chip id not allowed", sample, sampleReportData, Options{At: sampleTime, AllowDebug: true, ChipIDs: [][]byte{make([]byte, 64)}}, RuleChipID},
		{"SMT denied", sample, sampleReportData, Options{At: sampleTime, AllowDebug: true, DenySMT: true}, RuleSMT},
		{"CRL not signed by the ARK", withCRL(sample, foreignCRL), sampleReportData, Options{At: sampleTime, AllowDebug: true}, RuleCRL},
		{"VCEK revoked", withCRL(fakeEv, revokingCRL), fakeData, Options{Roots: fakeRoots}, RuleRevoked},
		{"CRL stale", withCRL(fakeEv, currentCRL), fakeData, Options{Roots: fakeRoots, At: now.Add(2 * time.Hour)}, RuleCRL},
		{"CRL from the future", withCRL(fakeEv, futureCRL), fakeData, Options{Roots: fakeRoots}, RuleCRL},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewVerifier(tc.opts).Verify(context.Background(), tc.ev, tc.reportData)
			var r interface{ RefusedBy() string }
			if !errors.As(err, &r) {
				t.Fatalf("Verify = %v, want a refusal by %s", err, tc.rule)
			}
			if r.RefusedBy() != tc.rule {
				t.Fatalf("refused by %s (%v), want %s", r.RefusedBy(), err, tc.rule)
			}
			if testing.Verbose() {
				t.Log(err)
			}
		})
	}

	// The controls: the fake-root evidence verifies when its root is trusted,
	// so the refusals above come from the rule named, not from a broken chain.
	if _, err := NewVerifier(Options{Roots: fakeRoots}).Verify(context.Background(), fakeEv, fakeData); err != nil {
		t.Errorf("fake-root evidence does not verify against its own root: %v", err)
	}
	if _, err := NewVerifier(Options{Roots: fakeRoots}).Verify(context.Background(), withCRL(fakeEv, currentCRL), fakeData); err != nil {
		t.Errorf("fake-root evidence with a current CRL: %v", err)
	}
	if _, err := NewVerifier(Options{At: sampleTime, AllowDebug: true}).Verify(context.Background(), sample, sampleReportData); err != nil {
		t.Errorf("the sample does not verify: %v", err)
	}
}

func selfSigned(t testing.TB, key *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "not AMD"}, NotBefore: sampleTime.Add(-time.Hour), NotAfter: sampleTime.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCRLSign | x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIssuerConfigfs(t *testing.T) {
	signer, roots := fakeRoot(t)
	sub := faketsm.ReportV7(0)
	fallback := sub.ReadAttr
	sub.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		switch attr {
		case "provider":
			return []byte("sev_guest\n"), nil
		case "outblob":
			return fakeReport(t, signer, [64]byte(e.InAttrs["inblob"].Value), abi.SnpPolicy{SMT: true}), nil
		case "auxblob":
			return certTable(t, signer), nil
		}
		return fallback(e, attr)
	}
	iss, err := NewIssuer(WithTSMClient(&faketsm.Client{Subsystems: map[string]configfsi.Client{"report": sub}}))
	if err != nil {
		t.Fatal(err)
	}
	nonce := attest.BindReportData([]byte("nonce"), []byte("worker key"))
	ev, err := iss.Issue(context.Background(), nonce)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewVerifier(Options{Roots: roots}).Verify(context.Background(), ev, nonce)
	if err != nil {
		t.Fatalf("evidence issued through configfs-tsm does not verify: %v", err)
	}
	if c.ReportData != nonce || c.Debug {
		t.Errorf("claims %+v: want the nonce bound and no debug", c)
	}
	// A provider that is not sev_guest (a TDX guest) is refused with a clear error.
	sub.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		if attr == "provider" {
			return []byte("tdx_guest\n"), nil
		}
		return fallback(e, attr)
	}
	if _, err := iss.Issue(context.Background(), nonce); err == nil {
		t.Error("Issue accepted a tdx_guest provider")
	}
}

func TestIssuerWithoutTEE(t *testing.T) {
	if _, err := os.Stat(TSMReportPath); err == nil {
		t.Skip("this machine has configfs-tsm")
	}
	_, err := NewIssuer()
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte(TSMReportPath)) {
		t.Fatalf("NewIssuer outside a TEE = %v, want an error naming %s", err, TSMReportPath)
	}
}

// certTable renders the fake chain as the AMD certificate table a host returns.
func certTable(t testing.TB, s *sgtest.AmdSigner) []byte {
	t.Helper()
	ct := &abi.CertTable{Entries: []abi.CertTableEntry{
		{GUID: uuid.MustParse(abi.VcekGUID), RawCert: s.Vcek.Raw},
		{GUID: uuid.MustParse(abi.AskGUID), RawCert: s.Ask.Raw},
		{GUID: uuid.MustParse(abi.ArkGUID), RawCert: s.Ark.Raw},
	}}
	return ct.Marshal()
}

func FuzzDecode(f *testing.F) {
	f.Add(sampleEvidence(f).Blob)
	raw := readFile(f, "testdata/attestation.bin")
	f.Add(raw)
	a := &spb.Attestation{Report: &spb.Report{}}
	b, _ := proto.Marshal(a)
	f.Add(b)
	f.Add([]byte{})
	v := NewVerifier(Options{At: sampleTime, AllowDebug: true})
	f.Fuzz(func(t *testing.T, blob []byte) {
		a, err := Decode(blob)
		if err == nil && a.GetReport() == nil {
			t.Fatal("Decode accepted evidence without a report")
		}
		// Verification of arbitrary bytes must refuse, never panic; only the
		// genuine sample may pass.
		if _, err := v.Verify(context.Background(), &attest.Evidence{Type: attest.TEESNP, Blob: blob}, sampleReportData); err == nil {
			// What the signature authenticates must be the sample's report,
			// with the sample's VCEK. (ECDSA signatures are malleable, so the
			// signature bytes themselves may differ.)
			got, _ := Decode(blob)
			gotRaw, _ := abi.ReportToAbiBytes(got.GetReport())
			if !bytes.Equal(abi.SignedComponent(gotRaw), abi.SignedComponent(raw)) ||
				!bytes.Equal(got.GetCertificateChain().GetVcekCert(), readFile(t, "testdata/vcek.testcer")) {
				t.Fatal("Verify accepted evidence that is not the signed sample")
			}
		}
	})
}

// TestConcurrentVerify runs one verifier from several goroutines (the
// orchestrator admits nodes concurrently); run with -race.
func TestConcurrentVerify(t *testing.T) {
	v := NewVerifier(Options{At: sampleTime, AllowDebug: true})
	ev := sampleEvidence(t)
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			_, err := v.Verify(context.Background(), ev, sampleReportData)
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestEmbeddedRoots(t *testing.T) {
	for _, line := range []string{"Milan", "Genoa", "Turin"} {
		r, err := embeddedRoot(line)
		if err != nil {
			t.Fatal(err)
		}
		pc := r.ProductCerts
		if pc.Ask == nil || pc.Asvk == nil || pc.Ark == nil {
			t.Fatalf("%s root lacks a certificate: %+v", line, pc)
		}
		if pc.Ask.CheckSignatureFrom(pc.Ark) != nil || pc.Asvk.CheckSignatureFrom(pc.Ark) != nil {
			t.Errorf("%s: ASK or ASVK is not signed by the ARK", line)
		}
		if !strings.Contains(pc.Asvk.Subject.CommonName, "VLEK") || !strings.Contains(pc.Ark.Subject.CommonName, line) {
			t.Errorf("%s: unexpected names %q, %q", line, pc.Asvk.Subject.CommonName, pc.Ark.Subject.CommonName)
		}
	}
	if _, err := embeddedRoot("Naples"); err == nil {
		t.Error("embeddedRoot accepted an unknown product line")
	}
}

func TestVLEK(t *testing.T) {
	signer, roots := fakeRoot(t)
	if signer.Vlek == nil {
		t.Skip("go-sev-guest's fake chain has no VLEK")
	}
	var nonce [64]byte
	copy(nonce[:], "vlek")
	r := sgtest.CreateRawReport(&sgtest.TestReportOptions{ReportData: nonce[:], SignerInfo: abi.SignerInfo{SigningKey: abi.VlekReportSigner}})
	raw := bytes.Clone(r[:abi.ReportSize])
	p := abi.SnpPolicyToBytes(abi.SnpPolicy{SMT: true})
	for i := range 8 {
		raw[0x08+i] = byte(p >> (8 * i))
	}
	R, S, err := signer.Sign(abi.SignedComponent(raw))
	if err != nil {
		t.Fatal(err)
	}
	if err := abi.SetSignature(R, S, raw); err != nil {
		t.Fatal(err)
	}
	ev, err := NewEvidence(raw, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewVerifier(Options{Roots: roots}).Verify(context.Background(), ev, nonce); !refusedBy(err, RuleMissingCert) {
		t.Errorf("VLEK report without its certificate: %v, want %s", err, RuleMissingCert)
	}
	if ev, err = AddCertificates(ev, Certificates{VLEK: signer.Vlek.Raw}); err != nil {
		t.Fatal(err)
	}
	c, err := NewVerifier(Options{Roots: roots}).Verify(context.Background(), ev, nonce)
	if err != nil {
		t.Fatalf("VLEK-signed report: %v", err)
	}
	if c.Extra["signer"] != "VLEK" {
		t.Errorf("signer = %q, want VLEK", c.Extra["signer"])
	}
	if _, err := NewVerifier(Options{}).Verify(context.Background(), ev, nonce); !refusedBy(err, RuleRoot) {
		t.Errorf("fake VLEK against AMD's roots: %v, want %s", err, RuleRoot)
	}
}

func refusedBy(err error, rule string) bool {
	var r *attest.Refusal
	return errors.As(err, &r) && r.Rule == rule
}

func BenchmarkVerify(b *testing.B) {
	v := NewVerifier(Options{At: sampleTime, AllowDebug: true})
	ev := sampleEvidence(b)
	for b.Loop() {
		if _, err := v.Verify(context.Background(), ev, sampleReportData); err != nil {
			b.Fatal(err)
		}
	}
}
