package nexmark

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
)

// writeEventsFile writes events as JSON lines (with extra, as WriteEvents
// would) to a file in a test directory and returns its path.
func writeEventsFile(t *testing.T, events []Event, extra ...string) string {
	t.Helper()
	var buf bytes.Buffer
	for i := range events {
		buf.Write(AppendJSON(nil, &events[i]))
		buf.WriteByte('\n')
	}
	for _, l := range extra {
		buf.WriteString(l + "\n")
	}
	path := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestQueriesOverOpenInput streams every query's input from a file at
// parallelism 1 and 2 and compares the rows with the reference, and the
// event count with the file's.
func TestQueriesOverOpenInput(t *testing.T) {
	events := mustGenerate(t, DefaultConfig(6), 20_000)
	path := writeEventsFile(t, events[:10_000], "", "  ") // blank lines are skipped
	// A second half written with whitespace and the type last still decodes.
	var more bytes.Buffer
	for i := 10_000; i < len(events); i++ {
		l := AppendJSON(nil, &events[i])
		typ, rest, _ := bytes.Cut(l[1:], []byte(","))
		fmt.Fprintf(&more, " {%s, %s} \n", bytes.TrimSuffix(rest, []byte("}")), typ)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(more.Bytes())
	f.Close()
	for _, q := range Queries {
		want, _ := Reference(q, events)
		for _, p := range []int{1, 2} {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			in := Input{Open: FileOpener(path)}
			got := runCollect(t, ctx, RunOptions{Query: q, QueryOptions: QueryOptions{Parallelism: p}, Input: in})
			cancel()
			if d := Diff(want, got, 5); d != "" {
				t.Errorf("%s p%d from a file: %s", q, p, d)
			}
		}
	}
	in := Input{Open: FileOpener(path)}
	in.Read = nil
	srcs, err := Sources(&in, 100)
	if err != nil {
		t.Fatal(err)
	}
	if err := srcs[Stream(KindPerson)](context.Background(), splitOf(0, 1), func(*record.Batch) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if in.Len() != int64(len(events)) {
		t.Errorf("Len after reading the file = %d, want %d", in.Len(), len(events))
	}
}

// TestOpenInputPartitions checks that subtask i of p gets exactly the i-th,
// (i+p)-th, ... events of its kind (as for Given events), in batches of at most the batch size.
func TestOpenInputPartitions(t *testing.T) {
	events := mustGenerate(t, DefaultConfig(7), 3000)
	in := Input{Open: FileOpener(writeEventsFile(t, events))}
	srcs, err := Sources(&in, 7)
	if err != nil {
		t.Fatal(err)
	}
	const p = 3
	want := map[Kind][][]record.Record{}
	nth := map[Kind]int{}
	for _, ev := range events {
		if want[ev.Kind] == nil {
			want[ev.Kind] = make([][]record.Record, p)
		}
		var rec record.Record
		ev.Record(&rec)
		want[ev.Kind][nth[ev.Kind]%p] = append(want[ev.Kind][nth[ev.Kind]%p], rec)
		nth[ev.Kind]++
	}
	for _, k := range []Kind{KindPerson, KindAuction, KindBid} {
		for i := range p {
			var got []record.Record
			err := srcs[Stream(k)](context.Background(), splitOf(i, p), func(b *record.Batch) error {
				if b.Len() > 7 {
					t.Errorf("batch of %d records, want at most 7", b.Len())
				}
				for _, r := range b.Records {
					got = append(got, record.Record{Time: r.Time, Values: append([]record.Value(nil), r.Values...)})
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) == 0 || !reflect.DeepEqual(got, want[k][i]) {
				t.Errorf("%s subtask %d of %d: %d records differ from the %d expected", k, i, p, len(got), len(want[k][i]))
			}
		}
	}
}

func splitOf(i, p int) runtime.Split { return runtime.Split{Subtask: i, Parallelism: p} }

// TestOpenInputMalformedLine checks that a run over a file with a malformed
// line fails naming the line, whichever stream the line belongs to.
func TestOpenInputMalformedLine(t *testing.T) {
	events := mustGenerate(t, DefaultConfig(8), 500)
	for _, tc := range []struct{ line, query, want string }{
		{`{"type":"bid","auction":1,"bidder":2,"price":"x","channel":"","url":"","dateTime":1,"extra":""}`, "q1", `line 501: malformed bid event: field "price"`},
		{`{"type":"bid","auction":1}`, "q0", `line 501: malformed bid event: missing field "bidder"`},
		{`{"type":"lot"}`, "q1", `line 501: malformed event: unknown event type "lot"`},
		{`{"type":"person","id":1,`, "q3", `line 501: malformed person event`},
		{`not json`, "q0", `line 501: malformed event`},
	} {
		path := writeEventsFile(t, events, tc.line)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := Run(ctx, RunOptions{Query: tc.query, Input: Input{Open: FileOpener(path)}})
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s over a file ending %s: error %v, want one containing %q", tc.query, tc.line, err, tc.want)
		}
	}
	_, err := Run(context.Background(), RunOptions{Query: "q0", Input: Input{Open: FileOpener(filepath.Join(t.TempDir(), "absent"))}})
	if err == nil || !strings.Contains(err.Error(), "absent") {
		t.Errorf("run over a missing file: error %v, want one naming the file", err)
	}
}

// TestEventDecoder checks that the decoder gives the records Event.Record
// gives, for lines as WriteEvents writes them and in other layouts, and that
// its errors name the line and what is wrong.
func TestEventDecoder(t *testing.T) {
	d := NewEventDecoder()
	for i, ev := range mustGenerate(t, DefaultConfig(9), 200) {
		var want record.Record
		ev.Record(&want)
		canon := AppendJSON(nil, &ev)
		typ, rest, _ := bytes.Cut(canon[1:], []byte(","))
		other := []byte(fmt.Sprintf(`{ %s , "unknown":[1,{"a":null}], %s }`, bytes.TrimSuffix(rest, []byte("}")), typ))
		for _, line := range [][]byte{canon, other} {
			k, err := d.Kind(line, i+1)
			if err != nil || k != ev.Kind {
				t.Fatalf("Kind(%s) = %v, %v, want %v", line, k, err, ev.Kind)
			}
			var got record.Record
			if err := d.Decode(line, i+1, k, &got); err != nil {
				t.Fatalf("Decode(%s): %v", line, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("Decode(%s) = %v, want %v", line, got, want)
			}
		}
	}
	for _, tc := range []struct{ in, want string }{
		{`{"type":"bid","auction":1}`, `line 4: malformed bid event: missing field "bidder"`},
		{`{"type":"bid","auction":1,"bidder":2,"price":3,"channel":"","url":"","dateTime":null,"extra":""}`, `line 4: malformed bid event: missing field "dateTime"`},
		{`{"type":"bid","auction":1,"bidder":2,"price":3,"channel":"","url":null,"dateTime":5,"extra":""}`, `line 4: malformed bid event: missing field "url"`},
		{`{"auction":1}`, `line 4: malformed event: missing "type"`},
		{`{"type":"lot"}`, `line 4: malformed event: unknown event type "lot"`},
		{`{"type":"bidder"}`, `unknown event type "bidder"`},
		{`{"type":7}`, `line 4: malformed event: field "type"`},
		{`{"type":"person","id":"x"}`, `line 4: malformed person event: field "id"`},
		{`not json`, `line 4: malformed event: byte 0`},
	} {
		k, err := d.Kind([]byte(tc.in), 4)
		if err == nil {
			var rec record.Record
			err = d.Decode([]byte(tc.in), 4, k, &rec)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("decoding %s: error %v, want one containing %q", tc.in, err, tc.want)
		}
	}
}

// FuzzEventDecoder checks that the decoder never panics, that what it
// decodes re-encodes to a line that decodes to the same record, and that it
// agrees with ParseEvent on lines both accept.
func FuzzEventDecoder(f *testing.F) {
	for _, ev := range mustGenerate(f, DefaultConfig(9), 60)[:5] {
		f.Add(AppendJSON(nil, &ev))
	}
	f.Add([]byte(`{"type":"bid","auction":1,"bidder":2,"price":3,"channel":"\u0000","url":"\"","dateTime":-1,"extra":"é"}`))
	f.Add([]byte(`{"extra":"","type":"person"}`))
	f.Add([]byte(`{"type":"auction"`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d := NewEventDecoder()
		k, err := d.Kind(b, 1)
		if err != nil {
			return
		}
		var rec record.Record
		if err := d.Decode(b, 1, k, &rec); err != nil {
			return
		}
		line := append([]byte(`{"type":"`+k.String()+`"`), nil...)
		for i, fl := range Schema(k).Fields {
			line = append(line, ',')
			line = record.AppendJSONString(line, fl.Name)
			line = append(line, ':')
			line = AppendValue(line, rec.Values[i])
		}
		line = append(line, '}')
		var again record.Record
		if k2, err := d.Kind(line, 1); err != nil || k2 != k {
			t.Fatalf("re-encoded %s: kind %v, %v", line, k2, err)
		}
		if err := d.Decode(line, 1, k, &again); err != nil {
			t.Fatalf("re-decode of %s: %v", line, err)
		}
		if !reflect.DeepEqual(rec, again) {
			t.Fatalf("round trip changed %v into %v", rec, again)
		}
		if ev, err := ParseEvent(line); err == nil {
			var want record.Record
			ev.Record(&want)
			if !reflect.DeepEqual(want, again) {
				t.Fatalf("ParseEvent(%s) gives %v, the decoder %v", line, want, again)
			}
		}
	})
}
