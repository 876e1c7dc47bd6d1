// Package topology describes where sealflow runs: sites on tiers (device, edge,
// regional, cloud), each with its region, parent site, NATS role, workers and
// the WAN link to its parent, and starts such a topology on one machine.
//
// A topology file is YAML:
//
//	name: smart-grid
//	sites:
//	  - name: cloud
//	    tier: cloud
//	    region: eu-central
//	    nats: {role: hub, servers: 3}
//	    workers: 2
//	  - name: edge-north
//	    tier: edge
//	    region: eu-north
//	    parent: cloud
//	    nats: {role: leafnode}          # JetStream domain "edge-north"
//	    workers: 1
//	    link: {latencyMs: 20, bandwidth: 100Mbit, loss: 0.001}
//
// Exactly one site is the hub: a cloud site whose NATS servers form a cluster
// with JetStream domain "hub". Every other site names a parent on a strictly
// higher tier (device < edge < regional < cloud) and is either a leafnode (its
// own nats-server and JetStream domain, connected to its parent's server) or a
// client (no server of its own: its workers and devices connect to the
// parent's server, as constrained devices do). The link describes the WAN path
// between a site and its parent.
//
// [Parse] decodes strictly: unknown fields, duplicate keys, a missing parent, a
// cycle, a tier-order violation or a bad link are errors naming the site.
// [Start] runs a topology on loopback with every site-to-parent connection
// crossing an emulated [wan.Link]; [Topology.NATSConfigs] renders the
// nats-server configuration files that run the same topology on many machines
// (docs/deploy.md). [EnsureCrossSite] builds the durable exchange between a
// site and the hub: a bounded buffer stream in the site's JetStream domain,
// sourced by a stream in the hub's, so data written during a WAN outage is
// kept at the site (writers are slowed when it is full, never dropped) and
// copied in order, once, when the link returns.
package topology

import (
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sealflow/sealflow/wan"
	"sigs.k8s.io/yaml"
)

// Tier is a site's place in the device-to-cloud hierarchy.
type Tier string

// The tiers, from the edge of the network to its centre.
const (
	Device   Tier = "device"
	Edge     Tier = "edge"
	Regional Tier = "regional"
	Cloud    Tier = "cloud"
)

// Rank orders tiers: device 1, edge 2, regional 3, cloud 4, anything else 0.
func (t Tier) Rank() int {
	switch t {
	case Device:
		return 1
	case Edge:
		return 2
	case Regional:
		return 3
	case Cloud:
		return 4
	}
	return 0
}

// Role is how a site takes part in NATS.
type Role string

// The NATS roles a site can have.
const (
	// Hub sites run the central NATS cluster (JetStream domain "hub").
	Hub Role = "hub"
	// Leafnode sites run their own nats-server with their own JetStream
	// domain, connected to their parent's server as a leafnode.
	Leafnode Role = "leafnode"
	// Client sites run no server; their processes connect to the parent's.
	Client Role = "client"
)

// HubDomain is the JetStream domain of the hub cluster.
const HubDomain = "hub"

// Topology is a set of sites forming a tree rooted at the hub.
type Topology struct {
	// Name identifies the topology in logs and metrics.
	Name string `json:"name"`
	// Sites lists every site; order does not matter.
	Sites []Site `json:"sites"`
}

// Site is one place where sealflow runs.
type Site struct {
	// Name is unique in the topology: lower-case letters, digits and '-',
	// starting with a letter or digit, at most 63 characters.
	Name string `json:"name"`
	// Tier is device, edge, regional or cloud.
	Tier Tier `json:"tier"`
	// Region is a free-form region name such as "eu-north"; required.
	Region string `json:"region"`
	// Parent names the site this one connects to; empty only for the hub.
	Parent string `json:"parent,omitempty"`
	// NATS says how the site takes part in NATS.
	NATS NATS `json:"nats"`
	// Workers is the number of sealflow workers started at the site.
	Workers int `json:"workers,omitempty"`
	// Link describes the WAN path to the parent; a transparent link if absent.
	Link *Link `json:"link,omitempty"`
}

// NATS is a site's NATS role.
type NATS struct {
	// Role is hub, leafnode or client.
	Role Role `json:"role"`
	// Servers is the size of the hub cluster, 1 or 3 (1 if zero); hub only.
	Servers int `json:"servers,omitempty"`
	// Domain is a leafnode's JetStream domain; the site name if empty.
	Domain string `json:"domain,omitempty"`
}

// Link describes a WAN path between a site and its parent.
type Link struct {
	// LatencyMs is the one-way latency in milliseconds, 0..10000.
	LatencyMs float64 `json:"latencyMs,omitempty"`
	// Bandwidth caps each direction: a number with unit bit, kbit, Mbit,
	// Gbit (bits per second) or B, KB, MB, GB (bytes per second, decimal
	// multiples); empty or "0" is unlimited.
	Bandwidth string `json:"bandwidth,omitempty"`
	// Loss is the probability in [0, 1) that a segment needs retransmission.
	Loss float64 `json:"loss,omitempty"`
}

// WAN converts l to an emulated link configuration; a nil Link is transparent.
func (l *Link) WAN() (wan.Config, error) {
	if l == nil {
		return wan.Config{}, nil
	}
	if math.IsNaN(l.LatencyMs) || l.LatencyMs < 0 || l.LatencyMs > 10000 {
		return wan.Config{}, fmt.Errorf("latencyMs %v is outside 0..10000", l.LatencyMs)
	}
	bw, err := ParseBandwidth(l.Bandwidth)
	if err != nil {
		return wan.Config{}, err
	}
	c := wan.Config{
		Latency:   time.Duration(l.LatencyMs * float64(time.Millisecond)),
		Bandwidth: bw,
		Loss:      l.Loss,
	}
	if err := c.Validate(); err != nil {
		return wan.Config{}, err
	}
	return c, nil
}

var bandwidthUnits = []struct {
	suffix string
	bytes  float64 // bytes per second per unit
}{
	// Longest suffixes first so "Mbit" is not read as "bit".
	{"kbit", 1e3 / 8}, {"Mbit", 1e6 / 8}, {"Gbit", 1e9 / 8}, {"bit", 1.0 / 8},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1},
}

// ParseBandwidth parses a bandwidth such as "100Mbit", "2.5Gbit" or "10MB"
// into bytes per second. Empty or "0" means unlimited and returns 0.
func ParseBandwidth(s string) (int64, error) {
	if s == "" || s == "0" {
		return 0, nil
	}
	for _, u := range bandwidthUnits {
		num, ok := strings.CutSuffix(s, u.suffix)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 {
			return 0, fmt.Errorf("bandwidth %q: %q is not a positive number", s, num)
		}
		b := v * u.bytes
		if b < 1 || b > 1e13 {
			return 0, fmt.Errorf("bandwidth %q is outside 8bit..10TB per second", s)
		}
		return int64(b), nil
	}
	return 0, fmt.Errorf("bandwidth %q has no unit; use bit, kbit, Mbit, Gbit, B, KB, MB or GB (per second)", s)
}

// Parse decodes and validates a topology file. Unknown fields and duplicate
// keys are errors.
func Parse(data []byte) (*Topology, error) {
	var t Topology
	if err := yaml.UnmarshalStrict(data, &t); err != nil {
		return nil, fmt.Errorf("topology: decoding: %w", err)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return &t, nil
}

// Load reads and parses the topology file at path.
func Load(path string) (*Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("topology: %w", err)
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// MaxSites bounds the number of sites in one topology file.
const MaxSites = 1024

// Validate checks the rules in the package documentation and reports the
// first violation, naming the site.
func (t *Topology) Validate() error {
	if t.Name == "" {
		return errors.New("topology: name is empty")
	}
	if len(t.Sites) == 0 {
		return fmt.Errorf("topology %q: no sites", t.Name)
	}
	if len(t.Sites) > MaxSites {
		return fmt.Errorf("topology %q: %d sites, at most %d allowed", t.Name, len(t.Sites), MaxSites)
	}
	byName := make(map[string]*Site, len(t.Sites))
	domains := map[string]string{HubDomain: ""}
	hub := ""
	for i := range t.Sites {
		s := &t.Sites[i]
		if !nameRE.MatchString(s.Name) {
			return fmt.Errorf("topology %q: site %d name %q: want lower-case letters, digits and '-', at most 63", t.Name, i, s.Name)
		}
		if _, dup := byName[s.Name]; dup {
			return fmt.Errorf("topology %q: site %q is defined twice", t.Name, s.Name)
		}
		byName[s.Name] = s
		if err := s.validateLocal(); err != nil {
			return fmt.Errorf("topology %q: site %q: %w", t.Name, s.Name, err)
		}
		switch s.NATS.Role {
		case Hub:
			if hub != "" {
				return fmt.Errorf("topology %q: sites %q and %q are both hubs; one hub cluster per topology", t.Name, hub, s.Name)
			}
			hub = s.Name
		case Leafnode:
			d := s.Domain()
			if other, dup := domains[d]; dup {
				if other == "" {
					return fmt.Errorf("topology %q: site %q: JetStream domain %q is reserved for the hub", t.Name, s.Name, d)
				}
				return fmt.Errorf("topology %q: sites %q and %q share JetStream domain %q", t.Name, other, s.Name, d)
			}
			domains[d] = s.Name
		}
	}
	if hub == "" {
		return fmt.Errorf("topology %q: no site has nats role hub; the cloud site running the central cluster must", t.Name)
	}
	for i := range t.Sites {
		s := &t.Sites[i]
		if s.Parent == "" {
			continue
		}
		if _, ok := byName[s.Parent]; !ok {
			return fmt.Errorf("topology %q: site %q: parent %q is not a site", t.Name, s.Name, s.Parent)
		}
	}
	// Every chain of parents must reach the hub; a chain that revisits a site
	// is a cycle.
	for i := range t.Sites {
		seen := map[string]bool{}
		for s := &t.Sites[i]; s.Parent != ""; s = byName[s.Parent] {
			if seen[s.Name] {
				return fmt.Errorf("topology %q: site %q: parents form a cycle through %q", t.Name, t.Sites[i].Name, s.Name)
			}
			seen[s.Name] = true
		}
	}
	for i := range t.Sites {
		s := &t.Sites[i]
		if s.Parent == "" {
			continue
		}
		p := byName[s.Parent]
		if p.Tier.Rank() <= s.Tier.Rank() {
			return fmt.Errorf("topology %q: site %q (%s) has parent %q (%s); a parent must be on a higher tier (device < edge < regional < cloud)", t.Name, s.Name, s.Tier, p.Name, p.Tier)
		}
		if p.NATS.Role == Client {
			return fmt.Errorf("topology %q: site %q has parent %q, which runs no NATS server (role client)", t.Name, s.Name, p.Name)
		}
	}
	return nil
}

// validateLocal checks what a site says about itself.
func (s *Site) validateLocal() error {
	if s.Tier.Rank() == 0 {
		return fmt.Errorf("tier %q: want device, edge, regional or cloud", s.Tier)
	}
	if s.Region == "" {
		return errors.New("region is empty")
	}
	if s.Workers < 0 || s.Workers > 1024 {
		return fmt.Errorf("workers %d is outside 0..1024", s.Workers)
	}
	switch s.NATS.Role {
	case Hub:
		if s.Tier != Cloud {
			return fmt.Errorf("nats role hub on tier %s; the hub is a cloud site", s.Tier)
		}
		if s.Parent != "" {
			return fmt.Errorf("the hub has parent %q; the hub is the root", s.Parent)
		}
		if s.Link != nil {
			return errors.New("the hub has a link; links lead from a site to its parent")
		}
		if n := s.NATS.Servers; n != 0 && n != 1 && n != 3 {
			return fmt.Errorf("nats servers %d: the hub cluster has 1 or 3 servers", n)
		}
		if s.NATS.Domain != "" && s.NATS.Domain != HubDomain {
			return fmt.Errorf("nats domain %q: the hub's JetStream domain is always %q", s.NATS.Domain, HubDomain)
		}
	case Leafnode, Client:
		if s.Parent == "" {
			return fmt.Errorf("nats role %s without a parent; only the hub has none", s.NATS.Role)
		}
		if s.NATS.Servers != 0 {
			return fmt.Errorf("nats servers %d on a %s site; only the hub is a cluster", s.NATS.Servers, s.NATS.Role)
		}
		if s.NATS.Role == Client && s.NATS.Domain != "" {
			return fmt.Errorf("nats domain %q on a client site, which runs no JetStream", s.NATS.Domain)
		}
		if s.NATS.Role == Leafnode && !nameRE.MatchString(s.Domain()) {
			return fmt.Errorf("nats domain %q: want lower-case letters, digits and '-'", s.Domain())
		}
	default:
		return fmt.Errorf("nats role %q: want hub, leafnode or client", s.NATS.Role)
	}
	if _, err := s.Link.WAN(); err != nil {
		return fmt.Errorf("link to %q: %w", s.Parent, err)
	}
	return nil
}

// Domain is the JetStream domain the site runs: "hub" for the hub, the
// leafnode's domain (its name unless set), and "" for a client site, which
// runs none ([Topology.DomainOf] gives the domain serving it).
func (s *Site) Domain() string {
	switch s.NATS.Role {
	case Hub:
		return HubDomain
	case Leafnode:
		if s.NATS.Domain != "" {
			return s.NATS.Domain
		}
		return s.Name
	}
	return ""
}

// Site returns the named site, or nil.
func (t *Topology) Site(name string) *Site {
	for i := range t.Sites {
		if t.Sites[i].Name == name {
			return &t.Sites[i]
		}
	}
	return nil
}

// Hub returns the hub site of a valid topology.
func (t *Topology) Hub() *Site {
	for i := range t.Sites {
		if t.Sites[i].NATS.Role == Hub {
			return &t.Sites[i]
		}
	}
	return nil
}

// DomainOf is the JetStream domain serving the named site: its own, or for
// a client site its parent's. It is "" for an unknown site.
func (t *Topology) DomainOf(name string) string {
	s := t.Site(name)
	for s != nil && s.NATS.Role == Client {
		s = t.Site(s.Parent)
	}
	if s == nil {
		return ""
	}
	return s.Domain()
}

// PathToHub lists the named site and its ancestors up to the hub, in order.
func (t *Topology) PathToHub(name string) []string {
	var path []string
	for s := t.Site(name); s != nil && len(path) <= len(t.Sites); s = t.Site(s.Parent) {
		path = append(path, s.Name)
		if s.Parent == "" {
			break
		}
	}
	return path
}

// Order returns the sites parents first (the hub first), ties broken by the
// order in the file. t must be valid.
func (t *Topology) Order() []*Site {
	byName := make(map[string]*Site, len(t.Sites))
	for i := range t.Sites {
		byName[t.Sites[i].Name] = &t.Sites[i]
	}
	depth := make(map[string]int, len(t.Sites))
	var depthOf func(s *Site) int
	depthOf = func(s *Site) int {
		if d, ok := depth[s.Name]; ok {
			return d
		}
		d := 0
		if p := byName[s.Parent]; p != nil && len(depth) <= len(t.Sites) {
			depth[s.Name] = len(t.Sites) // guards against a cycle in an invalid t
			d = depthOf(p) + 1
		}
		depth[s.Name] = d
		return d
	}
	out := make([]*Site, 0, len(t.Sites))
	for i := range t.Sites {
		out = append(out, &t.Sites[i])
	}
	slices.SortStableFunc(out, func(a, b *Site) int { return depthOf(a) - depthOf(b) })
	return out
}
