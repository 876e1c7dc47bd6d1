package main

import (
	"context"
	"fmt"
	"io"

	"github.com/sealflow/sealflow/orchestrator/api"
)

func init() {
	register("infra nodes", "list the admitted worker nodes with their attested claims and location", runInfraNodes)
}

// runInfraNodes implements `sealflow infra nodes`.
func runInfraNodes(ctx context.Context, args []string) error {
	fs := newFlags("infra nodes")
	pf := addPartyFlags(fs)
	if err := parseParty(fs, args, 0); err != nil {
		return err
	}
	c, err := pf.client()
	if err != nil {
		return err
	}
	var nodes []api.NodeView
	if err := c.Get(ctx, "/v1/nodes", &nodes); err != nil {
		return fmt.Errorf("listing nodes: %w", err)
	}
	if nodes == nil {
		nodes = []api.NodeView{}
	}
	return pf.emit(nodes, func(w io.Writer) {
		fmt.Fprintf(w, "%-14s %-16s %-5s %-9s %-12s %-10s %-5s %-6s %s\n", "ID", "NAME", "TEE", "TIER", "REGION", "SITE", "SLOTS", "DEBUG", "EXPIRES")
		for _, n := range nodes {
			fmt.Fprintf(w, "%-14s %-16s %-5s %-9s %-12s %-10s %-5d %-6v %s\n", n.ID.Short(), n.Name, n.TEE, n.Location.Tier, n.Location.Region, n.Location.Site, n.Slots, n.Debug, n.Expires)
		}
		fmt.Fprintf(w, "%d admitted nodes\n", len(nodes))
	})
}
