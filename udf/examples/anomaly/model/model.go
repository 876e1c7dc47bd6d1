// Package model is the proprietary part of the anomaly example: a logistic
// regression over a sliding window of a meter's readings, with embedded
// weights. It is plain Go, compiled into the WebAssembly module by
// udf/examples/anomaly and used natively by tests as the reference.
package model

import "math"

// Window is the number of readings, including the current one, the model
// looks at.
const Window = 8

// The trained weights over the features of Features, and the bias.
var (
	weights = [4]float64{1.9, 2.6, -0.8, 1.1}
	bias    = -6.2
)

// Threshold is the probability above which a reading is anomalous.
const Threshold = 0.5

// MinHistory is the number of earlier readings the model needs; with fewer,
// Score returns 0.
const MinHistory = 3

// Features returns the model's inputs for a window of readings, oldest
// first, whose last element is the current reading: the z-score of the
// current reading against the earlier ones, its relative change from the
// previous reading (clamped to [-5, 5]), the earlier readings' coefficient
// of variation, and the ratio of the current reading to their mean (clamped
// to [0, 10]).
func Features(w []float64) [4]float64 {
	n := len(w) - 1
	if n < 1 {
		return [4]float64{}
	}
	cur, prev := w[n], w[:n]
	var mean float64
	for _, v := range prev {
		mean += v
	}
	mean /= float64(n)
	var ss float64
	for _, v := range prev {
		ss += (v - mean) * (v - mean)
	}
	std := math.Sqrt(ss / float64(n))
	const eps = 1e-9
	z := (cur - mean) / (std + 0.1*math.Abs(mean) + eps)
	change := clamp((cur-prev[n-1])/(math.Abs(prev[n-1])+eps), -5, 5)
	cv := std / (math.Abs(mean) + eps)
	ratio := clamp(cur/(math.Abs(mean)+eps), 0, 10)
	return [4]float64{z, change, cv, ratio}
}

// Score returns the probability that the last reading of window w is
// anomalous.
func Score(w []float64) float64 {
	if len(w) < MinHistory+1 {
		return 0
	}
	x := Features(w)
	s := bias
	for i := range x {
		s += weights[i] * x[i]
	}
	return 1 / (1 + math.Exp(-s))
}

// Detector keeps the last Window readings of each meter.
type Detector struct {
	windows map[string][]float64
}

// NewDetector returns a detector with no history.
func NewDetector() *Detector { return &Detector{windows: map[string][]float64{}} }

// Observe adds a meter's reading and returns its anomaly probability and
// whether it exceeds Threshold.
func (d *Detector) Observe(meter string, kwh float64) (float64, bool) {
	w := append(d.windows[meter], kwh)
	if len(w) > Window {
		w = append(w[:0], w[len(w)-Window:]...)
	}
	d.windows[meter] = w
	p := Score(w)
	return p, p > Threshold
}

func clamp(v, lo, hi float64) float64 { return math.Max(lo, math.Min(hi, v)) }
