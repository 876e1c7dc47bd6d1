package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/attest/sim"
	"github.com/sealflow/sealflow/checkpoint"
	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/substrate"
	"github.com/sealflow/sealflow/worker"
)

func init() {
	register("worker", "run a worker node: attest to the orchestrator, run the tasks placed here on sealed streams", runWorker)
}

// runWorker implements `sealflow worker --nats URL --orchestrator URL --tier T
// --region R --site S (--claims FILE | --operator-key FILE) --allow-sim`.
func runWorker(ctx context.Context, args []string) error {
	fs := newFlags("worker")
	natsURL := fs.String("nats", "", "the NATS URL (the worker only dials out)")
	orchURL := fs.String("orchestrator", "", "the orchestrator's HTTPS URL; its evidence is verified before anything else")
	measurement := fs.String("measurement", "", "the orchestrator measurement to accept (hex)")
	allowSim := fs.Bool("allow-sim", false, "run on the sim TEE platform and accept a sim orchestrator (development only)")
	simDir := fs.String("sim-dir", "", "the sim platform directory (its root certifies this machine's platform)")
	name := fs.String("name", "", "the node's name (default: the host name and process id)")
	tier := fs.String("tier", "edge", "the node's tier claimed by the operator: device, edge, regional or cloud")
	region := fs.String("region", "", "the node's region claimed by the operator")
	site := fs.String("site", "", "the node's site claimed by the operator")
	slots := fs.Int("slots", 8, "how many tasks the node offers to run")
	claimsFile := fs.String("claims", "", "the operator's signed node.claims statement for this node")
	operatorKey := fs.String("operator-key", "", "development: sign this node's claims with the operator's key file")
	jsDomain := fs.String("js-domain", "", "the JetStream domain holding the sealed streams (for a worker at a leafnode site: the hub's, \"hub\"); the local one when empty")
	siteBuffer := fs.Int64("site-buffer", worker.DefaultSiteBuffer, "at a leafnode site (--js-domain differs from the site's own domain): bytes each intermediate stream written here may buffer at the site through a WAN outage")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics at http://ADDR/metrics (host:port)")
	ckptEvery := fs.Duration("checkpoint-interval", worker.DefaultCheckpointInterval, "time between checkpoints of every task (exactly-once output, recovery from failures); 0 turns checkpoints off (output at least once, a failed task stays failed)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *natsURL == "" || *orchURL == "" {
		return fmt.Errorf("%w: --nats and --orchestrator are required", errUsage)
	}
	if !*allowSim {
		return fmt.Errorf("%w: this build runs workers on the sim TEE platform only; pass --allow-sim (development: sim evidence protects nothing)", errUsage)
	}
	if *simDir == "" {
		return fmt.Errorf("%w: --sim-dir is required with --allow-sim", errUsage)
	}
	if *name == "" {
		h, _ := os.Hostname()
		*name = fmt.Sprintf("%s-%d", h, os.Getpid())
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "worker")

	plat, err := sim.LoadOrCreate(*simDir)
	if err != nil {
		return err
	}
	v, err := sim.NewVerifier(plat.RootCertPEM())
	if err != nil {
		return err
	}
	trust, claims, err := client.Verify(ctx, *orchURL, client.VerifyOptions{Measurement: *measurement, AllowSim: true,
		Verifiers: map[attest.TEE]attest.Verifier{attest.TEESim: v}})
	if err != nil {
		return fmt.Errorf("verifying the orchestrator at %s: %w", *orchURL, err)
	}
	log.Info("orchestrator verified", "id", trust.Identity.ID().Short(), "tee", claims.TEE, "measurement", trust.Measurement[:16])

	var nodeClaims []byte
	switch {
	case *claimsFile != "":
		if nodeClaims, err = os.ReadFile(*claimsFile); err != nil {
			return err
		}
	case *operatorKey != "":
		op, err := party.Load(*operatorKey)
		if err != nil {
			return fmt.Errorf("--operator-key: %w", err)
		}
		nodeClaims, err = party.Sign(op, orchestrator.TypeNodeClaims, orchestrator.NodeClaims{Name: *name, Tier: *tier, Region: *region, Site: *site, Slots: *slots}, 24*time.Hour, time.Now())
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: give the operator's signed claims (--claims) or, in development, --operator-key", errUsage)
	}

	nc, err := substrate.Connect(ctx, *natsURL, "sealflow-worker-"+*name)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if *jsDomain != "" {
		js, err = jetstream.NewWithDomain(nc, *jsDomain)
	}
	if err != nil {
		return err
	}
	jsio := &worker.JetStreamIO{JS: js, SiteBuffer: *siteBuffer, Logger: log}
	if *jsDomain != "" {
		// At a leafnode site: owners' streams the site holds are read and
		// intermediate streams written in the site's own domain.
		if err := siteDomain(ctx, nc, *jsDomain, jsio); err != nil {
			return err
		}
	}
	metrics := worker.NewMetrics(*name)
	cfg := worker.Config{Name: *name, NATS: nc, Orchestrator: trust, Issuer: plat.Issuer(), Claims: nodeClaims,
		IO: metrics.WrapIO(jsio), Logger: log}
	if *ckptEvery > 0 {
		if cfg.Checkpoints, err = checkpoint.Open(ctx, js, checkpoint.DefaultBucket); err != nil {
			return fmt.Errorf("opening the checkpoint store: %w", err)
		}
		cfg.CheckpointInterval = *ckptEvery
	}
	w, err := worker.New(cfg)
	if err != nil {
		return err
	}
	metrics.Watch(w)
	if *metricsAddr != "" {
		addr, err := metrics.Serve(ctx, *metricsAddr)
		if err != nil {
			return err
		}
		log.Info("serving metrics", "url", "http://"+addr.String()+"/metrics")
	}
	return w.Run(ctx)
}

// siteDomain sets io.Local to the JetStream of the server the worker is
// connected to when its domain differs from hubDomain (a leafnode site's).
func siteDomain(ctx context.Context, nc *nats.Conn, hubDomain string, io *worker.JetStreamIO) error {
	local, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ai, err := local.AccountInfo(actx)
	if err != nil {
		return fmt.Errorf("asking the site's JetStream for its domain: %w", err)
	}
	if ai.Domain != "" && ai.Domain != hubDomain {
		io.Local, io.LocalDomain = local, ai.Domain
	}
	return nil
}

// absPath returns p made absolute (or p when that fails).
func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
