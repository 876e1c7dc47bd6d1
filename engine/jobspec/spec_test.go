package jobspec

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

// baseYAML is a valid spec exercising most node kinds.
const baseYAML = `
name: demo
version: "1"
schemas:
  bid:
    - {name: auction, type: int}
    - {name: bidder, type: int}
    - {name: price, type: int}
    - {name: dateTime, type: int}
    - {name: extra, type: string}
  person:
    - {name: id, type: int}
    - {name: name, type: string}
    - {name: state, type: string}
    - {name: dateTime, type: long}
nodes:
  - id: bids
    kind: source
    params: {stream: bids, schema: bid, timeField: dateTime, watermark: {maxOutOfOrdernessMs: 1000, idleTimeoutMs: 5000}}
  - id: cheap
    kind: filter
    inputs: [bids]
    params: {expr: "price < 100"}
  - id: euros
    kind: map
    inputs: [cheap]
    params:
      fields:
        - {name: auction}
        - {name: price, expr: "double(price) * 0.908"}
        - {name: dateTime}
  - id: byAuction
    kind: key-by
    inputs: [euros]
    params: {keys: [auction]}
  - id: winmax
    kind: window-aggregate
    inputs: [byAuction]
    params:
      window: {type: sliding, sizeMs: 10000, slideMs: 2000, allowedLatenessMs: 500, lateOutput: late}
      aggregates:
        - {fn: count, as: num}
        - {fn: max, field: price, as: top}
        - {fn: avg, field: price, as: mean}
  - id: people
    kind: source
    params: {stream: people, schema: person, timeField: dateTime}
  - id: joined
    kind: interval-join
    inputs: [bids, people]
    params: {leftKeys: [bidder], rightKeys: [id], rightPrefix: p_, between: {lowerMs: -1000, upperMs: 1000}}
  - id: out1
    kind: sink
    inputs: [winmax]
    params: {stream: out1}
  - id: out2
    kind: sink
    inputs: [joined]
    params: {stream: out2}
`

func mustParse(t *testing.T, y string) *Spec {
	t.Helper()
	s, err := Parse([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func fieldsText(s *record.Schema) string {
	if s == nil {
		return "<nil>"
	}
	var parts []string
	for _, f := range s.Fields {
		parts = append(parts, f.Name+":"+f.Type.String())
	}
	return strings.Join(parts, ",")
}

func TestResolveInfersSchemas(t *testing.T) {
	r, err := mustParse(t, baseYAML).Resolve()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct{ out, keys, group string }{
		"bids":      {"auction:int,bidder:int,price:int,dateTime:int,extra:string", "", ""},
		"cheap":     {"auction:int,bidder:int,price:int,dateTime:int,extra:string", "", ""},
		"euros":     {"auction:int,price:float,dateTime:int", "", ""},
		"byAuction": {"auction:int,price:float,dateTime:int", "auction", ""},
		"winmax":    {"auction:int,window_start:int,window_end:int,num:int,top:float,mean:float", "", "auction"},
		"joined":    {"auction:int,bidder:int,price:int,dateTime:int,extra:string,p_id:int,p_name:string,p_state:string,p_dateTime:int", "", ""},
		"out2":      {"auction:int,bidder:int,price:int,dateTime:int,extra:string,p_id:int,p_name:string,p_state:string,p_dateTime:int", "", ""},
	}
	for id, w := range want {
		n := r.Nodes[id]
		if got := fieldsText(n.Out); got != w.out {
			t.Errorf("%s: output %s, want %s", id, got, w.out)
		}
		if got := strings.Join(n.Keys, ","); got != w.keys {
			t.Errorf("%s: keys %q, want %q", id, got, w.keys)
		}
		if got := strings.Join(n.GroupBy, ","); got != w.group {
			t.Errorf("%s: group by %q, want %q", id, got, w.group)
		}
	}
	if got := fieldsText(r.Nodes["joined"].In[1]); got != "id:int,name:string,state:string,dateTime:int" {
		t.Errorf("joined right input: %s", got)
	}
	if got := strings.Join(r.Nodes["bids"].Consumers, ","); got != "cheap,joined" {
		t.Errorf("bids consumers: %s", got)
	}
	pos := map[string]int{}
	for i, id := range r.Order {
		pos[id] = i
	}
	for _, n := range r.Spec.Nodes {
		for _, in := range n.Inputs {
			if pos[in] >= pos[n.ID] {
				t.Errorf("order %v puts %s before its input %s", r.Order, n.ID, in)
			}
		}
	}
	if len(r.Order) != len(r.Spec.Nodes) {
		t.Errorf("order has %d nodes, spec %d", len(r.Order), len(r.Spec.Nodes))
	}
}

// edit returns baseYAML with old replaced by new (which must occur).
func edit(t *testing.T, old, new string) string {
	t.Helper()
	if !strings.Contains(baseYAML, old) {
		t.Fatalf("baseYAML does not contain %q", old)
	}
	return strings.Replace(baseYAML, old, new, 1)
}

func TestValidateReportsLocation(t *testing.T) {
	type wantErr struct{ path, rule, msg string }
	tests := []struct {
		name string
		old  string
		new  string
		want []wantErr
	}{
		{"unknown kind", "kind: filter", "kind: filtre",
			[]wantErr{{`nodes[1] (id "cheap").kind`, "unknown-kind", `unknown node kind "filtre"`}}},
		{"unknown input", "inputs: [cheap]", "inputs: [chep]",
			[]wantErr{
				{`nodes[2] (id "euros").inputs[0]`, "unknown-input", `unknown input "chep"`},
				{`nodes[1] (id "cheap")`, "unused-output", "not read by any node"},
			}},
		{"cel syntax", `expr: "price < 100"`, `expr: "price <"`,
			[]wantErr{{`nodes[1] (id "cheap").params.expr`, "expr", "Syntax error"}}},
		{"cel wrong result type", `expr: "price < 100"`, `expr: "price + 1"`,
			[]wantErr{{`nodes[1] (id "cheap").params.expr`, "expr", "has type int, want bool"}}},
		{"cel unknown field", `expr: "double(price) * 0.908"`, `expr: "double(cost) * 0.908"`,
			[]wantErr{{`nodes[2] (id "euros").params.fields[1].expr`, "expr", "undeclared reference to 'cost'"}}},
		{"field not in input schema", "keys: [auction]", "keys: [bidder]",
			[]wantErr{{`nodes[3] (id "byAuction").params.keys[0]`, "unknown-field", `field "bidder" is not in the input schema (auction int, price float, dateTime int)`}}},
		{"aggregates", "{fn: max, field: price, as: top}", "{fn: max, field: price, as: top}\n        - {fn: median, field: price, as: m}\n        - {fn: max-rows, field: price}",
			[]wantErr{
				{`nodes[4] (id "winmax").params.aggregates[2].fn`, "aggregate", `unknown aggregate "median"`},
				{`nodes[4] (id "winmax").params.aggregates[3]`, "aggregate", "max-rows outputs the input rows and cannot be combined"},
			}},
		{"aggregate type", "{fn: max, field: price, as: top}", "{fn: max, field: price, as: top}\n        - {fn: sum, field: dateTime, as: num}",
			[]wantErr{{`nodes[4] (id "winmax").params.aggregates[2].as`, "duplicate-field", `output field "num" appears twice`}}},
		{"wrong type", "timeField: dateTime, watermark", "timeField: extra, watermark",
			[]wantErr{{`nodes[0] (id "bids").params.timeField`, "type", `time field "extra" is string, want int`}}},
		{"bad window", "slideMs: 2000", "slideMs: 20000",
			[]wantErr{{`nodes[4] (id "winmax").params.window.slideMs`, "window", "0 < slideMs <= sizeMs"}}},
		{"slide not dividing size", "slideMs: 2000", "slideMs: 3000",
			[]wantErr{{`nodes[4] (id "winmax").params.window.slideMs`, "window", "slideMs dividing sizeMs, got 3000"}}},
		{"session window in a join", "between: {lowerMs: -1000, upperMs: 1000}", "window: {type: session, gapMs: 5}",
			[]wantErr{
				{`nodes[6] (id "joined").params.window`, "param", "window does not apply to interval-join nodes"},
				{`nodes[6] (id "joined").params.between`, "interval", "interval join needs between"},
			}},
		{"param of another kind", `expr: "price < 100"}`, `expr: "price < 100", keys: [auction]}`,
			[]wantErr{{`nodes[1] (id "cheap").params.keys`, "param", "keys does not apply to filter nodes"}}},
		{"join name clash", "rightPrefix: p_, ", "",
			[]wantErr{{`nodes[6] (id "joined").params`, "duplicate-field", `both inputs have a field "dateTime"`}}},
		{"join key types", "rightKeys: [id]", "rightKeys: [name]",
			[]wantErr{{`nodes[6] (id "joined").params.rightKeys[0]`, "type", `key "name" is string but left key "bidder" is int`}}},
		{"missing sink", "    kind: sink\n    inputs: [joined]\n    params: {stream: out2}", "    kind: filter\n    inputs: [joined]\n    params: {expr: 'true'}",
			[]wantErr{{`nodes[8] (id "out2")`, "unused-output", "not read by any node"}}},
		{"duplicate id", "id: out2", "id: out1",
			[]wantErr{{`nodes[8] (id "out1").id`, "node-id", "duplicate id: nodes[7] has the same id"}}},
		{"cycle", "inputs: [cheap]", "inputs: [byAuction]",
			[]wantErr{
				{`nodes[2] (id "euros").inputs`, "cycle", "cycle: euros -> byAuction -> euros"},
				{`nodes[1] (id "cheap")`, "unused-output", "not read by any node"},
			}},
		{"sink as input", "inputs: [winmax]", "inputs: [out2]",
			[]wantErr{
				{`nodes[4] (id "winmax")`, "unused-output", "not read by any node"},
				{`nodes[7] (id "out1").inputs[0]`, "inputs", `input "out2" is a sink`},
			}},
		{"several errors at once", `expr: "price < 100"`, `expr: "price < 'x'"`,
			// the filter's error, and nothing cascades downstream
			[]wantErr{{`nodes[1] (id "cheap").params.expr`, "expr", "no matching overload"}}},
		{"wildcard stream", "stream: people,", "stream: 'owners.*',",
			[]wantErr{{`nodes[5] (id "people").params.stream`, "stream", `stream name "owners.*" must be dot-separated tokens`}}},
		{"empty stream token", "{stream: out2}", "{stream: out..2}",
			[]wantErr{{`nodes[8] (id "out2").params.stream`, "stream", `stream name "out..2"`}}},
		{"unknown schema", "schema: person,", "schema: persons,",
			[]wantErr{{`nodes[5] (id "people").params.schema`, "schema", `unknown schema "persons" (declared: bid, person)`}}},
		{"bad schema field", "{name: extra, type: string}", "{name: extra, type: string}\n    - {name: in, type: int}",
			[]wantErr{{`schemas.bid[5].name`, "schema", `field name "in"`}}},
		{"parallelism over max", `version: "1"`, "version: \"1\"\nmaxParallelism: 4\nparallelism: 8",
			[]wantErr{{"parallelism", "parallelism", "8 is out of range: want 1 to maxParallelism (4)"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := mustParse(t, edit(t, tt.old, tt.new)).Validate()
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("got %v, want Errors", err)
			}
			for _, w := range tt.want {
				found := false
				for _, e := range es {
					if e.Path == w.path && e.RefusedBy() == "jobspec."+w.rule && strings.Contains(e.Msg, w.msg) {
						found = true
					}
				}
				if !found {
					t.Errorf("missing error %s [%s]: ...%s...\ngot:\n%v", w.path, w.rule, w.msg, err)
				}
			}
			if len(es) > len(tt.want) {
				t.Errorf("got %d errors, want %d:\n%v", len(es), len(tt.want), err)
			}
		})
	}
}

func TestValidateCollectsErrors(t *testing.T) {
	y := edit(t, `expr: "price < 100"`, `expr: "price <"`)
	y = strings.Replace(y, "keys: [auction]", "keys: [nope]", 1)
	y = strings.Replace(y, "params: {stream: out1}", "params: {}", 1)
	err := mustParse(t, y).Validate()
	var es Errors
	if !errors.As(err, &es) || len(es) != 2 {
		// The key-by's unknown field is downstream of the broken filter and
		// not re-reported; the sink's missing stream does not depend on
		// schemas and is.
		t.Fatalf("got %v, want 2 errors", err)
	}
	if !strings.HasPrefix(err.Error(), "job spec has 2 errors:") || es.RefusedBy() != "jobspec.expr" {
		t.Errorf("error text %q, rule %s", err, es.RefusedBy())
	}
}

func TestValidateEmpty(t *testing.T) {
	err := (&Spec{}).Validate()
	if err == nil || !strings.Contains(err.Error(), "name: missing job name") || !strings.Contains(err.Error(), "no nodes") {
		t.Fatalf("got %v", err)
	}
}

func TestParseIsStrict(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown top-level field", "name: x\nnodez: []\n", `unknown field "nodez"`},
		{"unknown param", edit(t, "lateOutput: late", "lateOutpt: late"), `unknown field "lateOutpt"`},
		{"unknown type name", edit(t, "type: long", "type: decimal"), `unknown type "decimal"`},
		{"wrong value type", edit(t, "sizeMs: 10000", "sizeMs: ten"), "cannot unmarshal"},
		{"duplicate key", "name: a\nname: b\n", "already set in map"},
		{"empty", "", "empty"},
		{"not a mapping", "- a\n- b\n", "cannot unmarshal array"},
		{"json trailing", `{"name":"a","nodes":[]} {"name":"b"}`, "trailing data"},
		{"json duplicate key", `{"name":"a","name":"b"}`, "already set in map"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want error containing %q", err, tt.want)
			}
		})
	}
}

func digest(t *testing.T, s *Spec) string {
	t.Helper()
	d, err := s.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(d, "sha256:") || len(d) != 7+64 {
		t.Fatalf("digest %q is not sha256:<64 hex>", d)
	}
	return d
}

func TestDigestIsCanonical(t *testing.T) {
	base := digest(t, mustParse(t, baseYAML))
	same := map[string]string{
		"defaults spelled out": edit(t, `version: "1"`, "version: \"1\"\nmaxParallelism: 128\nparallelism: 1"),
		"type alias":           edit(t, "type: long", "type: int"),
		"key order":            edit(t, "{stream: out1}", "{stream: out1}\n    kind: sink"),
		"identity projection":  edit(t, "{name: auction}", "{name: auction, expr: auction}"),
		"window field default": edit(t, "lateOutput: late}", "lateOutput: late, startField: window_start}"),
		"node parallelism":     edit(t, "id: cheap\n", "id: cheap\n    parallelism: 1\n"),
	}
	for name, y := range same {
		if name == "key order" {
			// move kind after params for the out1 sink instead of duplicating it
			y = strings.Replace(baseYAML, "    kind: sink\n    inputs: [winmax]\n    params: {stream: out1}", "    params: {stream: out1}\n    inputs: [winmax]\n    kind: sink", 1)
		}
		if got := digest(t, mustParse(t, y)); got != base {
			t.Errorf("%s: digest changed", name)
		}
	}
	// JSON form and round trips keep the digest.
	s := mustParse(t, baseYAML)
	js, err := s.JSON()
	if err != nil {
		t.Fatal(err)
	}
	if got := digest(t, mustParse(t, string(js))); got != base {
		t.Error("JSON round trip changed the digest")
	}
	ys, err := s.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if got := digest(t, mustParse(t, string(ys))); got != base {
		t.Error("YAML round trip changed the digest")
	}
	different := map[string]string{
		"expression":  edit(t, `"price < 100"`, `"price < 101"`),
		"key":         edit(t, "leftKeys: [bidder]", "leftKeys: [auction]"),
		"node order":  strings.Replace(strings.Replace(baseYAML, "id: out1", "id: tmp", 1), "id: out2", "id: out1", 1),
		"parallelism": edit(t, "id: cheap\n", "id: cheap\n    parallelism: 2\n"),
		"schema type": edit(t, "{name: extra, type: string}", "{name: extra, type: int}"),
	}
	for name, y := range different {
		if got := digest(t, mustParse(t, y)); got == base {
			t.Errorf("%s: digest did not change", name)
		}
	}
}

func TestLogicDigestIgnoresScaling(t *testing.T) {
	a := mustParse(t, baseYAML)
	b := mustParse(t, edit(t, "id: cheap\n", "id: cheap\n    parallelism: 4\n    placement: {tier: edge}\n"))
	b.Parallelism, b.MaxParallelism = 2, 128
	da, _ := a.LogicDigest()
	db, _ := b.LogicDigest()
	if da != db {
		t.Error("parallelism and placement changed the logic digest")
	}
	if digest(t, a) == digest(t, b) {
		t.Error("parallelism and placement did not change the full digest")
	}
	c := mustParse(t, edit(t, "sizeMs: 10000", "sizeMs: 12000"))
	if dc, _ := c.LogicDigest(); dc == da {
		t.Error("a window change did not change the logic digest")
	}
}

func TestWithDefaultsDoesNotModify(t *testing.T) {
	s := mustParse(t, baseYAML)
	before, _ := s.JSON()
	d := s.WithDefaults()
	d.Nodes[0].Params.Watermark.MaxOutOfOrdernessMs = 7
	d.Nodes[2].Params.Fields[0].Name = "zz"
	d.Schemas["bid"][0].Name = "zz"
	after, _ := s.JSON()
	if string(before) != string(after) || s.Parallelism != 0 {
		t.Error("WithDefaults shares or modifies the original")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(baseYAML))
	f.Add([]byte(`{"name":"x","nodes":[{"id":"a","kind":"source","params":{"stream":"s","schema":"q"}}]}`))
	f.Add([]byte("name: x\nnodes:\n  - {id: a, kind: sink, inputs: [a]}\n"))
	f.Add([]byte("name: [\n"))
	f.Add([]byte("name: x\nnodes:\n  - {id: out, kind: sink, params: {stream: out}}\n"))
	f.Add([]byte("name: x\nnodes:\n  - {id: j, kind: join, inputs: [a]}\n  - {id: a, kind: union, inputs: [j]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			return
		}
		verr := s.Validate() // must not panic
		if verr != nil {
			var es Errors
			if !errors.As(verr, &es) || len(es) == 0 {
				t.Fatalf("Validate error is not Errors: %v", verr)
			}
		}
		// The canonical form parses back to the same digest and validity.
		js, err := s.JSON()
		if err != nil {
			return // e.g. a type value out of range cannot be encoded
		}
		s2, err := Parse(js)
		if err != nil {
			t.Fatalf("canonical JSON does not parse: %v\n%s", err, js)
		}
		d1, _ := s.Digest()
		d2, _ := s2.Digest()
		if d1 != d2 {
			t.Fatalf("digest changed across canonical round trip:\n%s", js)
		}
		if (s2.Validate() == nil) != (verr == nil) {
			t.Fatalf("validity changed across canonical round trip:\n%s", js)
		}
	})
}

func TestUDFNode(t *testing.T) {
	const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	b := nexmark("scored")
	b.Source("bids", "bid").
		UDF(digest, "score", []Field{Int("auction"), Float("score")}, AllowClock).
		Filter("score > 0.5").
		Sink("alerts")
	s, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	r, _ := s.Resolve()
	if got := fieldsText(r.Nodes["udf1"].Out); got != "auction:int,score:float" {
		t.Errorf("udf output %s", got)
	}

	y := `
name: bad-udf
schemas: {bid: [{name: price, type: int}]}
nodes:
  - {id: bids, kind: source, params: {stream: bids, schema: bid}}
  - id: model
    kind: udf
    inputs: [bids]
    params:
      udf:
        module: sha256:XYZ
        function: "score-it"
        output: [{name: s, type: float}, {name: s, type: int}]
        allow: [clock, network]
  - {id: out, kind: sink, inputs: [model], params: {stream: out}}
`
	err = mustParse(t, y).Validate()
	for _, want := range []string{
		`nodes[1] (id "model").params.udf.module: module "sha256:XYZ" is not a digest`,
		`nodes[1] (id "model").params.udf.function: function name "score-it"`,
		`nodes[1] (id "model").params.udf.output[1].name: output field "s" appears twice`,
		`nodes[1] (id "model").params.udf.allow[1]: capability "network" cannot be granted`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
}

func TestMissingSourceOrSink(t *testing.T) {
	noSink := `
name: x
schemas: {bid: [{name: price, type: int}]}
nodes:
  - {id: bids, kind: source, params: {stream: bids, schema: bid}}
`
	noSource := `
name: x
nodes:
  - {id: out, kind: sink, inputs: [], params: {stream: out}}
`
	for name, tt := range map[string]struct{ yaml, rule string }{
		"no sink":   {noSink, "jobspec.missing-sink"},
		"no source": {noSource, "jobspec.missing-source"},
	} {
		err := mustParse(t, tt.yaml).Validate()
		var es Errors
		if !errors.As(err, &es) {
			t.Fatalf("%s: got %v", name, err)
		}
		found := false
		for _, e := range es {
			found = found || (e.RefusedBy() == tt.rule && e.Path == "nodes")
		}
		if !found {
			t.Errorf("%s: no %s error in:\n%v", name, tt.rule, err)
		}
	}
}

// TestFormatExample keeps the example in FORMAT.md valid.
func TestFormatExample(t *testing.T) {
	doc, err := os.ReadFile("FORMAT.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```yaml\n")
	y, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("FORMAT.md has no yaml example")
	}
	r, err := mustParse(t, y).Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if got := fieldsText(r.Nodes["out"].Out); got != "auction:int,price:int,dateTime:int,window_start:int,window_end:int" {
		t.Errorf("example output %s", got)
	}
}

// TestLongChainInReverseOrder validates a chain of nodes declared sinks
// first; the order puts every input first. (The former quadratic ordering
// took minutes on such specs.)
func TestLongChainInReverseOrder(t *testing.T) {
	const n = 3000
	s := &Spec{Name: "chain", Schemas: map[string][]Field{"r": {{Name: "k", Type: record.TypeInt}}}}
	s.Nodes = append(s.Nodes, Node{ID: "out", Kind: KindSink, Inputs: []string{"k1"}, Params: Params{Stream: "out"}})
	for i := 1; i <= n; i++ {
		in := fmt.Sprintf("k%d", i+1)
		if i == n {
			in = "src"
		}
		s.Nodes = append(s.Nodes, Node{ID: fmt.Sprintf("k%d", i), Kind: KindKeyBy, Inputs: []string{in}, Params: Params{Keys: []string{"k"}}})
	}
	s.Nodes = append(s.Nodes, Node{ID: "src", Kind: KindSource, Params: Params{Stream: "in", Schema: "r"}})
	r, err := s.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if r.Order[0] != "src" || r.Order[n+1] != "out" || r.Order[1] != fmt.Sprintf("k%d", n) {
		t.Errorf("order starts %v, ends %v", r.Order[:2], r.Order[n+1:])
	}

	s.Nodes = make([]Node, MaxNodes+1)
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "more than the limit") {
		t.Errorf("too many nodes: got %v", err)
	}
}

// BenchmarkParseValidate measures decoding and type-checking a 9-node spec
// with 4 CEL expressions.
func BenchmarkParseValidate(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		s, err := Parse([]byte(baseYAML))
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Validate(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDigest(b *testing.B) {
	s, err := Parse([]byte(baseYAML))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Digest(); err != nil {
			b.Fatal(err)
		}
	}
}
