package api

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sealflow/sealflow/orchestrator"
)

type metrics struct {
	statements  *prometheus.CounterVec
	refusals    *prometheus.CounterVec
	keyReleases prometheus.Counter
	// admissions counts node admissions (and re-attestations) by outcome;
	// policyRefusals counts refusals by a stream policy's rule.
	admissions     *prometheus.CounterVec
	policyRefusals *prometheus.CounterVec
	// nodesLost counts nodes declared lost (silent for longer than
	// Config.NodeTimeout while holding tasks).
	nodesLost prometheus.Counter
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
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sealflow_orchestrator_admissions_total", Help: "Node admissions and re-attestations, by outcome (admitted or refused).",
		}, []string{"outcome"}),
		policyRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sealflow_orchestrator_policy_refusals_total", Help: "Refusals by a stream owner's policy, by the refusing rule (policy:<stream>/<rule>).",
		}, []string{"rule"}),
		nodesLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sealflow_orchestrator_nodes_lost_total", Help: "Nodes declared lost after being silent for longer than the node timeout while holding tasks.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.statements, m.refusals, m.keyReleases, m.admissions, m.policyRefusals, m.nodesLost)
	}
	return m
}

func (m *metrics) statement(r *Response) {
	outcome := "applied"
	if !r.OK {
		outcome = "refused"
		m.refusals.WithLabelValues(r.Rule).Inc()
		if strings.HasPrefix(r.Rule, "policy:") {
			m.policyRefusals.WithLabelValues(r.Rule).Inc()
		}
	}
	if r.Type == orchestrator.TypeNodeAdmit {
		if r.OK {
			m.admissions.WithLabelValues("admitted").Inc()
		} else {
			m.admissions.WithLabelValues("refused").Inc()
		}
	}
	typ := r.Type
	if typ == "" {
		typ = "unparsed"
	}
	m.statements.WithLabelValues(typ, outcome).Inc()
}
