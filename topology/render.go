package topology

import (
	"errors"
	"fmt"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
)

// The ports a multi-machine deployment listens on (nats-server's defaults).
const (
	ClientPort  = 4222 // clients: workers, devices, the orchestrator
	ClusterPort = 6222 // routes between the hub's servers
	GatewayPort = 7222 // gateways between the hub and other cloud regions
	LeafPort    = 7422 // leafnode connections from child sites
)

// Deployment places a topology on machines, for [Topology.NATSConfigs].
type Deployment struct {
	// Hosts gives, per site that runs servers, the host names (or
	// addresses) of its servers: as many as the hub's servers, one for a
	// leafnode site. Client sites run no server and need none.
	Hosts map[string][]string
	// Gateways lists the other clusters of the hub's supercluster (cloud
	// regions outside this topology, each also in JetStream domain "hub")
	// by cluster name, with their gateway URLs such as
	// "nats://us-1.example:7222".
	Gateways map[string][]string
	// StoreDir is the directory under which each server keeps JetStream
	// data, in a subdirectory named after the server; /var/lib/nats if
	// empty.
	StoreDir string
	// TLS, when set, makes every route, gateway and leafnode connection use
	// mutual TLS with these files, which must exist at the same paths on
	// every machine (each machine's own certificate and key). A child site
	// then needs no secret but its certificate.
	TLS *TLSFiles
}

// TLSFiles are paths to PEM files.
type TLSFiles struct {
	// CertFile and KeyFile are this machine's certificate and key.
	CertFile, KeyFile string
	// CAFile holds the certificates that sign every machine's certificate.
	CAFile string
}

// NATSConfigs renders one nats-server configuration file per server of t on
// the machines d names, keyed by server name (the site's name, or
// "<hub>-<i>" for the hub's servers). The hub's servers form a cluster with
// routes to each other, gateways to d.Gateways, and a leafnode listener;
// every leafnode site gets JetStream in its own domain and a leafnode remote
// to its parent's servers, and a leafnode listener if it has leafnode
// children. Connections between sites are all opened by the child, so an
// edge site needs only outbound access to its parent's port 7422.
func (t *Topology) NATSConfigs(d Deployment) (map[string]string, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	store := d.StoreDir
	if store == "" {
		store = "/var/lib/nats"
	}
	hosts := func(s *Site) ([]string, error) {
		h := d.Hosts[s.Name]
		want := 1
		if s.NATS.Role == Hub {
			want = max(s.NATS.Servers, 1)
		}
		if len(h) != want {
			return nil, fmt.Errorf("topology %q: deployment gives site %q %d hosts, want %d", t.Name, s.Name, len(h), want)
		}
		for _, x := range h {
			if x == "" || strings.ContainsAny(x, " \t\n\"'/,") {
				return nil, fmt.Errorf("topology %q: site %q: host %q is not a host name or address", t.Name, s.Name, x)
			}
		}
		return h, nil
	}
	for name := range d.Hosts {
		s := t.Site(name)
		if s == nil {
			return nil, fmt.Errorf("topology %q: deployment names hosts for %q, which is not a site", t.Name, name)
		}
		if s.NATS.Role == Client {
			return nil, fmt.Errorf("topology %q: deployment names hosts for client site %q, which runs no server", t.Name, name)
		}
	}
	hasLeafChildren := map[string]bool{}
	for _, s := range t.Sites {
		if s.NATS.Role == Leafnode {
			hasLeafChildren[s.Parent] = true
		}
	}
	out := map[string]string{}
	for _, s := range t.Order() {
		switch s.NATS.Role {
		case Client:
			continue
		case Hub:
			hs, err := hosts(s)
			if err != nil {
				return nil, err
			}
			var routes []string
			for _, h := range hs {
				routes = append(routes, "nats-route://"+net.JoinHostPort(h, strconv.Itoa(ClusterPort)))
			}
			for i := range hs {
				name := s.Name
				if len(hs) > 1 {
					name += "-" + strconv.Itoa(i)
				}
				var b strings.Builder
				header(&b, t, s, hs[i])
				serverBlock(&b, name, HubDomain, path.Join(store, name))
				if len(hs) > 1 {
					fmt.Fprintf(&b, "cluster {\n  name: %q\n  listen: \"0.0.0.0:%d\"\n  routes: [%s]\n", s.Name, ClusterPort, quoteList(routes))
					tlsBlock(&b, d.TLS, "  ", true)
					b.WriteString("}\n\n")
				}
				if len(d.Gateways) > 0 {
					fmt.Fprintf(&b, "gateway {\n  name: %q\n  listen: \"0.0.0.0:%d\"\n  gateways: [\n", s.Name, GatewayPort)
					names := make([]string, 0, len(d.Gateways))
					for g := range d.Gateways {
						names = append(names, g)
					}
					slices.Sort(names)
					for _, g := range names {
						if g == s.Name || len(d.Gateways[g]) == 0 {
							return nil, fmt.Errorf("topology %q: gateway %q needs URLs and a name other than the hub's", t.Name, g)
						}
						fmt.Fprintf(&b, "    {name: %q, urls: [%s]}\n", g, quoteList(d.Gateways[g]))
					}
					b.WriteString("  ]\n")
					tlsBlock(&b, d.TLS, "  ", true)
					b.WriteString("}\n\n")
				}
				leafnodes(&b, d.TLS, true, nil)
				out[name] = b.String()
			}
		case Leafnode:
			hs, err := hosts(s)
			if err != nil {
				return nil, err
			}
			p := t.Site(s.Parent)
			phs, err := hosts(p)
			if err != nil {
				return nil, err
			}
			var remotes []string
			for _, h := range phs {
				remotes = append(remotes, "nats-leaf://"+net.JoinHostPort(h, strconv.Itoa(LeafPort)))
			}
			var b strings.Builder
			header(&b, t, s, hs[0])
			serverBlock(&b, s.Name, s.Domain(), path.Join(store, s.Name))
			leafnodes(&b, d.TLS, hasLeafChildren[s.Name], remotes)
			out[s.Name] = b.String()
		}
	}
	if len(out) == 0 {
		return nil, errors.New("topology: no servers to configure")
	}
	return out, nil
}

func header(b *strings.Builder, t *Topology, s *Site, host string) {
	fmt.Fprintf(b, "# nats-server configuration for site %s (%s tier, region %s) of topology %s,\n", s.Name, s.Tier, s.Region, t.Name)
	fmt.Fprintf(b, "# on host %s. Generated by sealflow from the topology file.\n\n", host)
}

func serverBlock(b *strings.Builder, name, domain, store string) {
	fmt.Fprintf(b, "server_name: %q\nlisten: \"0.0.0.0:%d\"\nmax_payload: 8MB\n\n", name, ClientPort)
	// sync_interval: always flushes every write before acknowledging it
	// (data of record must survive a power loss once acknowledged).
	fmt.Fprintf(b, "jetstream {\n  store_dir: %q\n  domain: %q\n  sync_interval: always\n}\n\n", store, domain)
}

func leafnodes(b *strings.Builder, tf *TLSFiles, listen bool, remotes []string) {
	if !listen && len(remotes) == 0 {
		return
	}
	b.WriteString("leafnodes {\n")
	if listen {
		fmt.Fprintf(b, "  listen: \"0.0.0.0:%d\"\n", LeafPort)
		// Children reach their parent only at the addresses in their own
		// configuration.
		b.WriteString("  no_advertise: true\n")
		tlsBlock(b, tf, "  ", true)
	}
	if len(remotes) > 0 {
		fmt.Fprintf(b, "  remotes: [\n    {\n      urls: [%s]\n      compression: s2_auto\n", quoteList(remotes))
		tlsBlock(b, tf, "      ", false)
		b.WriteString("    }\n  ]\n")
	}
	b.WriteString("}\n\n")
}

func tlsBlock(b *strings.Builder, tf *TLSFiles, indent string, verify bool) {
	if tf == nil {
		return
	}
	fmt.Fprintf(b, "%stls {\n%s  cert_file: %q\n%s  key_file: %q\n%s  ca_file: %q\n", indent, indent, tf.CertFile, indent, tf.KeyFile, indent, tf.CAFile)
	if verify {
		fmt.Fprintf(b, "%s  verify: true\n", indent)
	}
	fmt.Fprintf(b, "%s}\n", indent)
}

func quoteList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = strconv.Quote(x)
	}
	return strings.Join(q, ", ")
}
