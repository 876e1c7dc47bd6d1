package topology

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

func smartGridDeployment() Deployment {
	return Deployment{
		Hosts: map[string][]string{
			"cloud":        {"hub-1.example", "hub-2.example", "hub-3.example"},
			"dso-north":    {"10.1.0.5"},
			"substation-a": {"sub-a.example"},
			"substation-b": {"sub-b.example"},
		},
		Gateways: map[string][]string{"cloud-west": {"nats://west-1.example:7222", "nats://west-2.example:7222"}},
	}
}

// parseConf checks a rendered file with nats-server's own parser.
func parseConf(t *testing.T, name, conf string) *server.Options {
	t.Helper()
	o := &server.Options{}
	if err := o.ProcessConfigString(conf); err != nil {
		t.Fatalf("nats-server refuses the configuration of %s: %v\n%s", name, err, conf)
	}
	return o
}

func TestNATSConfigs(t *testing.T) {
	topo, err := Load("../deploy/topologies/smart-grid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	confs, err := topo.NATSConfigs(smartGridDeployment())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"cloud-0", "cloud-1", "cloud-2", "dso-north", "substation-a", "substation-b"}
	if len(confs) != len(want) {
		t.Errorf("rendered %d configurations, want %v", len(confs), want)
	}
	for _, name := range want {
		conf, ok := confs[name]
		if !ok {
			t.Errorf("no configuration for server %s", name)
			continue
		}
		o := parseConf(t, name, conf)
		if o.ServerName != name || !o.JetStream || !o.SyncAlways {
			t.Errorf("%s: server_name %q, jetstream %v, sync always %v", name, o.ServerName, o.JetStream, o.SyncAlways)
		}
		switch {
		case strings.HasPrefix(name, "cloud-"):
			if o.JetStreamDomain != HubDomain || len(o.Routes) != 3 || o.Cluster.Name != "cloud" {
				t.Errorf("%s: domain %q, %d routes, cluster %q; want hub, 3, cloud", name, o.JetStreamDomain, len(o.Routes), o.Cluster.Name)
			}
			if o.Gateway.Name != "cloud" || len(o.Gateway.Gateways) != 1 || len(o.Gateway.Gateways[0].URLs) != 2 {
				t.Errorf("%s: gateway %+v, want cloud with one remote of 2 URLs", name, o.Gateway)
			}
			if o.LeafNode.Port != LeafPort || len(o.LeafNode.Remotes) != 0 {
				t.Errorf("%s: leafnode port %d with %d remotes, want %d and none", name, o.LeafNode.Port, len(o.LeafNode.Remotes), LeafPort)
			}
		case name == "dso-north":
			if o.JetStreamDomain != "dso-north" || len(o.LeafNode.Remotes) != 1 || len(o.LeafNode.Remotes[0].URLs) != 3 {
				t.Fatalf("dso-north: domain %q, remotes %+v; want its own domain and one remote to the 3 hub servers", o.JetStreamDomain, o.LeafNode.Remotes)
			}
			if u := o.LeafNode.Remotes[0].URLs[1]; u.Host != "hub-2.example:7422" {
				t.Errorf("dso-north remote URL %v, want hub-2.example:7422", u)
			}
			if o.LeafNode.Port != LeafPort {
				t.Errorf("dso-north has edge children but leafnode port %d", o.LeafNode.Port)
			}
		default: // substations
			if o.JetStreamDomain != name || len(o.LeafNode.Remotes) != 1 || o.LeafNode.Remotes[0].URLs[0].Host != "10.1.0.5:7422" {
				t.Errorf("%s: domain %q, remotes %+v; want own domain and a remote to dso-north", name, o.JetStreamDomain, o.LeafNode.Remotes)
			}
			if o.LeafNode.Port != 0 {
				t.Errorf("%s has no leafnode children yet listens on leafnode port %d", name, o.LeafNode.Port)
			}
		}
	}
}

func TestNATSConfigsTLS(t *testing.T) {
	topo, err := Load("../deploy/topologies/smart-grid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	d := smartGridDeployment()
	d.TLS = writeCert(t)
	confs, err := topo.NATSConfigs(d)
	if err != nil {
		t.Fatal(err)
	}
	hub := parseConf(t, "cloud-0", confs["cloud-0"])
	if hub.LeafNode.TLSConfig == nil || hub.LeafNode.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert || hub.Cluster.TLSConfig == nil || hub.Gateway.TLSConfig == nil {
		t.Errorf("hub: leafnode, cluster and gateway connections must all use verified TLS")
	}
	edge := parseConf(t, "substation-a", confs["substation-a"])
	if edge.LeafNode.Remotes[0].TLSConfig == nil {
		t.Errorf("substation-a: leafnode remote without TLS")
	}
}

func TestNATSConfigsRefuses(t *testing.T) {
	topo, err := Load("../deploy/topologies/smart-grid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*Deployment){
		"hub short of hosts":  func(d *Deployment) { d.Hosts["cloud"] = d.Hosts["cloud"][:2] },
		"site without host":   func(d *Deployment) { delete(d.Hosts, "substation-b") },
		"unknown site":        func(d *Deployment) { d.Hosts["nowhere"] = []string{"x"} },
		"client site host":    func(d *Deployment) { d.Hosts["households-a"] = []string{"x"} },
		"bad host":            func(d *Deployment) { d.Hosts["dso-north"] = []string{"a b"} },
		"gateway named as us": func(d *Deployment) { d.Gateways["cloud"] = []string{"nats://x:7222"} },
	} {
		d := smartGridDeployment()
		mutate(&d)
		if _, err := topo.NATSConfigs(d); err == nil {
			t.Errorf("%s: NATSConfigs accepted the deployment", name)
		}
	}
}

// writeCert writes a self-signed certificate, its key and itself as CA.
func writeCert(t *testing.T) *TLSFiles {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sealflow test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := &TLSFiles{CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem"), CAFile: filepath.Join(dir, "cert.pem")}
	if err := os.WriteFile(f.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
