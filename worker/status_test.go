package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/substrate"
)

// TestStatusReportCarriesOperators runs a task whose source feeds a sink of
// two subtasks over an exchange, publishes the worker's signed status
// reports over NATS and checks what they carry from the run's probe: each
// JobSpec node's records and watermark (event time trails wall time by 3 s),
// the task's backpressure, and each operator's chain's backpressure (the
// source's chain sends to the sink; a slow sink blocks it).
func TestStatusReportCarriesOperators(t *testing.T) {
	if testing.Short() {
		t.Skip("runs NATS and a task for a few seconds")
	}
	const lag = 3 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns, err := substrate.Start(ctx, substrate.Options{StoreDir: filepath.Join(t.TempDir(), "nats"), Sync: substrate.SyncRelaxed})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	nc, err := substrate.Connect(ctx, ns.ClientURL(), "test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	for _, tt := range backpressureCases(lag) {
		t.Run(tt.name, func(t *testing.T) {
			task := laggingTask(t, tt.io)
			kf, err := party.Generate(party.RoleWorker, "edge-1", nil)
			if err != nil {
				t.Fatal(err)
			}
			w := &Worker{cfg: Config{NATS: nc}, kf: kf, log: slog.New(slog.NewTextHandler(io.Discard, nil)), tasks: map[string]*Task{task.ID: task}}
			reports := make(chan *nats.Msg, 8)
			sub, err := nc.ChanSubscribe(api.StatusSubject(kf.ID()), reports)
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Unsubscribe()
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}

			// Before the run starts a report carries no operators.
			task.state.Store("starting")
			w.publishStatus()
			if rep := receiveReport(t, kf, reports); len(rep.Tasks) != 1 || rep.Tasks[0].Operators != nil || rep.Tasks[0].Backpressure != 0 {
				t.Fatalf("report before the run: %+v", rep)
			}

			rctx, rcancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- task.run(rctx) }()
			defer func() {
				task.stop("stopped: test over")
				rcancel()
				if err := <-done; err != nil {
					t.Errorf("task: %v", err)
				}
			}()
			for p := task.probe.Load(); p == nil || len(p.Read().Nodes) < 2 || p.Read().Nodes[1].RecordsIn == 0; p = task.probe.Load() {
				if s := task.State(); strings.HasPrefix(s, "failed") {
					t.Fatal(s)
				}
				time.Sleep(10 * time.Millisecond)
			}
			// Two reports a backpressure window apart: the first measures
			// the run so far, the second the window between them.
			for n := range 2 {
				time.Sleep(backpressureWindow + 100*time.Millisecond)
				w.publishStatus()
				now := time.Now()
				rep := receiveReport(t, kf, reports)
				if len(rep.Tasks) != 1 {
					t.Fatalf("report %d: %+v", n, rep)
				}
				tr := rep.Tasks[0]
				t.Logf("report %d: backpressure %.3f, operators %+v", n, tr.Backpressure, tr.Operators)
				if tr.Job != "lagging" || tr.Task != "lagging/t" || len(tr.Operators) != 2 || tr.Operators[0].ID != "src" || tr.Operators[1].ID != "out" {
					t.Fatalf("report %d: task %+v", n, tr)
				}
				if tr.Backpressure < tt.minBP || tr.Backpressure > tt.maxBP {
					t.Errorf("report %d: backpressure %.3f, want in [%.2f, %.2f]", n, tr.Backpressure, tt.minBP, tt.maxBP)
				}
				src, out := tr.Operators[0], tr.Operators[1]
				if src.Backpressure != tr.Backpressure || out.Backpressure != 0 {
					t.Errorf("report %d: chain backpressure src %.3f, out %.3f; want the task's %.3f at the source and none at the sink", n, src.Backpressure, out.Backpressure, tr.Backpressure)
				}
				if src.RecordsOut == 0 || out.RecordsIn == 0 || out.RecordsIn > src.RecordsOut {
					t.Errorf("report %d: source out %d, sink in %d; want 0 < in ≤ out", n, src.RecordsOut, out.RecordsIn)
				}
				for _, o := range tr.Operators {
					if o.Watermark == nil || o.Ended {
						t.Errorf("report %d: operator %s has no watermark (ended %v)", n, o.ID, o.Ended)
						continue
					}
					if lagged := now.Sub(time.UnixMilli(*o.Watermark)); lagged < lag-100*time.Millisecond || lagged > lag+2*time.Second {
						t.Errorf("report %d: operator %s's watermark trails by %v, want about %v", n, o.ID, lagged, lag)
					}
				}
			}
		})
	}
}

// receiveReport waits for a status report signed by kf and decodes it as
// the orchestrator does (unknown fields refused).
func receiveReport(t *testing.T, kf *party.KeyFile, ch <-chan *nats.Msg) api.StatusReport {
	t.Helper()
	select {
	case m := <-ch:
		stmt, err := party.Verify(m.Data, func(id party.ID) (*party.Identity, error) { return kf.Identity(), nil }, time.Now())
		if err != nil || stmt.Type != api.TypeTaskStatus || stmt.Issuer != kf.ID() {
			t.Fatalf("status report: %v (%+v)", err, stmt)
		}
		var rep api.StatusReport
		dec := json.NewDecoder(bytes.NewReader(stmt.Body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rep); err != nil {
			t.Fatalf("decoding the report: %v\n%s", err, stmt.Body)
		}
		return rep
	case <-time.After(10 * time.Second):
		t.Fatal("no status report published")
	}
	return api.StatusReport{}
}
