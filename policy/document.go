// Package policy holds the per-stream policies of data owners, written in CEL
// (https://cel.dev). A policy is a list of named rules; each rule is a boolean
// CEL expression guarding one stage of the trust protocol:
//
//   - placement: may this service run on this node? Variables: service and node.
//   - recipient: may this recipient receive outputs derived from the stream?
//     Variables: service and recipient.
//   - service: may this service read the stream at all? Variables: service.
//
// Every rule of a stage must hold for the stage to allow. A Document is decoded
// from YAML or JSON (Decode), compiled once and type-checked against the
// declared variables (Compile), and evaluated deterministically without I/O
// (Policy.Evaluate). Refusals name the rule that refused as
// "policy:<stream>/<rule>", so that owners, operators and the transparency log
// can say exactly what refused.
//
// The same rules work for every TEE backend: NodeFromClaims turns verified
// attestation claims of sim, snp or tdx into one Node, so that a rule such as
//
//	node.tee in ['snp', 'tdx'] && node.svn >= 3 && !node.debug
//
// means the same thing everywhere. Besides the CEL standard library, rules may
// use optional values (node.tcb.?snp.orValue(0)), the strings and sets
// extensions, and tcbAtLeast(node.tcb, {'snp': 8}).
package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"

	"sigs.k8s.io/yaml"
)

// Stage names the decision a rule guards.
type Stage string

// The stages a policy can guard.
const (
	// StagePlacement decides whether a service may run on a node.
	StagePlacement Stage = "placement"
	// StageRecipient decides whether a recipient may receive outputs derived
	// from the stream.
	StageRecipient Stage = "recipient"
	// StageService decides whether a service may read the stream at all,
	// wherever it runs: an owner's standing approval of services, beside
	// approving one exact service digest. Variables: service.
	StageService Stage = "service"
)

// Stages lists every stage in a fixed order.
var Stages = []Stage{StagePlacement, StageRecipient, StageService}

func (s Stage) valid() bool {
	return s == StagePlacement || s == StageRecipient || s == StageService
}

// Limits on policy documents, which come from data owners and are untrusted
// input until compiled.
const (
	// MaxDocumentSize is the largest policy document Decode accepts, in bytes.
	MaxDocumentSize = 64 << 10
	// MaxRules is the largest number of rules in one document.
	MaxRules = 64
	// MaxExprLength is the longest rule expression, in bytes.
	MaxExprLength = 4096
)

// Rule is one named boolean CEL expression guarding one stage.
type Rule struct {
	// Name identifies the rule within its policy; refusals cite it. Lower-case
	// letters, digits, '-', '_' and '.', starting with a letter or digit.
	Name string `json:"name"`
	// Stage is the decision the rule guards.
	Stage Stage `json:"stage"`
	// Expr is the CEL expression; it must have type bool.
	Expr string `json:"expr"`
	// Description says, for humans, why the rule exists.
	Description string `json:"description,omitempty"`
}

// Document is a policy as an owner writes it: the stream it governs and its
// rules, in order.
type Document struct {
	// Stream is the name of the stream the policy governs.
	Stream string `json:"stream"`
	// Rules are evaluated in order; every rule of a stage must hold.
	Rules []Rule `json:"rules"`
}

var (
	ruleNameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	streamNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$`)
)

// Decode parses a policy document from YAML or JSON (JSON is YAML). Unknown
// fields and duplicate keys are errors, so that a misspelt field is not
// silently ignored. The document is checked (see Document.Validate) but not
// compiled.
func Decode(data []byte) (*Document, error) {
	if len(data) > MaxDocumentSize {
		return nil, fmt.Errorf("policy: document is %d bytes, larger than the limit of %d", len(data), MaxDocumentSize)
	}
	var d Document
	if err := yaml.UnmarshalStrict(data, &d); err != nil {
		return nil, fmt.Errorf("policy: decoding document: %w", err)
	}
	if err := checkKeys(data); err != nil {
		return nil, err
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

// checkKeys rejects keys that differ from the field names only in case
// ("Stream", "EXPR"): encoding/json would accept them, and a document that
// reads differently to a human and to the decoder has no place in a policy.
func checkKeys(data []byte) error {
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return fmt.Errorf("policy: decoding document: %w", err)
	}
	var raw struct {
		Top   map[string]json.RawMessage
		Rules []map[string]json.RawMessage
	}
	if err := json.Unmarshal(j, &raw.Top); err != nil {
		return fmt.Errorf("policy: decoding document: %w", err)
	}
	for k := range raw.Top {
		if k != "stream" && k != "rules" {
			return fmt.Errorf("policy: document has key %q; want exactly \"stream\" and \"rules\"", k)
		}
	}
	if r, ok := raw.Top["rules"]; ok {
		if err := json.Unmarshal(r, &raw.Rules); err != nil {
			return fmt.Errorf("policy: decoding rules: %w", err)
		}
	}
	for i, r := range raw.Rules {
		for k := range r {
			switch k {
			case "name", "stage", "expr", "description":
			default:
				return fmt.Errorf("policy: rule %d has key %q; want name, stage, expr or description", i, k)
			}
		}
	}
	return nil
}

// Validate checks the shape of the document: a stream name, 1 to MaxRules
// rules with unique valid names, known stages and non-empty expressions no
// longer than MaxExprLength. It does not compile the expressions.
func (d *Document) Validate() error {
	if !streamNameRE.MatchString(d.Stream) {
		return fmt.Errorf("policy: stream name %q is invalid: want letters, digits, '.', '_', '/', '-' (at most 200)", d.Stream)
	}
	if len(d.Rules) == 0 {
		return fmt.Errorf("policy for stream %s: no rules", d.Stream)
	}
	if len(d.Rules) > MaxRules {
		return fmt.Errorf("policy for stream %s: %d rules, more than the limit of %d", d.Stream, len(d.Rules), MaxRules)
	}
	seen := make(map[string]bool, len(d.Rules))
	for i, r := range d.Rules {
		if !ruleNameRE.MatchString(r.Name) {
			return fmt.Errorf("policy for stream %s: rule %d: name %q is invalid: want lower-case letters, digits, '.', '_', '-' (at most 64)", d.Stream, i, r.Name)
		}
		if seen[r.Name] {
			return fmt.Errorf("policy for stream %s: rule name %q is used twice", d.Stream, r.Name)
		}
		seen[r.Name] = true
		if !r.Stage.valid() {
			return fmt.Errorf("policy for stream %s: rule %s: unknown stage %q (want %q, %q or %q)", d.Stream, r.Name, r.Stage, StagePlacement, StageRecipient, StageService)
		}
		if len(r.Expr) == 0 {
			return fmt.Errorf("policy for stream %s: rule %s: empty expression", d.Stream, r.Name)
		}
		if len(r.Expr) > MaxExprLength {
			return fmt.Errorf("policy for stream %s: rule %s: expression is %d bytes, longer than the limit of %d", d.Stream, r.Name, len(r.Expr), MaxExprLength)
		}
	}
	return nil
}

// CanonicalJSON returns the document's canonical encoding: compact JSON with
// fields in declaration order and no HTML escaping. Two documents with the same
// content have the same canonical encoding whatever their source format.
func (d *Document) CanonicalJSON() ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(d); err != nil {
		return nil, fmt.Errorf("policy for stream %s: encoding canonical JSON: %w", d.Stream, err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Digest returns the hex SHA-256 of the document's canonical JSON: the
// identity of a policy version, recorded with every key release.
func (d *Document) Digest() (string, error) {
	b, err := d.CanonicalJSON()
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}
