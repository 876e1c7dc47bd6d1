package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCompareFiles(t *testing.T) {
	tests := []struct {
		name    string
		a, b    string
		wantErr string
	}{
		{"same order", `{"a":1,"b":"x"}` + "\n" + `{"a":2,"b":"y"}`, `{"a":1,"b":"x"}` + "\n" + `{"a":2,"b":"y"}`, ""},
		{"order and key order differ", `{"a":1,"b":"x"}` + "\n" + `{"a":2,"b":"y"}`, `{"b":"y","a":2}` + "\n" + `{"b":"x","a":1}`, ""},
		{"number formatting", `{"p":908.0}`, `{"p":9.08e2}`, ""},
		{"row missing", `{"a":1}` + "\n" + `{"a":1}`, `{"a":1}`, "more of row"},
		{"value differs", `{"a":1}`, `{"a":2}`, "more of row"},
		{"not json", `{"a":1}`, `{"a":`, "line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
			os.WriteFile(a, []byte(tt.a), 0o644)
			os.WriteFile(b, []byte(tt.b), 0o644)
			_, err := compareFiles(a, b)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("compare: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("compare: error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func FuzzCanonicalRows(f *testing.F) {
	f.Add([]byte(`{"a":1,"b":"x"}` + "\n" + `{"b":"y","a":2}`))
	f.Add([]byte("{\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var rows []string
		n, err := canonicalRows(strings.NewReader(string(data)), "fuzz", func(r string) { rows = append(rows, r) })
		if err == nil && n != len(rows) {
			t.Fatalf("count %d, rows %d", n, len(rows))
		}
	})
}
