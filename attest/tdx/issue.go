package tdx

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"

	"github.com/sealflow/sealflow/attest"
)

// TSMReportPath is where Linux (6.7 and later) exposes the configfs-tsm report
// interface inside a confidential VM.
const TSMReportPath = "/sys/kernel/config/tsm/report"

// Issuer issues TDX quotes through Linux configfs-tsm: it writes the report
// data to inblob and reads the quote (outblob), which the kernel obtains from
// the quoting enclave through the host's QGS. It implements attest.Issuer.
type Issuer struct {
	client configfsi.Client
}

// IssuerOption configures an Issuer.
type IssuerOption func(*Issuer)

// WithTSMClient replaces the configfs-tsm client (tests use
// github.com/google/go-configfs-tsm/configfs/faketsm).
func WithTSMClient(c configfsi.Client) IssuerOption { return func(i *Issuer) { i.client = c } }

// NewIssuer opens configfs-tsm. Outside a TDX guest it fails with an error that
// says what is missing.
func NewIssuer(opts ...IssuerOption) (*Issuer, error) {
	i := &Issuer{}
	for _, o := range opts {
		o(i)
	}
	if i.client == nil {
		c, err := linuxtsm.MakeClient()
		if err != nil {
			return nil, fmt.Errorf("tdx: no configfs-tsm report interface at %s (%v): TDX quotes can only be issued inside a TDX guest running Linux 6.7 or later with configfs mounted, the tdx-guest driver loaded and a quote generation service on the host", TSMReportPath, err)
		}
		i.client = c
	}
	return i, nil
}

var _ attest.Issuer = (*Issuer)(nil)

// Issue asks for a quote that binds reportData and returns it as TDX evidence.
func (i *Issuer) Issue(ctx context.Context, reportData [64]byte) (*attest.Evidence, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	resp, err := report.Get(i.client, &report.Request{InBlob: reportData[:]})
	if err != nil {
		return nil, fmt.Errorf("tdx: configfs-tsm report: %w", err)
	}
	if p := strings.TrimSpace(resp.Provider); p != "tdx_guest" {
		return nil, fmt.Errorf("tdx: the configfs-tsm provider is %q, not \"tdx_guest\": this VM is not a TDX guest", p)
	}
	ev, err := NewEvidence(resp.OutBlob)
	if err != nil {
		return nil, fmt.Errorf("tdx: the quote from configfs-tsm: %w", err)
	}
	return ev, nil
}
