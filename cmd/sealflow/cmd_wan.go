package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sealflow/sealflow/topology"
	"github.com/sealflow/sealflow/wan"
)

func init() {
	register("infra wan", "show the emulated WAN links of `sealflow up --topology`, or start (--down) or end (--up) a site's outage", runInfraWAN)
}

// WANLinkView is the state of one site's emulated uplink, as the WAN control
// of `sealflow up --topology` serves it.
type WANLinkView struct {
	Site      string    `json:"site"`
	Parent    string    `json:"parent"`
	Down      bool      `json:"down"`
	LatencyMs float64   `json:"latency_ms"`
	Bandwidth int64     `json:"bandwidth_bytes_per_s"`
	Loss      float64   `json:"loss"`
	Stats     wan.Stats `json:"stats"`
}

// serveWANControl serves the WAN control of a running topology on a free
// loopback port until ctx ends and returns its base URL, which holds a random
// path token (endpoints.json, mode 0600, is where clients find it):
//
//	GET  BASE/links              the links, one WANLinkView per site with an uplink
//	POST BASE/links/SITE?down=1  start an outage of SITE's uplink (down=0 ends it)
func serveWANControl(ctx context.Context, r *topology.Running) (string, error) {
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return "", err
	}
	prefix := "/" + hex.EncodeToString(tok)
	view := func(rs *topology.RunningSite) WANLinkView {
		c := rs.Link.Config()
		return WANLinkView{Site: rs.Site.Name, Parent: rs.Site.Parent, Down: rs.Link.Down(), LatencyMs: float64(c.Latency) / float64(time.Millisecond),
			Bandwidth: c.Bandwidth, Loss: c.Loss, Stats: rs.Link.Stats()}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+prefix+"/links", func(w http.ResponseWriter, _ *http.Request) {
		out := []WANLinkView{}
		for _, rs := range r.Sites() {
			if rs.Link != nil {
				out = append(out, view(rs))
			}
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("POST "+prefix+"/links/{site}", func(w http.ResponseWriter, req *http.Request) {
		rs := r.Site(req.PathValue("site"))
		if rs == nil || rs.Link == nil {
			http.Error(w, fmt.Sprintf("no site %q with a WAN link", req.PathValue("site")), http.StatusNotFound)
			return
		}
		switch req.URL.Query().Get("down") {
		case "1", "true":
			rs.Link.SetDown(true)
		case "0", "false":
			rs.Link.SetDown(false)
		default:
			http.Error(w, "want ?down=1 or ?down=0", http.StatusBadRequest)
			return
		}
		slog.Info("wan link", "site", rs.Site.Name, "down", rs.Link.Down())
		writeJSON(w, view(rs))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("WAN control: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	return "http://" + ln.Addr().String() + prefix, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// runInfraWAN implements `sealflow infra wan [--dir DIR | --control URL]
// [--site S (--down | --up)] [--json]`.
func runInfraWAN(ctx context.Context, args []string) error {
	fs := newFlags("infra wan")
	dir := fs.String("dir", ".sealflow/up", "the directory of `sealflow up --topology` (its endpoints.json names the WAN control)")
	control := fs.String("control", "", "the WAN control URL (endpoints.json's wan_control); overrides --dir")
	site := fs.String("site", "", "the site whose uplink to change")
	down := fs.Bool("down", false, "start an outage of the site's uplink: every connection through it is reset and new ones refused")
	up := fs.Bool("up", false, "end the outage of the site's uplink")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *down && *up || (*down || *up) != (*site != "") {
		return fmt.Errorf("%w: give --site with exactly one of --down or --up, or neither to list the links", errUsage)
	}
	base := *control
	if base == "" {
		var ep Endpoints
		b, err := os.ReadFile(filepath.Join(absPath(*dir), "endpoints.json"))
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &ep); err != nil {
			return fmt.Errorf("%s: %w", filepath.Join(*dir, "endpoints.json"), err)
		}
		if ep.WANControl == "" {
			return errors.New("endpoints.json names no WAN control: was `sealflow up` started with --topology?")
		}
		base = ep.WANControl
	}
	base = strings.TrimSuffix(base, "/")
	client := &http.Client{Timeout: 10 * time.Second}
	var req *http.Request
	var err error
	if *site != "" {
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s/links/%s?down=%t", base, *site, *down), nil)
	} else {
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, base+"/links", nil)
	}
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("WAN control: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("WAN control: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var links []WANLinkView
	if *site != "" {
		var one WANLinkView
		err = json.Unmarshal(body, &one)
		links = append(links, one)
	} else {
		err = json.Unmarshal(body, &links)
	}
	if err != nil {
		return fmt.Errorf("WAN control: %w", err)
	}
	if *asJSON {
		b, _ := json.MarshalIndent(links, "", "  ")
		fmt.Printf("%s\n", b)
		return nil
	}
	slices.SortFunc(links, func(a, b WANLinkView) int { return strings.Compare(a.Site, b.Site) })
	fmt.Printf("%-16s %-16s %-5s %8s %12s %12s %12s %6s\n", "SITE", "PARENT", "DOWN", "LAT(ms)", "BW(B/s)", "UP(B)", "DOWN(B)", "RESETS")
	for _, l := range links {
		fmt.Printf("%-16s %-16s %-5v %8.1f %12d %12d %12d %6d\n", l.Site, l.Parent, l.Down, l.LatencyMs, l.Bandwidth, l.Stats.Up, l.Stats.Down, l.Stats.Reset)
	}
	return nil
}
