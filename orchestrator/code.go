package orchestrator

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
)

// Confidential code: a service whose JobSpecs run WebAssembly modules (udf
// nodes) lists their digests in Manifest.CodeDigests, which owners approve
// with the manifest, and carries in its service.submit statement the code
// key its modules are encrypted with, wrapped to the orchestrator. The
// modules themselves are stored as ciphertext in the JetStream object store
// bucket ModuleBucket (see package client); the code key is released, wrapped
// to a worker's attested key, only with the keys of a task that runs them.

// PurposeCode is the release purpose of a service version's code key.
const PurposeCode = "code"

// ModuleBucket is the JetStream object store bucket that holds the encrypted
// modules, each under ModuleObject's name.
const ModuleBucket = "sealflow_modules"

// Rules naming the refusals of confidential code.
const (
	// RuleCodeKey refuses a submission that lists code digests without a
	// wrapped code key, a code key without code digests, or a code key that
	// does not unwrap for the orchestrator.
	RuleCodeKey = "service.code-key"
	// RuleCodeDigests refuses a manifest whose code digests are not exactly
	// the modules its JobSpecs run.
	RuleCodeDigests = "service.code-digests"
)

// SubmitService is the body of a service.submit statement: the manifest and,
// when the manifest lists code digests, the service version's code key. The
// service digest owners approve covers the manifest only, so a fresh code key
// for the same code changes nothing the owners see.
type SubmitService struct {
	Manifest
	// CodeKey is the 32-byte code key wrapped to the orchestrator's HPKE key
	// with CodeKeyInfo(ID, Version, orchestrator id). It is required when
	// CodeDigests is not empty and refused otherwise.
	CodeKey *seal.Wrapped `json:"code_key,omitempty"`
}

// CodeKeyInfo is the HPKE info a service version's code key is wrapped with
// for recipient (the orchestrator, or a worker at release).
func CodeKeyInfo(service string, version int64, recipient party.ID) seal.WrapInfo {
	return WrapInfoFor(PurposeCode, service, CodeEpoch(version), recipient)
}

// CodeEpoch is the release epoch of a service version's code key: the
// version. Versions of services with code are between 0 and 2^32-1.
func CodeEpoch(version int64) uint32 {
	if version < 0 || version > math.MaxUint32 {
		return 0
	}
	return uint32(version)
}

// ModuleObject is the object store name of a module's ciphertext:
// "<service>/<version>/<digest>" (the digest as JobSpecs name it).
func ModuleObject(service string, version int64, digest string) string {
	return fmt.Sprintf("%s/%d/%s", service, version, strings.ToLower(digest))
}

// ManifestModules returns the digests of the modules the manifest's JobSpecs
// (its spec and its stages) run, sorted and without duplicates.
func ManifestModules(man *Manifest) ([]string, error) {
	specs := []json.RawMessage{man.Spec}
	for _, s := range man.Stages {
		specs = append(specs, s)
	}
	var out []string
	for _, raw := range specs {
		if len(raw) == 0 {
			continue
		}
		spec, err := jobspec.Parse(raw)
		if err != nil {
			return nil, err
		}
		for _, d := range spec.Modules() {
			out = append(out, strings.ToLower(d))
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// TaskModules returns the digests of the modules task t's JobSpec runs.
func (m *Manifest) TaskModules(t *TaskSlot) []string {
	raw := m.StageSpec(t)
	if len(raw) == 0 {
		return nil
	}
	spec, err := jobspec.Parse(raw)
	if err != nil {
		return nil
	}
	return spec.Modules()
}

// checkCode checks the confidential code of a submission: the code digests
// are exactly the modules the JobSpecs run, and a code key comes with them
// (and only with them), wrapped to this orchestrator for the service's id and
// version.
func (m *Machine) checkCode(b *SubmitService) error {
	man := &b.Manifest
	mods, err := ManifestModules(man)
	if err != nil {
		return refuse("jobspec.parse", "%v", err)
	}
	listed := make([]string, len(man.CodeDigests))
	for i, d := range man.CodeDigests {
		listed[i] = strings.ToLower(d)
	}
	slices.Sort(listed)
	listed = slices.Compact(listed)
	if !slices.Equal(listed, mods) {
		return refuse(RuleCodeDigests, "service %s lists code digests %v, its JobSpecs run modules %v: the code digests owners approve must be exactly the modules that run", man.ID, man.CodeDigests, mods)
	}
	switch {
	case len(mods) > 0 && b.CodeKey == nil:
		return refuse(RuleCodeKey, "service %s lists code digests but its submission carries no wrapped code key: encrypt the modules and wrap their key to the orchestrator (sealflow service submit does)", man.ID)
	case len(mods) == 0 && b.CodeKey != nil:
		return refuse(RuleCodeKey, "service %s carries a code key but lists no code digests", man.ID)
	case b.CodeKey == nil:
		return nil
	}
	if man.Version < 0 || man.Version > math.MaxUint32 {
		return refuse(RuleCodeKey, "service %s has version %d: a service with code has a version between 0 and %d", man.ID, man.Version, uint32(math.MaxUint32))
	}
	key, err := seal.Unwrap(m.self.HPKEKey(), CodeKeyInfo(man.ID, man.Version, m.self.ID()).Bytes(), *b.CodeKey)
	if err != nil {
		return refuse(RuleCodeKey, "the code key of service %s version %d does not unwrap for this orchestrator: %v", man.ID, man.Version, err)
	}
	defer clear(key)
	if len(key) != seal.KeySize {
		return refuse(RuleCodeKey, "the code key of service %s has %d bytes, want %d", man.ID, len(key), seal.KeySize)
	}
	return nil
}

// storeCodeKey keeps a submitted service's wrapped code key (or forgets the
// key of an earlier version that had code).
func (m *Machine) storeCodeKey(service string, w *seal.Wrapped) {
	if w == nil {
		delete(m.st.CodeKeys, service)
		return
	}
	if m.st.CodeKeys == nil {
		m.st.CodeKeys = map[string]*seal.Wrapped{}
	}
	m.st.CodeKeys[service] = w
}

// releaseCode releases svc's code key through rel when task t runs modules:
// the key is unwrapped from the orchestrator's copy, passed to rel (which
// wraps it to the node and logs the release) and cleared.
func (m *Machine) releaseCode(svc *Service, t *TaskSlot, rel func(purpose, scope string, epoch uint32, key []byte) error) error {
	if len(svc.Manifest.TaskModules(t)) == 0 {
		return nil
	}
	w := m.st.CodeKeys[svc.Digest]
	if w == nil {
		w = m.st.CodeKeys[svc.Manifest.ID] // a state saved before versions
	}
	if w == nil {
		return refuse(RuleCodeKey, "task %s runs modules but service %s has no code key", t.ID, svc.Manifest.ID)
	}
	key, err := seal.Unwrap(m.self.HPKEKey(), CodeKeyInfo(svc.Manifest.ID, svc.Manifest.Version, m.self.ID()).Bytes(), *w)
	if err != nil {
		return fmt.Errorf("orchestrator: unwrapping the code key of service %s: %w", svc.Manifest.ID, err)
	}
	defer clear(key)
	return rel(PurposeCode, svc.Manifest.ID, CodeEpoch(svc.Manifest.Version), key)
}
