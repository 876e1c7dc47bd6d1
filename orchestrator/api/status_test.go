package api

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/party"
)

func wm(ms int64) *int64 { return &ms }

// TestStatusBookOperatorRates feeds the status book consecutive reports of a
// task and checks the per-operator rates, watermark lags and backpressure it
// serves, across a restart of the run and a report of the wrong node.
func TestStatusBookOperatorRates(t *testing.T) {
	const task = "balance/edge-a"
	nodeA, nodeB := party.ID(strings.Repeat("a", 64)), party.ID(strings.Repeat("b", 64))
	placed := map[string]party.ID{task: nodeA}
	t0 := time.UnixMilli(1_764_057_600_000).UTC()
	report := func(in, out int64, bp float64, ops ...OperatorReport) *StatusReport {
		return &StatusReport{Tasks: []TaskReport{{Job: "balance", Task: task, State: "running", RecordsIn: in, RecordsOut: out, Backpressure: bp, Operators: ops}}}
	}
	type opWant struct {
		id      string
		in, out float64  // rates
		lag     *float64 // nil: no lag served
	}
	f := func(x float64) *float64 { return &x }
	steps := []struct {
		name   string
		node   party.ID
		at     time.Time
		rep    *StatusReport
		taskIn float64
		bp     float64
		ops    []opWant
	}{
		{"first report: counters, lags, no rates yet", nodeA, t0,
			report(100, 10, 0.25,
				OperatorReport{ID: "src", RecordsOut: 100, Watermark: wm(t0.UnixMilli() - 4000)},
				OperatorReport{ID: "win", RecordsIn: 100, RecordsOut: 10, Watermark: wm(t0.UnixMilli() - 5500), Backpressure: 0.25},
				OperatorReport{ID: "out", RecordsIn: 10, Ended: true}),
			0, 0.25, []opWant{{"src", 0, 0, f(4)}, {"win", 0, 0, f(5.5)}, {"out", 0, 0, nil}}},
		{"two seconds later: rates per operator", nodeA, t0.Add(2 * time.Second),
			report(300, 30, 0.75,
				OperatorReport{ID: "src", RecordsOut: 300, Watermark: wm(t0.UnixMilli() - 1000)},
				OperatorReport{ID: "win", RecordsIn: 300, RecordsOut: 30, Watermark: wm(t0.UnixMilli() - 2000), Backpressure: 0.75},
				OperatorReport{ID: "out", RecordsIn: 30, Ended: true},
				OperatorReport{ID: "new"}),
			100, 0.75, []opWant{{"src", 0, 100, f(3)}, {"win", 100, 10, f(4)}, {"out", 10, 0, nil}, {"new", 0, 0, nil}}},
		{"a report of a node the task is not placed on is ignored", nodeB, t0.Add(3 * time.Second),
			report(9000, 9000, 1, OperatorReport{ID: "src", RecordsOut: 9000}),
			100, 0.75, []opWant{{"src", 0, 100, f(3)}, {"win", 100, 10, f(4)}, {"out", 10, 0, nil}, {"new", 0, 0, nil}}},
		{"a replayed older report is ignored", nodeA, t0.Add(time.Second),
			report(200, 20, 0, OperatorReport{ID: "src", RecordsOut: 200}),
			100, 0.75, []opWant{{"src", 0, 100, f(3)}, {"win", 100, 10, f(4)}, {"out", 10, 0, nil}, {"new", 0, 0, nil}}},
		{"a restarted run counts afresh: no negative rates", nodeA, t0.Add(4 * time.Second),
			report(350, 35, 0,
				OperatorReport{ID: "src", RecordsOut: 20},
				OperatorReport{ID: "win", RecordsIn: 420, RecordsOut: 30}),
			25, 0, []opWant{{"src", 0, 0, nil}, {"win", 60, 0, nil}}},
	}
	var b statusBook
	for _, s := range steps {
		b.record(s.node, placed, s.at, s.rep)
		got := b.job(map[string]party.ID{task: nodeA})
		if len(got) != 1 {
			t.Fatalf("%s: %d tasks, want 1", s.name, len(got))
		}
		ts := got[0]
		if ts.InPerSecond != s.taskIn || ts.Backpressure != s.bp {
			t.Errorf("%s: task in/s %v, backpressure %v; want %v, %v", s.name, ts.InPerSecond, ts.Backpressure, s.taskIn, s.bp)
		}
		if ts.TaskReport.Operators != nil {
			t.Errorf("%s: the report's operators are kept beside their status", s.name)
		}
		if len(ts.Operators) != len(s.ops) {
			t.Fatalf("%s: %d operators, want %d: %+v", s.name, len(ts.Operators), len(s.ops), ts.Operators)
		}
		for i, w := range s.ops {
			o := ts.Operators[i]
			if o.ID != w.id || o.InPerSecond != w.in || o.OutPerSecond != w.out {
				t.Errorf("%s: operator %d = %s in %v/s out %v/s, want %s in %v/s out %v/s", s.name, i, o.ID, o.InPerSecond, o.OutPerSecond, w.id, w.in, w.out)
			}
			switch {
			case (o.WatermarkLagSeconds == nil) != (w.lag == nil):
				t.Errorf("%s: operator %s lag %v, want %v", s.name, o.ID, o.WatermarkLagSeconds, w.lag)
			case w.lag != nil && *o.WatermarkLagSeconds != *w.lag:
				t.Errorf("%s: operator %s lag %v s, want %v s", s.name, o.ID, *o.WatermarkLagSeconds, *w.lag)
			}
		}
	}

	// /v1/status serves the operators with their rates under "operators".
	js, err := json.Marshal(b.job(map[string]party.ID{task: nodeA}))
	if err != nil {
		t.Fatal(err)
	}
	var served []struct {
		Operators []map[string]any `json:"operators"`
	}
	if err := json.Unmarshal(js, &served); err != nil {
		t.Fatal(err)
	}
	if len(served) != 1 || len(served[0].Operators) != 2 || served[0].Operators[1]["records_in_per_second"] != 60.0 {
		t.Fatalf("served %s", js)
	}

	// A report with more operators than any JobSpec has is cut short.
	many := make([]OperatorReport, maxOperators+10)
	b.record(nodeA, placed, t0.Add(5*time.Second), report(0, 0, 0, many...))
	if n := len(b.job(map[string]party.ID{task: nodeA})[0].Operators); n != maxOperators {
		t.Fatalf("kept %d operators, want %d", n, maxOperators)
	}
}

// TestStatusReportJSONCompatible checks that the orchestrator's strict
// decoding takes both reports without the per-operator fields (older
// workers) and reports with them, and that the new fields are omitted when
// empty.
func TestStatusReportJSONCompatible(t *testing.T) {
	decode := func(b []byte) (StatusReport, error) {
		var rep StatusReport
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		return rep, dec.Decode(&rep)
	}
	old := `{"tasks":[{"job":"j","task":"t","state":"running","records_in":5,"records_out":2}]}`
	rep, err := decode([]byte(old))
	if err != nil || len(rep.Tasks) != 1 || rep.Tasks[0].RecordsIn != 5 || rep.Tasks[0].Operators != nil {
		t.Fatalf("an older worker's report: %+v, %v", rep, err)
	}
	if b, _ := json.Marshal(rep); string(b) != old {
		t.Fatalf("a report without operators marshals as %s, want %s", b, old)
	}
	full := StatusReport{Tasks: []TaskReport{{Job: "j", Task: "t", State: "running", Backpressure: 0.5,
		Operators: []OperatorReport{{ID: "src", RecordsOut: 3, Watermark: wm(0)}, {ID: "out", RecordsIn: 3, Ended: true, Backpressure: 0.5}}}}}
	b, _ := json.Marshal(full)
	rep, err = decode(b)
	if err != nil || len(rep.Tasks[0].Operators) != 2 || rep.Tasks[0].Operators[0].Watermark == nil || *rep.Tasks[0].Operators[0].Watermark != 0 || !rep.Tasks[0].Operators[1].Ended {
		t.Fatalf("a report with operators: %s → %+v, %v", b, rep, err)
	}
}

// TestCheckpointView checks the checkpoint view of a job: each task's latest
// accepted checkpoint and its age, the last complete checkpoint, and the
// pending ones.
func TestCheckpointView(t *testing.T) {
	now := time.Date(2025, 11, 26, 12, 0, 0, 0, time.UTC)
	n1, n2, n3 := party.ID(strings.Repeat("1", 64)), party.ID(strings.Repeat("2", 64)), party.ID(strings.Repeat("3", 64))
	job := &orchestrator.Job{ID: "balance", Tasks: map[string]party.ID{"balance/edge-b": n2, "balance/edge-a": n1, "balance/regional": n3}}
	cps := &orchestrator.JobCheckpoints{
		Complete: &orchestrator.CheckpointRecord{Job: "balance", ID: 4, Version: 1, Started: now.Add(-12 * time.Second), Completed: now.Add(-10 * time.Second)},
		Pending: map[uint64]*orchestrator.CheckpointRecord{
			6: {ID: 6, Started: now.Add(-time.Second), Snapshots: map[string]orchestrator.CheckpointSnapshot{"balance/edge-a": {}}},
			5: {ID: 5, Started: now.Add(-5 * time.Second), Snapshots: map[string]orchestrator.CheckpointSnapshot{"balance/edge-a": {}, "balance/edge-b": {}}},
		},
		Latest: map[string]*orchestrator.RestorePoint{
			"balance/edge-a":   {Checkpoint: 6, Node: n1, Accepted: now.Add(-1500 * time.Millisecond)},
			"balance/edge-b":   {Checkpoint: 5, Node: n3, Accepted: now.Add(-4 * time.Second)},
			"balance/regional": {Checkpoint: 4, Node: n3, Accepted: now.Add(-10 * time.Second)},
		},
	}
	v := checkpointView(job, cps, now)
	if v.Job != "balance" || v.Complete == nil || v.Complete.ID != 4 || v.Complete.AgeSeconds != 10 || !v.Complete.Completed.Equal(now.Add(-10*time.Second)) {
		t.Fatalf("complete checkpoint %+v", v.Complete)
	}
	want := []TaskCheckpoint{
		{Task: "balance/edge-a", Node: n1, Checkpoint: 6, SnapshotNode: n1, Accepted: now.Add(-1500 * time.Millisecond), AgeSeconds: 1.5},
		{Task: "balance/edge-b", Node: n2, Checkpoint: 5, SnapshotNode: n3, Accepted: now.Add(-4 * time.Second), AgeSeconds: 4},
		{Task: "balance/regional", Node: n3, Checkpoint: 4, SnapshotNode: n3, Accepted: now.Add(-10 * time.Second), AgeSeconds: 10},
	}
	if len(v.Tasks) != len(want) {
		t.Fatalf("tasks %+v", v.Tasks)
	}
	for i := range want {
		if g := v.Tasks[i]; g.Task != want[i].Task || g.Node != want[i].Node || g.Checkpoint != want[i].Checkpoint ||
			g.SnapshotNode != want[i].SnapshotNode || !g.Accepted.Equal(want[i].Accepted) || g.AgeSeconds != want[i].AgeSeconds {
			t.Errorf("task %d: %+v, want %+v", i, g, want[i])
		}
	}
	if len(v.Pending) != 2 || v.Pending[0] != (PendingCheckpoint{ID: 5, Started: now.Add(-5 * time.Second), Acknowledged: 2, Tasks: 3}) || v.Pending[1].ID != 6 || v.Pending[1].Acknowledged != 1 {
		t.Fatalf("pending %+v", v.Pending)
	}

	// A job that has not checkpointed yet lists its tasks without
	// checkpoints, and omits what it does not have.
	v = checkpointView(job, nil, now)
	if v.Complete != nil || v.Pending != nil || len(v.Tasks) != 3 || v.Tasks[0].Checkpoint != 0 || v.Tasks[0].Node != n1 {
		t.Fatalf("a job without checkpoints: %+v", v)
	}
	js, _ := json.Marshal(v.Tasks[0])
	if strings.Contains(string(js), "accepted") || strings.Contains(string(js), "age_seconds") || strings.Contains(string(js), `"checkpoint"`) {
		t.Fatalf("a task without a checkpoint is served as %s", js)
	}
}

// TestTaskWatermarkLag checks that a task's lag is its slowest operator's.
func TestTaskWatermarkLag(t *testing.T) {
	f := func(x float64) *float64 { return &x }
	tests := []struct {
		name string
		ops  []OperatorStatus
		lag  float64
		ok   bool
	}{
		{"no operators", nil, 0, false},
		{"no watermarks", []OperatorStatus{{}, {OperatorReport: OperatorReport{Ended: true}}}, 0, false},
		{"the slowest operator", []OperatorStatus{{WatermarkLagSeconds: f(2)}, {}, {WatermarkLagSeconds: f(7.5)}, {WatermarkLagSeconds: f(3)}}, 7.5, true},
		{"a watermark ahead of the clock", []OperatorStatus{{WatermarkLagSeconds: f(-1)}}, -1, true},
	}
	for _, tt := range tests {
		ts := TaskStatus{Operators: tt.ops}
		if lag, ok := ts.WatermarkLag(); lag != tt.lag || ok != tt.ok {
			t.Errorf("%s: lag %v, %v; want %v, %v", tt.name, lag, ok, tt.lag, tt.ok)
		}
	}
}
