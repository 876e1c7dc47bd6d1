package operator

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/state"
)

func rangeOf(from, to int) state.Range { return state.Range{From: from, To: to} }

// recorder is an Emitter that keeps copies of everything emitted.
type recorder struct {
	out  []record.Record
	side map[string][]record.Record
	wms  []int64
}

func (r *recorder) Emit(rec record.Record) {
	r.out = append(r.out, record.Record{Time: rec.Time, Values: slices.Clone(rec.Values)})
}

func (r *recorder) EmitSide(name string, rec record.Record) {
	if r.side == nil {
		r.side = map[string][]record.Record{}
	}
	r.side[name] = append(r.side[name], record.Record{Time: rec.Time, Values: slices.Clone(rec.Values)})
}

func (r *recorder) EmitWatermark(wm int64) { r.wms = append(r.wms, wm) }

// rec builds a record at time t with int values (or strings, floats, nil).
func rec(t int64, vals ...any) record.Record {
	r := record.Record{Time: t}
	for _, v := range vals {
		switch v := v.(type) {
		case int:
			r.Values = append(r.Values, record.Int(int64(v)))
		case int64:
			r.Values = append(r.Values, record.Int(v))
		case float64:
			r.Values = append(r.Values, record.Float(v))
		case string:
			r.Values = append(r.Values, record.String(v))
		case nil:
			r.Values = append(r.Values, record.Value{})
		default:
			panic(fmt.Sprintf("rec: unsupported %T", v))
		}
	}
	return r
}

// step is one input event of a test: a batch, a watermark, or end of input.
type step struct {
	input  int
	recs   []record.Record
	wm     int64
	isWM   bool
	finish bool
}

func B(recs ...record.Record) step             { return step{recs: recs} }
func BI(input int, recs ...record.Record) step { return step{input: input, recs: recs} }
func W(wm int64) step                          { return step{wm: wm, isWM: true} }
func WI(input int, wm int64) step              { return step{input: input, wm: wm, isWM: true} }
func F() step                                  { return step{finish: true} }

func run(t *testing.T, op Operator, out *recorder, steps ...step) {
	t.Helper()
	for i, s := range steps {
		var err error
		switch {
		case s.finish:
			err = op.Finish(out)
		case s.isWM:
			err = op.ProcessWatermark(s.input, s.wm, out)
		default:
			b := record.Batch{Records: slices.Clone(s.recs)}
			err = op.ProcessBatch(s.input, &b, out)
		}
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
}

// show formats records as "time:v1,v2,..." for comparison.
func show(recs []record.Record) []string {
	out := make([]string, 0, len(recs))
	for _, r := range recs {
		var b strings.Builder
		fmt.Fprintf(&b, "%d:", r.Time)
		for i, v := range r.Values {
			if i > 0 {
				b.WriteByte(',')
			}
			switch v.T {
			case record.TypeNull:
				b.WriteString("null")
			case record.TypeInt, record.TypeBool:
				fmt.Fprint(&b, v.I)
			case record.TypeFloat:
				fmt.Fprint(&b, v.F)
			case record.TypeString:
				b.WriteString(v.S)
			}
		}
		out = append(out, b.String())
	}
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func checkRows(t *testing.T, what string, got []record.Record, want []string) {
	t.Helper()
	g := show(got)
	if len(want) == 0 && len(g) == 0 {
		return
	}
	if !slices.Equal(g, want) {
		t.Errorf("%s:\n got %q\nwant %q", what, g, want)
	}
}
