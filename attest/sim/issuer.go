package sim

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/sealflow/sealflow/attest"
)

// IssuerOption configures an Issuer of a Platform.
type IssuerOption func(*issuer)

// WithDebug sets the debug flag the evidence reports (default false). A
// debuggable TEE is one a host debugger can read; attest.Validate refuses it
// unless the reference values allow debug.
func WithDebug(debug bool) IssuerOption { return func(i *issuer) { i.debug = debug } }

// WithSVN sets the simulated TCB security version the evidence reports
// (default 0).
func WithSVN(svn uint64) IssuerOption { return func(i *issuer) { i.svn = svn } }

// WithMeasurement makes the issuer report measurement (48 bytes, a SHA-384)
// instead of the running executable's: for tests and demos that simulate
// another binary, such as an upgrade. Issue fails on any other length.
func WithMeasurement(measurement []byte) IssuerOption {
	m := append([]byte(nil), measurement...)
	return func(i *issuer) { i.measurement = m }
}

// WithClock sets the clock that stamps IssuedAt (default time.Now).
func WithClock(now func() time.Time) IssuerOption { return func(i *issuer) { i.now = now } }

type issuer struct {
	p           *Platform
	debug       bool
	svn         uint64
	measurement []byte
	now         func() time.Time
}

// Issuer returns an attest.Issuer that signs sim reports with p's platform
// key. The report states the SHA-384 of the running executable (see
// ExecutableMeasurement), measured once per process, unless WithMeasurement
// says otherwise.
func (p *Platform) Issuer(opts ...IssuerOption) attest.Issuer {
	i := &issuer{p: p, now: time.Now}
	for _, o := range opts {
		o(i)
	}
	return i
}

// Issue implements attest.Issuer.
func (i *issuer) Issue(ctx context.Context, reportData [64]byte) (*attest.Evidence, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m := i.measurement
	if m == nil {
		var err error
		if m, err = ExecutableMeasurement(); err != nil {
			return nil, err
		}
	}
	if len(m) != 48 {
		return nil, fmt.Errorf("sim: issue: measurement is %d bytes, want 48 (SHA-384)", len(m))
	}
	a := &Attestation{Report: Report{
		Version:     ReportVersion,
		Measurement: [48]byte(m),
		SVN:         i.svn,
		Debug:       i.debug,
		PlatformID:  i.p.id,
		ReportData:  reportData,
		IssuedAt:    i.now().UnixNano(),
	}}
	d := a.Report.Digest()
	sig, err := ecdsa.SignASN1(rand.Reader, i.p.key, d[:])
	if err != nil {
		return nil, fmt.Errorf("sim: sign report: %w", err)
	}
	a.Signature = sig
	a.PlatformCert = i.p.cert.Raw
	return &attest.Evidence{Type: attest.TEESim, Blob: a.Marshal()}, nil
}
