package seal

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestRejectionCounter(t *testing.T) {
	c := NewRejectionCounter()
	reg := prometheus.NewRegistry()
	if err := reg.Register(c.Collector()); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, "s", 2, false)
	o, _ := NewOpener(f.keys, KindIngest, []string{"s"})
	_, _, err := o.Open(nil, f.frames[1]) // a gap
	if !c.Observe(err) {
		t.Fatal("Observe did not count a rejection")
	}
	_, _, err = o.Open(nil, []byte{1}) // malformed
	c.Observe(err)
	if c.Observe(errors.New("other")) || c.Observe(nil) {
		t.Fatal("Observe counted an error that is not a rejection")
	}
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 {
		t.Fatalf("Gather = %d families, %v", len(mfs), err)
	}
	if n := len(mfs[0].Metric); n != 5*len(Reasons())+1 {
		t.Fatalf("%d series, want every kind and reason plus the unknown kind", n)
	}
	if v := value(c.vec.WithLabelValues("ingest", "gap")); v != 1 {
		t.Fatalf("ingest/gap = %v, want 1", v)
	}
	if v := value(c.vec.WithLabelValues("unknown", "malformed")); v != 1 {
		t.Fatalf("unknown/malformed = %v, want 1", v)
	}
	if v := value(c.vec.WithLabelValues("ingest", "tampered")); v != 0 {
		t.Fatalf("ingest/tampered = %v, want 0", v)
	}
}

func TestKeyByID(t *testing.T) {
	r := NewKeyring()
	a, _ := r.Generate("a", 1)
	b, _ := r.Generate("b", 4)
	for _, k := range []*Key{a, b} {
		if got, ok := r.KeyByID(k.ID()); !ok || got != k {
			t.Fatalf("KeyByID(%s) = %v, %v", k.ID(), got, ok)
		}
	}
	if _, ok := r.KeyByID(KeyID{}); ok {
		t.Fatal("KeyByID found the zero id")
	}
}

func value(c prometheus.Counter) float64 {
	var m dto.Metric
	c.Write(&m)
	return m.GetCounter().GetValue()
}
