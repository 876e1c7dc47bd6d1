package console_test

import (
	"context"
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/worker"
)

// rejectAll is a worker.StreamIO whose sources reject one frame.
type rejectAll struct{ worker.StreamIO }

func (rejectAll) Source(ctx context.Context, s worker.Stream, keys *seal.Keyring, reject worker.RejectFunc) (runtime.Source, error) {
	reject(s.Scope, "seal.replay", 1, "")
	return nil, nil
}

// exported returns every metric the orchestrator and a worker export, with
// their label names.
func exported(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	d := scenario(t)
	m := worker.NewMetrics("edge-1")
	if _, err := m.WrapIO(rejectAll{}).Source(context.Background(), worker.Stream{Scope: "s"}, nil, func(string, string, int, string) {}); err != nil {
		t.Fatal(err)
	}
	for _, reg := range []*prometheus.Registry{d.reg, m.Registry()} {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			for _, s := range mf.GetMetric() {
				for _, lp := range s.GetLabel() {
					if !slices.Contains(out[mf.GetName()], lp.GetName()) {
						out[mf.GetName()] = append(out[mf.GetName()], lp.GetName())
					}
				}
			}
			if out[mf.GetName()] == nil {
				out[mf.GetName()] = []string{}
			}
			// A histogram is queried by its series: _bucket (with le),
			// _sum and _count.
			if ms := mf.GetMetric(); len(ms) > 0 && ms[0].GetHistogram() != nil {
				out[mf.GetName()+"_bucket"] = append(slices.Clone(out[mf.GetName()]), "le")
				out[mf.GetName()+"_sum"] = out[mf.GetName()]
				out[mf.GetName()+"_count"] = out[mf.GetName()]
			}
		}
	}
	// Task series exist only once a task runs: take their labels from the
	// descriptors.
	ch := make(chan *prometheus.Desc, 16)
	m.Describe(ch)
	close(ch)
	descRe := regexp.MustCompile(`fqName: "([^"]+)".*constLabels: \{([^}]*)\}.*variableLabels: \{([^}]*)\}`)
	for desc := range ch {
		sm := descRe.FindStringSubmatch(desc.String())
		if sm == nil {
			t.Fatalf("cannot read descriptor %s", desc)
		}
		labels := strings.FieldsFunc(sm[3], func(r rune) bool { return r == ',' })
		for _, c := range strings.Split(sm[2], ",") {
			if name, _, ok := strings.Cut(c, "="); ok {
				labels = append(labels, name)
			}
		}
		out[sm[1]] = labels
	}
	return out
}

// TestGrafanaDashboardUsesExportedMetrics checks deploy/grafana/sealflow.json:
// it is a dashboard whose every panel queries Prometheus, and every sealflow
// metric and label it names is one the orchestrator or the workers export.
func TestGrafanaDashboardUsesExportedMetrics(t *testing.T) {
	raw, err := os.ReadFile("../deploy/grafana/sealflow.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID        string `json:"uid"`
		Title      string `json:"title"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct {
				Type string `json:"type"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	if dash.UID == "" || dash.Title == "" || len(dash.Panels) == 0 {
		t.Fatalf("the dashboard lacks a uid, a title or panels")
	}
	var exprs []string
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || len(p.Targets) == 0 {
			t.Errorf("panel %q has no Prometheus query", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				t.Errorf("panel %q has an empty query", p.Title)
			}
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		exprs = append(exprs, v.Definition)
	}
	metrics := exported(t)
	selector := regexp.MustCompile(`\b(sealflow_(?:orchestrator|worker)_[a-z_]+)(?:\{([^}]*)\})?`)
	labelName := regexp.MustCompile(`(\w+)\s*(?:=~|!~|!=|=)`)
	byClause := regexp.MustCompile(`by \(([^)]*)\) \((?:rate|increase)\((sealflow_[a-z_]+)`)
	labelValues := regexp.MustCompile(`label_values\((sealflow_[a-z_]+), (\w+)\)`)
	used := 0
	check := func(metric, label, expr string) {
		labels, ok := metrics[metric]
		if !ok {
			t.Errorf("%s is not exported by sealflow (query %q)", metric, expr)
			return
		}
		if label != "" && !slices.Contains(labels, label) {
			t.Errorf("%s has no label %q (it has %v; query %q)", metric, label, labels, expr)
		}
	}
	for _, e := range exprs {
		for _, m := range selector.FindAllStringSubmatch(e, -1) {
			used++
			check(m[1], "", e)
			for _, l := range labelName.FindAllStringSubmatch(m[2], -1) {
				check(m[1], l[1], e)
			}
		}
		for _, m := range byClause.FindAllStringSubmatch(e, -1) {
			for _, l := range strings.Split(m[1], ",") {
				check(m[2], strings.TrimSpace(l), e)
			}
		}
		for _, m := range labelValues.FindAllStringSubmatch(e, -1) {
			check(m[1], m[2], e)
		}
	}
	for _, name := range []string{"sealflow_orchestrator_admissions_total", "sealflow_orchestrator_key_releases_total", "sealflow_orchestrator_policy_refusals_total",
		"sealflow_worker_records_in_total", "sealflow_worker_records_out_total", "sealflow_worker_frames_rejected_total", "sealflow_worker_tasks",
		"sealflow_worker_watermark_lag_seconds", "sealflow_worker_backpressure_ratio", "sealflow_worker_checkpoint_duration_seconds", "sealflow_worker_checkpoint_size_bytes",
		"sealflow_worker_checkpoints_total", "sealflow_worker_task_restarts_total"} {
		if !strings.Contains(string(raw), name) {
			t.Errorf("the dashboard does not chart %s", name)
		}
	}
	if used == 0 {
		t.Fatal("the dashboard queries no sealflow metric")
	}
}
