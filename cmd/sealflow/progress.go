package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
)

// progressOut is where long operations report progress; tests replace it.
var progressOut io.Writer = os.Stderr

// Progress reports the steps of a long CLI operation (deploy, savepoint,
// migrate, bench) on stderr, so stdout keeps only the result. On a terminal
// the current status is one line redrawn with a spinner and the elapsed
// time; elsewhere (logs, CI) every step and every change of status is a line
// of its own, prefixed with the elapsed time. A quiet Progress (--json)
// prints nothing. Use it as
//
//	p := newProgress(pf.json)
//	p.Step("savepoint %s requested", id)
//	for ... { p.Update("%d/%d tasks snapshotted", done, total) }
//	p.Done("savepoint %s complete", id)
//
// Its methods are safe for concurrent use.
type Progress struct {
	w     io.Writer
	quiet bool
	tty   bool
	start time.Time
	now   func() time.Time

	mu      sync.Mutex
	status  string // the current status (Update), "" if none
	drawn   bool   // a status line is on the terminal, to be overwritten
	frame   int
	stopped chan struct{} // closed to stop the spinner; nil if none runs
}

// newProgress returns a Progress writing to progressOut, quiet if quiet.
func newProgress(quiet bool) *Progress {
	return newProgressTo(progressOut, quiet, isTerminal(progressOut))
}

// newProgressTo returns a Progress writing to w; tty draws a spinner.
func newProgressTo(w io.Writer, quiet, tty bool) *Progress {
	return &Progress{w: w, quiet: quiet, tty: tty, start: time.Now(), now: time.Now}
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// spinnerFrames are drawn in turn before a terminal's status line.
var spinnerFrames = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// Step prints a completed step as a line of its own.
func (p *Progress) Step(format string, args ...any) {
	if p.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLocked()
	fmt.Fprintf(p.w, "[%6s] %s\n", p.elapsedLocked(), fmt.Sprintf(format, args...))
	p.redrawLocked()
}

// Update sets the current status of a step in progress: redrawn in place on
// a terminal (with a spinner from the first Update on), printed as a line
// when it changes elsewhere.
func (p *Progress) Update(format string, args ...any) {
	if p.quiet {
		return
	}
	s := fmt.Sprintf(format, args...)
	p.mu.Lock()
	defer p.mu.Unlock()
	if s == p.status {
		return
	}
	p.status = s
	if !p.tty {
		fmt.Fprintf(p.w, "[%6s] %s\n", p.elapsedLocked(), s)
		return
	}
	p.redrawLocked()
	if p.stopped == nil {
		p.stopped = make(chan struct{})
		go p.spin(p.stopped)
	}
}

// Done ends the step in progress with a final line and stops the spinner.
func (p *Progress) Done(format string, args ...any) {
	if p.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopLocked()
	fmt.Fprintf(p.w, "[%6s] %s\n", p.elapsedLocked(), fmt.Sprintf(format, args...))
}

// Stop stops the spinner and clears the status line, printing nothing.
func (p *Progress) Stop() {
	if p.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopLocked()
}

// Elapsed returns the time since the Progress was made.
func (p *Progress) Elapsed() time.Duration { return p.now().Sub(p.start) }

func (p *Progress) stopLocked() {
	p.clearLocked()
	p.status = ""
	if p.stopped != nil {
		close(p.stopped)
		p.stopped = nil
	}
}

func (p *Progress) spin(stop chan struct{}) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			p.mu.Lock()
			select {
			case <-stop:
			default:
				p.frame++
				p.redrawLocked()
			}
			p.mu.Unlock()
		}
	}
}

func (p *Progress) elapsedLocked() string {
	d := p.Elapsed()
	if d < time.Minute {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return d.Truncate(time.Second).String()
}

// clearLocked erases the status line from a terminal.
func (p *Progress) clearLocked() {
	if p.tty && p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
		p.drawn = false
	}
}

// redrawLocked draws the status line on a terminal.
func (p *Progress) redrawLocked() {
	if !p.tty || p.status == "" {
		return
	}
	fmt.Fprintf(p.w, "\r\033[K%s %s (%s)", spinnerFrames[p.frame%len(spinnerFrames)], p.status, p.elapsedLocked())
	p.drawn = true
}

// taskStatusFunc returns the orchestrator's latest status of a job's tasks.
type taskStatusFunc func(ctx context.Context) ([]api.TaskStatus, error)

// jobStatus returns a taskStatusFunc reading /v1/status for job.
func jobStatus(c *client.Client, job string) taskStatusFunc {
	return func(ctx context.Context) ([]api.TaskStatus, error) {
		var st []api.TaskStatus
		err := c.Get(ctx, "/v1/status?job="+url.QueryEscape(job), &st)
		return st, err
	}
}

// waitRunning polls status every interval until every task of tasks (task
// → node placed on) reports running (or finished, for a bounded job that
// was quick), reporting "n/m tasks running" on p as it goes. It fails when
// timeout passes first, naming the tasks not running and their last state.
// names maps node ids to names for the messages.
func waitRunning(ctx context.Context, p *Progress, job string, tasks map[string]party.ID, names map[party.ID]string, status taskStatusFunc, interval, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ids := make([]string, 0, len(tasks))
	for t := range tasks {
		ids = append(ids, t)
	}
	sort.Strings(ids)
	nodeName := func(id party.ID) string {
		if n := names[id]; n != "" {
			return n
		}
		return id.Short()
	}
	states := map[string]string{}
	var lastErr error
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		st, err := status(ctx)
		if err != nil {
			lastErr = err
		} else {
			lastErr = nil
			for _, s := range st {
				if _, ok := tasks[s.Task]; ok {
					states[s.Task] = s.State
				}
			}
		}
		var up, waiting, bad []string
		for _, t := range ids {
			switch s := states[t]; {
			case s == "running" || s == "finished":
				up = append(up, nodeName(tasks[t]))
			case s == "":
				waiting = append(waiting, t)
			default:
				bad = append(bad, t+": "+s)
			}
		}
		line := fmt.Sprintf("%d/%d tasks running", len(up), len(ids))
		if len(up) > 0 {
			line += " (node " + strings.Join(dedup(up), ", ") + ")"
		}
		if len(bad) > 0 {
			line += "; " + strings.Join(bad, "; ")
		}
		if len(up) == len(ids) {
			p.Done("job %s: %s", job, line)
			return nil
		}
		p.Update("job %s: %s", job, line)
		select {
		case <-ctx.Done():
			p.Stop()
			var not []string
			for _, t := range ids {
				if s := states[t]; s != "running" && s != "finished" {
					if s == "" {
						s = "no status reported"
					}
					not = append(not, fmt.Sprintf("%s on %s (%s)", t, nodeName(tasks[t]), s))
				}
			}
			err := fmt.Errorf("job %s is deployed, but after %v %d/%d tasks run; not running: %s", job, timeout, len(up), len(ids), strings.Join(not, ", "))
			if lastErr != nil {
				err = fmt.Errorf("%w (last status query: %v)", err, lastErr)
			}
			return err
		case <-tick.C:
		}
	}
}

// dedup returns ss without repeats, in order.
func dedup(ss []string) []string {
	seen := map[string]bool{}
	out := ss[:0:0]
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// waitFlags are the flags of commands that wait for a job's tasks to run.
type waitFlags struct {
	wait    bool
	timeout time.Duration
}

// addWaitFlags adds --wait and --wait-timeout to fs.
func addWaitFlags(fs *flag.FlagSet) *waitFlags {
	w := &waitFlags{}
	fs.BoolVar(&w.wait, "wait", true, "wait until every task of the job reports running, showing progress on stderr")
	fs.DurationVar(&w.timeout, "wait-timeout", 2*time.Minute, "how long --wait waits before failing")
	return w
}

// run waits, if --wait, until every task of job (task → node) runs; quiet
// with --json.
func (w *waitFlags) run(ctx context.Context, pf *partyFlags, c *client.Client, job string, tasks map[string]party.ID, names map[party.ID]string) error {
	if !w.wait || len(tasks) == 0 {
		return nil
	}
	return waitRunning(ctx, newProgress(pf.json), job, tasks, names, jobStatus(c, job), 500*time.Millisecond, w.timeout)
}
