package exchange

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts what the exchange moves. A nil *Metrics counts nothing.
type Metrics struct {
	framesSent, framesReceived prometheus.Counter
	bytesSent, bytesReceived   prometheus.Counter
	creditWaits                prometheus.Counter
	creditWaitSeconds          prometheus.Counter
}

// NewMetrics creates the exchange's metrics, labelled with transport ("local"
// or "nats"), and registers them with reg if reg is not nil.
func NewMetrics(reg prometheus.Registerer, transport string) *Metrics {
	labels := prometheus.Labels{"transport": transport}
	frames := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sealflow", Subsystem: "exchange", Name: "frames_total",
		Help: "Frames moved by exchange channels, by direction.", ConstLabels: labels,
	}, []string{"direction"})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "sealflow", Subsystem: "exchange", Name: "bytes_total",
		Help: "Frame payload bytes moved by exchange channels, by direction.", ConstLabels: labels,
	}, []string{"direction"})
	waits := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "sealflow", Subsystem: "exchange", Name: "credit_waits_total",
		Help: "Sends that found no credit and waited for the consumer.", ConstLabels: labels,
	})
	waitSecs := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "sealflow", Subsystem: "exchange", Name: "credit_wait_seconds_total",
		Help: "Time producers spent waiting for credit (backpressure).", ConstLabels: labels,
	})
	if reg != nil {
		reg.MustRegister(frames, bytes, waits, waitSecs)
	}
	return &Metrics{
		framesSent: frames.WithLabelValues("sent"), framesReceived: frames.WithLabelValues("received"),
		bytesSent: bytes.WithLabelValues("sent"), bytesReceived: bytes.WithLabelValues("received"),
		creditWaits: waits, creditWaitSeconds: waitSecs,
	}
}

func (m *Metrics) sent(n int) {
	if m != nil {
		m.framesSent.Inc()
		m.bytesSent.Add(float64(n))
	}
}

func (m *Metrics) received(n int) {
	if m != nil {
		m.framesReceived.Inc()
		m.bytesReceived.Add(float64(n))
	}
}

func (m *Metrics) creditWait(d time.Duration) {
	if m != nil {
		m.creditWaits.Inc()
		m.creditWaitSeconds.Add(d.Seconds())
	}
}
