package policy

import (
	"encoding/hex"
	"math"

	"github.com/sealflow/sealflow/attest"
)

// Service is the `service` variable of every stage: the service that asks to
// read the stream.
type Service struct {
	// ID is the service's registered id.
	ID string `json:"id" cel:"id"`
	// Provider is the id of the service provider that owns it.
	Provider string `json:"provider" cel:"provider"`
	// Version is the service's release number.
	Version int64 `json:"version" cel:"version"`
	// SecurityVersion increases whenever a release fixes a security problem, so
	// that owners can require "at least".
	SecurityVersion int64 `json:"security_version" cel:"security_version"`
	// Digest is the hex digest of the service's JobSpec.
	Digest string `json:"digest" cel:"digest"`
	// CodeDigests are the hex digests of its code modules (WebAssembly UDFs).
	CodeDigests []string `json:"code_digests" cel:"code_digests"`
}

// Node is the `node` variable of the placement stage: an admitted node, its
// attested claims and its location claims.
type Node struct {
	// ID is the node's id.
	ID string `json:"id" cel:"id"`
	// TEE is "sim", "snp" or "tdx".
	TEE string `json:"tee" cel:"tee"`
	// Measurement is the hex launch measurement.
	Measurement string `json:"measurement" cel:"measurement"`
	// SVN is the single ordered TCB security version (see attest.Claims.SVN).
	SVN int64 `json:"svn" cel:"svn"`
	// TCB holds the TCB components by name (see attest.Claims.TCB).
	TCB map[string]int64 `json:"tcb" cel:"tcb"`
	// Debug is true when a host debugger can read the TEE's memory.
	Debug bool `json:"debug" cel:"debug"`
	// Tier is the node's tier: device, edge, regional or cloud. Claimed by the
	// infrastructure provider, not attested.
	Tier string `json:"tier" cel:"tier"`
	// Region is the node's region, claimed by the infrastructure provider.
	Region string `json:"region" cel:"region"`
	// Site is the node's site, claimed by the infrastructure provider.
	Site string `json:"site" cel:"site"`
	// PlatformID is the hex id of the physical platform (see
	// attest.Claims.PlatformID).
	PlatformID string `json:"platform_id" cel:"platform_id"`
}

// Recipient is the `recipient` variable of the recipient stage: a party that
// asks for the output key of a stream derived from this one.
type Recipient struct {
	// ID is the recipient party's id.
	ID string `json:"id" cel:"id"`
	// Name is its human-readable name.
	Name string `json:"name" cel:"name"`
	// Role is its role, for example "provider", "owner" or "operator".
	Role string `json:"role" cel:"role"`
}

// Input holds the variables a decision is made on. Placement uses Service and
// Node; recipient uses Service and Recipient.
type Input struct {
	// Service is the service the decision is about (every stage).
	Service Service `json:"service"`
	// Node is the node the service would run on (placement).
	Node Node `json:"node"`
	// Recipient is the party that would receive outputs (recipient).
	Recipient Recipient `json:"recipient"`
}

// Location is what the infrastructure provider claims about where a node is.
// TEEs do not attest location.
type Location struct {
	// Tier is device, edge, regional or cloud.
	Tier string `json:"tier"`
	// Region and Site name where the node is, in the operator's terms.
	Region string `json:"region"`
	Site   string `json:"site"`
}

// NodeFromClaims builds the policy view of a node from its verified
// attestation claims and its location claims, so that one rule language covers
// the sim, snp and tdx backends: the same TEE names, hex measurements and
// platform ids, and the single ordered SVN. Values above the largest CEL int
// saturate at math.MaxInt64.
func NodeFromClaims(id string, c *attest.Claims, loc Location) Node {
	n := Node{ID: id, Tier: loc.Tier, Region: loc.Region, Site: loc.Site, TCB: map[string]int64{}}
	if c == nil {
		return n
	}
	n.TEE = string(c.TEE)
	n.Measurement = hex.EncodeToString(c.Measurement)
	n.SVN = clampInt(c.SVN)
	for k, v := range c.TCB {
		n.TCB[k] = clampInt(v)
	}
	n.Debug = c.Debug
	n.PlatformID = hex.EncodeToString(c.PlatformID)
	return n
}

func clampInt(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}
