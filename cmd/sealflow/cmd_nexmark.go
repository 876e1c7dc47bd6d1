package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/sealflow/sealflow/nexmark"
)

func init() {
	register("nexmark gen", "write Nexmark events as JSON lines to stdout", func(ctx context.Context, args []string) error {
		return nexmarkGen(ctx, args, os.Stdout)
	})
}

// nexmarkGen implements "sealflow nexmark gen", writing to w.
func nexmarkGen(ctx context.Context, args []string, w io.Writer) error {
	fs := newFlags("nexmark gen")
	events := fs.Int64("events", 1000, "number of events to generate")
	seed := fs.Int64("seed", 1, "random seed; equal seeds give equal events")
	rate := fs.Int64("rate", 10000, "events per second of event time")
	base := fs.Int64("base-time", 0, "event time of the first event, epoch ms (0: 2024-01-01T00:00:00Z)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	if *events < 0 {
		return fmt.Errorf("%w: --events is %d, want 0 or more", errUsage, *events)
	}
	g, err := nexmark.NewGenerator(nexmark.Config{Seed: *seed, EventsPerSecond: *rate, BaseTime: *base})
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return nexmark.WriteEvents(ctx, w, g, *events)
}
