package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/attest/refvalues"
	"github.com/sealflow/sealflow/attest/sim"
	"github.com/sealflow/sealflow/attest/snp"
	"github.com/sealflow/sealflow/attest/tdx"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/substrate"
)

func init() {
	register("orchestrator", "run the trusted orchestrator (HTTPS API for the parties, worker control over NATS)", runOrchestrator)
}

// Where the orchestrator keeps its sealed state.
const (
	stateBucket = "sealflow_orchestrator"
	stateKey    = "state"
)

// orchEndpoints is what the orchestrator writes into its directory
// (orchestrator.json) so that other local processes find it.
type orchEndpoints struct {
	OrchestratorURL         string `json:"orchestrator_url"`
	NATSURL                 string `json:"nats_url"`
	OrchestratorMeasurement string `json:"orchestrator_measurement"`
	OrchestratorID          string `json:"orchestrator_id"`
	SimDir                  string `json:"sim_dir,omitempty"`
}

// orchEndpointsFile is the name of the endpoints file in the orchestrator's directory.
const orchEndpointsFile = "orchestrator.json"

// runOrchestrator implements `sealflow orchestrator --dir D [--nats URL |
// embedded] [--listen ADDR] [--genesis FILE | --operator FILE] [--allow-sim]`.
func runOrchestrator(ctx context.Context, args []string) error {
	fs := newFlags("orchestrator")
	dir := fs.String("dir", "", "the orchestrator's directory: sim platform (DIR/sim), embedded NATS store (DIR/nats), endpoints file")
	natsURL := fs.String("nats", "embedded", `the NATS URL, or "embedded" to run nats-server with JetStream in this process`)
	listen := fs.String("listen", "127.0.0.1:0", "the address of the HTTPS API")
	genesisFile := fs.String("genesis", "", "the genesis configuration (JSON: name, operator identity, worker reference values, node_ttl)")
	operatorFile := fs.String("operator", "", "without --genesis (development): the operator's key or identity file; default DIR/operator.key, created if missing")
	allowSim := fs.Bool("allow-sim", false, "run on the sim TEE platform and, without --genesis, admit sim workers running this executable")
	name := fs.String("name", "sealflow-dev", "without --genesis: the deployment's name")
	urlFile := fs.String("url-file", "", "where to write the endpoints (JSON); default DIR/"+orchEndpointsFile)
	nodeTimeout := fs.Duration("node-timeout", 0, "declare a node that holds tasks lost after this long without a status report, and move its tasks to other admitted nodes its owners' policies allow (default: the server's, 6 s; negative: never)")
	overloadFor := fs.Duration("overload-for", 0, "move a task whose status reports show backpressure ≥ 0.9 this long to the next tier its slot and its owners' policies allow (default: the server's, 30 s; negative: never)")
	workerRef := fs.String("worker-refvalues", "", "without --genesis: admit workers by this signed reference-values file (attest refvalues sign) instead of this executable's sim measurement")
	var signers multiFlag
	fs.Var(&signers, "signer", "a release signer's Ed25519 public key (base64 or hex) trusted for --worker-refvalues; repeatable")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	if *dir == "" {
		return fmt.Errorf("%w: --dir is required", errUsage)
	}
	if !*allowSim {
		return fmt.Errorf("%w: this build runs the orchestrator on the sim TEE platform only; pass --allow-sim (development: sim evidence protects nothing)", errUsage)
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	base := slog.New(slog.NewTextHandler(os.Stderr, nil))
	log := base.With("component", "orchestrator")
	if abs, err := filepath.Abs(*dir); err == nil {
		*dir = abs
	}

	plat, err := sim.LoadOrCreate(filepath.Join(*dir, "sim"))
	if err != nil {
		return err
	}
	meas, err := sim.ExecutableMeasurement()
	if err != nil {
		return err
	}
	var g orchestrator.Genesis
	if *genesisFile != "" {
		if g, err = loadOrchGenesis(*genesisFile); err != nil {
			return err
		}
	} else {
		op, err := loadOrchOperator(*operatorFile, *dir, log)
		if err != nil {
			return err
		}
		g = orchestrator.Genesis{Name: *name, Operator: op, Workers: attest.ReferenceValues{AllowSim: true,
			Measurements: map[attest.TEE][]string{attest.TEESim: {hex.EncodeToString(meas)}}}}
		if *workerRef != "" {
			keys, err := parseSigners(signers)
			if err != nil {
				return err
			}
			rv, err := refvalues.Load(*workerRef, keys)
			if err != nil {
				return fmt.Errorf("--worker-refvalues %s: %w", *workerRef, err)
			}
			g.Workers = *rv
		}
	}
	verifiers, err := orchWorkerVerifiers(&g, plat)
	if err != nil {
		return err
	}

	// NATS: the untrusted substrate that stores the sealed state.
	url := *natsURL
	if url == "embedded" {
		ns, err := substrate.Start(ctx, substrate.Options{StoreDir: filepath.Join(*dir, "nats"), Logger: base})
		if err != nil {
			return err
		}
		defer ns.Shutdown()
		url = ns.ClientURL()
	}
	nc, err := substrate.Connect(ctx, url, "sealflow-orchestrator")
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("JetStream on %s: %w", url, err)
	}
	// A NATS cluster that is still electing its JetStream leader answers
	// with timeouts: retry for a while before giving up.
	var kv jetstream.KeyValue
	for attempt := 1; ; attempt++ {
		kv, err = substrate.EnsureKeyValue(ctx, js, jetstream.KeyValueConfig{Bucket: stateBucket, History: 16,
			Description: "sealflow orchestrator state, sealed to the orchestrator's TEE"})
		if err == nil || attempt == 6 || ctx.Err() != nil {
			break
		}
		log.Warn("JetStream not ready yet; retrying", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := api.New(ctx, api.Config{Genesis: g, Issuer: plat.Issuer(), SealingKey: plat.SealingKey(meas, "orchestrator-state"),
		Verifiers: verifiers, Store: &api.KVStore{KV: kv, Key: stateKey}, Logger: log, Registerer: reg, NodeTimeout: *nodeTimeout, OverloadFor: *overloadFor})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", *listen, err)
	}
	hs := &http.Server{Handler: srv.Handler(reg), TLSConfig: srv.TLSConfig(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	httpErr := make(chan error, 1)
	go func() { httpErr <- hs.ServeTLS(ln, "", "") }()

	nctx, stopNATS := context.WithCancel(ctx)
	defer stopNATS()
	natsErr := make(chan error, 1)
	go func() { natsErr <- srv.ServeNATS(nctx, nc) }()

	ep := orchEndpoints{OrchestratorURL: "https://" + ln.Addr().String(), NATSURL: url, OrchestratorMeasurement: hex.EncodeToString(meas),
		OrchestratorID: string(srv.Identity().ID()), SimDir: plat.Dir()}
	if *urlFile == "" {
		*urlFile = filepath.Join(*dir, orchEndpointsFile)
	}
	if err := writeOrchJSON(*urlFile, ep); err != nil {
		return err
	}
	log.Info("orchestrator running", "url", ep.OrchestratorURL, "nats", url, "id", srv.Identity().ID().Short(),
		"genesis", g.Digest()[:12], "measurement", ep.OrchestratorMeasurement[:16], "endpoints", *urlFile)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("stopping the orchestrator")
	case runErr = <-httpErr:
		runErr = fmt.Errorf("HTTPS API: %w", runErr)
	case runErr = <-natsErr:
		if runErr != nil {
			runErr = fmt.Errorf("NATS control: %w", runErr)
		}
	}
	stopNATS()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil && runErr == nil {
		runErr = err
	}
	_ = nc.Drain()
	return runErr
}

// loadOrchGenesis reads a genesis configuration file.
func loadOrchGenesis(path string) (orchestrator.Genesis, error) {
	var g orchestrator.Genesis
	b, err := os.ReadFile(path)
	if err != nil {
		return g, fmt.Errorf("--genesis: %w", err)
	}
	if err := json.Unmarshal(b, &g); err != nil {
		return g, fmt.Errorf("genesis %s: %w", path, err)
	}
	if g.Operator == nil {
		return g, fmt.Errorf("genesis %s names no operator", path)
	}
	if err := g.Operator.Validate(); err != nil {
		return g, fmt.Errorf("genesis %s: operator: %w", path, err)
	}
	if g.Operator.Role != party.RoleOperator {
		return g, fmt.Errorf("genesis %s: the operator identity has role %s", path, g.Operator.Role)
	}
	return g, nil
}

// loadOrchOperator reads the operator's identity from a key file or an identity
// file; in development the default key file is created when missing.
func loadOrchOperator(path, dir string, log *slog.Logger) (*party.Identity, error) {
	if path == "" {
		path = filepath.Join(dir, "operator.key")
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			kf, err := party.Generate(party.RoleOperator, "operator", nil)
			if err != nil {
				return nil, err
			}
			if err := kf.Save(path); err != nil {
				return nil, err
			}
			log.Info("created a development operator key", "file", path, "id", kf.ID().Short())
		}
	}
	var id *party.Identity
	if kf, err := party.Load(path); err == nil {
		id = kf.Identity()
	} else {
		b, rerr := os.ReadFile(path)
		if rerr != nil {
			return nil, fmt.Errorf("--operator: %w", rerr)
		}
		if id, rerr = party.ParseIdentity(b); rerr != nil {
			return nil, fmt.Errorf("--operator %s is neither a key file (%v) nor an identity (%v)", path, err, rerr)
		}
	}
	if id.Role != party.RoleOperator {
		return nil, fmt.Errorf("--operator %s holds a %s identity, not an operator", path, id.Role)
	}
	return id, nil
}

// orchWorkerVerifiers returns the verifiers of worker evidence: SNP and TDX
// always, sim when the genesis allows sim workers (trusting this machine's
// sim root).
func orchWorkerVerifiers(g *orchestrator.Genesis, plat *sim.Platform) (map[attest.TEE]attest.Verifier, error) {
	v := map[attest.TEE]attest.Verifier{attest.TEESNP: snp.NewVerifier(snp.Options{AllowDebug: g.Workers.AllowDebug})}
	if t, err := tdx.NewVerifier(tdx.Options{AllowDebug: g.Workers.AllowDebug}); err == nil {
		v[attest.TEETDX] = t
	}
	if g.Workers.AllowSim {
		s, err := sim.NewVerifier(plat.RootCertPEM())
		if err != nil {
			return nil, err
		}
		v[attest.TEESim] = s
	}
	return v, nil
}

// writeOrchJSON writes v as JSON to path atomically (mode 0600).
func writeOrchJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
