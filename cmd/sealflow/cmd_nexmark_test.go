package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/nexmark"
)

func TestNexmarkGen(t *testing.T) {
	var out bytes.Buffer
	if err := nexmarkGen(context.Background(), []string{"--events", "500", "--seed", "3"}, &out); err != nil {
		t.Fatal(err)
	}
	evs, err := nexmark.ReadEvents(bytes.NewReader(out.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := nexmark.Generate(nexmark.DefaultConfig(3), 500)
	if len(evs) != 500 {
		t.Fatalf("%d events, want 500", len(evs))
	}
	for i := range want {
		if evs[i] != want[i] {
			t.Fatalf("event %d: CLI wrote %+v, generator made %+v", i, evs[i], want[i])
		}
	}
	for _, bad := range [][]string{{"--events", "-1"}, {"extra"}, {"--rate", "-5"}} {
		if err := nexmarkGen(context.Background(), bad, &out); !errors.Is(err, errUsage) {
			t.Errorf("nexmark gen %s: error %v, want a usage error", strings.Join(bad, " "), err)
		}
	}
}
