// Command sealflow is the single binary of sealflow: the orchestrator, the
// worker, the embedded NATS substrate, and the clients of data owners, service
// providers and the infrastructure operator.
//
// Each subcommand lives in its own file and registers itself with register.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// command is one subcommand ("demo", "nexmark gen", "owner publish", ...).
type command struct {
	name    string // words separated by spaces
	summary string
	run     func(ctx context.Context, args []string) error
}

var commands = map[string]command{}

// register adds a subcommand; name may have several words ("owner publish").
func register(name, summary string, run func(ctx context.Context, args []string) error) {
	if _, dup := commands[name]; dup {
		panic("sealflow: command registered twice: " + name)
	}
	commands[name] = command{name: name, summary: summary, run: run}
}

// errUsage marks errors that are the user's invocation, answered with exit code 2.
var errUsage = errors.New("usage")

func usage() {
	fmt.Fprintln(os.Stderr, "usage: sealflow COMMAND [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-28s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(os.Stderr, "\nRun 'sealflow COMMAND -h' for the flags of a command.")
}

// lookup finds the longest registered command name that prefixes args.
func lookup(args []string) (command, []string, bool) {
	for n := min(len(args), 3); n > 0; n-- {
		if c, ok := commands[strings.Join(args[:n], " ")]; ok {
			return c, args[n:], true
		}
	}
	return command{}, nil, false
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		os.Exit(2)
	}
	c, rest, ok := lookup(os.Args[1:])
	if !ok {
		fmt.Fprintf(os.Stderr, "sealflow: unknown command %q\n\n", strings.Join(os.Args[1:min(len(os.Args), 3)], " "))
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := c.run(ctx, rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "sealflow %s: %v\n", c.name, err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// newFlags returns a flag set for a subcommand that reports errors instead of exiting.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("sealflow "+name, flag.ContinueOnError)
	return fs
}
