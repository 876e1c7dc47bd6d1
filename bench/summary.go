package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math"
)

// Summary is the one-line JSON summary "sealflow nexmark run" and
// "sealflow bench query" print.
type Summary struct {
	Query           string  `json:"query"`
	Events          int64   `json:"events"`
	Rows            int64   `json:"rows"`
	Parallelism     int     `json:"parallelism"`
	Sealed          bool    `json:"sealed"`
	Tasks           int     `json:"tasks"`
	Frames          int64   `json:"frames"`
	ExchangeBytes   int64   `json:"exchange_bytes"`
	WallSeconds     float64 `json:"wall_seconds"`
	CPUSeconds      float64 `json:"cpu_seconds"`
	EventsPerSecond float64 `json:"events_per_second"`
	PeakRSSBytes    int64   `json:"peak_rss_bytes"`
	LatencyP50Ms    float64 `json:"latency_p50_ms,omitempty"`
	LatencyP99Ms    float64 `json:"latency_p99_ms,omitempty"`
	// SealCPUSeconds is the CPU time spent sealing and opening exchange
	// frames within the run, as a confidential.TimedCodec estimates it
	// (sampled calls, thread CPU clock): 0 for plaintext runs, runs without
	// exchanges and runs without seal timing.
	SealCPUSeconds float64 `json:"seal_cpu_seconds"`
	// SealTimed is whether the run's exchange codec was timed (a sealed run
	// with seal timing on), so that SealCPUSeconds means something, 0
	// included.
	SealTimed bool `json:"seal_timed,omitempty"`
}

// SealShare returns the share of the run's CPU time spent sealing and
// opening exchange frames (SealCPUSeconds ÷ CPUSeconds), or 0 if no CPU time
// was measured.
func (s Summary) SealShare() float64 {
	if s.CPUSeconds <= 0 {
		return 0
	}
	return s.SealCPUSeconds / s.CPUSeconds
}

// PerCore returns events per CPU-second (events/s per core), or 0 if no CPU
// time was measured.
func (s Summary) PerCore() float64 {
	if s.CPUSeconds <= 0 {
		return 0
	}
	return float64(s.Events) / s.CPUSeconds
}

// ParseSummary finds the summary in a child's standard output: the last
// non-empty line, which must be a JSON object with a query and non-negative,
// finite figures.
func ParseSummary(out []byte) (Summary, error) {
	out = bytes.TrimRight(out, " \t\r\n")
	if i := bytes.LastIndexByte(out, '\n'); i >= 0 {
		out = out[i+1:]
	}
	var s Summary
	if len(out) == 0 {
		return s, fmt.Errorf("bench: no summary line in the run's output")
	}
	if err := json.Unmarshal(out, &s); err != nil {
		return Summary{}, fmt.Errorf("bench: summary line %.80q: %w", out, err)
	}
	switch {
	case s.Query == "":
		return Summary{}, fmt.Errorf("bench: summary line %.80q has no query", out)
	case s.Events < 0 || s.Rows < 0 || s.CPUSeconds < 0 || s.WallSeconds < 0 || s.PeakRSSBytes < 0 ||
		s.LatencyP50Ms < 0 || s.LatencyP99Ms < 0 || s.SealCPUSeconds < 0:
		return Summary{}, fmt.Errorf("bench: summary line %.80q has a negative figure", out)
	}
	return s, nil
}

// RowDigest identifies a multiset of rows (lines): equal multisets have equal
// digests whatever the order of the lines. It is a count and two sums of
// independent 64-bit line hashes.
type RowDigest struct {
	Rows   int64
	SumA   uint64
	SumB   uint64
	Failed bool // the rows could not be read
}

// String formats the digest for messages.
func (d RowDigest) String() string {
	return fmt.Sprintf("%d rows, digest %016x%016x", d.Rows, d.SumA, d.SumB)
}

// DigestRows reads JSON lines from r and returns the digest of the multiset of
// its non-empty lines. Rows must be written the same way to compare (as
// nexmark.AppendRowJSON writes them).
func DigestRows(r io.Reader) (RowDigest, error) {
	var d RowDigest
	br := bufio.NewReaderSize(r, 1<<16)
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A long line: gather it whole.
			long := append([]byte(nil), line...)
			for err == bufio.ErrBufferFull {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if l := bytes.TrimRight(line, "\r\n"); len(l) > 0 {
			ha, hb := fnv.New64a(), fnv.New64()
			ha.Write(l)
			hb.Write(l)
			d.Rows++
			d.SumA += mix(ha.Sum64())
			d.SumB += mix(hb.Sum64())
		}
		if err == io.EOF {
			return d, nil
		}
		if err != nil {
			return RowDigest{}, err
		}
	}
}

// mix is a 64-bit finalizer (splitmix64), so sums of hashes of similar lines
// do not cancel out.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// median returns the median of xs (the mean of the middle two for an even
// count), or 0 for none. It sorts a copy.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// finite reports whether x is a usable figure.
func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
