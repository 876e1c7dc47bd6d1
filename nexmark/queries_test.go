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
