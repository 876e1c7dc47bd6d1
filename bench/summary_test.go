package bench

import (
	"math/rand/v2"
	"strings"
	"testing"
)

func TestParseSummary(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    Summary
		wantErr string
	}{
		{"one line", `{"query":"q1","events":10,"cpu_seconds":0.5,"peak_rss_bytes":100}` + "\n",
			Summary{Query: "q1", Events: 10, CPUSeconds: 0.5, PeakRSSBytes: 100}, ""},
		{"last line wins", "noise\n" + `{"query":"q0","events":1}` + "\n" + `{"query":"q2","events":2}` + "\n\n",
			Summary{Query: "q2", Events: 2}, ""},
		{"empty", "", Summary{}, "no summary line"},
		{"not json", "hello\n", Summary{}, "summary line"},
		{"no query", `{"events":3}`, Summary{}, "no query"},
		{"negative", `{"query":"q1","cpu_seconds":-1}`, Summary{}, "negative"},
		{"seal cpu", `{"query":"q0","cpu_seconds":2,"seal_cpu_seconds":0.1}`, Summary{Query: "q0", CPUSeconds: 2, SealCPUSeconds: 0.1}, ""},
		{"negative seal cpu", `{"query":"q1","seal_cpu_seconds":-0.1}`, Summary{}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSummary([]byte(tt.out))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSummary: error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseSummary = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestPerCore(t *testing.T) {
	if got := (Summary{Events: 1000, CPUSeconds: 0.5}).PerCore(); got != 2000 {
		t.Errorf("PerCore = %g, want 2000", got)
	}
	if got := (Summary{Events: 1000}).PerCore(); got != 0 {
		t.Errorf("PerCore without CPU time = %g, want 0", got)
	}
}

func FuzzParseSummary(f *testing.F) {
	f.Add([]byte(`{"query":"q1","events":10,"cpu_seconds":0.5}`))
	f.Add([]byte("x\n{\"query\":\"q5\",\"latency_p50_ms\":3}\n"))
	f.Add([]byte(`{"query":"q1","events":-1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSummary(data)
		if err != nil {
			return
		}
		if s.Query == "" || s.Events < 0 || s.CPUSeconds < 0 || s.PeakRSSBytes < 0 {
			t.Fatalf("accepted an invalid summary %+v from %q", s, data)
		}
	})
}

func TestDigestRows(t *testing.T) {
	long := `{"extra":"` + strings.Repeat("x", 200_000) + `"}`
	tests := []struct {
		name string
		a, b string
		same bool
	}{
		{"same", "a\nb\n", "a\nb\n", true},
		{"reordered", "a\nb\nc\n", "c\na\nb\n", true},
		{"no final newline, blank lines", "a\nb\n", "\nb\r\na", true},
		{"long lines", long + "\nb\n", "b\n" + long, true},
		{"one changed", "a\nb\n", "a\nc\n", false},
		{"duplicate vs distinct", "a\na\n", "a\nb\n", false},
		{"extra duplicate", "a\nb\n", "a\nb\nb\n", false},
		{"long line changed", long, long[:len(long)-3] + `y"}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			da, err := DigestRows(strings.NewReader(tt.a))
			if err != nil {
				t.Fatal(err)
			}
			db, err := DigestRows(strings.NewReader(tt.b))
			if err != nil {
				t.Fatal(err)
			}
			if (da == db) != tt.same {
				t.Fatalf("digests %s and %s: equal %t, want %t", da, db, da == db, tt.same)
			}
		})
	}
	d, _ := DigestRows(strings.NewReader("a\n\nb\nc"))
	if d.Rows != 3 {
		t.Errorf("rows = %d, want 3", d.Rows)
	}
}

func FuzzDigestRows(f *testing.F) {
	f.Add("a\nb\nc", uint64(1))
	f.Add("{\"x\":1}\n{\"x\":1}\n", uint64(7))
	f.Fuzz(func(t *testing.T, text string, seed uint64) {
		d1, err := DigestRows(strings.NewReader(text))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(text, "\n")
		r := rand.New(rand.NewPCG(seed, 1))
		r.Shuffle(len(lines), func(i, j int) { lines[i], lines[j] = lines[j], lines[i] })
		d2, err := DigestRows(strings.NewReader(strings.Join(lines, "\n")))
		if err != nil {
			t.Fatal(err)
		}
		if d1 != d2 {
			t.Fatalf("reordering %q changed the digest: %s vs %s", text, d1, d2)
		}
	})
}

func TestMedian(t *testing.T) {
	tests := []struct {
		xs   []float64
		want float64
	}{
		{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		in := append([]float64(nil), tt.xs...)
		if got := median(tt.xs); got != tt.want {
			t.Errorf("median(%v) = %g, want %g", tt.xs, got, tt.want)
		}
		for i := range in {
			if in[i] != tt.xs[i] {
				t.Fatalf("median reordered its input")
			}
		}
	}
}
