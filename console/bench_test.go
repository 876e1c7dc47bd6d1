package console_test

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/console"
	"github.com/sealflow/sealflow/ledger"
)

// BenchmarkOwnerEndpoint measures GET /console/api/owner for an owner whose
// stream has 2,000 key.released entries (100 nodes) in a log of 4,000.
func BenchmarkOwnerEndpoint(b *testing.B) {
	_, priv, _ := ed25519.GenerateKey(nil)
	signer, err := ledger.NewSigner("sealflow-orchestrator", priv)
	if err != nil {
		b.Fatal(err)
	}
	l := ledger.NewLog(signer)
	owner := strings.Repeat("ab", 32)
	l.AppendEntry(ledger.Entry{Type: "stream.registered", Subjects: []string{"party:" + owner, "stream:s"}})
	for i := range 4000 {
		stream := "s"
		if i%2 == 1 {
			stream = "other"
		}
		body, _ := json.Marshal(map[string]any{"key": "j/0", "purpose": "exchange", "node": fmt.Sprintf("n%d", i%100), "task": fmt.Sprintf("j/t%d", i%100)})
		if _, err := l.AppendEntry(ledger.Entry{Type: "key.released", Subjects: []string{"job:j", "stream:" + stream, fmt.Sprintf("node:n%d", i%100)}, Body: body}); err != nil {
			b.Fatal(err)
		}
	}
	h := console.Handler(l)
	req := httptest.NewRequest(http.MethodGet, "/console/api/owner?owner="+owner, nil)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("HTTP %d: %s", rec.Code, rec.Body)
		}
	}
	b.ReportMetric(2000, "entries/op")
}
