package tdx

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"
	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"google.golang.org/protobuf/proto"

	"github.com/sealflow/sealflow/attest"
)

// collateralTime is when go-tdx-guest's sample collateral is valid (TCB info
// 2023-06-18 to 2023-07-18, QE identity 2023-06-08 to 2023-07-08).
var collateralTime = time.Date(2023, time.July, 1, 1, 0, 0, 0, time.UTC)

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sample returns go-tdx-guest's real quote as evidence and its REPORTDATA.
func sample(t testing.TB) (*attest.Evidence, [64]byte, *pb.QuoteV4) {
	t.Helper()
	raw := readFile(t, "testdata/quote.dat")
	ev, err := NewEvidence(raw)
	if err != nil {
		t.Fatal(err)
	}
	q, _, err := Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	return ev, [64]byte(q.GetTdQuoteBody().GetReportData()), q
}

func encodeQuote(t testing.TB, q *pb.QuoteV4) *attest.Evidence {
	t.Helper()
	raw, err := abi.QuoteToAbiBytes(q)
	if err != nil {
		t.Fatal(err)
	}
	return &attest.Evidence{Type: attest.TEETDX, Blob: raw}
}

func mutate(t testing.TB, f func(q *pb.QuoteV4)) *attest.Evidence {
	t.Helper()
	_, _, q := sample(t)
	q = proto.Clone(q).(*pb.QuoteV4)
	f(q)
	return encodeQuote(t, q)
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

func newVerifier(t testing.TB, o Options) *Verifier {
	t.Helper()
	v, err := NewVerifier(o)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestSampleVerifies(t *testing.T) {
	ev, rd, q := sample(t)
	coll, err := LoadCollateral("testdata/collateral")
	if err != nil {
		t.Fatal(err)
	}
	if !coll.revocation() {
		t.Fatal("the sample collateral has no CRLs")
	}
	noCRL := *coll
	noCRL.PCKCRL, noCRL.PCKCRLChain, noCRL.RootCACRL = nil, nil, nil
	body := q.GetTdQuoteBody()
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"no collateral", Options{At: collateralTime}},
		{"pinned MRTD and RTMRs, minimum SVNs", Options{At: collateralTime,
			Measurements: [][]byte{body.GetMrTd()}, RTMRs: [4][][]byte{{body.GetRtmrs()[0]}, nil, {bytes.Repeat([]byte{9}, 48), body.GetRtmrs()[2]}},
			MinTEETCBSVN: body.GetTeeTcbSvn()[:2], MinQESVN: uint16(q.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetQeReport().GetIsvSvn())}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := newVerifier(t, tc.opts).Verify(context.Background(), ev, rd)
			if err != nil {
				t.Fatalf("the go-tdx-guest sample does not verify: %v", err)
			}
			if c.TEE != attest.TEETDX || !bytes.Equal(c.Measurement, body.GetMrTd()) || c.SVN != uint64(body.GetTeeTcbSvn()[0]) || c.ReportData != rd {
				t.Errorf("claims %+v do not carry the quote's MRTD, TEE_TCB_SVN[0] and report data", c)
			}
			if c.Debug || c.Extra["rtmr1"] != hex.EncodeToString(body.GetRtmrs()[1]) || c.Extra["fmspc"] != "50806f000000" || len(c.PlatformID) == 0 {
				t.Errorf("claims %+v: want no debug, rtmr1, the sample's FMSPC and a platform id", c)
			}
			if c.Extra["skipped"] != SkippedWithoutCollateral {
				t.Errorf("skipped = %q, want %q", c.Extra["skipped"], SkippedWithoutCollateral)
			}
		})
	}
	// With Intel's real collateral (and CRLs) every signature, chain and
	// revocation check passes, and the TCB status check then rates the
	// sample's TDX microcode SVN (4) below every level of that TCB info (5):
	// the refusal go-tdx-guest's own tests expect.
	for _, c := range []*Collateral{coll, &noCRL} {
		_, err := newVerifier(t, Options{At: collateralTime, Collateral: c}).Verify(context.Background(), ev, rd)
		var r *attest.Refusal
		if !errors.As(err, &r) || r.Rule != RuleTCBStatus {
			t.Errorf("the sample with Intel's collateral (CRLs %v) = %v, want a refusal by %s", c.revocation(), err, RuleTCBStatus)
		}
	}
	// The PCK certificate is valid until 2029: the sample verifies today without collateral.
	if time.Now().Before(time.Date(2029, 9, 1, 0, 0, 0, 0, time.UTC)) {
		if _, err := newVerifier(t, Options{}).Verify(context.Background(), ev, rd); err != nil {
			t.Errorf("the sample does not verify at the current time: %v", err)
		}
	}
}

// fakePlatform is a TDX attestation chain under a test-only root: root CA,
// PCK CA and PCK keys with the sample's names and PCK extensions, and an
// attestation key.
type fakePlatform struct {
	root, inter, pck   *x509.Certificate
	pckKey, attestKey  *ecdsa.PrivateKey
	chainPEM           []byte
	rootKey, interKeyP *ecdsa.PrivateKey
}

func newFakePlatform(t testing.TB) *fakePlatform {
	t.Helper()
	_, chain, err := Decode(readFile(t, "testdata/quote.dat"))
	if err != nil {
		t.Fatal(err)
	}
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	f := &fakePlatform{rootKey: key(), interKeyP: key(), pckKey: key(), attestKey: key()}
	mk := func(like *x509.Certificate, serial int64, ca bool, pub *ecdsa.PublicKey, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) *x509.Certificate {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: like.Subject,
			NotBefore: like.NotBefore, NotAfter: like.NotAfter,
			IsCA: ca, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		}
		if !ca {
			// Keep the PCK's extensions (SGX extension with FMSPC, PCE id, CPU
			// SVNs; CRL distribution point; ...) except the authority key id,
			// which names the fake parent.
			for _, e := range like.Extensions {
				if !e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 35}) {
					tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, e)
				}
			}
		}
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	f.root = mk(chain.Root, 1, true, &f.rootKey.PublicKey, nil, f.rootKey)
	f.inter = mk(chain.Intermediate, 2, true, &f.interKeyP.PublicKey, f.root, f.rootKey)
	f.pck = mk(chain.PCK, 3, false, &f.pckKey.PublicKey, f.inter, f.interKeyP)
	for _, c := range []*x509.Certificate{f.pck, f.inter, f.root} {
		f.chainPEM = append(f.chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return f
}

func rawSig(t testing.TB, key *ecdsa.PrivateKey, msg []byte) []byte {
	t.Helper()
	h := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out
}

// quote returns a quote signed by the fake platform, derived from the sample
// with reportData and the given TD attributes.
func (f *fakePlatform) quote(t testing.TB, reportData [64]byte, tdAttributes uint64) *attest.Evidence {
	t.Helper()
	_, _, q := sample(t)
	q = proto.Clone(q).(*pb.QuoteV4)
	body := q.GetTdQuoteBody()
	body.ReportData = reportData[:]
	binary.LittleEndian.PutUint64(body.TdAttributes, tdAttributes)

	sd := q.GetSignedData()
	ak := make([]byte, 64)
	f.attestKey.X.FillBytes(ak[:32])
	f.attestKey.Y.FillBytes(ak[32:])
	sd.EcdsaAttestationKey = ak
	qrc := sd.GetCertificationData().GetQeReportCertificationData()
	binding := sha256.Sum256(append(bytes.Clone(ak), qrc.GetQeAuthData().GetData()...))
	qrc.QeReport.ReportData = append(binding[:], make([]byte, 32)...)
	rawQE, err := abi.EnclaveReportToAbiBytes(qrc.GetQeReport())
	if err != nil {
		t.Fatal(err)
	}
	qrc.QeReportSignature = rawSig(t, f.pckKey, rawQE)
	chain := qrc.GetPckCertificateChainData()
	chain.PckCertChain = bytes.Clone(f.chainPEM)
	chain.Size = uint32(len(f.chainPEM))
	qrcSize := uint32(len(rawQE)) + 64 + 2 + uint32(len(qrc.GetQeAuthData().GetData())) + 6 + chain.Size
	sd.CertificationData.Size = qrcSize
	q.SignedDataSize = 64 + 64 + 6 + qrcSize

	hdr, err := abi.HeaderToAbiBytes(q.GetHeader())
	if err != nil {
		t.Fatal(err)
	}
	tdb, err := abi.TdQuoteBodyToAbiBytes(body)
	if err != nil {
		t.Fatal(err)
	}
	sd.Signature = rawSig(t, f.attestKey, append(hdr, tdb...))
	return encodeQuote(t, q)
}

func TestRefusals(t *testing.T) {
	ev, rd, q := sample(t)
	body := q.GetTdQuoteBody()
	coll, err := LoadCollateral("testdata/collateral")
	if err != nil {
		t.Fatal(err)
	}
	fake := newFakePlatform(t)
	fakeRoots := []*x509.Certificate{fake.root}
	var nonce [64]byte
	copy(nonce[:], "fresh nonce")
	debugQuote := fake.quote(t, nonce, 1)
	fakeQuote := fake.quote(t, nonce, 0)
	// Collateral whose TCB info signature is broken.
	badTCB := *coll
	badTCB.TCBInfo = bytes.Replace(coll.TCBInfo, []byte(`"tcbEvaluationDataNumber":15`), []byte(`"tcbEvaluationDataNumber":16`), 1)
	if bytes.Equal(badTCB.TCBInfo, coll.TCBInfo) {
		t.Fatal("the TCB info fixture changed: no tcbEvaluationDataNumber to alter")
	}

	cases := []struct {
		name string
		ev   *attest.Evidence
		rd   [64]byte
		opts Options
		rule string
	}{
		{"signature bit flipped", mutate(t, func(q *pb.QuoteV4) { q.SignedData.Signature = flip(q.SignedData.Signature, 5) }), rd, Options{At: collateralTime}, RuleSignature},
		{"MRTD bit flipped, MRTD pinned", mutate(t, func(q *pb.QuoteV4) { q.TdQuoteBody.MrTd = flip(q.TdQuoteBody.MrTd, 0) }), rd, Options{At: collateralTime, Measurements: [][]byte{body.GetMrTd()}}, RuleMeasurement},
		{"MRTD bit flipped, signature catches it", mutate(t, func(q *pb.QuoteV4) { q.TdQuoteBody.MrTd = flip(q.TdQuoteBody.MrTd, 0) }), rd, Options{At: collateralTime}, RuleSignature},
		{"report data bit flipped", mutate(t, func(q *pb.QuoteV4) { q.TdQuoteBody.ReportData = flip(q.TdQuoteBody.ReportData, 7) }), rd, Options{At: collateralTime}, RuleReportData},
		{"report data flipped to match, signature catches it", mutate(t, func(q *pb.QuoteV4) { q.TdQuoteBody.ReportData = flip(q.TdQuoteBody.ReportData, 7) }), [64]byte(flip(rd[:], 7)), Options{At: collateralTime}, RuleSignature},
		{"RTMR pinned to another value", ev, rd, Options{At: collateralTime, RTMRs: [4][][]byte{nil, nil, nil, {bytes.Repeat([]byte{1}, 48)}}}, RuleRTMR},
		{"QE report signature flipped", mutate(t, func(q *pb.QuoteV4) {
			qrc := q.SignedData.CertificationData.QeReportCertificationData
			qrc.QeReportSignature = flip(qrc.QeReportSignature, 9)
		}), rd, Options{At: collateralTime}, RuleQE},
		{"sample against a foreign root", ev, rd, Options{At: collateralTime, Roots: fakeRoots}, RuleRoot},
		{"fake Intel root", fakeQuote, nonce, Options{}, RuleRoot},
		{"debug TD, debug not allowed", debugQuote, nonce, Options{Roots: fakeRoots}, RuleDebug},
		{"certificate expired (--at after PCK expiry)", ev, rd, Options{At: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}, RuleCertExpired},
		{"certificate not yet valid", ev, rd, Options{At: time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)}, RuleCertExpired},
		{"collateral expired", ev, rd, Options{At: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), Collateral: coll}, RuleCollateral},
		{"collateral signature broken", ev, rd, Options{At: collateralTime, Collateral: &badTCB}, RuleCollateral},
		{"minimum TEE TCB SVN above", ev, rd, Options{At: collateralTime, MinTEETCBSVN: []byte{body.GetTeeTcbSvn()[0] + 1}}, RuleMinTCB},
		{"minimum QE SVN above", ev, rd, Options{At: collateralTime, MinQESVN: 100}, RuleMinQESVN},
		{"not TDX", &attest.Evidence{Type: attest.TEESNP, Blob: ev.Blob}, rd, Options{}, RuleType},
		{"garbage", &attest.Evidence{Type: attest.TEETDX, Blob: []byte("garbage")}, rd, Options{}, RuleFormat},
		{"truncated", &attest.Evidence{Type: attest.TEETDX, Blob: ev.Blob[:len(ev.Blob)/2]}, rd, Options{}, RuleFormat},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newVerifier(t, tc.opts).Verify(context.Background(), tc.ev, tc.rd)
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
	// Controls: the fake-root quotes verify when their root is trusted (and
	// debug allowed), so the refusals above come from the rule named.
	for _, ev := range []*attest.Evidence{fakeQuote, debugQuote} {
		c, err := newVerifier(t, Options{Roots: fakeRoots, AllowDebug: true}).Verify(context.Background(), ev, nonce)
		if err != nil {
			t.Errorf("fake-root quote does not verify against its own root: %v", err)
		} else if c.Debug != (ev == debugQuote) {
			t.Errorf("claims debug = %v for the %s quote", c.Debug, map[bool]string{true: "debug", false: "non-debug"}[ev == debugQuote])
		}
	}
}

// collateral returns Intel's sample collateral re-signed by a fake TCB signing
// key under the fake root, with the first TCB level lowered so that the
// sample platform's TCB (which the fake quotes copy) is up to date.
func (f *fakePlatform) collateral(t testing.TB) *Collateral {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(4), Subject: pkix.Name{CommonName: "Intel SGX TCB Signing", Organization: []string{"Intel Corporation"}},
		NotBefore: time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.root, &key.PublicKey, f.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.root.Raw})...)
	resign := func(file, field string, edit func([]byte) []byte) []byte {
		var v map[string]json.RawMessage
		if err := json.Unmarshal(readFile(t, file), &v); err != nil {
			t.Fatal(err)
		}
		body := edit([]byte(v[field]))
		return []byte(`{"` + field + `":` + string(body) + `,"signature":"` + hex.EncodeToString(rawSig(t, key, body)) + `"}`)
	}
	return &Collateral{
		TCBInfo: resign("testdata/collateral/"+FileTCBInfo, "tcbInfo", func(b []byte) []byte {
			// Lower the first (UpToDate) level to the sample platform's SVNs:
			// CPU SVN components from the PCK certificate, TEE_TCB_SVN from the quote.
			var info map[string]any
			if err := json.Unmarshal(b, &info); err != nil {
				t.Fatal(err)
			}
			level := info["tcbLevels"].([]any)[0].(map[string]any)["tcb"].(map[string]any)
			for _, name := range []string{"sgxtcbcomponents", "tdxtcbcomponents"} {
				for _, c := range level[name].([]any) {
					c.(map[string]any)["svn"] = 0
				}
			}
			out, err := json.Marshal(info)
			if err != nil {
				t.Fatal(err)
			}
			return out
		}),
		TCBInfoChain:    chain,
		QEIdentity:      resign("testdata/collateral/"+FileQEIdentity, "enclaveIdentity", func(b []byte) []byte { return b }),
		QEIdentityChain: chain,
	}
}

func TestCollateralVerifies(t *testing.T) {
	fake := newFakePlatform(t)
	coll := fake.collateral(t)
	var nonce [64]byte
	copy(nonce[:], "collateral")
	ev := fake.quote(t, nonce, 0)
	c, err := newVerifier(t, Options{At: collateralTime, Roots: []*x509.Certificate{fake.root}, Collateral: coll}).Verify(context.Background(), ev, nonce)
	if err != nil {
		t.Fatalf("a quote with matching signed collateral does not verify: %v", err)
	}
	if c.Extra["skipped"] != SkippedWithoutCRLs {
		t.Errorf("skipped = %q, want %q", c.Extra["skipped"], SkippedWithoutCRLs)
	}
	// The same collateral after it expired, or with its TCB info altered after
	// signing, is refused.
	if _, err := newVerifier(t, Options{At: collateralTime.AddDate(0, 1, 0), Roots: []*x509.Certificate{fake.root}, Collateral: coll}).Verify(context.Background(), ev, nonce); !refusedBy(err, RuleCollateral) {
		t.Errorf("expired collateral: %v, want a refusal by %s", err, RuleCollateral)
	}
	altered := *coll
	altered.TCBInfo = bytes.Replace(coll.TCBInfo, []byte(`"UpToDate"`), []byte(`"UpToDatE"`), 1)
	if _, err := newVerifier(t, Options{At: collateralTime, Roots: []*x509.Certificate{fake.root}, Collateral: &altered}).Verify(context.Background(), ev, nonce); !refusedBy(err, RuleCollateral) {
		t.Errorf("altered TCB info: %v, want a refusal by %s", err, RuleCollateral)
	}
}

func refusedBy(err error, rule string) bool {
	var r *attest.Refusal
	return errors.As(err, &r) && r.Rule == rule
}

func TestLoadCollateralErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		remove []string
		write  map[string]string
		want   string
	}{
		{"missing TCB info", []string{FileTCBInfo}, nil, FileTCBInfo},
		{"CRLs incomplete", []string{FileRootCACRL}, nil, "only some"},
		{"TCB info not JSON", nil, map[string]string{FileTCBInfo: "nope"}, "not JSON"},
		{"issuer chain with one certificate", nil, map[string]string{FileQEIdentityChain: string(readFile(t, "intel_sgx_root_ca.pem"))}, "expected 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			entries, err := os.ReadDir("testdata/collateral")
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				os.WriteFile(dir+"/"+e.Name(), readFile(t, "testdata/collateral/"+e.Name()), 0o644)
			}
			for _, f := range tc.remove {
				os.Remove(dir + "/" + f)
			}
			for f, s := range tc.write {
				os.WriteFile(dir+"/"+f, []byte(s), 0o644)
			}
			_, err = LoadCollateral(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadCollateral = %v, want an error about %q", err, tc.want)
			}
		})
	}
}

func TestIssuerConfigfs(t *testing.T) {
	fake := newFakePlatform(t)
	sub := faketsm.ReportV7(0)
	fallback := sub.ReadAttr
	provider := "tdx_guest\n"
	sub.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		switch attr {
		case "provider":
			return []byte(provider), nil
		case "outblob":
			return fake.quote(t, [64]byte(e.InAttrs["inblob"].Value), 0).Blob, nil
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
	c, err := newVerifier(t, Options{Roots: []*x509.Certificate{fake.root}}).Verify(context.Background(), ev, nonce)
	if err != nil {
		t.Fatalf("a quote issued through configfs-tsm does not verify: %v", err)
	}
	if c.ReportData != nonce {
		t.Errorf("claims bind %x, want the nonce", c.ReportData)
	}
	provider = "sev_guest\n"
	if _, err := iss.Issue(context.Background(), nonce); err == nil || !strings.Contains(err.Error(), "not a TDX guest") {
		t.Errorf("Issue with an SEV-SNP provider = %v, want a refusal", err)
	}
}

func TestIssuerWithoutTEE(t *testing.T) {
	if _, err := os.Stat(TSMReportPath); err == nil {
		t.Skip("this machine has configfs-tsm")
	}
	_, err := NewIssuer()
	if err == nil || !strings.Contains(err.Error(), TSMReportPath) {
		t.Fatalf("NewIssuer outside a TEE = %v, want an error naming %s", err, TSMReportPath)
	}
}

func FuzzDecode(f *testing.F) {
	raw := readFile(f, "testdata/quote.dat")
	f.Add(raw)
	f.Add(raw[:1020])
	f.Add([]byte{4, 0, 2, 0, 0x81, 0, 0, 0})
	f.Add([]byte{})
	_, rd, _ := sample(f)
	v := newVerifier(f, Options{At: collateralTime})
	f.Fuzz(func(t *testing.T, blob []byte) {
		q, chain, err := Decode(blob)
		if err == nil && (q == nil || chain == nil || chain.PCK == nil || chain.Root == nil) {
			t.Fatal("Decode accepted a quote without its PCK chain")
		}
		if _, err := v.Verify(context.Background(), &attest.Evidence{Type: attest.TEETDX, Blob: blob}, rd); err == nil {
			// What the signatures authenticate must be the sample's header,
			// TD body and QE report (ECDSA signatures are malleable, so the
			// signature bytes themselves may differ).
			signed := func(b []byte) []byte {
				q, _, err := Decode(b)
				if err != nil {
					t.Fatal(err)
				}
				h, _ := abi.HeaderToAbiBytes(q.GetHeader())
				body, _ := abi.TdQuoteBodyToAbiBytes(q.GetTdQuoteBody())
				qe, _ := abi.EnclaveReportToAbiBytes(q.GetSignedData().GetCertificationData().GetQeReportCertificationData().GetQeReport())
				return append(append(h, body...), qe...)
			}
			if !bytes.Equal(signed(blob), signed(raw)) {
				t.Fatal("Verify accepted a quote that is not the signed sample")
			}
		}
	})
}

// TestConcurrentVerify runs one verifier from several goroutines (the
// orchestrator admits nodes concurrently); run with -race.
func TestConcurrentVerify(t *testing.T) {
	coll, err := LoadCollateral("testdata/collateral")
	if err != nil {
		t.Fatal(err)
	}
	v := newVerifier(t, Options{At: collateralTime, Collateral: coll})
	ev, rd, _ := sample(t)
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			_, err := v.Verify(context.Background(), ev, rd)
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; !refusedBy(err, RuleTCBStatus) {
			t.Errorf("concurrent Verify = %v, want the same tdx.tcb-status refusal every time", err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	ev, rd, _ := sample(b)
	fake := newFakePlatform(b)
	coll := fake.collateral(b)
	var nonce [64]byte
	fev := fake.quote(b, nonce, 0)
	for _, bc := range []struct {
		name string
		ev   *attest.Evidence
		rd   [64]byte
		opts Options
	}{
		{"no-collateral", ev, rd, Options{At: collateralTime}},
		{"collateral", fev, nonce, Options{At: collateralTime, Roots: []*x509.Certificate{fake.root}, Collateral: coll}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			v := newVerifier(b, bc.opts)
			for b.Loop() {
				if _, err := v.Verify(context.Background(), bc.ev, bc.rd); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
