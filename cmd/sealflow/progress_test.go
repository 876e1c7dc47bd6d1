package main

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
)

// syncBuffer is a strings.Builder safe for the spinner's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fixedProgress returns a Progress whose clock reads 1.5 s after its start.
func fixedProgress(w *syncBuffer, quiet, tty bool) *Progress {
	p := newProgressTo(w, quiet, tty)
	p.now = func() time.Time { return p.start.Add(1500 * time.Millisecond) }
	return p
}

func TestProgress(t *testing.T) {
	tests := []struct {
		name      string
		quiet     bool
		tty       bool
		want      string // exact output, or
		contains  []string
		notSuffix string
	}{
		{name: "log", want: "[  1.5s] deploy submitted\n[  1.5s] 0/2 up\n[  1.5s] 1/2 up\n[  1.5s] all up\n"},
		{name: "quiet", quiet: true, want: ""},
		{name: "terminal", tty: true, contains: []string{"[  1.5s] deploy submitted\n", "\r\033[K⠋ 0/2 up (1.5s)", "\r\033[K⠋ 1/2 up (1.5s)", "\r\033[K[  1.5s] all up\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out syncBuffer
			p := fixedProgress(&out, tt.quiet, tt.tty)
			p.Step("deploy %s", "submitted")
			p.Update("%d/2 up", 0)
			p.Update("%d/2 up", 0) // unchanged: not repeated
			p.Update("%d/2 up", 1)
			p.Done("all up")
			got := out.String()
			if tt.contains == nil && got != tt.want {
				t.Errorf("output %q, want %q", got, tt.want)
			}
			for _, c := range tt.contains {
				if !strings.Contains(got, c) {
					t.Errorf("output %q lacks %q", got, c)
				}
			}
			if tt.tty && strings.Count(got, "0/2 up") > 2 {
				// At most the draw and one spinner redraw.
				t.Errorf("output %q redraws an unchanged status too often", got)
			}
			p.mu.Lock()
			spinning := p.stopped != nil
			p.mu.Unlock()
			if spinning {
				t.Error("the spinner still runs after Done")
			}
		})
	}
}

func TestWaitRunning(t *testing.T) {
	n1, n2 := party.ID("node-one-id-0000"), party.ID("node-two-id-0000")
	tasks := map[string]party.ID{"balance/a": n1, "balance/b": n2}
	names := map[party.ID]string{n1: "edge-1"}
	report := func(states ...string) []api.TaskStatus {
		var st []api.TaskStatus
		for i, s := range states {
			if s != "" {
				task := []string{"balance/a", "balance/b"}[i]
				st = append(st, api.TaskStatus{TaskReport: api.TaskReport{Job: "balance", Task: task, State: s}, Node: tasks[task]})
			}
		}
		return append(st, api.TaskStatus{TaskReport: api.TaskReport{Job: "balance", Task: "other/x", State: "running"}})
	}
	tests := []struct {
		name    string
		reports [][]api.TaskStatus // one per poll; the last repeats
		errs    []error
		wantErr []string // substrings of the error, nil for success
		lines   []string // substrings of progress lines, in order
	}{
		{
			name:    "all come up",
			reports: [][]api.TaskStatus{nil, report("running", ""), report("running", "failed: source: no key"), report("running", "finished")},
			lines: []string{"job balance: 0/2 tasks running", "1/2 tasks running (node edge-1)", "1/2 tasks running (node edge-1); balance/b: failed: source: no key",
				"job balance: 2/2 tasks running (node edge-1, " + n2.Short() + ")"},
		},
		{
			name:    "one never runs",
			reports: [][]api.TaskStatus{report("running", "")},
			errs:    []error{errors.New("connection refused")},
			wantErr: []string{"job balance is deployed", "1/2 tasks run", "balance/b on " + n2.Short() + " (no status reported)"},
			lines:   []string{"0/2 tasks running", "1/2 tasks running (node edge-1)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out syncBuffer
			p := fixedProgress(&out, false, false)
			calls := 0
			status := func(ctx context.Context) ([]api.TaskStatus, error) {
				defer func() { calls++ }()
				if calls < len(tt.errs) {
					return nil, tt.errs[calls]
				}
				i := min(calls-len(tt.errs), len(tt.reports)-1)
				return tt.reports[i], nil
			}
			err := waitRunning(context.Background(), p, "balance", tasks, names, status, time.Millisecond, 200*time.Millisecond)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("waitRunning: %v", err)
			case tt.wantErr != nil && err == nil:
				t.Fatal("waitRunning succeeded, want a timeout")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			got := out.String()
			rest := got
			for _, l := range tt.lines {
				i := strings.Index(rest, l)
				if i < 0 {
					t.Fatalf("progress %q lacks %q (in order)", got, l)
				}
				rest = rest[i+len(l):]
			}
			if n := strings.Count(got, "\n"); n > len(tt.reports)+1 {
				t.Errorf("progress printed %d lines for %d distinct states:\n%s", n, len(tt.reports), got)
			}
		})
	}
}
