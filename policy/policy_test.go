package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/attest"
)

const testDoc = `
stream: households/meter
rules:
  - name: tee
    stage: placement
    expr: node.tee in ['snp', 'tdx'] && node.svn >= 3 && !node.debug
    description: real TEEs only, patched, never debuggable
  - name: region
    stage: placement
    expr: node.region in ['eu-west', 'eu-central'] && node.tier != 'device'
  - name: snp-microcode
    stage: placement
    expr: node.tee != 'snp' || node.tcb.?microcode.orValue(0) >= 200
  - name: approved-service
    stage: placement
    expr: service.provider == 'gridco' && service.security_version >= 2
  - name: grid-operators
    stage: recipient
    expr: recipient.role == 'operator' || (recipient.role == 'provider' && recipient.id == service.provider)
  - name: known-providers
    stage: service
    expr: service.provider in ['gridco', 'tso'] && service.version >= 3
`

func mustCompile(t testing.TB, src string, opts ...CompileOption) *Policy {
	t.Helper()
	p, err := CompileBytes([]byte(src), opts...)
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	return p
}

func goodInput() Input {
	return Input{
		Service: Service{ID: "balancer", Provider: "gridco", Version: 7, SecurityVersion: 2, Digest: "ab", CodeDigests: []string{"c1"}},
		Node: Node{ID: "n1", TEE: "snp", Measurement: "00ff", SVN: 3, TCB: map[string]int64{"microcode": 210},
			Tier: "regional", Region: "eu-west", Site: "ams1"},
		Recipient: Recipient{ID: "gridco", Name: "Grid Co", Role: "provider"},
	}
}

func TestEvaluate(t *testing.T) {
	p := mustCompile(t, testDoc)
	tests := []struct {
		name   string
		stage  Stage
		mutate func(*Input)
		refuse string // expected refusing rule, "" when allowed
	}{
		{"all good snp", StagePlacement, func(*Input) {}, ""},
		{"tdx without microcode component", StagePlacement, func(in *Input) { in.Node.TEE = "tdx"; in.Node.TCB = nil }, ""},
		{"sim refused", StagePlacement, func(in *Input) { in.Node.TEE = "sim" }, "tee"},
		{"svn too low", StagePlacement, func(in *Input) { in.Node.SVN = 2 }, "tee"},
		{"debug", StagePlacement, func(in *Input) { in.Node.Debug = true }, "tee"},
		{"wrong region", StagePlacement, func(in *Input) { in.Node.Region = "us-east" }, "region"},
		{"device tier", StagePlacement, func(in *Input) { in.Node.Tier = "device" }, "region"},
		{"snp microcode too old", StagePlacement, func(in *Input) { in.Node.TCB["microcode"] = 199 }, "snp-microcode"},
		{"snp microcode missing", StagePlacement, func(in *Input) { in.Node.TCB = nil }, "snp-microcode"},
		{"other provider", StagePlacement, func(in *Input) { in.Service.Provider = "evil" }, "approved-service"},
		{"old security version", StagePlacement, func(in *Input) { in.Service.SecurityVersion = 1 }, "approved-service"},
		{"first failing rule is named", StagePlacement, func(in *Input) { in.Node.Debug = true; in.Node.Region = "x" }, "tee"},
		{"provider recipient", StageRecipient, func(*Input) {}, ""},
		{"operator recipient", StageRecipient, func(in *Input) { in.Recipient = Recipient{ID: "tso", Role: "operator"} }, ""},
		{"other provider recipient", StageRecipient, func(in *Input) { in.Recipient.ID = "rival" }, "grid-operators"},
		{"public recipient", StageRecipient, func(in *Input) { in.Recipient.Role = "public" }, "grid-operators"},
		{"recipient stage ignores node", StageRecipient, func(in *Input) { in.Node.TEE = "sim" }, ""},
		{"unknown stage", Stage("export"), func(*Input) {}, RuleUnknownStage},
		{"known provider service", StageService, func(*Input) {}, ""},
		{"service stage ignores node", StageService, func(in *Input) { in.Node.Debug = true }, ""},
		{"unknown provider service", StageService, func(in *Input) { in.Service.Provider = "adco" }, "known-providers"},
		{"old service version", StageService, func(in *Input) { in.Service.Version = 2 }, "known-providers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := goodInput()
			tt.mutate(&in)
			d := p.Evaluate(tt.stage, in)
			if got := d.Rule; got != tt.refuse || d.Allowed != (tt.refuse == "") {
				t.Fatalf("Evaluate: allowed=%v rule=%q, want rule %q\n%s", d.Allowed, got, tt.refuse, Explain(d))
			}
			err := d.Err()
			if tt.refuse == "" {
				if err != nil {
					t.Fatalf("Err() = %v for an allowed decision", err)
				}
				return
			}
			var r interface{ RefusedBy() string }
			if !errors.As(err, &r) || r.RefusedBy() != "policy:households/meter/"+tt.refuse {
				t.Fatalf("Err() = %v, want a refusal by policy:households/meter/%s", err, tt.refuse)
			}
			if !strings.Contains(Explain(d), "REFUSED by policy:households/meter/"+tt.refuse) {
				t.Fatalf("Explain does not name the refusing rule:\n%s", Explain(d))
			}
		})
	}
}

func TestEvaluateTrace(t *testing.T) {
	p := mustCompile(t, testDoc)
	in := goodInput()
	in.Node.Region = "us-east"
	in.Node.TCB = nil
	d := p.Evaluate(StagePlacement, in)
	want := []struct {
		rule  string
		holds bool
	}{{"tee", true}, {"region", false}, {"snp-microcode", false}, {"approved-service", true}}
	if len(d.Trace) != len(want) {
		t.Fatalf("trace has %d rules, want %d", len(d.Trace), len(want))
	}
	for i, w := range want {
		if d.Trace[i].Rule != w.rule || d.Trace[i].Holds != w.holds {
			t.Errorf("trace[%d] = %+v, want %s holds=%v", i, d.Trace[i], w.rule, w.holds)
		}
	}
	ex := Explain(d)
	if got := fmt.Sprint(d.Trace[1].Values); got != `[{node.region "us-east"} {node.tier "regional"}]` {
		t.Errorf("region rule values = %s", got)
	}
	if len(d.Trace[0].Values) != 0 {
		t.Errorf("a rule that holds carries values %v", d.Trace[0].Values)
	}
	for _, s := range []string{"✓ tee", "✗ region", "✗ snp-microcode", "REFUSED by policy:households/meter/region",
		`where node.region = "us-east", node.tier = "regional"`, `where node.tee = "snp", node.tcb = null`} {
		if !strings.Contains(ex, s) {
			t.Errorf("Explain lacks %q:\n%s", s, ex)
		}
	}
}

func TestEvaluationErrorRefuses(t *testing.T) {
	p := mustCompile(t, `
stream: s
rules:
  - name: strict-tcb
    stage: placement
    expr: node.tcb['snp'] >= 8
`)
	in := goodInput()
	d := p.Evaluate(StagePlacement, in) // no 'snp' key: evaluation error
	if d.Allowed || d.Rule != "strict-tcb" || d.Trace[0].Error == "" {
		t.Fatalf("missing map key: %+v, want a refusal with an error", d)
	}
	in.Node.TCB = map[string]int64{"snp": 8}
	if d := p.Evaluate(StagePlacement, in); !d.Allowed {
		t.Fatalf("tcb snp=8: refused: %s", Explain(d))
	}
}

func TestOneLanguageForEveryBackend(t *testing.T) {
	p := mustCompile(t, `
stream: s
rules:
  - name: tee
    stage: placement
    expr: node.tee in ['snp','tdx'] && node.svn >= 3 && !node.debug
  - name: platform
    stage: placement
    expr: node.platform_id.startsWith('ab') && node.measurement == '0102'
`)
	loc := Location{Tier: "edge", Region: "eu-west", Site: "s1"}
	tests := []struct {
		claims attest.Claims
		allow  bool
	}{
		{attest.Claims{TEE: attest.TEESNP, SVN: 3, Measurement: []byte{1, 2}, PlatformID: []byte{0xab}}, true},
		{attest.Claims{TEE: attest.TEETDX, SVN: 9, Measurement: []byte{1, 2}, PlatformID: []byte{0xab, 1}}, true},
		{attest.Claims{TEE: attest.TEESim, SVN: 9, Measurement: []byte{1, 2}, PlatformID: []byte{0xab}}, false},
		{attest.Claims{TEE: attest.TEETDX, SVN: 2, Measurement: []byte{1, 2}, PlatformID: []byte{0xab}}, false},
		{attest.Claims{TEE: attest.TEESNP, SVN: 3, Debug: true, Measurement: []byte{1, 2}, PlatformID: []byte{0xab}}, false},
		{attest.Claims{TEE: attest.TEESNP, SVN: 1 << 63, Measurement: []byte{1, 2}, PlatformID: []byte{0xab}}, true},
		{attest.Claims{TEE: attest.TEESNP, SVN: 3, Measurement: []byte{1, 3}, PlatformID: []byte{0xab}}, false},
	}
	for _, tt := range tests {
		n := NodeFromClaims("n", &tt.claims, loc)
		d := p.Evaluate(StagePlacement, Input{Node: n})
		if d.Allowed != tt.allow {
			t.Errorf("claims %+v: allowed=%v, want %v\n%s", tt.claims, d.Allowed, tt.allow, Explain(d))
		}
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name, expr, stage string
		line, col         int
		detail            string
	}{
		{"syntax", "node.tee ==", "placement", 1, 12, "Syntax error"},
		{"unknown field", "node.svnn >= 3", "placement", 1, 5, "undefined field 'svnn'"},
		{"unknown variable", "nodes.tee == 'snp'", "placement", 1, 1, "undeclared reference"},
		{"recipient in placement", "recipient.role == 'x'", "placement", 1, 1, "undeclared reference"},
		{"node in recipient", "node.tee == 'snp'", "recipient", 1, 1, "undeclared reference"},
		{"node in service", "node.tee == 'snp'", "service", 1, 1, "undeclared reference"},
		{"recipient in service", "recipient.id == 'x'", "service", 1, 1, "undeclared reference"},
		{"type mismatch", "node.svn == 'three'", "placement", 1, 10, "no matching overload"},
		{"second line", "node.svn >= 3 &&\n  node.debugg", "placement", 2, 7, "undefined field 'debugg'"},
		{"not bool", "node.svn + 1", "placement", 1, 1, "want bool"},
		{"string result", "service.id", "recipient", 1, 1, "want bool"},
		{"too deep", strings.Repeat("(", 300) + "true" + strings.Repeat(")", 300), "placement", 0, 0, "recursion limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &Document{Stream: "s", Rules: []Rule{
				{Name: "ok", Stage: StagePlacement, Expr: "true"},
				{Name: "bad-rule", Stage: Stage(tt.stage), Expr: tt.expr},
			}}
			_, err := Compile(d)
			var ce *CompileError
			if !errors.As(err, &ce) {
				t.Fatalf("Compile(%q) = %v, want a *CompileError", tt.expr, err)
			}
			if ce.Rule != "bad-rule" || ce.Line != tt.line || ce.Column != tt.col || !strings.Contains(ce.Detail, tt.detail) {
				t.Fatalf("CompileError = %+v, want rule bad-rule at %d:%d with %q", ce, tt.line, tt.col, tt.detail)
			}
			if ce.RefusedBy() != "policy.compile" || !strings.Contains(err.Error(), "bad-rule") {
				t.Fatalf("error %q does not name the rule or refusal", err)
			}
		})
	}
}

func TestCompileReportsEveryBadRule(t *testing.T) {
	d := &Document{Stream: "s", Rules: []Rule{
		{Name: "a", Stage: StagePlacement, Expr: "node.x"},
		{Name: "b", Stage: StagePlacement, Expr: "1"},
		{Name: "c", Stage: StagePlacement, Expr: "true"},
	}}
	_, err := Compile(d)
	if err == nil || !strings.Contains(err.Error(), "rule a ") || !strings.Contains(err.Error(), "rule b ") || strings.Contains(err.Error(), "rule c ") {
		t.Fatalf("Compile = %v, want errors for rules a and b only", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct{ name, src, want string }{
		{"unknown field", "stream: s\nrules:\n - name: a\n   stage: placement\n   expr: 'true'\n   exp: x\n", "unknown field"},
		{"no rules", "stream: s\nrules: []\n", "no rules"},
		{"bad stage", "stream: s\nrules:\n - name: a\n   stage: output\n   expr: 'true'\n", "unknown stage"},
		{"duplicate name", "stream: s\nrules:\n - {name: a, stage: placement, expr: 'true'}\n - {name: a, stage: recipient, expr: 'true'}\n", "used twice"},
		{"bad name", "stream: s\nrules:\n - {name: 'A B', stage: placement, expr: 'true'}\n", "name"},
		{"empty expr", "stream: s\nrules:\n - {name: a, stage: placement, expr: ''}\n", "empty expression"},
		{"no stream", "rules:\n - {name: a, stage: placement, expr: 'true'}\n", "stream name"},
		{"not yaml", "{{{", "decoding"},
		{"key case", "Stream: s\nrules:\n - {name: a, stage: placement, expr: 'true'}\n", `key "Stream"`},
		{"rule key case", "stream: s\nrules:\n - {name: a, stage: placement, Expr: 'true'}\n", `key "Expr"`},
		{"two streams by case", "stream: s\nSTREAM: t\nrules:\n - {name: a, stage: placement, expr: 'true'}\n", `key "STREAM"`},
		{"too long expr", "stream: s\nrules:\n - {name: a, stage: placement, expr: '" + strings.Repeat("x", MaxExprLength+1) + "'}\n", "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(tt.src))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Decode = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestDigest(t *testing.T) {
	yamlDoc := "stream: s\nrules:\n  - name: a\n    stage: placement\n    expr: node.svn < 3\n"
	jsonDoc := `{"rules":[{"expr":"node.svn < 3","stage":"placement","name":"a"}],"stream":"s"}`
	a, b := mustCompile(t, yamlDoc), mustCompile(t, jsonDoc)
	if a.Digest() != b.Digest() || len(a.Digest()) != 64 {
		t.Fatalf("same policy in YAML and JSON: digests %s and %s differ", a.Digest(), b.Digest())
	}
	c := mustCompile(t, strings.Replace(yamlDoc, "< 3", "< 4", 1))
	if c.Digest() == a.Digest() {
		t.Fatal("a changed expression does not change the digest")
	}
	if d := a.Evaluate(StagePlacement, Input{}); d.PolicyDigest != a.Digest() {
		t.Fatalf("decision carries digest %s, want %s", d.PolicyDigest, a.Digest())
	}
}

func TestCostLimit(t *testing.T) {
	src := `
stream: s
rules:
  - name: quadratic
    stage: placement
    expr: service.code_digests.all(a, service.code_digests.all(b, a.size() + b.size() >= 0))
`
	in := goodInput()
	in.Service.CodeDigests = make([]string, 50)
	for i := range in.Service.CodeDigests {
		in.Service.CodeDigests[i] = "d"
	}
	if d := mustCompile(t, src).Evaluate(StagePlacement, in); !d.Allowed {
		t.Fatalf("within the default cost limit: %s", Explain(d))
	}
	d := mustCompile(t, src, WithCostLimit(1000)).Evaluate(StagePlacement, in)
	if d.Allowed || d.Rule != "quadratic" || !strings.Contains(d.Trace[0].Error, "cost limit") {
		t.Fatalf("over the cost limit: %+v, want a refusal citing the cost limit", d)
	}
}

func TestEvaluateAll(t *testing.T) {
	a := mustCompile(t, "stream: a\nrules:\n - {name: eu, stage: placement, expr: \"node.region == 'eu'\"}\n")
	b := mustCompile(t, "stream: b\nrules:\n - {name: tdx, stage: placement, expr: \"node.tee == 'tdx'\"}\n")
	in := Input{Node: Node{Region: "eu", TEE: "tdx"}}
	if d := EvaluateAll(StagePlacement, in, a, b); !d.Allowed {
		t.Fatalf("both allow: %s", Explain(d))
	}
	in.Node.TEE = "snp"
	if d := EvaluateAll(StagePlacement, in, a, b); d.Allowed || d.RefusedBy() != "policy:b/tdx" {
		t.Fatalf("b vetoes: got %s", d.RefusedBy())
	}
	if d := EvaluateAll(StagePlacement, in); d.Allowed {
		t.Fatal("no policies: allowed")
	}
	if d := a.Evaluate(StageRecipient, in); !d.Allowed {
		t.Fatal("a stage without rules refused")
	}
	if a.HasStage(StageRecipient) || !a.HasStage(StagePlacement) {
		t.Fatal("HasStage disagrees with the document")
	}
}

func BenchmarkEvaluate(b *testing.B) {
	p := mustCompile(b, testDoc)
	in := goodInput()
	b.ReportAllocs()
	cpu := processCPU(b)
	for b.Loop() {
		if d := p.Evaluate(StagePlacement, in); !d.Allowed {
			b.Fatal(Explain(d))
		}
	}
	reportCPU(b, cpu)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/4, "ns/rule")
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(testDoc))
	f.Add([]byte(`{"stream":"s","rules":[{"name":"a","stage":"recipient","expr":"recipient.role == 'x'"}]}`))
	f.Add([]byte("stream: s\nrules:\n - {name: a, stage: placement, expr: 'node.'}\n"))
	f.Add([]byte("- 1\n- 2"))
	f.Add([]byte("stream: s\nrules:\n - {name: t, stage: placement, expr: \"tcbAtLeast(node.tcb, {'snp': 8})\"}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Decode(data)
		if err != nil {
			return
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("Decode returned a document that does not validate: %v", err)
		}
		// Round trip: the canonical JSON decodes to the same digest.
		canon, err := d.CanonicalJSON()
		if err != nil {
			t.Fatal(err)
		}
		d2, err := Decode(canon)
		if err != nil {
			t.Fatalf("canonical JSON %s does not decode: %v", canon, err)
		}
		h1, _ := d.Digest()
		h2, _ := d2.Digest()
		if h1 != h2 {
			t.Fatalf("digest changed over a canonical round trip: %s != %s", h1, h2)
		}
		// Compiling must not panic; evaluating a compiled policy must decide.
		if p, err := Compile(d); err == nil {
			for _, s := range Stages {
				p.Evaluate(s, Input{})
			}
		}
	})
}

func TestTCBAtLeast(t *testing.T) {
	p := mustCompile(t, `
stream: s
rules:
  - name: tcb
    stage: placement
    expr: "node.tee == 'snp' ? tcbAtLeast(node.tcb, {'snp': 8, 'microcode': 209}) : tcbAtLeast(node.tcb, {'tee_tcb_svn_0': 3})"
`)
	tests := []struct {
		tee   string
		tcb   map[string]int64
		allow bool
	}{
		{"snp", map[string]int64{"snp": 8, "microcode": 209, "tee": 1}, true},
		{"snp", map[string]int64{"snp": 9, "microcode": 300}, true},
		{"snp", map[string]int64{"snp": 7, "microcode": 300}, false},
		{"snp", map[string]int64{"snp": 8}, false},
		{"snp", nil, false},
		{"tdx", map[string]int64{"tee_tcb_svn_0": 3}, true},
		{"tdx", map[string]int64{"tee_tcb_svn_0": 2}, false},
	}
	for _, tt := range tests {
		d := p.Evaluate(StagePlacement, Input{Node: Node{TEE: tt.tee, TCB: tt.tcb}})
		if d.Allowed != tt.allow {
			t.Errorf("%s %v: allowed=%v, want %v\n%s", tt.tee, tt.tcb, d.Allowed, tt.allow, Explain(d))
		}
	}
	if _, err := CompileBytes([]byte("stream: s\nrules:\n - {name: a, stage: placement, expr: \"tcbAtLeast(node.tcb, {'a': 'b'})\"}\n")); err == nil {
		t.Fatal("tcbAtLeast with a string minimum compiled")
	}
}

func TestConcurrentEvaluate(t *testing.T) {
	p := mustCompile(t, testDoc)
	done := make(chan bool, 4)
	for i := range 4 {
		go func() {
			in := goodInput()
			in.Node.SVN = int64(i + 1) // goroutines 0 and 1 are refused
			ok := true
			for range 50 {
				if d := p.Evaluate(StagePlacement, in); d.Allowed != (i >= 2) {
					ok = false
				}
			}
			done <- ok
		}()
	}
	for range 4 {
		if !<-done {
			t.Fatal("concurrent evaluations disagree with sequential ones")
		}
	}
}

// reference is testDoc's placement rules written in Go.
func reference(in Input) string {
	n, s := in.Node, in.Service
	switch {
	case !((n.TEE == "snp" || n.TEE == "tdx") && n.SVN >= 3 && !n.Debug):
		return "tee"
	case !((n.Region == "eu-west" || n.Region == "eu-central") && n.Tier != "device"):
		return "region"
	case !(n.TEE != "snp" || n.TCB["microcode"] >= 200):
		return "snp-microcode"
	case !(s.Provider == "gridco" && s.SecurityVersion >= 2):
		return "approved-service"
	}
	return ""
}

// FuzzEvaluate checks the CEL evaluation of testDoc against the same rules
// written in Go, over fuzzed inputs.
func FuzzEvaluate(f *testing.F) {
	p := mustCompile(f, testDoc)
	f.Add("snp", int64(3), false, "eu-west", "edge", int64(200), "gridco", int64(2))
	f.Add("tdx", int64(-1), true, "us", "device", int64(-5), "x", int64(9))
	f.Add("sim", int64(1<<62), false, "eu-central", "cloud", int64(0), "gridco", int64(1))
	f.Fuzz(func(t *testing.T, tee string, svn int64, debug bool, region, tier string, microcode int64, provider string, secver int64) {
		in := Input{
			Service: Service{Provider: provider, SecurityVersion: secver},
			Node:    Node{TEE: tee, SVN: svn, Debug: debug, Region: region, Tier: tier, TCB: map[string]int64{"microcode": microcode}},
		}
		d := p.Evaluate(StagePlacement, in)
		if want := reference(in); d.Rule != want || d.Allowed != (want == "") {
			t.Fatalf("input %+v: CEL refused by %q, Go reference by %q\n%s", in, d.Rule, want, Explain(d))
		}
	})
}
