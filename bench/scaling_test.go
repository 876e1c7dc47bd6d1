package bench

import (
	"strings"
	"testing"
)

func TestMemoryVerdict(t *testing.T) {
	steps := []scalingStep{{label: "q5, 1× events"}, {label: "q5, 10× events"}, {label: "q7, 1× events"}, {label: "q7, 10× events"}}
	mib := func(xs ...float64) []Summary {
		var s []Summary
		for _, x := range xs {
			s = append(s, Summary{PeakRSSBytes: int64(x * (1 << 20))})
		}
		return s
	}
	for _, tc := range []struct {
		name string
		runs [][]Summary
		want string
	}{
		{"both within, medians not means", [][]Summary{mib(40, 50, 50), mib(52, 53, 90), mib(50), mib(54)},
			"q5 +6.0%, q7 +8.0%. Target ≤ 10%: met by 2 of 2."},
		{"one over", [][]Summary{mib(50, 50, 50), mib(50, 51, 49), mib(50, 49, 51), mib(56, 55, 57)},
			"q5 +0.0%, q7 +12.0%. Target ≤ 10%: met by 1 of 2 (over: q7 +12.0%)."},
		{"shrinking is within", [][]Summary{mib(60), mib(50), mib(50), mib(50)},
			"q5 -16.7%, q7 +0.0%. Target ≤ 10%: met by 2 of 2."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := memoryVerdict(steps, tc.runs)
			if !strings.Contains(got, tc.want) {
				t.Fatalf("verdict %q, want it to contain %q", got, tc.want)
			}
		})
	}
}

func TestScalingRowMedians(t *testing.T) {
	runs := []Summary{
		{Events: 1000, Tasks: 3, CPUSeconds: 1, EventsPerSecond: 900, PeakRSSBytes: 50 << 20},
		{Events: 1000, Tasks: 3, CPUSeconds: 4, EventsPerSecond: 100, PeakRSSBytes: 40 << 20},
		{Events: 1000, Tasks: 3, CPUSeconds: 2, EventsPerSecond: 500, PeakRSSBytes: 45 << 20},
	}
	want := "| q7, 1× events | 1000 | 3 | 500 | 2.00 | 500 | 45.0 MiB (40.0–50.0) |\n"
	if got := scalingRow("q7, 1× events", runs); got != want {
		t.Fatalf("row %q, want %q", got, want)
	}
	if got := scalingRow("one", runs[:1]); !strings.HasSuffix(got, "| 50 MiB |\n") {
		t.Fatalf("single-run row %q, want the plain peak RSS", got)
	}
}
