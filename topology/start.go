package topology

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/sealflow/sealflow/substrate"
	"github.com/sealflow/sealflow/wan"
)

// Option configures [Start].
type Option func(*startConfig)

type startConfig struct {
	log       *slog.Logger
	sync      substrate.Sync
	reconnect time.Duration
	ready     time.Duration
	seed      uint64
}

// WithLogger sends the servers' and links' log lines to l.
func WithLogger(l *slog.Logger) Option { return func(c *startConfig) { c.log = l } }

// WithSync selects when JetStream flushes writes to disk on every server;
// [substrate.SyncAlways] unless set.
func WithSync(s substrate.Sync) Option { return func(c *startConfig) { c.sync = s } }

// WithReconnectInterval sets how often a leafnode retries its parent after
// losing it; 1 s (nats-server's default) unless set.
func WithReconnectInterval(d time.Duration) Option {
	return func(c *startConfig) { c.reconnect = d }
}

// WithReadyTimeout bounds how long each server may take to start; 15 s unless set.
func WithReadyTimeout(d time.Duration) Option { return func(c *startConfig) { c.ready = d } }

// WithSeed seeds the links' loss patterns; link i gets seed+i.
func WithSeed(seed uint64) Option { return func(c *startConfig) { c.seed = seed } }

// Running is a topology started by [Start].
type Running struct {
	// Topology is what was started.
	Topology *Topology

	sites map[string]*RunningSite
	order []*RunningSite
	stop  sync.Once
}

// RunningSite is one started site.
type RunningSite struct {
	// Site is the site's description.
	Site *Site
	// Domain is the JetStream domain serving the site (a client site's
	// parent's).
	Domain string
	// URL is where processes at the site connect: the site's own server, the
	// hub cluster's servers (comma-separated), or for a client site its
	// parent's server through the site's link.
	URL string
	// Link is the emulated WAN link to the parent; nil for the hub.
	Link *wan.Link

	servers  []*server.Server
	leafPort int // leafnode listen port of servers[0]
}

// Servers returns the site's nats-servers (none for a client site).
func (rs *RunningSite) Servers() []*server.Server { return rs.servers }

// Start runs t on loopback: the hub cluster (1 or 3 clustered servers,
// JetStream domain "hub"), one nats-server per leafnode site with its own
// JetStream domain, connected to its parent's leafnode port through a
// [wan.Link] built from the site's link, and for each client site a link to
// its parent's client port. Stores go under dir/<site>. Start returns once
// every server accepts clients; use [Running.WaitConnected] to wait for the
// leafnode connections. On error everything started is stopped.
func Start(ctx context.Context, t *Topology, dir string, opts ...Option) (*Running, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	if dir == "" {
		return nil, errors.New("topology: store directory is empty")
	}
	cfg := startConfig{reconnect: time.Second, ready: 15 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	r := &Running{Topology: t, sites: map[string]*RunningSite{}}
	ok := false
	defer func() {
		if !ok {
			r.Stop()
		}
	}()
	for i, s := range t.Order() {
		rs := &RunningSite{Site: s, Domain: t.DomainOf(s.Name)}
		r.sites[s.Name] = rs
		r.order = append(r.order, rs)
		var err error
		switch s.NATS.Role {
		case Hub:
			err = r.startHub(ctx, rs, dir, cfg)
		case Leafnode:
			err = r.startLeaf(ctx, rs, dir, cfg, uint64(i))
		case Client:
			err = r.startClient(ctx, rs, cfg, uint64(i))
		}
		if err != nil {
			return nil, fmt.Errorf("topology %q: starting site %q: %w", t.Name, s.Name, err)
		}
	}
	ok = true
	return r, nil
}

func (r *Running) baseOptions(name, domain, store string, cfg startConfig) (*server.Options, error) {
	if err := os.MkdirAll(store, 0o700); err != nil {
		return nil, fmt.Errorf("creating store directory: %w", err)
	}
	so := &server.Options{
		ServerName:      name,
		Host:            "127.0.0.1",
		Port:            server.RANDOM_PORT,
		JetStream:       true,
		JetStreamDomain: domain,
		StoreDir:        store,
		MaxPayload:      8 << 20,
		NoSigs:          true,
		NoLog:           cfg.log == nil,
		LeafNode: server.LeafNodeOpts{
			Host: "127.0.0.1",
			Port: server.RANDOM_PORT,
			// Never tell a leafnode about other URLs: it must reach its
			// parent only through the emulated link.
			NoAdvertise:       true,
			ReconnectInterval: cfg.reconnect,
		},
	}
	switch cfg.sync {
	case substrate.SyncAlways:
		so.SyncAlways = true
	case substrate.SyncRelaxed:
	default:
		return nil, fmt.Errorf("unknown sync mode %v", cfg.sync)
	}
	return so, nil
}

func (r *Running) launch(so *server.Options, cfg startConfig) (*server.Server, error) {
	ns, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("configuring nats-server %q: %w", so.ServerName, err)
	}
	if cfg.log != nil {
		ns.SetLoggerV2(slogAdapter{cfg.log.With("server", so.ServerName)}, false, false, false)
	}
	go ns.Start()
	return ns, nil
}

// ready waits until every server in nss accepts clients; on failure it shuts
// them all down.
func ready(ctx context.Context, cfg startConfig, nss ...*server.Server) error {
	deadline := time.Now().Add(cfg.ready)
	for _, ns := range nss {
		for !ns.ReadyForConnections(50 * time.Millisecond) {
			if ctx.Err() != nil || time.Now().After(deadline) {
				for _, ns := range nss {
					ns.Shutdown()
					ns.WaitForShutdown()
				}
				if ctx.Err() != nil {
					return fmt.Errorf("waiting for nats-server %q: %w", ns.Name(), ctx.Err())
				}
				return fmt.Errorf("nats-server %q not ready after %v", ns.Name(), cfg.ready)
			}
		}
	}
	return nil
}

// freePorts reserves n distinct free loopback ports and releases them for
// the caller to listen on.
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (r *Running) startHub(ctx context.Context, rs *RunningSite, dir string, cfg startConfig) error {
	n := max(rs.Site.NATS.Servers, 1)
	var routes []*url.URL
	var clusterPorts []int
	if n > 1 {
		// Clustered JetStream servers become ready only together, so all
		// start at once with routes to each other's pre-chosen ports.
		ports, err := freePorts(n)
		if err != nil {
			return err
		}
		clusterPorts = ports
		for _, p := range ports {
			routes = append(routes, &url.URL{Scheme: "nats-route", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p))})
		}
	}
	var sos []*server.Options
	for i := range n {
		name := rs.Site.Name
		if n > 1 {
			name += "-" + strconv.Itoa(i)
		}
		so, err := r.baseOptions(name, HubDomain, filepath.Join(dir, rs.Site.Name, strconv.Itoa(i)), cfg)
		if err != nil {
			return err
		}
		if n > 1 {
			so.Cluster = server.ClusterOpts{Name: rs.Site.Name, Host: "127.0.0.1", Port: clusterPorts[i], NoAdvertise: true}
			so.Routes = routes
		}
		ns, err := r.launch(so, cfg)
		if err != nil {
			return err
		}
		rs.servers = append(rs.servers, ns)
		sos = append(sos, so)
	}
	if err := ready(ctx, cfg, rs.servers...); err != nil {
		rs.servers = nil
		return err
	}
	rs.leafPort = sos[0].LeafNode.Port
	var urls []string
	for _, ns := range rs.servers {
		urls = append(urls, ns.ClientURL())
	}
	rs.URL = strings.Join(urls, ",")
	return nil
}

func (r *Running) link(ctx context.Context, rs *RunningSite, target string, cfg startConfig, i uint64) error {
	wc, err := rs.Site.Link.WAN()
	if err != nil {
		return err
	}
	wc.Seed = cfg.seed + i
	if cfg.log != nil {
		wc.Logger = cfg.log.With("link", rs.Site.Name+"->"+rs.Site.Parent)
	}
	l, err := wan.Listen(context.WithoutCancel(ctx), "127.0.0.1:0", target, wc)
	if err != nil {
		return err
	}
	rs.Link = l
	return nil
}

func (r *Running) startLeaf(ctx context.Context, rs *RunningSite, dir string, cfg startConfig, i uint64) error {
	parent := r.sites[rs.Site.Parent]
	if err := r.link(ctx, rs, net.JoinHostPort("127.0.0.1", strconv.Itoa(parent.leafPort)), cfg, i); err != nil {
		return err
	}
	so, err := r.baseOptions(rs.Site.Name, rs.Domain, filepath.Join(dir, rs.Site.Name), cfg)
	if err != nil {
		return err
	}
	so.LeafNode.Remotes = []*server.RemoteLeafOpts{{
		URLs: []*url.URL{{Scheme: "nats-leaf", Host: rs.Link.Addr()}},
		// The WAN link adds latency to the handshake.
		DialTimeout: 5 * time.Second,
		// Off so the emulated link sees the bytes the application sends
		// (s2_auto batches writes on slow links, which doubled the latency
		// measured across a 50 ms link); real deployments turn it on.
		Compression: server.CompressionOpts{Mode: server.CompressionOff},
	}}
	ns, err := r.launch(so, cfg)
	if err != nil {
		return err
	}
	if err := ready(ctx, cfg, ns); err != nil {
		return err
	}
	rs.servers = []*server.Server{ns}
	rs.leafPort = so.LeafNode.Port
	rs.URL = ns.ClientURL()
	return nil
}

func (r *Running) startClient(ctx context.Context, rs *RunningSite, cfg startConfig, i uint64) error {
	parent := r.sites[rs.Site.Parent]
	target := parent.servers[0].Addr().String()
	if err := r.link(ctx, rs, target, cfg, i); err != nil {
		return err
	}
	rs.URL = "nats://" + rs.Link.Addr()
	return nil
}

// Site returns the named running site, or nil.
func (r *Running) Site(name string) *RunningSite { return r.sites[name] }

// URL returns the client URL for processes at the named site, or "".
func (r *Running) URL(name string) string {
	if rs := r.sites[name]; rs != nil {
		return rs.URL
	}
	return ""
}

// Link returns the WAN link from the named site to its parent, or nil.
func (r *Running) Link(name string) *wan.Link {
	if rs := r.sites[name]; rs != nil {
		return rs.Link
	}
	return nil
}

// Sites returns the running sites, parents first.
func (r *Running) Sites() []*RunningSite { return r.order }

// WaitConnected waits until every leafnode site is connected to its parent,
// or ctx ends.
func (r *Running) WaitConnected(ctx context.Context) error {
	for {
		missing := ""
		for _, rs := range r.order {
			if rs.Site.NATS.Role != Leafnode {
				continue
			}
			if !soliciting(rs.servers[0]) {
				missing = rs.Site.Name
				break
			}
		}
		if missing == "" {
			return nil
		}
		tm := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			tm.Stop()
			return fmt.Errorf("topology %q: site %q not connected to its parent: %w", r.Topology.Name, missing, ctx.Err())
		case <-tm.C:
		}
	}
}

// soliciting reports whether ns has an established outbound leafnode connection.
func soliciting(ns *server.Server) bool {
	lz, err := ns.Leafz(nil)
	if err != nil {
		return false
	}
	for _, l := range lz.Leafs {
		if l.IsSpoke {
			return true
		}
	}
	return false
}

// Stop shuts down every server and link, children first. It is safe to call
// more than once.
func (r *Running) Stop() {
	r.stop.Do(func() {
		for i := len(r.order) - 1; i >= 0; i-- {
			rs := r.order[i]
			for _, ns := range rs.servers {
				ns.Shutdown()
			}
			for _, ns := range rs.servers {
				ns.WaitForShutdown()
			}
			if rs.Link != nil {
				rs.Link.Close()
			}
		}
	})
}

// slogAdapter passes nats-server's log lines to slog.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Noticef(format string, v ...any) { a.l.Info(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Warnf(format string, v ...any)   { a.l.Warn(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Fatalf(format string, v ...any)  { a.l.Error(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Errorf(format string, v ...any)  { a.l.Error(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Debugf(format string, v ...any)  { a.l.Debug(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Tracef(format string, v ...any)  { a.l.Debug(fmt.Sprintf(format, v...)) }
