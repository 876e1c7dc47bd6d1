package jobspec

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/record"
)

func nexmark(name string) *Builder {
	return New(name).
		Schema("bid", Int("auction"), Int("bidder"), Int("price"), String("channel"), String("url"), Int("dateTime"), String("extra")).
		Schema("auction", Int("id"), String("itemName"), Int("seller"), Int("category"), Int("dateTime"), Int("expires")).
		Schema("person", Int("id"), String("name"), String("city"), String("state"), Int("dateTime"))
}

func TestBuilderQueries(t *testing.T) {
	tests := []struct {
		name  string
		build func(b *Builder)
		sink  string // the output schema of the node feeding the last sink
	}{
		{"q1", func(b *Builder) {
			b.Source("bids", "bid", EventTime("dateTime", 0)).
				Map(Col("auction", "auction"), Col("bidder", ""), Col("price", "double(price) * 0.908"), Col("dateTime", ""), Col("extra", "")).
				Sink("q1")
		}, "auction:int,bidder:int,price:float,dateTime:int,extra:string"},
		{"q2", func(b *Builder) {
			b.Source("bids", "bid").Filter("auction % 123 == 0").Project("auction", "price").Sink("q2")
		}, "auction:int,price:int"},
		{"q3", func(b *Builder) {
			auctions := b.Source("auctions", "auction", EventTime("dateTime", time.Second)).Filter("category == 10")
			people := b.Source("people", "person", EventTime("dateTime", time.Second)).Filter("state in ['OR', 'ID', 'CA']")
			auctions.Join(people, On("seller", "id"), Prefixes("", "p_")).
				Map(Col("name", "p_name"), Col("city", "p_city"), Col("state", "p_state"), Col("id", "id")).
				Sink("q3")
		}, "name:string,city:string,state:string,id:int"},
		{"q5", func(b *Builder) {
			b.Source("bids", "bid", EventTime("dateTime", 0)).
				KeyBy("auction").
				Window(Sliding(10*time.Second, 2*time.Second), Count("num")).
				Window(Tumbling(2*time.Second).Bounds(OmitField, OmitField), MaxRows("num")).
				Sink("q5")
		}, "auction:int,window_start:int,window_end:int,num:int"},
		{"q7", func(b *Builder) {
			b.Source("bids", "bid", EventTime("dateTime", 0), IdleTimeout(5*time.Second)).
				Window(Tumbling(10*time.Second).AllowedLateness(time.Second).LateOutput("late"), MaxRows("price")).
				Project("auction", "price", "bidder", "dateTime", "extra").
				Sink("q7")
		}, "auction:int,price:int,bidder:int,dateTime:int,extra:string"},
		{"q8", func(b *Builder) {
			people := b.Source("people", "person", EventTime("dateTime", 0))
			auctions := b.Source("auctions", "auction", EventTime("dateTime", 0))
			people.WindowJoin(auctions, Tumbling(10*time.Second), On("id", "seller"), Prefixes("", "a_")).
				KeyBy("id", "name", "window_start").
				Window(Tumbling(10*time.Second).Bounds("ws", "we"), Count("n")).
				Project("id", "name", "window_start").
				Sink("q8")
		}, "id:int,name:string,window_start:int"},
		{"top-n and interval join", func(b *Builder) {
			bids := b.Source("bids", "bid", EventTime("dateTime", 0))
			people := b.Source("people", "person", EventTime("dateTime", 0))
			bids.IntervalJoin(people, -time.Second, time.Second, On("bidder", "id"), Prefixes("b_", "p_"), Where("b_price > 10")).
				KeyBy("p_state").
				TopN(3, Tumbling(time.Minute), "rank", Desc("b_price"), Asc("b_auction")).
				Project("p_state", "b_price", "rank").
				Sink("top")
		}, "p_state:string,b_price:int,rank:int"},
		{"union, flat-map and session", func(b *Builder) {
			a := b.Source("bids-eu", "bid", EventTime("dateTime", 0))
			c := b.Source("bids-us", "bid", EventTime("dateTime", 0))
			a.Union(c).
				FlatMap("url.split('/')", "part").
				KeyBy("bidder").
				Window(Session(30*time.Second), Count("n"), Sum("price", "total"), Min("part", "first"), Avg("price", "mean")).
				Sink("sessions")
		}, "bidder:int,window_start:int,window_end:int,n:int,total:int,first:string,mean:float"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := nexmark(tt.name)
			tt.build(b)
			s, err := b.Build()
			if err != nil {
				t.Fatal(err)
			}
			r, err := s.Resolve()
			if err != nil {
				t.Fatal(err)
			}
			last := r.Spec.Nodes[len(r.Spec.Nodes)-1]
			if last.Kind != KindSink {
				t.Fatalf("last node is %s", last.Kind)
			}
			if got := fieldsText(r.Nodes[last.ID].Out); got != tt.sink {
				t.Errorf("sink schema %s, want %s", got, tt.sink)
			}
			// The builder's spec survives a YAML round trip unchanged.
			y, err := s.YAML()
			if err != nil {
				t.Fatal(err)
			}
			back := mustParse(t, string(y))
			if digest(t, back) != digest(t, s) {
				t.Errorf("YAML round trip changed the digest:\n%s", y)
			}
		})
	}
}

func TestBuilderAs(t *testing.T) {
	b := nexmark("ids")
	src := b.Source("bids", "bid")
	f := src.Filter("price > 0")
	src.As("bids") // rename after a reader exists
	f.As("positive").Parallelism(2).Place(Placement{Tier: "edge"}).Sink("out").As("out")
	s, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, n := range s.Nodes {
		ids = append(ids, n.ID+"<"+strings.Join(n.Inputs, ","))
	}
	if got := strings.Join(ids, " "); got != "bids< positive<bids out<positive" {
		t.Errorf("nodes %s", got)
	}
	if n := s.Node("positive"); n.Parallelism != 2 || n.Placement.Tier != "edge" {
		t.Errorf("positive: %+v", n)
	}
}

func TestBuilderErrors(t *testing.T) {
	b := nexmark("bad")
	other := New("other").Schema("bid", Int("x")).Source("s", "bid")
	src := b.Source("bids", "bid", EventTime("dateTime", 1500*time.Microsecond))
	src.Filter("price >").Sink("out")
	src.Union(other).Sink("out2")
	src.As("x")
	b.Source("more", "bid").As("x") // taken
	_, err := b.Build()
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("got %v, want Errors", err)
	}
	for _, want := range []string{
		"1.5ms is not a whole number of milliseconds",
		"input stream belongs to another builder",
		`As("x"): a node already has this id`,
		"Syntax error",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
	if _, err := New("e").Build(); err == nil {
		t.Error("an empty job built")
	}
}

func TestSchemaOf(t *testing.T) {
	rs := &record.Schema{Fields: []record.Field{{Name: "a", Type: record.TypeInt}, {Name: "b", Type: record.TypeString}}}
	b := New("s").SchemaOf("r", rs)
	b.Source("in", "r").Sink("out")
	s, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	if got := fieldsText(s.RecordSchema("r")); got != "a:int,b:string" {
		t.Errorf("schema %s", got)
	}
}

func TestBuilderInvalidGraphs(t *testing.T) {
	tests := []struct {
		name  string
		build func(b *Builder)
		want  []string
	}{
		{"union of different schemas", func(b *Builder) {
			b.Source("bids", "bid").Union(b.Source("people", "person")).Sink("out")
		}, []string{`nodes[2] (id "union1").inputs[1]: union input "source2" has schema (id int, name string, city string, state string, dateTime int), but input "source1" has (auction int,`}},
		{"top-n without n or order", func(b *Builder) {
			b.Source("bids", "bid").TopN(0, Session(time.Second), "").Sink("out")
		}, []string{
			`nodes[1] (id "top-n1").params.window.type: session windows are not supported here`,
			`nodes[1] (id "top-n1").params.n: n must be at least 1, got 0`,
			`nodes[1] (id "top-n1").params.orderBy: top-n needs at least one orderBy field`,
		}},
		{"flat-map of a scalar", func(b *Builder) {
			b.Source("bids", "bid").FlatMap("url", "part").Sink("out")
		}, []string{`nodes[1] (id "flat-map1").params.expr: expression "url" has type string, want a list`}},
		{"flat-map name clash", func(b *Builder) {
			b.Source("bids", "bid").FlatMap("url.split('/')", "url").Sink("out")
		}, []string{`nodes[1] (id "flat-map1").params.as: output field "url" appears twice`}},
		{"max-rows of a string", func(b *Builder) {
			b.Source("bids", "bid").Window(Tumbling(time.Second), MaxRows("url")).Sink("out")
		}, []string{`nodes[1] (id "window-aggregate1").params.aggregates[0].field: max-rows field "url" is string, want int or float`}},
		{"interval bounds reversed", func(b *Builder) {
			b.Source("bids", "bid").IntervalJoin(b.Source("people", "person"), time.Second, -time.Second, On("bidder", "id"), Prefixes("", "p_")).Sink("out")
		}, []string{`nodes[2] (id "interval-join1").params.between: lowerMs 1000 is greater than upperMs -1000`}},
		{"join keys unpaired", func(b *Builder) {
			b.Source("bids", "bid").Join(b.Source("people", "person"), Prefixes("", "p_")).Sink("out")
		}, []string{`nodes[2] (id "join1").params.leftKeys: join needs at least one key pair`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := nexmark(tt.name)
			tt.build(b)
			_, err := b.Build()
			if err == nil {
				t.Fatal("built")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("missing %q in:\n%v", w, err)
				}
			}
			if n := len(err.(Errors)); n != len(tt.want) {
				t.Errorf("%d errors, want %d:\n%v", n, len(tt.want), err)
			}
		})
	}
}

func TestStreamsAndModules(t *testing.T) {
	const m1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	const m2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	b := nexmark("io")
	bids := b.Source("bids", "bid")
	bids2 := b.Source("bids", "bid")
	people := b.Source("people", "person")
	bids.Union(bids2).UDF(m2, "f", []Field{Int("a")}).UDF(m1, "g", []Field{Int("a")}).Sink("z-out")
	people.UDF(m2, "h", []Field{Int("a")}).Sink("a-out")
	s, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	in, out := s.Streams()
	if strings.Join(in, ",") != "bids,people" || strings.Join(out, ",") != "a-out,z-out" {
		t.Errorf("streams in %v out %v", in, out)
	}
	if got := strings.Join(s.Modules(), ","); got != m1+","+m2 {
		t.Errorf("modules %s", got)
	}
}
