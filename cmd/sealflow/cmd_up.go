package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
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
	// Sites, with --topology, describes each site by name: where its
	// processes (gateways, workers) connect.
	Sites map[string]SiteEndpoint `json:"sites,omitempty"`
	// WANControl, with --topology, is the loopback URL of the WAN links'
	// control (sealflow infra wan).
	WANControl string `json:"wan_control,omitempty"`
	// Workers, with --topology, lists the worker processes; a worker that
	// exits is restarted (a new process and node identity), and this list
	// is rewritten.
	Workers []WorkerEndpoint `json:"workers,omitempty"`
}

// SiteEndpoint is one site of a topology started by `sealflow up`.
type SiteEndpoint struct {
	// NATSURL is where the site's processes connect; an owner's gateway at
	// the site publishes here (owner publish --nats), so the owner's stream
	// is stored in the site's JetStream domain.
	NATSURL string `json:"nats_url"`
	// Domain is the JetStream domain serving the site.
	Domain string `json:"domain"`
	Tier   string `json:"tier"`
	Region string `json:"region"`
	Parent string `json:"parent,omitempty"`
}

// WorkerEndpoint is one worker process started by `sealflow up --topology`.
type WorkerEndpoint struct {
	Name string `json:"name"`
	Site string `json:"site"`
	PID  int    `json:"pid"`
	// Metrics is the worker's Prometheus endpoint.
	Metrics string `json:"metrics"`
	// Starts counts the processes started for this worker (1 + restarts).
	Starts int `json:"starts"`
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
	nodeTimeout := fs.Duration("node-timeout", 0, "passed to the orchestrator: declare a node lost after this long without a status report (its default when 0); with --topology, make it longer than the WAN outages a site should ride out without its tasks moving")
	ckptEvery := fs.Duration("checkpoint-interval", 0, "passed to the workers: time between checkpoints (their default when 0)")
	siteBuffer := fs.Int64("site-buffer", 0, "with --topology, passed to the workers at leafnode sites: bytes each intermediate stream may buffer at the site during a WAN outage (their default, 1 GiB, when 0)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	syncMode := durability.sync(slog.New(slog.NewTextHandler(os.Stderr, nil)))
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
	var running *topology.Running
	if *topoFile != "" {
		topo, err := topology.Load(*topoFile)
		if err != nil {
			return err
		}
		progress("starting topology %s: %d sites, each leafnode behind an emulated WAN link", topo.Name, len(topo.Sites))
		running, err = topology.Start(ctx, topo, filepath.Join(*dir, "topology"), topology.WithSync(syncMode))
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
		ns, err := substrate.Start(ctx, substrate.Options{StoreDir: filepath.Join(*dir, "nats"), Sync: syncMode})
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

	var (
		childMu  sync.Mutex
		children []*exec.Cmd
		stopping bool
	)
	defer func() {
		childMu.Lock()
		stopping = true
		cs := slices.Clone(children)
		childMu.Unlock()
		for _, c := range cs {
			_ = c.Process.Signal(syscall.SIGTERM)
		}
		for _, c := range cs {
			select {
			case <-waited(c):
			case <-time.After(10 * time.Second):
				_ = c.Process.Kill()
			}
		}
	}()
	start := func(name string, args ...string) (*exec.Cmd, error) {
		logf, err := os.OpenFile(filepath.Join(*dir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, err
		}
		c := exec.Command(exe, args...)
		c.Stdout, c.Stderr = logf, logf
		childMu.Lock()
		defer childMu.Unlock()
		if stopping {
			return nil, errors.New("stopping")
		}
		if err := c.Start(); err != nil {
			logf.Close()
			return nil, fmt.Errorf("starting %s: %w", name, err)
		}
		logf.Close() // the child holds its own descriptor
		children = append(children, c)
		progress("started %s (pid %d, log %s)", name, c.Process.Pid, logf.Name())
		return c, nil
	}

	orchDir := filepath.Join(*dir, "orchestrator")
	epFile := filepath.Join(orchDir, orchEndpointsFile)
	_ = os.Remove(epFile)
	orchArgs := []string{"orchestrator", "--dir", orchDir, "--nats", natsURL, "--allow-sim"}
	if *nodeTimeout != 0 {
		orchArgs = append(orchArgs, "--node-timeout", nodeTimeout.String())
	}
	orch, err := start("orchestrator", orchArgs...)
	if err != nil {
		return err
	}
	var oe orchEndpoints
	if err := waitFile(ctx, epFile, 60*time.Second, &oe); err != nil {
		return fmt.Errorf("the orchestrator did not come up (see %s): %w", filepath.Join(*dir, "logs", "orchestrator.log"), err)
	}
	ep := Endpoints{NATSURL: natsURL, OrchestratorURL: oe.OrchestratorURL, OrchestratorMeasurement: oe.OrchestratorMeasurement, SimDir: oe.SimDir}
	var epMu sync.Mutex
	writeEndpoints := func() ([]byte, error) {
		epMu.Lock()
		defer epMu.Unlock()
		b, _ := json.MarshalIndent(ep, "", "  ")
		tmp := filepath.Join(*dir, "endpoints.json.tmp")
		if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
			return nil, err
		}
		return b, os.Rename(tmp, filepath.Join(*dir, "endpoints.json"))
	}
	if running != nil {
		ep.Sites = map[string]SiteEndpoint{}
		for _, rs := range running.Sites() {
			ep.Sites[rs.Site.Name] = SiteEndpoint{NATSURL: rs.URL, Domain: rs.Domain, Tier: string(rs.Site.Tier), Region: rs.Site.Region, Parent: rs.Site.Parent}
		}
		ctl, err := serveWANControl(ctx, running)
		if err != nil {
			return err
		}
		ep.WANControl = ctl
	}
	workerArgs := func(w workerSpec, metrics string) []string {
		args := []string{"worker", "--nats", w.natsURL, "--orchestrator", oe.OrchestratorURL, "--measurement", oe.OrchestratorMeasurement,
			"--allow-sim", "--sim-dir", oe.SimDir, "--name", w.name, "--tier", w.tier, "--region", w.region, "--site", w.site,
			"--operator-key", filepath.Join(orchDir, "operator.key")}
		if w.jsDomain != "" {
			args = append(args, "--js-domain", w.jsDomain)
			if *siteBuffer > 0 {
				args = append(args, "--site-buffer", strconv.FormatInt(*siteBuffer, 10))
			}
		}
		if *ckptEvery != 0 {
			args = append(args, "--checkpoint-interval", ckptEvery.String())
		}
		if metrics != "" {
			args = append(args, "--metrics", metrics)
		}
		return args
	}
	type supervised struct {
		spec workerSpec
		idx  int // in ep.Workers
		cmd  *exec.Cmd
	}
	var sups []*supervised
	for _, w := range specs {
		metrics := ""
		if running != nil {
			port, err := freeLoopbackPort()
			if err != nil {
				return err
			}
			metrics = "127.0.0.1:" + strconv.Itoa(port)
		}
		c, err := start(w.name, workerArgs(w, metrics)...)
		if err != nil {
			return err
		}
		if running != nil {
			ep.Workers = append(ep.Workers, WorkerEndpoint{Name: w.name, Site: w.site, PID: c.Process.Pid, Metrics: metrics, Starts: 1})
		}
		sups = append(sups, &supervised{spec: w, idx: len(ep.Workers) - 1, cmd: c})
	}
	b, err := writeEndpoints()
	if err != nil {
		return err
	}
	fmt.Printf("%s\n", b)
	progress("running; endpoints in %s; verify with: sealflow verify --orchestrator %s --measurement %s --allow-sim --sim-dir %s; Ctrl-C stops everything",
		filepath.Join(*dir, "endpoints.json"), ep.OrchestratorURL, ep.OrchestratorMeasurement, ep.SimDir)

	exited := make(chan error, 1+len(sups))
	go func() {
		<-waited(orch)
		exited <- fmt.Errorf("the orchestrator (pid %d) exited; see the logs in %s", orch.Process.Pid, filepath.Join(*dir, "logs"))
	}()
	for _, sp := range sups {
		go func() {
			for {
				c := sp.cmd
				<-waited(c)
				if running == nil || ctx.Err() != nil {
					exited <- fmt.Errorf("worker %s (pid %d) exited; see the logs in %s", sp.spec.name, c.Process.Pid, filepath.Join(*dir, "logs"))
					return
				}
				// A topology site supervises its workers: a worker that
				// dies is replaced by a new process (a new node identity)
				// at the same site; the orchestrator moves the lost node's
				// tasks to it after its node timeout.
				progress("worker %s (pid %d) exited (%v); restarting it", sp.spec.name, c.Process.Pid, c.ProcessState)
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
				epMu.Lock()
				metrics := ep.Workers[sp.idx].Metrics
				epMu.Unlock()
				nc, err := start(sp.spec.name, workerArgs(sp.spec, metrics)...)
				if err != nil {
					exited <- fmt.Errorf("restarting worker %s: %w", sp.spec.name, err)
					return
				}
				sp.cmd = nc
				epMu.Lock()
				ep.Workers[sp.idx].PID = nc.Process.Pid
				ep.Workers[sp.idx].Starts++
				epMu.Unlock()
				if _, err := writeEndpoints(); err != nil {
					progress("rewriting endpoints.json: %v", err)
				}
			}
		}()
	}
	select {
	case <-ctx.Done():
		progress("stopping")
		return nil
	case err := <-exited:
		return err
	}
}

// waitedChans remembers, per process, a channel closed when it has exited,
// so several goroutines may wait for one process.
var (
	waitedMu    sync.Mutex
	waitedChans = map[*exec.Cmd]chan struct{}{}
)

// waited returns a channel closed once c has exited (calling c.Wait once).
func waited(c *exec.Cmd) <-chan struct{} {
	waitedMu.Lock()
	defer waitedMu.Unlock()
	ch, ok := waitedChans[c]
	if !ok {
		ch = make(chan struct{})
		waitedChans[c] = ch
		go func() { _ = c.Wait(); close(ch) }()
	}
	return ch
}

// freeLoopbackPort returns a loopback TCP port free at the time of the call.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
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
