package sim

import (
	"bytes"
	"context"
	"testing"

	"github.com/sealflow/sealflow/attest"
)

// FuzzParse feeds arbitrary bytes to the evidence decoder and the verifier.
// Neither may panic; every error must be a refusal naming a rule; a blob the
// decoder accepts must re-encode to exactly itself (the encoding is
// canonical); and the verifier accepts only the one genuine blob.
func FuzzParse(f *testing.F) {
	p, err := LoadOrCreate(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	v, err := NewVerifier(p.RootCertPEM())
	if err != nil {
		f.Fatal(err)
	}
	rd := attest.BindReportData([]byte("fuzz nonce"))
	ev, err := p.Issuer(WithSVN(9), WithDebug(true)).Issue(context.Background(), rd)
	if err != nil {
		f.Fatal(err)
	}
	genuine := ev.Blob
	f.Add(genuine)
	for _, n := range []int{0, 3, 4, offSigLen, offSig, offSig + 40, len(genuine) - 1} {
		f.Add(bytes.Clone(genuine[:n]))
	}
	f.Add(append(bytes.Clone(genuine), 0))
	f.Add([]byte("sfsm\x00\x01"))

	f.Fuzz(func(t *testing.T, blob []byte) {
		a, err := Parse(blob)
		if err != nil {
			if got := ruleOf(err); got != attest.RuleMalformed {
				t.Fatalf("Parse error %v has rule %q, want %q", err, got, attest.RuleMalformed)
			}
		} else if re := a.Marshal(); !bytes.Equal(re, blob) {
			t.Fatalf("Parse accepted %x but it re-encodes to %x", blob, re)
		}
		c, err := v.Verify(context.Background(), &attest.Evidence{Type: attest.TEESim, Blob: blob}, rd)
		switch {
		case err != nil:
			switch ruleOf(err) {
			case attest.RuleMalformed, attest.RuleRoot, attest.RuleSignature, attest.RuleReportData:
			default:
				t.Fatalf("Verify error %v is not a verifier refusal", err)
			}
		case c == nil:
			t.Fatal("Verify returned neither claims nor an error")
		case !bytes.Equal(blob, genuine):
			// ECDSA signatures are malleable only with the key; any other
			// accepted blob would be a forgery or a non-canonical decoding.
			t.Fatalf("Verify accepted a blob other than the genuine one: %x", blob)
		}
	})
}
