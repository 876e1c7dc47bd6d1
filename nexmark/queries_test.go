package nexmark

import (
	"slices"
	"testing"
)

func TestJobSpecsResolve(t *testing.T) {
	for _, q := range Queries {
		for _, p := range []int{1, 4} {
			spec, err := JobSpec(q, QueryOptions{Parallelism: p})
			if err != nil {
				t.Fatalf("%s: %v", q, err)
			}
			res, err := spec.Resolve()
			if err != nil {
				t.Fatalf("%s: resolve: %v", q, err)
			}
			var sink string
			for _, n := range spec.Nodes {
				if n.Kind == "sink" {
					sink = n.ID
				}
			}
			out := res.Nodes[sink].In[0]
			var names []string
			for _, f := range out.Fields {
				names = append(names, f.Name)
			}
			if !slices.Equal(names, Columns(q)) {
				t.Errorf("%s: sink input columns %v, want %v", q, names, Columns(q))
			}
		}
	}
	if _, err := JobSpec("q42", QueryOptions{}); err == nil {
		t.Error("JobSpec(q42) accepted an unknown query")
	}
}

// TestJobSpecDigests checks that each query has its own digest and that
// changing parallelism (scaling) keeps the logic digest owners approve.
func TestJobSpecDigests(t *testing.T) {
	seen := map[string]string{}
	for _, q := range Queries {
		s1, _ := JobSpec(q, QueryOptions{Parallelism: 1})
		s4, _ := JobSpec(q, QueryOptions{Parallelism: 4})
		d1, err1 := s1.LogicDigest()
		d4, err4 := s4.LogicDigest()
		if err1 != nil || err4 != nil {
			t.Fatal(err1, err4)
		}
		if d1 != d4 {
			t.Errorf("%s: logic digest changes with parallelism: %s vs %s", q, d1, d4)
		}
		if other, dup := seen[d1]; dup {
			t.Errorf("%s and %s have the same logic digest", q, other)
		}
		seen[d1] = q
		full1, _ := s1.Digest()
		full4, _ := s4.Digest()
		if full1 == full4 {
			t.Errorf("%s: the full digest ignores parallelism", q)
		}
	}
}
