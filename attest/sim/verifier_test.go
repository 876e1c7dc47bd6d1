package sim

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/sealflow/sealflow/attest"
)

func ruleOf(err error) string {
	if err == nil {
		return ""
	}
	var r interface{ RefusedBy() string }
	if errors.As(err, &r) {
		return r.RefusedBy()
	}
	return "not-a-refusal: " + err.Error()
}

func issue(t testing.TB, is attest.Issuer, rd [64]byte) *attest.Evidence {
	t.Helper()
	ev, err := is.Issue(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// Offsets of report fields in a blob.
const (
	offVersion     = 4
	offMeasurement = offVersion + 2
	offSVN         = offMeasurement + 48
	offDebug       = offSVN + 8
	offPlatformID  = offDebug + 1
	offReportData  = offPlatformID + 32
	offIssuedAt    = offReportData + 64
	offSigLen      = offIssuedAt + 8
	offSig         = offSigLen + 2
)

func TestVerifyClaims(t *testing.T) {
	p := testPlatform(t)
	v, err := NewVerifier(p.RootCertPEM())
	if err != nil {
		t.Fatal(err)
	}
	rd := attest.BindReportData([]byte("nonce"), []byte("key"))
	at := time.Date(2026, 11, 25, 23, 59, 0, 0, time.UTC)
	exe, err := ExecutableMeasurement()
	if err != nil {
		t.Fatal(err)
	}
	other := bytes.Repeat([]byte{7}, 48)
	tests := []struct {
		name            string
		opts            []IssuerOption
		wantMeasurement []byte
		wantSVN         uint64
		wantDebug       bool
	}{
		{"defaults", nil, exe, 0, false},
		{"svn and debug", []IssuerOption{WithSVN(42), WithDebug(true)}, exe, 42, true},
		{"simulated other binary", []IssuerOption{WithMeasurement(other), WithSVN(1 << 40)}, other, 1 << 40, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := append([]IssuerOption{WithClock(func() time.Time { return at })}, tc.opts...)
			c, err := v.Verify(context.Background(), issue(t, p.Issuer(opts...), rd), rd)
			if err != nil {
				t.Fatal(err)
			}
			if c.TEE != attest.TEESim || !bytes.Equal(c.Measurement, tc.wantMeasurement) ||
				c.SVN != tc.wantSVN || c.TCB["svn"] != tc.wantSVN || len(c.TCB) != 1 ||
				c.Debug != tc.wantDebug || !bytes.Equal(c.PlatformID, p.ID()) || c.ReportData != rd ||
				c.Extra["issued_at"] != at.Format(time.RFC3339Nano) {
				t.Fatalf("claims %+v do not state what was issued", c)
			}
		})
	}
}

func TestIssueErrors(t *testing.T) {
	p := testPlatform(t)
	if _, err := p.Issuer(WithMeasurement([]byte{1, 2})).Issue(context.Background(), [64]byte{}); err == nil {
		t.Error("Issue with a 2-byte measurement succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Issuer().Issue(ctx, [64]byte{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Issue with a cancelled context: %v, want context.Canceled", err)
	}
}

// TestVerifyRefusals is the verifier's accept/reject matrix: each way to
// break the evidence must be refused by its own rule.
func TestVerifyRefusals(t *testing.T) {
	p := testPlatform(t)
	foreign := testPlatform(t)
	// sameRoot is another machine whose platform p's root certified.
	dir := t.TempDir()
	root, err := readPrivate(filepath.Join(p.Dir(), RootFile))
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, RootFile), root)
	sameRoot, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(p.RootCertPEM())
	if err != nil {
		t.Fatal(err)
	}
	rd := attest.BindReportData([]byte("nonce"), []byte("key"))
	good := issue(t, p.Issuer(WithSVN(3)), rd).Blob

	flip := func(off int) func([]byte) []byte {
		return func(b []byte) []byte { b[off] ^= 0x01; return b }
	}
	resign := func(key *ecdsa.PrivateKey, edit func(*Attestation)) func([]byte) []byte {
		return func(b []byte) []byte {
			a, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			edit(a)
			d := a.Report.Digest()
			if a.Signature, err = ecdsa.SignASN1(rand.Reader, key, d[:]); err != nil {
				t.Fatal(err)
			}
			return a.Marshal()
		}
	}
	certLenOff := func(b []byte) int { return offSig + int(binary.BigEndian.Uint16(b[offSigLen:])) }

	tests := []struct {
		name   string
		typ    attest.TEE
		blob   func([]byte) []byte
		nilEv  bool
		rd     [64]byte
		wantRl string
	}{
		{name: "valid", wantRl: ""},
		{name: "flipped bit in measurement", blob: flip(offMeasurement + 5), wantRl: attest.RuleSignature},
		{name: "flipped bit in svn", blob: flip(offSVN + 7), wantRl: attest.RuleSignature},
		{name: "debug set", blob: flip(offDebug), wantRl: attest.RuleSignature},
		{name: "flipped bit in report data", blob: flip(offReportData), wantRl: attest.RuleSignature},
		{name: "flipped bit in issued-at", blob: flip(offIssuedAt + 7), wantRl: attest.RuleSignature},
		{name: "flipped bit in signature", blob: func(b []byte) []byte { b[offSig+20] ^= 0x10; return b }, wantRl: attest.RuleSignature},
		{name: "flipped bit in platform id", blob: flip(offPlatformID), wantRl: attest.RuleSignature},
		{name: "certificate of another platform of the same root", blob: func(b []byte) []byte {
			a, _ := Parse(b)
			a.PlatformCert = sameRoot.cert.Raw
			return a.Marshal()
		}, wantRl: attest.RuleSignature},
		{name: "signed by another platform of the same root", blob: resign(sameRoot.key, func(a *Attestation) {}), wantRl: attest.RuleSignature},
		{name: "another platform of the same root impersonating this one", blob: resign(sameRoot.key, func(a *Attestation) {
			a.PlatformCert = sameRoot.cert.Raw // valid chain and signature, but the id names p
		}), wantRl: attest.RuleSignature},
		{name: "evidence of a platform of another root", blob: func([]byte) []byte {
			return issue(t, foreign.Issuer(), rd).Blob
		}, wantRl: attest.RuleRoot},
		{name: "forged with another root claiming this platform", blob: resign(foreign.key, func(a *Attestation) {
			a.PlatformCert = foreign.cert.Raw // the id still names p
		}), wantRl: attest.RuleRoot},
		{name: "flipped bit in certificate signature", blob: func(b []byte) []byte { b[len(b)-3] ^= 0x01; return b }, wantRl: attest.RuleRoot},
		{name: "other report data expected", rd: attest.BindReportData([]byte("nonce"), []byte("other key")), wantRl: attest.RuleReportData},
		{name: "other nonce expected", rd: attest.BindReportData([]byte("nonce2"), []byte("key")), wantRl: attest.RuleReportData},
		{name: "wrong evidence type", typ: attest.TEESNP, wantRl: attest.RuleMalformed},
		{name: "no evidence", nilEv: true, wantRl: attest.RuleMalformed},
		{name: "empty blob", blob: func([]byte) []byte { return nil }, wantRl: attest.RuleMalformed},
		{name: "wrong magic", blob: flip(0), wantRl: attest.RuleMalformed},
		{name: "version 2", blob: flip(offVersion + 1), wantRl: attest.RuleMalformed},
		{name: "debug flag 2", blob: func(b []byte) []byte { b[offDebug] = 2; return b }, wantRl: attest.RuleMalformed},
		{name: "truncated in report", blob: func(b []byte) []byte { return b[:offReportData] }, wantRl: attest.RuleMalformed},
		{name: "truncated before signature length", blob: func(b []byte) []byte { return b[:offSigLen+1] }, wantRl: attest.RuleMalformed},
		{name: "truncated in signature", blob: func(b []byte) []byte { return b[:offSig+10] }, wantRl: attest.RuleMalformed},
		{name: "truncated in certificate", blob: func(b []byte) []byte { return b[:len(b)-1] }, wantRl: attest.RuleMalformed},
		{name: "trailing byte", blob: func(b []byte) []byte { return append(b, 0) }, wantRl: attest.RuleMalformed},
		{name: "zero signature length", blob: func(b []byte) []byte {
			return append(append(b[:offSigLen:offSigLen], 0, 0), b[offSig:]...)
		}, wantRl: attest.RuleMalformed},
		{name: "oversized signature length", blob: func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[offSigLen:], MaxSignatureSize+1)
			return b
		}, wantRl: attest.RuleMalformed},
		{name: "oversized certificate length", blob: func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[certLenOff(b):], MaxCertSize+1)
			return b
		}, wantRl: attest.RuleMalformed},
		{name: "certificate not DER", blob: func(b []byte) []byte {
			o := certLenOff(b)
			binary.BigEndian.PutUint16(b[o:], 3)
			return append(b[:o+2], 1, 2, 3)
		}, wantRl: attest.RuleMalformed},
		{name: "blob over the maximum size", blob: func(b []byte) []byte { return make([]byte, MaxBlobSize+1) }, wantRl: attest.RuleMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := &attest.Evidence{Type: attest.TEESim, Blob: bytes.Clone(good)}
			if tc.typ != "" {
				ev.Type = tc.typ
			}
			if tc.blob != nil {
				ev.Blob = tc.blob(ev.Blob)
			}
			if tc.nilEv {
				ev = nil
			}
			want := rd
			if tc.rd != ([64]byte{}) {
				want = tc.rd
			}
			c, err := v.Verify(context.Background(), ev, want)
			if got := ruleOf(err); got != tc.wantRl {
				t.Fatalf("rule %q (%v), want %q", got, err, tc.wantRl)
			}
			if (err == nil) != (c != nil) {
				t.Fatalf("claims %v with error %v", c, err)
			}
		})
	}
}

func TestNewVerifierErrors(t *testing.T) {
	p := testPlatform(t)
	platformCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.cert.Raw})
	tests := []struct {
		name  string
		roots [][]byte
	}{
		{"no roots", nil},
		{"empty PEM", [][]byte{{}}},
		{"garbage", [][]byte{[]byte("hello")}},
		{"not a CA", [][]byte{platformCert}},
		{"private key block", [][]byte{[]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")}},
		{"good root then garbage", [][]byte{p.RootCertPEM(), []byte("hello")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewVerifier(tc.roots...); err == nil {
				t.Fatal("NewVerifier accepted it")
			}
		})
	}
	// Several roots: evidence of either is accepted.
	q := testPlatform(t)
	v, err := NewVerifier(append(p.RootCertPEM(), q.RootCertPEM()...))
	if err != nil {
		t.Fatal(err)
	}
	for _, pl := range []*Platform{p, q} {
		if _, err := v.Verify(context.Background(), issue(t, pl.Issuer(), [64]byte{}), [64]byte{}); err != nil {
			t.Errorf("platform %x: %v", pl.ID()[:8], err)
		}
	}
}

func BenchmarkIssue(b *testing.B) {
	p := testPlatform(b)
	is := p.Issuer()
	if _, err := ExecutableMeasurement(); err != nil { // measured once, outside the loop
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := is.Issue(context.Background(), [64]byte{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	p := testPlatform(b)
	v, err := NewVerifier(p.RootCertPEM())
	if err != nil {
		b.Fatal(err)
	}
	ev := issue(b, p.Issuer(), [64]byte{})
	b.ReportMetric(float64(len(ev.Blob)), "blob-bytes")
	for b.Loop() {
		if _, err := v.Verify(context.Background(), ev, [64]byte{}); err != nil {
			b.Fatal(err)
		}
	}
}
