package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/attest/refvalues"
)

const (
	snpData = "../../attest/snp/testdata/"
	tdxData = "../../attest/tdx/testdata/"
)

// captureStdout runs f with os.Stdout redirected to a file and returns what it printed.
func captureStdout(t *testing.T, f func() error) (string, error) {
	t.Helper()
	out, err := os.CreateTemp(t.TempDir(), "stdout")
	if err != nil {
		t.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = out
	ferr := f()
	os.Stdout = stdout
	b, err := os.ReadFile(out.Name())
	if err != nil {
		t.Fatal(err)
	}
	return string(b), ferr
}

func TestAttestVerify(t *testing.T) {
	dir := t.TempDir()
	raw, err := os.ReadFile(snpData + "attestation.bin")
	if err != nil {
		t.Fatal(err)
	}
	report, err := abi.ReportToProto(raw)
	if err != nil {
		t.Fatal(err)
	}
	measurement := hex.EncodeToString(report.GetMeasurement())

	// A release signer publishes the sample's measurement; another key is not trusted.
	signer := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	pub := base64.StdEncoding.EncodeToString(signer.Public().(ed25519.PublicKey))
	other := hex.EncodeToString(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{8}, 32)).Public().(ed25519.PublicKey))
	writeRV := func(name string, m string) string {
		data, err := refvalues.Sign(&refvalues.File{Release: "v0.1.0", IssuedAt: time.Now(), Values: attest.ReferenceValues{
			AllowDebug:   true,
			Measurements: map[attest.TEE][]string{attest.TEESNP: {m}},
			MinSVN:       map[attest.TEE]uint64{attest.TEESNP: 5},
		}}, signer)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	goodRV := writeRV("good.json", measurement)
	otherRV := writeRV("other.json", strings.Repeat("00", 48))

	snpArgs := []string{"--evidence", snpData + "attestation.bin", "--vcek", snpData + "vcek.testcer", "--ask-ark", snpData + "milan.testcer", "--at", "2024-01-01T00:00:00Z"}
	with := func(base []string, more ...string) []string { return append(append([]string(nil), base...), more...) }
	tdxArgs := []string{"--evidence", tdxData + "quote.dat", "--at", "2023-07-01T00:00:00Z"}

	for _, tc := range []struct {
		name  string
		args  []string
		rule  string // refusal wanted; "" for success
		usage bool
		out   string // substring of the output
	}{
		{"snp sample", with(snpArgs, "--report-data", "0102030405", "--allow-debug"), "", false, measurement},
		{"snp sample, json", with(snpArgs, "--report-data", "0102030405", "--allow-debug", "--json"), "", false, `"verified": true`},
		{"snp debug refused", with(snpArgs, "--report-data", "0102030405"), "snp.debug", false, ""},
		{"snp wrong report data", with(snpArgs, "--report-data", "0102030406", "--allow-debug"), "snp.report-data", false, ""},
		{"snp expired", with(snpArgs, "--allow-debug", "--at", "2030-01-01T00:00:00Z", "--json"), "snp.cert-expired", false, `"rule": "snp.cert-expired"`},
		{"snp measurement pinned elsewhere", with(snpArgs, "--allow-debug", "--measurement", strings.Repeat("11", 48)), "snp.measurement", false, ""},
		{"snp without certificates", []string{"--evidence", snpData + "attestation.bin", "--allow-debug"}, "snp.missing-cert", false, ""},
		{"snp signed reference values", with(snpArgs, "--refvalues", goodRV, "--signer", pub), "", false, "release v0.1.0"},
		{"snp reference values of another build", with(snpArgs, "--refvalues", otherRV, "--signer", pub), "snp.measurement", false, ""},
		{"snp reference values by an untrusted signer", with(snpArgs, "--refvalues", goodRV, "--signer", other), "refvalues.signer", false, ""},
		{"tdx sample", tdxArgs, "", false, "skipped:"},
		{"tdx sample, report data", with(tdxArgs, "--report-data", "6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545eb7406a38d1eed313b987a467dacead6f0c87a6d766c66f6f29f8acb281f1113"), "", false, "6363b8043668"},
		{"tdx with collateral", with(tdxArgs, "--collateral", tdxData+"collateral"), "tdx.tcb-status", false, ""},
		{"tdx expired", with(tdxArgs, "--at", "2031-01-01T00:00:00Z"), "tdx.cert-expired", false, ""},
		{"tdx as snp", with(tdxArgs, "--type", "snp"), "", true, ""},
		{"no evidence", []string{"--json"}, "", true, ""},
		{"bad time", with(tdxArgs, "--at", "yesterday"), "", true, ""},
		{"bad report data", with(tdxArgs, "--report-data", "xyz"), "", true, ""},
		{"collateral for snp", with(snpArgs, "--collateral", tdxData+"collateral"), "", true, ""},
		{"signer without refvalues", with(tdxArgs, "--signer", pub), "", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := captureStdout(t, func() error { return runAttestVerify(context.Background(), tc.args) })
			var r *attest.Refusal
			switch {
			case tc.usage:
				// A usage error, or evidence that does not decode as the forced type.
				if err == nil || errors.As(err, &r) {
					t.Fatalf("attest verify %v = %v, want an invocation error", tc.args, err)
				}
			case tc.rule != "":
				if !errors.As(err, &r) || r.Rule != tc.rule {
					t.Fatalf("attest verify %v = %v, want a refusal by %s", tc.args, err, tc.rule)
				}
			default:
				if err != nil {
					t.Fatalf("attest verify %v = %v", tc.args, err)
				}
			}
			if !strings.Contains(out, tc.out) {
				t.Errorf("output %q does not contain %q", out, tc.out)
			}
			if !tc.usage && strings.Contains(strings.Join(tc.args, " "), "--json") {
				var res attestResult
				if err := json.Unmarshal([]byte(out), &res); err != nil {
					t.Fatalf("--json output is not JSON: %v\n%s", err, out)
				}
				if res.Verified != (tc.rule == "") || res.Rule != tc.rule {
					t.Errorf("--json result %+v, want verified=%v rule=%q", res, tc.rule == "", tc.rule)
				}
			}
		})
	}
}

func TestRefvaluesKeygenSign(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "signer.key")
	out, err := captureStdout(t, func() error { return runRefvaluesKeygen(context.Background(), []string{"--out", key}) })
	if err != nil {
		t.Fatal(err)
	}
	_, pub, ok := strings.Cut(strings.TrimSpace(out), "signer: ")
	if !ok {
		t.Fatalf("keygen printed no signer: %q", out)
	}
	if _, err := captureStdout(t, func() error { return runRefvaluesKeygen(context.Background(), []string{"--out", key}) }); err == nil {
		t.Error("keygen overwrote an existing key file")
	}
	values := filepath.Join(dir, "values.json")
	os.WriteFile(values, []byte(`{"measurements":{"tdx":["6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"]},"min_svn":{"tdx":3}}`), 0o644)
	signed := filepath.Join(dir, "refvalues.json")
	if _, err := captureStdout(t, func() error {
		return runRefvaluesSign(context.Background(), []string{"--values", values, "--release", "v9", "--key", key, "--out", signed})
	}); err != nil {
		t.Fatal(err)
	}
	// The signed file accepts the TDX sample under the printed signer key.
	out, err = captureStdout(t, func() error {
		return runAttestVerify(context.Background(), []string{"--evidence", tdxData + "quote.dat", "--at", "2023-07-01T00:00:00Z", "--refvalues", signed, "--signer", pub})
	})
	if err != nil || !strings.Contains(out, "release v9") {
		t.Fatalf("verify with the signed values = %v\n%s", err, out)
	}
	// A release that pins RTMR1 to another kernel refuses the sample.
	rv := &refvalues.File{Release: "v10", IssuedAt: time.Now(), Values: attest.ReferenceValues{Measurements: map[attest.TEE][]string{attest.TEETDX: {"6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"}}},
		TDXRTMRs: map[int][]string{1: {strings.Repeat("00", 48)}}}
	kb, _ := os.ReadFile(key)
	seed, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(string(kb)))
	data, err := refvalues.Sign(rv, ed25519.NewKeyFromSeed(seed))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(signed, data, 0o644)
	_, err = captureStdout(t, func() error {
		return runAttestVerify(context.Background(), []string{"--evidence", tdxData + "quote.dat", "--at", "2023-07-01T00:00:00Z", "--refvalues", signed, "--signer", pub})
	})
	var r *attest.Refusal
	if !errors.As(err, &r) || r.Rule != "tdx.rtmr" {
		t.Fatalf("verify with another RTMR1 = %v, want a refusal by tdx.rtmr", err)
	}
	// Values with an unknown field are not signed.
	os.WriteFile(values, []byte(`{"measurements":{},"allow_all":true}`), 0o644)
	if _, err := captureStdout(t, func() error {
		return runRefvaluesSign(context.Background(), []string{"--values", values, "--release", "v9", "--key", key, "--out", signed + "2"})
	}); err == nil {
		t.Error("sign accepted values with an unknown field")
	}
}
