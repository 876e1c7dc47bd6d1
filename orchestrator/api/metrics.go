package api

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	statements  *prometheus.CounterVec
	refusals    *prometheus.CounterVec
	keyReleases prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		statements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sealflow_orchestrator_statements_total", Help: "Signed statements applied or refused, by type and outcome.",
		}, []string{"type", "outcome"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sealflow_orchestrator_refusals_total", Help: "Refusals by the rule that refused.",
		}, []string{"rule"}),
		keyReleases: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sealflow_orchestrator_key_releases_total", Help: "Keys released, wrapped to nodes or recipients.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.statements, m.refusals, m.keyReleases)
	}
	return m
}

func (m *metrics) statement(r *Response) {
	outcome := "applied"
	if !r.OK {
		outcome = "refused"
		m.refusals.WithLabelValues(r.Rule).Inc()
	}
	typ := r.Type
	if typ == "" {
		typ = "unparsed"
	}
	m.statements.WithLabelValues(typ, outcome).Inc()
}
