package client

import (
	"bytes"
	"errors"
	"testing"

	"github.com/sealflow/sealflow/attest"
)

func TestOpenModuleRefusesWhatWasNotSealedForIt(t *testing.T) {
	key := NewCodeKey()
	wasm := bytes.Repeat([]byte("\x00asm proprietary model weights "), 100)
	digest, ct, err := SealModule(key, "svc", 2, wasm)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(ct, wasm[:64]) {
		t.Fatal("the ciphertext contains plaintext")
	}
	other := ModuleDigest([]byte("other"))
	flipped := bytes.Clone(ct)
	flipped[len(flipped)/2] ^= 1
	tests := []struct {
		name    string
		key     []byte
		service string
		version int64
		digest  string
		ct      []byte
		rule    string
	}{
		{"the module", key, "svc", 2, digest, ct, ""},
		{"a flipped bit", key, "svc", 2, digest, flipped, RuleModuleCiphertext},
		{"truncated", key, "svc", 2, digest, ct[:len(ct)-1], RuleModuleCiphertext},
		{"too short", key, "svc", 2, digest, ct[:10], RuleModuleCiphertext},
		{"another service", key, "svc2", 2, digest, ct, RuleModuleCiphertext},
		{"another version", key, "svc", 3, digest, ct, RuleModuleCiphertext},
		{"another digest", key, "svc", 2, other, ct, RuleModuleCiphertext},
		{"another key", NewCodeKey(), "svc", 2, digest, ct, RuleModuleCiphertext},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := OpenModule(tc.key, tc.service, tc.version, tc.digest, tc.ct)
			var r *attest.Refusal
			switch {
			case tc.rule == "" && (err != nil || !bytes.Equal(got, wasm)):
				t.Fatalf("OpenModule = %v", err)
			case tc.rule != "" && (!errors.As(err, &r) || r.Rule != tc.rule):
				t.Fatalf("OpenModule = %v, want a refusal by %s", err, tc.rule)
			}
		})
	}
}

func TestOpenModuleChecksTheDigest(t *testing.T) {
	// A provider that seals one module under another's digest (the AEAD
	// authenticates, the code is not what owners approved).
	key := NewCodeKey()
	aead, _ := codeAEAD(key)
	approved := ModuleDigest([]byte("approved"))
	nonce := make([]byte, aead.NonceSize())
	ct := aead.Seal(bytes.Clone(nonce), nonce, []byte("something else"), moduleAD("svc", 1, approved))
	_, err := OpenModule(key, "svc", 1, approved, ct)
	var r *attest.Refusal
	if !errors.As(err, &r) || r.Rule != RuleModuleDigest {
		t.Fatalf("OpenModule = %v, want a refusal by %s", err, RuleModuleDigest)
	}
}
