package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// sealflowBinary builds the sealflow binary once per test run and returns its
// path; the process tests share it.
func sealflowBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sealflow-test-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "sealflow")
		if out, err := exec.Command("go", "build", "-o", builtBin, ".").CombinedOutput(); err != nil {
			buildErr = &buildError{err, string(out)}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return "go build: " + e.err.Error() + "\n" + e.out }

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

// startUp runs `sealflow up --dir DIR/up ARGS...`, waits for its endpoints,
// and stops it (SIGTERM, then SIGKILL) when the test ends, logging its output
// and the processes' logs if the test failed.
func startUp(ctx context.Context, t *testing.T, bin, dir string, args ...string) Endpoints {
	t.Helper()
	upDir := filepath.Join(dir, "up")
	up := exec.Command(bin, append([]string{"up", "--dir", upDir}, args...)...)
	var upErr bytes.Buffer
	up.Stderr = &upErr
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = up.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- up.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = up.Process.Kill()
			t.Error("sealflow up did not stop on SIGTERM")
		}
		if t.Failed() {
			t.Logf("up stderr:\n%s", upErr.String())
			logs, _ := filepath.Glob(filepath.Join(upDir, "logs", "*.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				t.Logf("%s:\n%s", filepath.Base(l), tail(string(b), 3000))
			}
		}
	})
	var ep Endpoints
	if err := waitFile(ctx, filepath.Join(upDir, "endpoints.json"), 2*time.Minute, &ep); err != nil {
		t.Fatal(err)
	}
	return ep
}

// sealflowRunner returns a function that runs the binary and fails the test
// when it fails, returning its standard output.
func sealflowRunner(ctx context.Context, t *testing.T, bin string) func(args ...string) string {
	return func(args ...string) string {
		t.Helper()
		c := exec.CommandContext(ctx, bin, args...)
		var stderr bytes.Buffer
		c.Stderr = &stderr
		out, err := c.Output()
		if err != nil {
			t.Fatalf("sealflow %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, stderr.String())
		}
		return string(out)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// exampleFile returns the absolute path of a file under examples/.
func exampleFile(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", "examples", name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// registerPartyCLI creates a party's key file with the CLI, verifies the
// orchestrator of ep into the party's own trust file, and registers the
// party; it returns the two files.
func registerPartyCLI(run func(...string) string, ep Endpoints, dir, role, name string) (key, trust string) {
	key, trust = filepath.Join(dir, name+".key"), filepath.Join(dir, name+".trust")
	run("keygen", "--role", role, "--name", name, "--out", key)
	run("verify", "--orchestrator", ep.OrchestratorURL, "--measurement", ep.OrchestratorMeasurement, "--allow-sim", "--sim-dir", ep.SimDir, "--trust", trust)
	run("owner", "register", "--key", key, "--trust", trust)
	return key, trust
}
