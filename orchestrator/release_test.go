package orchestrator

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
)

// TestProviderReleasesApprovedByPolicy: an owner who trusts a provider's
// signed releases from a minimum version on (a service rule naming the
// provider's key-derived id, the version and the security version) lets a
// release with new, unseen code run without approving its digest; the code
// key goes to the node that runs it. A release below the minimum, below the
// security version, or the same code submitted by another provider stays
// pending and gets no key.
func TestProviderReleasesApprovedByPolicy(t *testing.T) {
	key := bytes.Repeat([]byte{9}, seal.KeySize)
	tests := []struct {
		name     string
		provider string // "grid" (trusted) or "mallory"
		id       string
		version  int64
		security int64
		runs     bool
	}{
		{"trusted provider, minimum version", "grid", "svc", 3, 1, true},
		{"trusted provider, later version", "grid", "svc", 4, 2, true},
		{"trusted provider, version below the minimum", "grid", "svc", 2, 1, false},
		{"trusted provider, security version below the minimum", "grid", "svc", 3, 0, false},
		{"the same code from another provider", "mallory", "svc-copy", 3, 1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, nil)
			providers := map[string]*party.KeyFile{"grid": w.provider("grid"), "mallory": w.provider("mallory")}
			rule := fmt.Sprintf(`{"name": "any", "stage": "placement", "expr": "true"},
				{"name": "grid-releases", "stage": "service", "expr": "service.provider == '%s' && service.version >= 3 && service.security_version >= 1"}`,
				providers["grid"].ID())
			w.owner("alice", "meter-a", rule)
			if _, err := w.node("edge-1", "edge", "be"); err != nil {
				t.Fatal(err)
			}
			cloud, err := w.node("cloud-1", "cloud", "be")
			if err != nil {
				t.Fatal(err)
			}
			man := codeManifest(t, tc.id)
			man.Version, man.SecurityVersion = tc.version, tc.security
			prov := providers[tc.provider]
			w.must(prov, TypeServiceSubmit, SubmitService{Manifest: man, CodeKey: w.wrapCode(tc.id, tc.version, key)})
			out, err := w.do(prov, TypeJobDeploy, Deploy{Service: tc.id})
			if !tc.runs {
				if ruleOf(err) != "approval.pending" {
					t.Fatalf("deploy: %v, want refused by approval.pending", err)
				}
				if job := w.m.State().Jobs[tc.id]; job != nil {
					t.Fatalf("a release the policy does not admit was deployed: %+v", job)
				}
				return
			}
			if err != nil {
				t.Fatalf("deploy of a release the owner's policy admits: %v", err)
			}
			var code []Release
			for _, r := range out.Releases {
				if r.Purpose == PurposeCode {
					code = append(code, r)
				}
			}
			if len(code) != 1 || code[0].To != cloud.ID() {
				t.Fatalf("code key releases %+v, want one to cloud-1", code)
			}
			if k, err := seal.Unwrap(cloud.HPKEKey(), CodeKeyInfo(tc.id, tc.version, cloud.ID()).Bytes(), code[0].Wrapped); err != nil || !bytes.Equal(k, key) {
				t.Fatalf("cloud-1 cannot unwrap the code key: %v", err)
			}
		})
	}
}
