package console_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/sealflow/sealflow/console"
	"github.com/sealflow/sealflow/ledger"
)

// selftestJS runs the console's verifiers (from app.js) on the vectors and
// writes the outcomes into #results.
const selftestJS = `(async () => {
  const v = await (await fetch("vectors.json")).json();
  const head = parseHead(v.head);
  const out = { inclusion: [], consistency: [] };
  for (const c of v.inclusion) out.inclusion.push(await checkInclusion(head, b64(c.record), c.proof, c.index));
  for (const c of v.consistency) out.consistency.push(await checkConsistency(c.hashes, c.t, b64(c.th), c.n, b64(c.h)));
  out.sig = await verifyHead(head, v.vkey);
  out.bad_sig = await verifyHead(parseHead(v.bad_head), v.vkey);
  out.other_key = await verifyHead(head, v.other_vkey);
  document.getElementById("results").textContent = JSON.stringify(out);
})().catch((e) => { document.getElementById("results").textContent = "error: " + e; });
`

const selftestHTML = `<!doctype html><html><head><meta charset="utf-8">
<script src="/console/app.js"></script><script src="selftest.js" defer></script></head>
<body><pre id="results">pending</pre></body></html>`

type inclusionCase struct {
	Record string                 `json:"record"`
	Index  int64                  `json:"index"`
	Proof  *ledger.InclusionProof `json:"proof"`
	want   bool
	what   string
}

type consistencyCase struct {
	Hashes []tlog.Hash `json:"hashes"`
	T      int64       `json:"t"`
	TH     tlog.Hash   `json:"th"`
	N      int64       `json:"n"`
	H      tlog.Hash   `json:"h"`
	want   bool
	what   string
}

// TestBrowserVerifiers runs the console's JavaScript verifiers in headless
// Chromium on vectors made by the Go ledger (golang.org/x/mod/sumdb/tlog):
// every genuine inclusion proof, consistency proof and tree head signature
// verifies, and every tampered one fails.
func TestBrowserVerifiers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a browser")
	}
	chrome := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			chrome = p
			break
		}
	}
	if chrome == "" {
		t.Skip("no chromium on PATH: install Debian's chromium package (cmd/sealflow's TestConsoleInBrowser installs it with apt-get)")
	}

	pub, priv, _ := ed25519.GenerateKey(nil)
	signer, err := ledger.NewSigner("sealflow-orchestrator", priv)
	if err != nil {
		t.Fatal(err)
	}
	vkey, _ := ledger.VerifierKey("sealflow-orchestrator", pub)
	otherPub, _, _ := ed25519.GenerateKey(nil)
	otherVkey, _ := ledger.VerifierKey("sealflow-orchestrator", otherPub)
	l := ledger.NewLog(signer)
	const size = 13
	for i := range size {
		if _, err := l.AppendEntry(ledger.Entry{Type: "key.released", Subjects: []string{"stream:s", fmt.Sprintf("node:n%d", i)},
			Body: json.RawMessage(fmt.Sprintf(`{"node":"n%d","pad":%q}`, i, strings.Repeat("x", i*7)))}); err != nil {
			t.Fatal(err)
		}
	}
	head, err := l.SignedTreeHead()
	if err != nil {
		t.Fatal(err)
	}
	badHead := bytes.Replace(head, []byte(fmt.Sprintf("\n%d\n", size)), []byte(fmt.Sprintf("\n%d\n", size+1)), 1)

	var inc []inclusionCase
	record := func(i int64) []byte { r, _ := l.Record(i); return r }
	b64 := base64.StdEncoding.EncodeToString
	for i := int64(0); i < size; i++ {
		p, err := l.ProveInclusion(i, size)
		if err != nil {
			t.Fatal(err)
		}
		inc = append(inc, inclusionCase{Record: b64(record(i)), Index: i, Proof: p, want: true, what: fmt.Sprintf("genuine proof of record %d", i)})
	}
	p3, _ := l.ProveInclusion(3, size)
	flipped := bytes.Clone(record(3))
	flipped[10] ^= 1
	inc = append(inc, inclusionCase{Record: b64(flipped), Index: 3, Proof: p3, want: false, what: "record with a flipped bit"})
	badProof := *p3
	badProof.Hashes = slices.Clone(p3.Hashes)
	badProof.Hashes[1][0] ^= 1
	inc = append(inc, inclusionCase{Record: b64(record(3)), Index: 3, Proof: &badProof, want: false, what: "proof with a flipped hash"})
	inc = append(inc, inclusionCase{Record: b64(record(4)), Index: 4, Proof: p3, want: false, what: "proof of another index"})
	longProof := *p3
	longProof.Hashes = append(slices.Clone(p3.Hashes), p3.Hashes[0])
	inc = append(inc, inclusionCase{Record: b64(record(3)), Index: 3, Proof: &longProof, want: false, what: "proof with an extra hash"})
	p4, _ := l.ProveInclusion(4, size)
	inc = append(inc, inclusionCase{Record: b64(record(3)), Index: 4, Proof: p4, want: false, what: "another record at an index"})

	th, _ := l.TreeHash(size)
	var cons []consistencyCase
	for _, n := range []int64{1, 5, 8, 12, size} {
		h, _ := l.TreeHash(n)
		cp := &ledger.ConsistencyProof{}
		if n < size {
			if cp, err = l.ProveConsistency(n, size); err != nil {
				t.Fatal(err)
			}
		}
		cons = append(cons, consistencyCase{Hashes: cp.Hashes, T: size, TH: th, N: n, H: h, want: true, what: fmt.Sprintf("genuine proof %d→%d", n, size)})
	}
	h5, _ := l.TreeHash(5)
	cp5, _ := l.ProveConsistency(5, size)
	forked := h5
	forked[0] ^= 1
	cons = append(cons, consistencyCase{Hashes: cp5.Hashes, T: size, TH: th, N: 5, H: forked, want: false, what: "forked old head"})
	tampered := slices.Clone(cp5.Hashes)
	tampered[0][3] ^= 1
	cons = append(cons, consistencyCase{Hashes: tampered, T: size, TH: th, N: 5, H: h5, want: false, what: "tampered proof"})
	cons = append(cons, consistencyCase{Hashes: cp5.Hashes, T: size, TH: th, N: 6, H: h5, want: false, what: "proof for another old size"})
	cons = append(cons, consistencyCase{Hashes: cp5.Hashes, T: size, TH: h5, N: 5, H: h5, want: false, what: "new head that is not the tree's"})

	vectors, _ := json.Marshal(map[string]any{"head": string(head), "bad_head": string(badHead), "vkey": vkey, "other_vkey": otherVkey,
		"inclusion": inc, "consistency": cons})
	dir := t.TempDir()
	for name, content := range map[string][]byte{"vectors.json": vectors, "selftest.js": []byte(selftestJS), "index.html": []byte(selftestHTML)} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("GET /console/", console.Handler(l))
	mux.Handle("GET /t/", http.StripPrefix("/t/", http.FileServer(http.Dir(dir))))
	hs := httptest.NewTLSServer(mux) // WebCrypto needs a secure context
	defer hs.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
		"--user-data-dir="+t.TempDir(), "--ignore-certificate-errors", "--virtual-time-budget=5000", "--dump-dom", hs.URL+"/t/index.html")
	var stderr bytes.Buffer
	c.Stderr = &stderr
	dom, err := c.Output()
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}
	m := regexp.MustCompile(`<pre id="results">([^<]*)</pre>`).FindSubmatch(dom)
	if m == nil {
		t.Fatalf("no results in the page:\n%s", dom)
	}
	var got struct {
		Inclusion   []bool `json:"inclusion"`
		Consistency []bool `json:"consistency"`
		Sig         string `json:"sig"`
		BadSig      string `json:"bad_sig"`
		OtherKey    string `json:"other_key"`
	}
	if err := json.Unmarshal(m[1], &got); err != nil {
		t.Fatalf("results %q: %v", m[1], err)
	}
	if len(got.Inclusion) != len(inc) || len(got.Consistency) != len(cons) {
		t.Fatalf("got %d inclusion and %d consistency results, want %d and %d", len(got.Inclusion), len(got.Consistency), len(inc), len(cons))
	}
	for i, c := range inc {
		if got.Inclusion[i] != c.want {
			t.Errorf("inclusion, %s: verified = %v, want %v", c.what, got.Inclusion[i], c.want)
		}
	}
	for i, c := range cons {
		if got.Consistency[i] != c.want {
			t.Errorf("consistency, %s: verified = %v, want %v", c.what, got.Consistency[i], c.want)
		}
	}
	if got.Sig != "ok" || got.BadSig != "bad" || got.OtherKey != "bad" {
		t.Errorf("tree head signature: genuine %q, altered %q, other key %q; want ok, bad, bad", got.Sig, got.BadSig, got.OtherKey)
	}
}
