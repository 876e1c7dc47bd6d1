package refvalues

import (
	"bytes"
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

	"github.com/sealflow/sealflow/attest"
)

func key(t testing.TB, seed byte) ed25519.PrivateKey {
	t.Helper()
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
}

func sampleFile() *File {
	return &File{
		Release:  "v1.2.0",
		IssuedAt: time.Date(2026, 11, 25, 23, 0, 0, 0, time.UTC),
		Values: attest.ReferenceValues{
			Measurements: map[attest.TEE][]string{
				attest.TEESNP: {strings.Repeat("ab", 48)},
				attest.TEETDX: {strings.Repeat("cd", 48)},
			},
			MinSVN: map[attest.TEE]uint64{attest.TEESNP: 8, attest.TEETDX: 3},
		},
	}
}

func TestSignLoad(t *testing.T) {
	signer, other := key(t, 1), key(t, 2)
	data, err := Sign(sampleFile(), signer)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "refvalues.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	rv, err := Load(path, []ed25519.PublicKey{other.Public().(ed25519.PublicKey), signer.Public().(ed25519.PublicKey)})
	if err != nil {
		t.Fatal(err)
	}
	// The loaded values drive attest.Validate: an SNP node with the listed
	// measurement and SVN 8 passes, SVN 7 and another measurement do not.
	m, _ := hex.DecodeString(strings.Repeat("ab", 48))
	if err := attest.Validate(&attest.Claims{TEE: attest.TEESNP, Measurement: m, SVN: 8}, rv); err != nil {
		t.Errorf("Validate with loaded values: %v", err)
	}
	if err := attest.Validate(&attest.Claims{TEE: attest.TEESNP, Measurement: m, SVN: 7}, rv); err == nil {
		t.Error("Validate accepted an SVN below the signed minimum")
	}
	if err := attest.Validate(&attest.Claims{TEE: attest.TEESim, Measurement: m}, rv); err == nil {
		t.Error("Validate accepted sim though the signed values do not allow it")
	}
}

// resign builds an envelope around payload signed by k, bypassing Sign's checks.
func resign(t testing.TB, payload []byte, k ed25519.PrivateKey) []byte {
	t.Helper()
	b, err := json.Marshal(envelope{Payload: payload, Signer: k.Public().(ed25519.PublicKey), Signature: ed25519.Sign(k, append([]byte(domain), payload...))})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseRefusals(t *testing.T) {
	signer := key(t, 1)
	trusted := []ed25519.PublicKey{signer.Public().(ed25519.PublicKey)}
	good, err := Sign(sampleFile(), signer)
	if err != nil {
		t.Fatal(err)
	}
	var env envelope
	if err := json.Unmarshal(good, &env); err != nil {
		t.Fatal(err)
	}
	tampered := env
	tampered.Payload = bytes.Replace(env.Payload, []byte(`"min_svn":{"snp":8`), []byte(`"min_svn":{"snp":1`), 1)
	if bytes.Equal(tampered.Payload, env.Payload) {
		t.Fatal("the payload does not hold the min_svn to tamper with")
	}
	tamperedBytes, _ := json.Marshal(tampered)
	// The signing domain matters: a signature over the bare payload is refused.
	bare := env
	bare.Signature = ed25519.Sign(signer, env.Payload)
	bareBytes, _ := json.Marshal(bare)

	for _, tc := range []struct {
		name string
		data []byte
		rule string // "" for a plain error
		want string
	}{
		{"payload tampered", tamperedBytes, RuleSignature, ""},
		{"signature without the domain label", bareBytes, RuleSignature, ""},
		{"untrusted signer", resign(t, env.Payload, key(t, 3)), RuleSigner, ""},
		{"unknown payload field", resign(t, []byte(`{"release":"v1","issued_at":"2026-01-01T00:00:00Z","values":{"measurements":{}},"allow_everything":true}`), signer), "", "unknown field"},
		{"unknown TEE", resign(t, []byte(`{"release":"v1","issued_at":"2026-01-01T00:00:00Z","values":{"measurements":{"sgx":["00"]}}}`), signer), "", "unknown TEE"},
		{"short measurement", resign(t, []byte(`{"release":"v1","issued_at":"2026-01-01T00:00:00Z","values":{"measurements":{"snp":["abcd"]}}}`), signer), "", "48 hex-encoded bytes"},
		{"RTMR index out of range", resign(t, []byte(`{"release":"v1","issued_at":"2026-01-01T00:00:00Z","values":{},"tdx_rtmrs":{"4":["`+strings.Repeat("00", 48)+`"]}}`), signer), "", "RTMR4"},
		{"short RTMR", resign(t, []byte(`{"release":"v1","issued_at":"2026-01-01T00:00:00Z","values":{},"tdx_rtmrs":{"1":["00"]}}`), signer), "", "RTMR1 value 0"},
		{"no release", resign(t, []byte(`{"release":"","issued_at":"2026-01-01T00:00:00Z","values":{}}`), signer), "", "release is empty"},
		{"trailing data", append(bytes.Clone(good), []byte(`{}`)...), "", "follows"},
		{"not JSON", []byte("payload"), "", "not a signed reference-values envelope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.data, trusted)
			if err == nil {
				t.Fatal("Parse accepted the file")
			}
			var r interface{ RefusedBy() string }
			isRefusal := errors.As(err, &r)
			if tc.rule != "" && (!isRefusal || r.RefusedBy() != tc.rule) {
				t.Fatalf("Parse = %v, want a refusal by %s", err, tc.rule)
			}
			if tc.rule == "" && !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse = %v, want an error about %q", err, tc.want)
			}
		})
	}
	if _, err := Parse(good, trusted); err != nil {
		t.Errorf("the untampered file: %v", err)
	}
}

func TestSignChecks(t *testing.T) {
	f := sampleFile()
	f.Values.Measurements[attest.TEESNP] = []string{"zz"}
	if _, err := Sign(f, key(t, 1)); err == nil {
		t.Error("Sign accepted a measurement that is not hex")
	}
	if _, err := Sign(sampleFile(), ed25519.PrivateKey("short")); err == nil {
		t.Error("Sign accepted a malformed key")
	}
}

func FuzzParse(f *testing.F) {
	signer := key(f, 1)
	trusted := []ed25519.PublicKey{signer.Public().(ed25519.PublicKey)}
	good, err := Sign(sampleFile(), signer)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"payload":"","signer":"","signature":""}`))
	f.Add([]byte(`{"payload":"` + base64.StdEncoding.EncodeToString([]byte(`{"release":"x"}`)) + `"}`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse(data, trusted)
		if err != nil {
			return
		}
		// Whatever parses was signed by the trusted key and passes Check, and
		// signing it again yields a file that parses to the same values.
		if err := file.Check(); err != nil {
			t.Fatalf("Parse returned a file that fails Check: %v", err)
		}
		again, err := Sign(file, signer)
		if err != nil {
			t.Fatal(err)
		}
		f2, err := Parse(again, trusted)
		if err != nil || f2.Release != file.Release || !f2.IssuedAt.Equal(file.IssuedAt) {
			t.Fatalf("re-signed file does not round-trip: %v", err)
		}
	})
}
