package attest_test

import (
	"context"
	"encoding/hex"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/attest/sim"
)

// admit is what a verifier of the trust plane does with an attested party's
// evidence: consume the nonce it issued, verify the evidence binds that nonce
// and the party's key, then validate the claims against reference values.
func admit(ctx context.Context, ns *attest.Nonces, v attest.Verifier, rv *attest.ReferenceValues,
	nonce, publicKey []byte, ev *attest.Evidence, now time.Time) error {
	if err := ns.Consume(nonce, now); err != nil {
		return err
	}
	claims, err := v.Verify(ctx, ev, attest.BindReportData(nonce, publicKey))
	if err != nil {
		return err
	}
	return attest.Validate(claims, rv)
}

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

// TestAdmissionMatrix is the full accept/reject matrix of attestation with the
// sim backend: every way to fail is refused by its own named rule.
func TestAdmissionMatrix(t *testing.T) {
	ctx := context.Background()
	platform, err := sim.LoadOrCreate(filepath.Join(t.TempDir(), "trusted"))
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := sim.LoadOrCreate(filepath.Join(t.TempDir(), "foreign"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := sim.NewVerifier(platform.RootCertPEM())
	if err != nil {
		t.Fatal(err)
	}
	exe, err := sim.ExecutableMeasurement()
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 30 * time.Second
	t0 := time.Date(2026, 11, 25, 23, 30, 0, 0, time.UTC)
	key := []byte("worker HPKE public key")

	type attempt struct {
		platform *sim.Platform
		opts     []sim.IssuerOption
		// nonce returns the nonce the party binds and the verifier is
		// presented with; nil means the one the verifier issued.
		nonce     func(issued []byte) []byte
		bindKey   []byte // the key the party binds; nil means key
		tamper    func(*attest.Evidence)
		consumeAt time.Duration // after issue
		rv        func(*attest.ReferenceValues)
		replays   bool // admit once, then present the same again
	}
	tests := []struct {
		name string
		a    attempt
		want string
	}{
		{"valid evidence accepted", attempt{}, ""},
		{"valid at higher svn", attempt{opts: []sim.IssuerOption{sim.WithSVN(7)}}, ""},
		{"debug accepted when allowed", attempt{opts: []sim.IssuerOption{sim.WithDebug(true)},
			rv: func(rv *attest.ReferenceValues) { rv.AllowDebug = true }}, ""},
		{"platform in allowlist", attempt{rv: func(rv *attest.ReferenceValues) {
			rv.PlatformIDs = []string{hex.EncodeToString(platform.ID())}
		}}, ""},
		{"wrong signature (flipped bit)", attempt{tamper: func(ev *attest.Evidence) {
			ev.Blob[10] ^= 0x04 // inside the signed measurement
		}}, attest.RuleSignature},
		{"wrong root", attempt{platform: foreign}, attest.RuleRoot},
		{"stale nonce", attempt{consumeAt: ttl + time.Second}, attest.RuleNonceExpired},
		{"replayed nonce", attempt{replays: true}, attest.RuleNonceReplayed},
		{"unknown nonce", attempt{nonce: func([]byte) []byte {
			return []byte("a nonce the verifier never issued")[:32]
		}}, attest.RuleNonceUnknown},
		{"report data binds other keys", attempt{bindKey: []byte("attacker key")}, attest.RuleReportData},
		{"report data binds another nonce", attempt{tamper: func(ev *attest.Evidence) {
			other, err := platform.Issuer().Issue(ctx, attest.BindReportData([]byte("old nonce"), key))
			if err != nil {
				t.Fatal(err)
			}
			*ev = *other
		}}, attest.RuleReportData},
		{"measurement not in reference values", attempt{opts: []sim.IssuerOption{
			sim.WithMeasurement(make([]byte, 48)),
		}}, "attest.measurement"},
		{"debug when not allowed", attempt{opts: []sim.IssuerOption{sim.WithDebug(true)}}, "attest.debug"},
		{"sim when not allowed", attempt{rv: func(rv *attest.ReferenceValues) { rv.AllowSim = false }}, "attest.sim-not-allowed"},
		{"svn below minimum", attempt{opts: []sim.IssuerOption{sim.WithSVN(1)}}, "attest.min-tcb"},
		{"platform not in allowlist", attempt{rv: func(rv *attest.ReferenceValues) {
			rv.PlatformIDs = []string{hex.EncodeToString(foreign.ID())}
		}}, "attest.platform-id"},
		{"corrupted blob", attempt{tamper: func(ev *attest.Evidence) { ev.Blob[0] = 'X' }}, attest.RuleMalformed},
		{"truncated blob", attempt{tamper: func(ev *attest.Evidence) { ev.Blob = ev.Blob[:len(ev.Blob)/2] }}, attest.RuleMalformed},
		{"evidence of another TEE type", attempt{tamper: func(ev *attest.Evidence) { ev.Type = attest.TEETDX }}, attest.RuleMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.a
			rv := &attest.ReferenceValues{
				AllowSim:     true,
				Measurements: map[attest.TEE][]string{attest.TEESim: {hex.EncodeToString(exe)}},
				MinSVN:       map[attest.TEE]uint64{attest.TEESim: 2},
			}
			if a.rv != nil {
				a.rv(rv)
			}
			ns := attest.NewNonces(ttl, 0)
			nonce := ns.Issue(t0)
			if a.nonce != nil {
				nonce = a.nonce(nonce)
			}
			p := platform
			if a.platform != nil {
				p = a.platform
			}
			bind := key
			if a.bindKey != nil {
				bind = a.bindKey
			}
			opts := append([]sim.IssuerOption{sim.WithSVN(2)}, a.opts...)
			ev, err := p.Issuer(opts...).Issue(ctx, attest.BindReportData(nonce, bind))
			if err != nil {
				t.Fatal(err)
			}
			if a.tamper != nil {
				a.tamper(ev)
			}
			now := t0.Add(a.consumeAt)
			err = admit(ctx, ns, v, rv, nonce, key, ev, now)
			if a.replays {
				if err != nil {
					t.Fatalf("first presentation refused: %v", err)
				}
				err = admit(ctx, ns, v, rv, nonce, key, ev, now.Add(time.Second))
			}
			if got := ruleOf(err); got != tc.want {
				t.Fatalf("refused by %q (%v), want %q", got, err, tc.want)
			}
		})
	}
}
