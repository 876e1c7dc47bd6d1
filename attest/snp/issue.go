package snp

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

// Issuer issues SNP evidence through Linux configfs-tsm: it writes the report
// data to inblob and reads the signed report (outblob) and the host-provided
// certificate table (auxblob). It implements attest.Issuer.
type Issuer struct {
	client configfsi.Client
	vmpl   *uint
}

// IssuerOption configures an Issuer.
type IssuerOption func(*Issuer)

// WithVMPL requests the report at the given VMPL (configfs-tsm privlevel).
func WithVMPL(vmpl uint) IssuerOption { return func(i *Issuer) { i.vmpl = &vmpl } }

// WithTSMClient replaces the configfs-tsm client (tests use
// github.com/google/go-configfs-tsm/configfs/faketsm).
func WithTSMClient(c configfsi.Client) IssuerOption { return func(i *Issuer) { i.client = c } }

// NewIssuer opens configfs-tsm. Outside an SEV-SNP guest it fails with an
// error that says what is missing.
func NewIssuer(opts ...IssuerOption) (*Issuer, error) {
	i := &Issuer{}
	for _, o := range opts {
		o(i)
	}
	if i.client == nil {
		c, err := linuxtsm.MakeClient()
		if err != nil {
			return nil, fmt.Errorf("snp: no configfs-tsm report interface at %s (%v): SEV-SNP evidence can only be issued inside an SEV-SNP guest running Linux 6.7 or later with configfs mounted and the sev-guest driver loaded", TSMReportPath, err)
		}
		i.client = c
	}
	return i, nil
}

var _ attest.Issuer = (*Issuer)(nil)

// Issue asks the AMD secure processor for a report that binds reportData and
// returns it with its certificate table as SNP evidence.
func (i *Issuer) Issue(ctx context.Context, reportData [64]byte) (*attest.Evidence, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	req := &report.Request{InBlob: reportData[:], GetAuxBlob: true}
	if i.vmpl != nil {
		req.Privilege = &report.Privilege{Level: *i.vmpl}
	}
	resp, err := report.Get(i.client, req)
	if err != nil {
		return nil, fmt.Errorf("snp: configfs-tsm report: %w", err)
	}
	if p := strings.TrimSpace(resp.Provider); p != "sev_guest" {
		return nil, fmt.Errorf("snp: the configfs-tsm provider is %q, not \"sev_guest\": this VM is not an SEV-SNP guest", p)
	}
	ev, err := NewEvidence(resp.OutBlob, resp.AuxBlob)
	if err != nil {
		return nil, fmt.Errorf("snp: the report from configfs-tsm: %w", err)
	}
	return ev, nil
}
