package nexmark

import (
	"reflect"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

func TestSourceCoversEveryEventOnce(t *testing.T) {
	const n = 20_000
	evs := mustGenerate(t, DefaultConfig(11), n)
	g, _ := NewGenerator(DefaultConfig(11))
	for _, p := range []int{1, 3} {
		for _, k := range []Kind{KindPerson, KindAuction, KindBid} {
			var want []record.Record
			for i := range evs {
				if evs[i].Kind == k {
					var r record.Record
					evs[i].Record(&r)
					want = append(want, r)
				}
			}
			split := Split(evs, p)
			var got []record.Record
			for i := range p {
				src := NewSource(g, k, n, i, p)
				var fromSource []record.Record
				b := &record.Batch{}
				for more := true; more; {
					b.Reset()
					more = src.Fill(b, 100)
					for _, r := range b.Records {
						fromSource = append(fromSource, record.Record{Time: r.Time, Values: append([]record.Value(nil), r.Values...)})
					}
				}
				if !reflect.DeepEqual(fromSource, split[k][i]) && len(fromSource)+len(split[k][i]) > 0 {
					t.Fatalf("p=%d kind %s subtask %d: Source and Split disagree", p, k, i)
				}
				got = append(got, fromSource...)
			}
			if len(got) != len(want) {
				t.Fatalf("p=%d kind %s: %d records from sources, want %d", p, k, len(got), len(want))
			}
			if d := Diff(Result{Rows: valuesOf(want)}, Result{Rows: valuesOf(got)}, 3); d != "" {
				t.Fatalf("p=%d kind %s: %s", p, k, d)
			}
		}
	}
}

func valuesOf(rs []record.Record) [][]record.Value {
	out := make([][]record.Value, len(rs))
	for i, r := range rs {
		out[i] = r.Values
	}
	return out
}
