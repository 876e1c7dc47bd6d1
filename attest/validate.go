package attest

import (
	"bytes"
	"encoding/hex"
	"fmt"
)

// Refusal is the error the trust plane returns when a rule refuses something.
// Rule names the rule (for example "attest.measurement"), so that operators,
// owners and the transparency log can say exactly what refused. Every package of
// the trust plane returns refusals that implement RefusedBy.
type Refusal struct {
	Rule   string
	Reason string
}

// Error implements error.
func (r *Refusal) Error() string { return fmt.Sprintf("refused by rule %s: %s", r.Rule, r.Reason) }

// RefusedBy returns the name of the rule that refused.
func (r *Refusal) RefusedBy() string { return r.Rule }

func refuse(rule, format string, args ...any) error {
	return &Refusal{Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

// ReferenceValues are the accepted values for attested parties: which TEEs,
// which measurements, the minimum TCB and whether debug is tolerated.
type ReferenceValues struct {
	// AllowSim accepts evidence from the sim backend. Off unless set: sim
	// evidence protects nothing.
	AllowSim bool `json:"allow_sim"`
	// AllowDebug accepts TEEs that a host debugger can read.
	AllowDebug bool `json:"allow_debug"`
	// Measurements lists accepted measurements per TEE, hex encoded. A TEE with no
	// entry is not accepted at all.
	Measurements map[TEE][]string `json:"measurements"`
	// MinSVN is the minimum Claims.SVN per TEE (0 when absent).
	MinSVN map[TEE]uint64 `json:"min_svn,omitempty"`
	// PlatformIDs, when not empty, is an allowlist of platform ids (hex).
	PlatformIDs []string `json:"platform_ids,omitempty"`
}

// Validate checks verified claims against reference values and returns nil or a
// *Refusal naming the rule that failed: attest.sim-not-allowed, attest.tee,
// attest.debug, attest.measurement, attest.min-tcb or attest.platform-id.
func Validate(c *Claims, rv *ReferenceValues) error {
	if c == nil || rv == nil {
		return refuse("attest.missing", "no claims or no reference values")
	}
	if c.TEE == TEESim && !rv.AllowSim {
		return refuse("attest.sim-not-allowed", "evidence comes from the sim backend and the reference values do not allow sim")
	}
	accepted, ok := rv.Measurements[c.TEE]
	if !ok {
		return refuse("attest.tee", "TEE type %q is not accepted", c.TEE)
	}
	if c.Debug && !rv.AllowDebug {
		return refuse("attest.debug", "the TEE is in debug mode and debug is not allowed")
	}
	found := false
	for _, m := range accepted {
		want, err := hex.DecodeString(m)
		if err == nil && bytes.Equal(want, c.Measurement) {
			found = true
			break
		}
	}
	if !found {
		return refuse("attest.measurement", "measurement %x is not among the %d accepted for %s", c.Measurement, len(accepted), c.TEE)
	}
	if min := rv.MinSVN[c.TEE]; c.SVN < min {
		return refuse("attest.min-tcb", "TCB security version %d is below the minimum %d for %s", c.SVN, min, c.TEE)
	}
	if len(rv.PlatformIDs) > 0 {
		id := hex.EncodeToString(c.PlatformID)
		ok := false
		for _, p := range rv.PlatformIDs {
			if p == id {
				ok = true
				break
			}
		}
		if !ok {
			return refuse("attest.platform-id", "platform %s is not in the allowlist", id)
		}
	}
	return nil
}

// Rule names of the refusals returned by attestation verifiers (all backends)
// and by Nonces, so that callers, tests and logs compare names, not messages.
const (
	// RuleMalformed refuses evidence that cannot be decoded: wrong type, bad
	// lengths, trailing bytes, an unparsable certificate.
	RuleMalformed = "attest.malformed"
	// RuleRoot refuses evidence whose certificate chain does not lead to a
	// trusted root.
	RuleRoot = "attest.root"
	// RuleSignature refuses evidence whose signature does not verify under the
	// key of the certified platform.
	RuleSignature = "attest.signature"
	// RuleReportData refuses evidence that binds other report data than the
	// verifier expects (another nonce, other keys).
	RuleReportData = "attest.report-data"
	// RuleNonceUnknown refuses a nonce this verifier never issued, or has
	// already forgotten.
	RuleNonceUnknown = "attest.nonce-unknown"
	// RuleNonceExpired refuses a nonce presented after its time to live.
	RuleNonceExpired = "attest.nonce-expired"
	// RuleNonceReplayed refuses a nonce that was already consumed.
	RuleNonceReplayed = "attest.nonce-replayed"
)
