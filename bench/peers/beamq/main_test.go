package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism"
)

// t0 is a window-aligned event time (2024-01-01, the generator's start).
const t0 = 1704067200000

// TestMain initializes Beam, as main does, before any pipeline runs.
func TestMain(m *testing.M) {
	beam.Init()
	os.Exit(m.Run())
}

func bidLine(auction, price, dateTime int64) string {
	return fmt.Sprintf(`{"type":"bid","auction":%d,"bidder":%d,"price":%d,"channel":"c","url":"u","dateTime":%d,"extra":"x%d"}`,
		auction, auction+100, price, dateTime, auction)
}

// canonical re-encodes JSON lines with sorted keys, sorted, for comparison
// as multisets.
func canonical(t *testing.T, lines []string) []string {
	t.Helper()
	out := make([]string, 0, len(lines))
	for _, l := range lines {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("row %q: %v", l, err)
		}
		b, _ := json.Marshal(m)
		out = append(out, string(b))
	}
	slices.Sort(out)
	return out
}

func TestQueries(t *testing.T) {
	person := `{"type":"person","id":1,"name":"n","emailAddress":"e","creditCard":"c","city":"c","state":"OR","dateTime":1704067200000,"extra":""}`
	row5 := func(auction, num, start int64) string {
		return fmt.Sprintf(`{"auction":%d,"num":%d,"window_start":%d,"window_end":%d}`, auction, num, t0+start, t0+start+q5Size)
	}
	row7 := func(auction, price, dateTime int64) string {
		return fmt.Sprintf(`{"auction":%d,"bidder":%d,"price":%d,"dateTime":%d,"extra":"x%d"}`, auction, auction+100, price, t0+dateTime, auction)
	}
	tests := []struct {
		query  string
		events []string
		want   []string
	}{
		{
			// Auctions 1 and 3 have two bids each between 1.0 s and 1.5 s:
			// they tie in the five windows starting at -8, -6, -4, -2 and
			// 0 s. Auction 2's bids at 3 s and 11 s are both only in the
			// window starting at 2 s.
			query: "q5",
			events: []string{person, bidLine(1, 5, t0+1000), bidLine(3, 5, t0+1200), bidLine(3, 5, t0+1300),
				bidLine(1, 5, t0+1500), bidLine(2, 5, t0+3000), bidLine(2, 5, t0+11000)},
			want: []string{
				row5(1, 2, -8000), row5(1, 2, -6000), row5(1, 2, -4000), row5(1, 2, -2000), row5(1, 2, 0),
				row5(3, 2, -8000), row5(3, 2, -6000), row5(3, 2, -4000), row5(3, 2, -2000), row5(3, 2, 0),
				row5(2, 2, 2000), row5(2, 1, 4000), row5(2, 1, 6000), row5(2, 1, 8000), row5(2, 1, 10000),
			},
		},
		{
			// Window [0, 10 s): auctions 2 and 3 tie at 70; 9.999 s is the
			// window's last millisecond and 10 s the next window's first,
			// where auction 4's bid outbids the one at 16 s.
			query: "q7",
			events: []string{person, bidLine(1, 50, t0+1000), bidLine(2, 70, t0+2000),
				bidLine(3, 70, t0+9999), bidLine(4, 10, t0+10000), bidLine(7, 5, t0+16000)},
			want: []string{row7(2, 70, 2000), row7(3, 70, 9999), row7(4, 10, 10000)},
		},
	}
	for _, tc := range tests {
		t.Run(tc.query, func(t *testing.T) {
			dir := t.TempDir()
			in, out := filepath.Join(dir, "events.jsonl"), filepath.Join(dir, "rows.jsonl")
			if err := os.WriteFile(in, []byte(strings.Join(tc.events, "\n")+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			p, s := beam.NewPipelineWithRoot()
			if err := build(s, tc.query, in, out); err != nil {
				t.Fatal(err)
			}
			if _, err := prism.Execute(context.Background(), p); err != nil {
				t.Fatalf("pipeline: %v", err)
			}
			f, err := os.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var got []string
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				got = append(got, sc.Text())
			}
			if g, w := canonical(t, got), canonical(t, tc.want); !slices.Equal(g, w) {
				t.Errorf("rows:\n got  %v\n want %v", g, w)
			}
		})
	}
}

func TestBuildUnknownQuery(t *testing.T) {
	_, s := beam.NewPipelineWithRoot()
	if err := build(s, "q3", "in.jsonl", "out.jsonl"); err == nil {
		t.Fatal("build accepted q3")
	}
}
