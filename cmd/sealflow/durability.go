package main

import (
	"errors"
	"flag"
	"log/slog"

	"github.com/sealflow/sealflow/substrate"
)

// durabilityValue is the --durability flag of the commands that start an
// embedded NATS server: "sync" (the default) or "relaxed".
type durabilityValue struct{ s substrate.Sync }

// String returns the flag's value as given on the command line.
func (d *durabilityValue) String() string {
	if d == nil || d.s == substrate.SyncAlways {
		return "sync"
	}
	return "relaxed"
}

// Set parses "sync" or "relaxed"; anything else, the empty string included, is
// refused with the accepted values named.
func (d *durabilityValue) Set(v string) error {
	if v == "" {
		return errors.New("empty durability (want sync or relaxed)")
	}
	s, err := substrate.ParseSync(v)
	if err != nil {
		return err
	}
	d.s = s
	return nil
}

// durabilityFlag registers --durability on fs. Call sync on the result after
// fs.Parse to get the setting for substrate.Options.Sync (or
// topology.WithSync); it logs the warning that goes with relaxed.
func durabilityFlag(fs *flag.FlagSet) *durabilityValue {
	d := &durabilityValue{s: substrate.SyncAlways}
	fs.Var(d, "durability", "the `mode` of NATS JetStream's disk flush: sync (every write is on disk before it is acknowledged; the default) or "+
		"relaxed (acknowledged first, flushed every two minutes: faster, but acknowledged writes may be lost on a power failure or kernel crash; see docs/benchmarks.md)")
	return d
}

// sync returns the parsed setting, logging a warning with log if it is
// relaxed.
func (d *durabilityValue) sync(log *slog.Logger) substrate.Sync {
	if d.s == substrate.SyncRelaxed {
		log.Warn("--durability relaxed: NATS JetStream acknowledges writes before flushing them to disk; acknowledged writes may be lost on a power failure or kernel crash")
	}
	return d.s
}
