package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/sealflow/sealflow/substrate"
	"github.com/sealflow/sealflow/topology"
)

func init() {
	register("up", "start NATS, the orchestrator and N workers on this machine; write DIR/endpoints.json", runUp)
}

// Endpoints is what `sealflow up` writes to DIR/endpoints.json: all that
// other commands need to reach the deployment.
type Endpoints struct {
	NATSURL                 string `json:"nats_url"`
	OrchestratorURL         string `json:"orchestrator_url"`
	OrchestratorMeasurement string `json:"orchestrator_measurement"`
	SimDir                  string `json:"sim_dir"`
}

// upNodes are the tiers and regions `sealflow up` gives its workers, in order.
var upNodes = []struct{ tier, region string }{
	{"edge", "be-antwerp"}, {"regional", "be-flanders"}, {"cloud", "de-frankfurt"},
	{"edge", "be-ghent"}, {"edge", "nl-rotterdam"}, {"regional", "nl-holland"}, {"cloud", "eu-west"},
}

func runUp(ctx context.Context, args []string) error {
	fs := newFlags("up")
	dir := fs.String("dir", ".sealflow/up", "the deployment's directory (NATS store, sim platform, operator key, logs, endpoints.json)")
	workers := fs.Int("workers", 3, "how many worker processes to start (tiers and regions cycle: edge be-antwerp, regional be-flanders, cloud de-frankfurt, ...)")
	topoFile := fs.String("topology", "", "a topology file (deploy/topologies/*.yaml): a hub NATS cluster, a leafnode per site behind an emulated WAN link, and each site's workers; replaces --workers")
	durability := durabilityFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	sync := durability.sync(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if *workers < 0 || *workers > 64 {
		return fmt.Errorf("%w: --workers must be between 0 and 64", errUsage)
	}
	*dir = absPath(*dir)
	if err := os.MkdirAll(filepath.Join(*dir, "logs"), 0o700); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	progress := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "up: "+format+"\n", a...) }

	// The substrate: one embedded server, or a topology of sites.
	type workerSpec struct{ name, tier, region, site, natsURL, jsDomain string }
	var natsURL string
	var specs []workerSpec
	if *topoFile != "" {
		topo, err := topology.Load(*topoFile)
		if err != nil {
			return err
		}
		progress("starting topology %s: %d sites, each leafnode behind an emulated WAN link", topo.Name, len(topo.Sites))
		running, err := topology.Start(ctx, topo, filepath.Join(*dir, "topology"), topology.WithSync(sync))
		if err != nil {
			return err
		}
		defer running.Stop()
		if err := running.WaitConnected(ctx); err != nil {
			return err
		}
		natsURL = running.URL(topo.Hub().Name)
		for _, site := range topo.Order() {
			for i := range site.Workers {
				ws := workerSpec{name: fmt.Sprintf("%s-%d", site.Name, i+1), tier: string(site.Tier), region: site.Region, site: site.Name,
					natsURL: running.URL(site.Name)}
				if running.Site(site.Name).Domain != "hub" {
					ws.jsDomain = "hub" // the sealed streams live in the hub's JetStream
				}
				specs = append(specs, ws)
			}
		}
	} else {
		progress("starting NATS JetStream (embedded, durability %s) in %s", durability, filepath.Join(*dir, "nats"))
		ns, err := substrate.Start(ctx, substrate.Options{StoreDir: filepath.Join(*dir, "nats"), Sync: sync})
		if err != nil {
			return err
		}
		defer ns.Shutdown()
		natsURL = ns.ClientURL()
		for i := 0; i < *workers; i++ {
			n := upNodes[i%len(upNodes)]
			name := fmt.Sprintf("%s-%s-%d", n.tier, n.region, i+1)
			specs = append(specs, workerSpec{name: name, tier: n.tier, region: n.region, site: name, natsURL: natsURL})
		}
	}

	var children []*exec.Cmd
	defer func() {
		for _, c := range children {
			_ = c.Process.Signal(syscall.SIGTERM)
		}
		for _, c := range children {
			done := make(chan struct{})
			go func() { c.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = c.Process.Kill()
			}
		}
	}()
	start := func(name string, args ...string) error {
		logf, err := os.OpenFile(filepath.Join(*dir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		c := exec.Command(exe, args...)
		c.Stdout, c.Stderr = logf, logf
		if err := c.Start(); err != nil {
			return fmt.Errorf("starting %s: %w", name, err)
		}
		children = append(children, c)
		progress("started %s (pid %d, log %s)", name, c.Process.Pid, logf.Name())
		return nil
	}

	orchDir := filepath.Join(*dir, "orchestrator")
	epFile := filepath.Join(orchDir, orchEndpointsFile)
	_ = os.Remove(epFile)
	if err := start("orchestrator", "orchestrator", "--dir", orchDir, "--nats", natsURL, "--allow-sim"); err != nil {
		return err
	}
	var oe orchEndpoints
	if err := waitFile(ctx, epFile, 60*time.Second, &oe); err != nil {
		return fmt.Errorf("the orchestrator did not come up (see %s): %w", filepath.Join(*dir, "logs", "orchestrator.log"), err)
	}
	for _, w := range specs {
		args := []string{"worker", "--nats", w.natsURL, "--orchestrator", oe.OrchestratorURL, "--measurement", oe.OrchestratorMeasurement,
			"--allow-sim", "--sim-dir", oe.SimDir, "--name", w.name, "--tier", w.tier, "--region", w.region, "--site", w.site,
			"--operator-key", filepath.Join(orchDir, "operator.key")}
		if w.jsDomain != "" {
			args = append(args, "--js-domain", w.jsDomain)
		}
		if err := start(w.name, args...); err != nil {
			return err
		}
	}
	ep := Endpoints{NATSURL: natsURL, OrchestratorURL: oe.OrchestratorURL, OrchestratorMeasurement: oe.OrchestratorMeasurement, SimDir: oe.SimDir}
	b, _ := json.MarshalIndent(ep, "", "  ")
	if err := os.WriteFile(filepath.Join(*dir, "endpoints.json"), append(b, '\n'), 0o600); err != nil {
		return err
	}
	fmt.Printf("%s\n", b)
	progress("running; endpoints in %s; verify with: sealflow verify --orchestrator %s --measurement %s --allow-sim --sim-dir %s; Ctrl-C stops everything",
		filepath.Join(*dir, "endpoints.json"), ep.OrchestratorURL, ep.OrchestratorMeasurement, ep.SimDir)

	exited := make(chan string, len(children))
	for _, c := range children {
		go func() {
			c.Wait()
			exited <- strconv.Itoa(c.Process.Pid)
		}()
	}
	select {
	case <-ctx.Done():
		progress("stopping")
		return nil
	case pid := <-exited:
		return fmt.Errorf("process %s exited; see the logs in %s", pid, filepath.Join(*dir, "logs"))
	}
}

// waitFile waits until path exists and decodes it as JSON into v.
func waitFile(ctx context.Context, path string, d time.Duration, v any) error {
	deadline := time.Now().Add(d)
	for {
		b, err := os.ReadFile(path)
		if err == nil && json.Unmarshal(b, v) == nil {
			return nil
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v", path, d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
