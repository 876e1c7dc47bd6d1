package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/substrate"
)

func TestDurabilityFlag(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		want     substrate.Sync
		wantErr  bool
		wantWarn bool
	}{
		{nil, substrate.SyncAlways, false, false},
		{[]string{"--durability", "sync"}, substrate.SyncAlways, false, false},
		{[]string{"--durability=relaxed"}, substrate.SyncRelaxed, false, true},
		{[]string{"--durability", "fast"}, 0, true, false},
		{[]string{"--durability="}, 0, true, false},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			fs := newFlags("test")
			fs.SetOutput(&bytes.Buffer{})
			d := durabilityFlag(fs)
			err := fs.Parse(tc.args)
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "want sync or relaxed") {
					t.Fatalf("Parse(%q) = %v, want an error naming sync and relaxed", tc.args, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			if got := d.sync(slog.New(slog.NewTextHandler(&logs, nil))); got != tc.want {
				t.Errorf("sync = %v, want %v", got, tc.want)
			}
			warned := strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "power failure or kernel crash")
			if warned != tc.wantWarn {
				t.Errorf("warning logged = %v, want %v (log: %q)", warned, tc.wantWarn, logs.String())
			}
		})
	}
}

// TestDurabilityRefusedByCommands checks that up and demo refuse an unknown
// --durability before starting anything.
func TestDurabilityRefusedByCommands(t *testing.T) {
	for name, run := range map[string]func(context.Context, []string) error{"up": runUp, "demo": runDemo} {
		t.Run(name, func(t *testing.T) {
			err := run(context.Background(), []string{"--dir", t.TempDir(), "--durability", "eventually"})
			if err == nil || !strings.Contains(err.Error(), `unknown durability "eventually"`) {
				t.Fatalf("%s --durability eventually = %v, want the unknown value refused", name, err)
			}
		})
	}
}
