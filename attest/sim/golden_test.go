package sim

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sealflow/sealflow/attest"
)

var updateGolden = flag.Bool("update-golden", false, "rewrite testdata/ with fresh sim evidence")

// Golden evidence: issued once by a throwaway platform and kept in testdata,
// so that any change to the wire format or the signed bytes breaks this test
// instead of breaking deployed verifiers silently.
var (
	goldenReportData  = attest.BindReportData([]byte("golden nonce"), []byte("golden key"))
	goldenMeasurement = bytes.Repeat([]byte{0xab}, 48)
	goldenIssuedAt    = time.Date(2026, 11, 25, 23, 30, 0, 0, time.UTC)
)

func TestGoldenEvidence(t *testing.T) {
	blobPath := filepath.Join("testdata", "evidence.bin")
	rootPath := filepath.Join("testdata", "root.pem")
	if *updateGolden {
		p := testPlatform(t)
		ev, err := p.Issuer(WithMeasurement(goldenMeasurement), WithSVN(5), WithClock(func() time.Time { return goldenIssuedAt })).
			Issue(context.Background(), goldenReportData)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(blobPath, ev.Blob, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(rootPath, p.RootCertPEM(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	blob, err := os.ReadFile(blobPath)
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.ReadFile(rootPath)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(root)
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(context.Background(), &attest.Evidence{Type: attest.TEESim, Blob: blob}, goldenReportData)
	if err != nil {
		t.Fatalf("golden evidence refused: %v", err)
	}
	if !bytes.Equal(c.Measurement, goldenMeasurement) || c.SVN != 5 || c.Debug ||
		c.Extra["issued_at"] != goldenIssuedAt.Format(time.RFC3339Nano) || len(c.PlatformID) != 32 {
		t.Fatalf("golden claims %+v differ from what was issued", c)
	}
}
