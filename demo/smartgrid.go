// Package demo runs sealflow's smart-grid scenario on one machine: an
// embedded NATS server, the orchestrator (sim TEE), attested workers at the
// edge, in a regional cloud and in a central cloud, three households that seal
// their meter readings at the source, a grid operator whose balancing service
// they approved, and an analytics company one household did not approve. It
// checks the guarantees end to end and reports each check.
package demo

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/attest/sim"
	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/confidential"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/ledger"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/substrate"
	"github.com/sealflow/sealflow/worker"
)

// Options configure a demo run.
type Options struct {
	// Dir holds the run's files (NATS store, sim platform, witnesses); a
	// temporary directory, removed afterwards, when empty.
	Dir string
	// Readings is the number of readings per household (one per second of
	// event time); 120 when zero.
	Readings int
	// Progress receives one line per step; nothing when nil.
	Progress io.Writer
	// Logger receives the components' logs; discarded when nil.
	Logger *slog.Logger
	// Sync is the embedded NATS server's durability setting;
	// substrate.SyncAlways (flush before every acknowledgement) when zero.
	Sync substrate.Sync
}

// Check is one guarantee the demo checked.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// Report is the outcome of a demo run.
type Report struct {
	OK      bool           `json:"ok"`
	Checks  []Check        `json:"checks"`
	Results map[string]any `json:"results"`
}

func (r *Report) check(name string, ok bool, format string, args ...any) {
	r.Checks = append(r.Checks, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

// household is one data owner of the scenario.
type household struct {
	id, name, feeder, serial string
	kf                       *party.KeyFile
	key                      []byte
	c                        *client.Client
	readings                 []record.Record
}

// meterSchema is the schema of a household's meter stream.
var meterFields = []jobspec.Field{
	jobspec.String("household"), jobspec.String("feeder"), jobspec.String("serial"),
	jobspec.Float("kwh"), jobspec.Int("ts"),
}

const windowMs = 5000

// Run runs the scenario and returns the report. The error is for failures to
// run at all; a guarantee that does not hold is a failed check in the report.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Readings <= 0 {
		o.Readings = 120
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "sealflow-demo-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		o.Dir = d
	}
	step := func(format string, args ...any) { fmt.Fprintf(o.Progress, "• "+format+"\n", args...) }
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rep := &Report{Results: map[string]any{}}

	// The infrastructure: NATS with JetStream, embedded.
	step("starting NATS JetStream (embedded, durability %s)", o.Sync)
	ns, err := substrate.Start(ctx, substrate.Options{StoreDir: filepath.Join(o.Dir, "nats"), Sync: o.Sync})
	if err != nil {
		return nil, err
	}
	defer ns.Shutdown()
	nc, err := substrate.Connect(ctx, ns.ClientURL(), "demo-infrastructure")
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}

	// The orchestrator, in a (simulated) TEE, with its founding genesis.
	step("starting the orchestrator in a sim TEE; genesis names the operator and the accepted worker build")
	plat, err := sim.LoadOrCreate(filepath.Join(o.Dir, "sim"))
	if err != nil {
		return nil, err
	}
	meas, err := sim.ExecutableMeasurement()
	if err != nil {
		return nil, err
	}
	simVerifier, err := sim.NewVerifier(plat.RootCertPEM())
	if err != nil {
		return nil, err
	}
	verifiers := map[attest.TEE]attest.Verifier{attest.TEESim: simVerifier}
	operator, err := party.Generate(party.RoleOperator, "grid-infra", nil)
	if err != nil {
		return nil, err
	}
	genesis := orchestrator.Genesis{Name: "smart-grid demo", Operator: operator.Identity(), Workers: attest.ReferenceValues{
		AllowSim: true, Measurements: map[attest.TEE][]string{attest.TEESim: {hex.EncodeToString(meas)}}}}
	kv, err := substrate.EnsureKeyValue(ctx, js, jetstream.KeyValueConfig{Bucket: "sealflow_orchestrator", Storage: jetstream.FileStorage})
	if err != nil {
		return nil, err
	}
	srv, err := api.New(ctx, api.Config{Genesis: genesis, Issuer: plat.Issuer(), SealingKey: plat.SealingKey(meas, "orchestrator-state"),
		Verifiers: verifiers, Store: &api.KVStore{KV: kv, Key: "state"}, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: srv.Handler(nil), ErrorLog: nil}
	go hs.Serve(tls.NewListener(ln, srv.TLSConfig()))
	defer hs.Close()
	go srv.ServeNATS(ctx, nc)
	url := "https://" + ln.Addr().String()

	verify := func() (*client.Trust, error) {
		tr, _, err := client.Verify(ctx, url, client.VerifyOptions{AllowSim: true, Verifiers: verifiers})
		return tr, err
	}
	trust, err := verify()
	rep.check("orchestrator verified before use", err == nil, "evidence binds its keys, TLS key and genesis %s; sim accepted only because the client said --allow-sim", genesis.Digest()[:12])
	if err != nil {
		return rep, fmt.Errorf("verifying the orchestrator: %w", err)
	}

	// Workers: edge and regional nodes in Belgium, a cloud node in Germany.
	step("starting 3 workers (edge be-antwerp, regional be-flanders, cloud de-frankfurt); each attests with a fresh nonce")
	type nodeSpec struct{ name, tier, region string }
	nodes := []nodeSpec{{"edge-antwerp", "edge", "be-antwerp"}, {"regional-flanders", "regional", "be-flanders"}, {"cloud-frankfurt", "cloud", "de-frankfurt"}}
	workers := map[string]*worker.Worker{}
	werr := make(chan error, len(nodes))
	for _, n := range nodes {
		claims, err := party.Sign(operator, orchestrator.TypeNodeClaims, orchestrator.NodeClaims{Name: n.name, Tier: n.tier, Region: n.region, Site: n.name, Slots: 8}, time.Hour, time.Now())
		if err != nil {
			return nil, err
		}
		wnc, err := substrate.Connect(ctx, ns.ClientURL(), n.name)
		if err != nil {
			return nil, err
		}
		defer wnc.Close()
		wjs, err := jetstream.New(wnc)
		if err != nil {
			return nil, err
		}
		wtrust, err := verify()
		if err != nil {
			return nil, err
		}
		w, err := worker.New(worker.Config{Name: n.name, NATS: wnc, Orchestrator: wtrust, Issuer: plat.Issuer(), Claims: claims,
			IO: &worker.JetStreamIO{JS: wjs}, Logger: o.Logger})
		if err != nil {
			return nil, err
		}
		workers[n.name] = w
		go func() { werr <- w.Run(ctx) }()
	}
	oc := client.New(trust)
	if err := waitFor(ctx, 30*time.Second, func() bool {
		var vs []api.NodeView
		return oc.Get(ctx, "/v1/nodes", &vs) == nil && len(vs) == len(nodes)
	}); err != nil {
		return rep, fmt.Errorf("workers were not admitted: %w", err)
	}
	rep.check("workers admitted by attestation", true, "%d nodes admitted after evidence, reference values and the operator's signed location claims were checked", len(nodes))

	// Households: verify, register, publish sealed readings.
	step("3 households verify the orchestrator, register meter streams with policies and seal readings at the source")
	grid, err := party.Generate(party.RoleProvider, "grid-operator", nil)
	if err != nil {
		return nil, err
	}
	adco, err := party.Generate(party.RoleProvider, "adcorp-analytics", nil)
	if err != nil {
		return nil, err
	}
	for _, p := range []*party.KeyFile{grid, adco} {
		if err := oc.RegisterParty(ctx, p); err != nil {
			return nil, err
		}
	}
	hh := []*household{
		{id: "h1", name: "alice", feeder: "feeder-north"},
		{id: "h2", name: "bob", feeder: "feeder-north"},
		{id: "h3", name: "carol", feeder: "feeder-south"},
	}
	rng := rand.New(rand.NewPCG(7, 11))
	start := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC).UnixMilli()
	for _, h := range hh {
		h.serial = fmt.Sprintf("SN-%s-%08x", h.id, rng.Uint32())
		if h.kf, err = party.Generate(party.RoleOwner, h.name, nil); err != nil {
			return nil, err
		}
		htr, err := verify()
		if err != nil {
			return nil, err
		}
		h.c = client.New(htr)
		if err := h.c.RegisterParty(ctx, h.kf); err != nil {
			return nil, err
		}
		rules := []policyRule{
			{"belgium-only", "placement", "node.region.startsWith('be-') && !node.debug && node.tee in ['sim', 'snp', 'tdx']"},
			{"grid-operator-only", "recipient", "recipient.name == 'grid-operator'"},
		}
		if h.id == "h3" {
			// Carol approves by policy: any service of the grid operator.
			rules = append(rules, policyRule{"grid-services", "service", fmt.Sprintf("service.provider == '%s'", grid.ID())})
		}
		pol, _ := json.Marshal(map[string]any{"stream": "meter-" + h.id, "rules": rules})
		var schema []orchestrator.Field
		for _, f := range meterFields {
			schema = append(schema, orchestrator.Field{Name: f.Name, Type: f.Type.String()})
		}
		if h.key, err = h.c.RegisterStream(ctx, h.kf, orchestrator.RegisterStream{Name: "meter-" + h.id, Schema: schema, Partitions: 1, Policy: pol}); err != nil {
			return nil, err
		}
		if h.id == "h1" {
			// The infrastructure injects a frame of its own into alice's
			// stream, ahead of her first real frame.
			if err := injectForgedFrame(ctx, js, "meter-"+h.id); err != nil {
				return nil, err
			}
		}
		ring := seal.NewKeyring()
		if _, err := ring.AddSecret("meter-"+h.id, 1, h.key); err != nil {
			return nil, err
		}
		pub, err := confidential.NewPublisher(ctx, js, "meter-"+h.id, recordSchema(meterFields), ring, 1)
		if err != nil {
			return nil, err
		}
		var b record.Batch
		for i := 0; i < o.Readings; i++ {
			kwh := math.Round((0.05+rng.Float64()*0.9)*1000) / 1000
			rec := record.Record{Time: start + int64(i)*1000, Values: []record.Value{
				record.String(h.id), record.String(h.feeder), record.String(h.serial), record.Float(kwh), record.Int(start + int64(i)*1000)}}
			h.readings = append(h.readings, rec)
			b.Records = append(b.Records, rec)
			if b.Len() == 20 {
				if err := pub.Publish(ctx, 0, &b); err != nil {
					return nil, err
				}
				b.Reset()
			}
		}
		if b.Len() > 0 {
			if err := pub.Publish(ctx, 0, &b); err != nil {
				return nil, err
			}
		}
		if err := pub.Close(ctx); err != nil {
			return nil, err
		}
	}

	// The grid operator's balancing service: edge pre-aggregation per
	// household, regional aggregation per feeder.
	step("the grid operator submits 'balance' (edge: 5 s sums per household; regional: 5 s sums per feeder)")
	// The grid operator names adcorp as a second recipient; the owners'
	// recipient rules accept only the grid operator.
	man, err := balanceManifest(hh, grid.ID(), adco.ID())
	if err != nil {
		return nil, err
	}
	gc := client.New(trust)
	sub, err := gc.Submit(ctx, grid, orchestrator.TypeServiceSubmit, man)
	if err != nil {
		return nil, err
	}
	digest := sub.Result.(map[string]any)["digest"].(string)
	for _, h := range hh[:2] {
		if _, err := h.c.Submit(ctx, h.kf, orchestrator.TypeServiceApprove, orchestrator.Approve{Stream: "meter-" + h.id, Digest: digest}); err != nil {
			return nil, err
		}
	}
	step("alice and bob approve digest %s explicitly; carol's policy admits the grid operator's services", digest[:12])
	dep, err := gc.Submit(ctx, grid, orchestrator.TypeJobDeploy, orchestrator.Deploy{Service: "balance"})
	if err != nil {
		rep.check("balance deployed on nodes every policy allows", false, "%v", err)
		return rep, nil
	}
	placed := dep.Result.(map[string]any)["tasks"].(map[string]any)
	names := nodeNames(ctx, oc)
	var where []string
	onlyBE := true
	for task, node := range placed {
		n := names[party.ID(node.(string))]
		where = append(where, task+"→"+n)
		onlyBE = onlyBE && n != "cloud-frankfurt"
	}
	sort.Strings(where)
	rep.check("balance deployed on nodes every policy allows", onlyBE, "%s", strings.Join(where, ", "))
	rep.Results["placement"] = where

	// The analytics service that bob did not approve.
	step("adcorp-analytics submits 'profiling'; bob never approves it")
	pman, err := profilingManifest(hh)
	if err != nil {
		return nil, err
	}
	ac := client.New(trust)
	if _, err := ac.Submit(ctx, adco, orchestrator.TypeServiceSubmit, pman); err != nil {
		return nil, err
	}
	psub := digestOf(ctx, ac, "profiling")
	for _, h := range []*household{hh[0], hh[2]} {
		if _, err := h.c.Submit(ctx, h.kf, orchestrator.TypeServiceApprove, orchestrator.Approve{Stream: "meter-" + h.id, Digest: psub}); err != nil {
			return nil, err
		}
	}
	_, perr := ac.Submit(ctx, adco, orchestrator.TypeJobDeploy, orchestrator.Deploy{Service: "profiling"})
	var re *client.RefusedError
	refused := errors.As(perr, &re) && re.Rule == "approval.pending" && strings.Contains(re.Message, "meter-h2")
	rep.check("unapproved service refused", refused, "deploy of 'profiling': %v", perr)

	// Wait for the balancing job to finish its bounded input.
	step("waiting for the tasks to process the sealed streams")
	if err := waitFor(ctx, 60*time.Second, func() bool {
		for _, w := range workers {
			for _, t := range w.Tasks() {
				if t.State() == "running" || t.State() == "" {
					return false
				}
			}
		}
		n := 0
		for _, w := range workers {
			n += len(w.Tasks())
		}
		return n == len(man.Tasks)
	}); err != nil {
		return rep, fmt.Errorf("tasks did not finish: %w", err)
	}
	var failed []string
	for _, w := range workers {
		for _, t := range w.Tasks() {
			if t.State() != "finished" {
				failed = append(failed, t.ID+": "+t.State())
			}
		}
	}
	if len(failed) > 0 {
		rep.check("tasks finished", false, "%s", strings.Join(failed, "; "))
		return rep, nil
	}

	// The grid operator receives and decrypts its results.
	step("the grid operator requests the output key and decrypts its results")
	outKey, err := gc.RequestOutputKey(ctx, grid, "balance", "grid-balance")
	if err != nil {
		return nil, fmt.Errorf("output key: %w", err)
	}
	ring := seal.NewKeyring()
	if _, err := ring.AddSecret("grid-balance", 0, outKey); err != nil {
		return nil, err
	}
	outSchema, err := man.SinkSchema("grid-balance")
	if err != nil {
		return nil, err
	}
	got, err := confidential.ReadOutput(ctx, js, "grid-balance", outSchema, ring)
	if err != nil {
		return nil, fmt.Errorf("reading results: %w", err)
	}
	want := direct(hh)
	ok, detail := compare(got, want)
	rep.check("results equal a direct computation", ok, "%s", detail)
	rep.Results["feeder_windows"] = len(got)
	rep.Results["total_kwh"] = totalKWh(got)

	_, aerr := ac.RequestOutputKey(ctx, adco, "balance", "grid-balance")
	rep.check("a recipient the owners did not accept gets no output key", errors.As(aerr, &re) && strings.HasPrefix(re.Rule, "policy:meter-h1/"),
		"adcorp-analytics, named by the service, asked for grid-balance: %v", aerr)

	// The frame the infrastructure injected was refused, reported by the
	// worker and logged; it changed no result (checked above).
	var rejected []string
	if err := waitFor(ctx, 10*time.Second, func() bool {
		var es api.Entries
		if oc.Get(ctx, "/v1/log/entries?subject=stream:meter-h1", &es) != nil {
			return false
		}
		rejected = rejected[:0]
		for _, e := range es.Entries {
			if entryType(e.Record) == "frame.rejected" {
				rejected = append(rejected, entryBody(e.Record))
			}
		}
		return len(rejected) > 0
	}); err != nil {
		rejected = nil
	}
	rep.check("an injected frame is refused and logged", len(rejected) > 0, "%d frame.rejected log entries about meter-h1: %s", len(rejected), strings.Join(rejected, "; "))

	// The infrastructure's view: everything on NATS.
	step("scanning everything on NATS (streams, key-value buckets, object stores) for the readings and keys")
	var needles [][]byte
	for _, h := range hh {
		needles = append(needles, []byte(h.serial), h.key)
		for _, r := range h.readings[:20] {
			var le, be [8]byte
			binary.LittleEndian.PutUint64(le[:], math.Float64bits(r.Values[3].F))
			binary.BigEndian.PutUint64(be[:], math.Float64bits(r.Values[3].F))
			needles = append(needles, le[:], be[:])
		}
	}
	needles = append(needles, outKey)
	findings, err := confidential.ScanForPlaintext(ctx, nc, needles)
	rep.check("infrastructure sees no plaintext", err == nil && len(findings) == 0, "%d needles (serials, kWh values, keys) searched in every stream; %d found; err %v", len(needles), len(findings), err)

	// Every household audits the log with proofs.
	step("each household audits the transparency log with inclusion and consistency proofs")
	for _, h := range hh {
		checker, err := ledger.NewChecker(h.c.Trust.LogKey)
		if err != nil {
			return nil, err
		}
		w, err := ledger.OpenWitness(checker, filepath.Join(o.Dir, h.id+"-witness.json"))
		if err != nil {
			return nil, err
		}
		a, err := h.c.Audit(ctx, "stream:meter-"+h.id, w)
		releases, refusals, profilingKeys, proven, size := 0, 0, 0, 0, int64(0)
		if err == nil {
			proven, size = len(a.Entries), a.TreeSize
			for _, e := range a.Entries {
				switch e.Type {
				case "key.released":
					releases++
					if strings.Contains(string(e.Body), `"profiling`) {
						profilingKeys++
					}
				case "job.refused":
					refusals++
				}
			}
		}
		rep.check(fmt.Sprintf("%s's audit (meter-%s)", h.name, h.id), err == nil && releases > 0 && profilingKeys == 0 && refusals >= 1,
			"%d entries proven in a tree of %d; %d key releases (none to profiling); %d refusals logged; err %v", proven, size, releases, refusals, err)
	}

	select {
	case err := <-werr:
		if err != nil {
			rep.check("workers ran without error", false, "%v", err)
		}
	default:
	}
	rep.OK = true
	for _, c := range rep.Checks {
		rep.OK = rep.OK && c.OK
	}
	return rep, nil
}

type policyRule struct {
	Name  string `json:"name"`
	Stage string `json:"stage"`
	Expr  string `json:"expr"`
}

func recordSchema(fs []jobspec.Field) *record.Schema {
	s := &record.Schema{}
	for _, f := range fs {
		s.Fields = append(s.Fields, record.Field{Name: f.Name, Type: f.Type})
	}
	return s
}

// edgeOutFields is what an edge stage writes: per household and feeder, the 5 s
// window and its sum and count.
var edgeOutFields = []jobspec.Field{jobspec.String("household"), jobspec.String("feeder"),
	jobspec.Int("window_start"), jobspec.Int("window_end"), jobspec.Float("kwh"), jobspec.Int("readings")}

// balanceManifest builds the grid operator's service: one edge stage per
// household (its meter stream → 5 s sums), one regional stage (5 s sums per
// feeder → the grid-balance output).
func balanceManifest(hh []*household, recipients ...party.ID) (orchestrator.Manifest, error) {
	man := orchestrator.Manifest{ID: "balance", Version: 1, SecurityVersion: 1, Outputs: []string{"grid-balance"},
		Recipients: recipients, Stages: map[string]json.RawMessage{}}
	reg := jobspec.New("balance-regional").Schema("edge", edgeOutFields...)
	var ins []*jobspec.Stream
	for _, h := range hh {
		b := jobspec.New("balance-edge-"+h.id).Schema("meter", meterFields...)
		b.Source("meter-"+h.id, "meter", jobspec.EventTime("ts", 0)).
			KeyBy("household", "feeder").
			Window(jobspec.Tumbling(windowMs*time.Millisecond), jobspec.Sum("kwh", "kwh"), jobspec.Count("readings")).
			Sink("edge-" + h.id)
		spec, err := b.Build()
		if err != nil {
			return man, err
		}
		js, err := spec.JSON()
		if err != nil {
			return man, err
		}
		man.Stages["edge-"+h.id] = js
		man.Inputs = append(man.Inputs, "meter-"+h.id)
		man.Tasks = append(man.Tasks, orchestrator.TaskSlot{ID: "balance/edge-" + h.id, Stage: "edge-" + h.id, Tiers: []string{"edge"}, Reads: []string{"meter-" + h.id}})
		ins = append(ins, reg.Source("edge-"+h.id, "edge", jobspec.EventTime("window_start", 0)))
	}
	all := ins[0]
	if len(ins) > 1 {
		all = ins[0].Union(ins[1:]...)
	}
	all.KeyBy("feeder").
		Window(jobspec.Tumbling(windowMs*time.Millisecond), jobspec.Sum("kwh", "kwh"), jobspec.Sum("readings", "readings")).
		Sink("grid-balance")
	spec, err := reg.Build()
	if err != nil {
		return man, err
	}
	js, err := spec.JSON()
	if err != nil {
		return man, err
	}
	man.Stages["regional"] = js
	man.Tasks = append(man.Tasks, orchestrator.TaskSlot{ID: "balance/regional", Stage: "regional", Tiers: []string{"regional"}, Writes: []string{"grid-balance"}})
	return man, nil
}

// profilingManifest is the analytics company's service over all meters.
func profilingManifest(hh []*household) (orchestrator.Manifest, error) {
	b := jobspec.New("profiling").Schema("meter", meterFields...)
	var ins []*jobspec.Stream
	man := orchestrator.Manifest{ID: "profiling", Version: 1, Outputs: []string{"profiles"}}
	for _, h := range hh {
		ins = append(ins, b.Source("meter-"+h.id, "meter", jobspec.EventTime("ts", 0)))
		man.Inputs = append(man.Inputs, "meter-"+h.id)
	}
	ins[0].Union(ins[1:]...).Sink("profiles")
	spec, err := b.Build()
	if err != nil {
		return man, err
	}
	if man.Spec, err = spec.JSON(); err != nil {
		return man, err
	}
	man.Tasks = []orchestrator.TaskSlot{{ID: "profiling/all", Reads: man.Inputs, Writes: []string{"profiles"}}}
	return man, nil
}

func digestOf(ctx context.Context, c *client.Client, service string) string {
	var ss []*orchestrator.Service
	if c.Get(ctx, "/v1/services", &ss) != nil {
		return ""
	}
	for _, s := range ss {
		if s.Manifest.ID == service {
			return s.Digest
		}
	}
	return ""
}

func nodeNames(ctx context.Context, c *client.Client) map[party.ID]string {
	var vs []api.NodeView
	_ = c.Get(ctx, "/v1/nodes", &vs)
	m := map[party.ID]string{}
	for _, v := range vs {
		m[v.ID] = v.Name
	}
	return m
}

type feederWindow struct {
	feeder string
	start  int64
}

type sums struct {
	kwh      float64
	readings int64
}

// direct computes the expected results straight from the readings.
func direct(hh []*household) map[feederWindow]sums {
	out := map[feederWindow]sums{}
	for _, h := range hh {
		for _, r := range h.readings {
			k := feederWindow{h.feeder, r.Time - r.Time%windowMs}
			s := out[k]
			s.kwh += r.Values[3].F
			s.readings++
			out[k] = s
		}
	}
	return out
}

func compare(got []record.Record, want map[feederWindow]sums) (bool, string) {
	seen := map[feederWindow]bool{}
	for _, r := range got {
		k := feederWindow{r.Values[0].S, r.Values[1].I}
		w, ok := want[k]
		if !ok {
			return false, fmt.Sprintf("unexpected window %s@%d", k.feeder, k.start)
		}
		if seen[k] {
			return false, fmt.Sprintf("duplicate window %s@%d", k.feeder, k.start)
		}
		seen[k] = true
		if math.Abs(r.Values[3].F-w.kwh) > 1e-9 || r.Values[4].I != w.readings {
			return false, fmt.Sprintf("window %s@%d: got %.3f kWh / %d readings, want %.3f / %d", k.feeder, k.start, r.Values[3].F, r.Values[4].I, w.kwh, w.readings)
		}
	}
	if len(seen) != len(want) {
		return false, fmt.Sprintf("got %d feeder windows, want %d", len(seen), len(want))
	}
	return true, fmt.Sprintf("%d feeder windows, every sum and count equal", len(want))
}

func totalKWh(rs []record.Record) float64 {
	t := 0.0
	for _, r := range rs {
		t += r.Values[3].F
	}
	return math.Round(t*1000) / 1000
}

func waitFor(ctx context.Context, d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not done after %v", d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// injectForgedFrame publishes into an owner's ingest stream a frame sealed
// with a key the infrastructure made up for the same scope and epoch: what a
// party without the owner's key can do.
func injectForgedFrame(ctx context.Context, js jetstream.JetStream, stream string) error {
	if err := confidential.EnsureIngestStream(ctx, js, stream); err != nil {
		return err
	}
	ring := seal.NewKeyring()
	if _, err := ring.Generate(stream, 1); err != nil {
		return err
	}
	s, err := seal.NewSealer(ring, seal.KindIngest, stream, 0)
	if err != nil {
		return err
	}
	frame, err := s.Seal(nil, []byte("forged readings"), 0, 0)
	if err != nil {
		return err
	}
	_, err = js.Publish(ctx, confidential.IngestSubject(stream, 0), frame)
	return err
}

// entryType and entryBody read a log record for the report.
func entryType(b64 string) string {
	e, err := decodeRecord(b64)
	if err != nil {
		return ""
	}
	return e.Type
}

func entryBody(b64 string) string {
	e, err := decodeRecord(b64)
	if err != nil {
		return ""
	}
	return string(e.Body)
}

func decodeRecord(b64 string) (ledger.Entry, error) {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return ledger.Entry{}, err
	}
	return ledger.DecodeEntry(raw)
}
