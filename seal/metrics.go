package seal

import "github.com/prometheus/client_golang/prometheus"

// RejectionCounter counts frames that Openers rejected, by frame kind and
// Reason, as the Prometheus counter sealflow_seal_rejected_frames_total. Every
// (kind, reason) series exists from the start at zero, so that alerts on
// increase() see the first rejection.
type RejectionCounter struct {
	vec *prometheus.CounterVec
}

// NewRejectionCounter returns a RejectionCounter; register its Collector.
func NewRejectionCounter() *RejectionCounter {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sealflow",
		Subsystem: "seal",
		Name:      "rejected_frames_total",
		Help:      "Frames an opener rejected, by frame kind and reason (tampered, replayed, gap, foreign, unknown-epoch, truncated, plaintext, after-end, malformed).",
	}, []string{"kind", "reason"})
	for k := KindIngest; k <= KindControl; k++ {
		for _, r := range Reasons() {
			vec.WithLabelValues(k.String(), string(r))
		}
	}
	return &RejectionCounter{vec: vec}
}

// Collector returns the counter to register with a prometheus.Registerer.
func (c *RejectionCounter) Collector() prometheus.Collector { return c.vec }

// Observe counts err if it is a *Rejection and reports whether it was. A
// rejection of a malformed frame, whose kind is unknown, counts as kind
// "unknown".
func (c *RejectionCounter) Observe(err error) bool {
	r := ReasonOf(err)
	if r == "" {
		return false
	}
	kind := "unknown"
	if rej := asRejection(err); rej.Kind.Valid() {
		kind = rej.Kind.String()
	}
	c.vec.WithLabelValues(kind, string(r)).Inc()
	return true
}
