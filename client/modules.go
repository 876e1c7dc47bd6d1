package client

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/seal"
)

// Confidential code, the provider's and the worker's side: a service
// version's WebAssembly modules are encrypted with one random code key
// (AES-256-GCM, the service, version and module digest as associated data)
// and stored as ciphertext in the object store bucket
// orchestrator.ModuleBucket; the code key travels wrapped to the
// orchestrator in the service.submit statement, which releases it, re-wrapped,
// to the attested workers of the tasks that run the modules.

// Rules naming a module a worker refuses.
const (
	// RuleModuleCiphertext refuses stored ciphertext that does not
	// authenticate under the code key for its service, version and digest
	// (altered, truncated, or moved from another module or service).
	RuleModuleCiphertext = "module.ciphertext"
	// RuleModuleDigest refuses a decrypted module whose SHA-256 is not the
	// digest the JobSpec names and the owners approved.
	RuleModuleDigest = "module.digest"
	// RuleModuleSize refuses a stored module larger than MaxModuleSize.
	RuleModuleSize = "module.size"
)

// MaxModuleSize bounds a module's ciphertext (64 MiB).
const MaxModuleSize = 64 << 20

// ModuleDigest returns the digest of a module's plaintext as JobSpecs, code
// digests and policies name it: "sha256:" and 64 lowercase hex digits.
func ModuleDigest(wasm []byte) string {
	sum := sha256.Sum256(wasm)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// NewCodeKey returns a fresh random code key.
func NewCodeKey() []byte {
	k := make([]byte, seal.KeySize)
	rand.Read(k)
	return k
}

// moduleAD is the associated data of a module's ciphertext: it binds the
// ciphertext to one service version and one digest.
func moduleAD(service string, version int64, digest string) []byte {
	ad := []byte("sealflow module v1\x00")
	ad = binary.BigEndian.AppendUint32(ad, uint32(len(service)))
	ad = append(ad, service...)
	ad = binary.BigEndian.AppendUint64(ad, uint64(version))
	return append(ad, strings.ToLower(digest)...)
}

func codeAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != seal.KeySize {
		return nil, fmt.Errorf("a code key has %d bytes, want %d", len(key), seal.KeySize)
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// SealModule encrypts a module's plaintext with the code key: a random
// 12-byte nonce, then the AES-256-GCM ciphertext and tag, authenticated with
// the service, version and the plaintext's digest.
func SealModule(key []byte, service string, version int64, wasm []byte) (digest string, ciphertext []byte, err error) {
	aead, err := codeAEAD(key)
	if err != nil {
		return "", nil, err
	}
	digest = ModuleDigest(wasm)
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(wasm)+aead.Overhead())
	rand.Read(nonce)
	return digest, aead.Seal(nonce, nonce, wasm, moduleAD(service, version, digest)), nil
}

// OpenModule decrypts a module's ciphertext with the code key and checks
// that the plaintext hashes to digest. Refusals are *attest.Refusal errors
// naming RuleModuleCiphertext or RuleModuleDigest. The plaintext is only
// returned, never stored.
func OpenModule(key []byte, service string, version int64, digest string, ciphertext []byte) ([]byte, error) {
	aead, err := codeAEAD(key)
	if err != nil {
		return nil, err
	}
	if len(ciphertext) < aead.NonceSize()+aead.Overhead() {
		return nil, &attest.Refusal{Rule: RuleModuleCiphertext, Reason: fmt.Sprintf("the stored module %s of service %s is %d bytes, too short to be a ciphertext", digest, service, len(ciphertext))}
	}
	n := aead.NonceSize()
	wasm, err := aead.Open(nil, ciphertext[:n], ciphertext[n:], moduleAD(service, version, digest))
	if err != nil {
		return nil, &attest.Refusal{Rule: RuleModuleCiphertext, Reason: fmt.Sprintf("the stored module %s of service %s version %d does not authenticate under the service's code key (altered, or not this module's)", digest, service, version)}
	}
	if got := ModuleDigest(wasm); got != strings.ToLower(digest) {
		clear(wasm)
		return nil, &attest.Refusal{Rule: RuleModuleDigest, Reason: fmt.Sprintf("module of service %s decrypts to code with digest %s, the job names %s", service, got, digest)}
	}
	return wasm, nil
}

// WrapCodeKey wraps a service version's code key to the verified
// orchestrator's HPKE key, for the service.submit statement.
func WrapCodeKey(t *Trust, service string, version int64, key []byte) (*seal.Wrapped, error) {
	pub, err := t.Identity.HPKEPublicKey()
	if err != nil {
		return nil, fmt.Errorf("the orchestrator's HPKE key: %w", err)
	}
	w, err := seal.Wrap(pub, orchestrator.CodeKeyInfo(service, version, t.Identity.ID()).Bytes(), key)
	if err != nil {
		return nil, err
	}
	return &w, nil
}

// ModuleBucket opens the object store of encrypted modules, creating it
// when create is set.
func ModuleBucket(ctx context.Context, js jetstream.JetStream, create bool) (jetstream.ObjectStore, error) {
	if create {
		return js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: orchestrator.ModuleBucket,
			Description: "sealflow: encrypted WebAssembly modules (ciphertext only)", Storage: jetstream.FileStorage})
	}
	return js.ObjectStore(ctx, orchestrator.ModuleBucket)
}

// UploadModules encrypts each module (by name) with the code key and stores
// its ciphertext under orchestrator.ModuleObject(service, version, digest).
// It returns the digests by module name. Only ciphertext leaves the process.
func UploadModules(ctx context.Context, js jetstream.JetStream, service string, version int64, key []byte, modules map[string][]byte) (map[string]string, error) {
	if len(modules) == 0 {
		return nil, nil
	}
	store, err := ModuleBucket(ctx, js, true)
	if err != nil {
		return nil, fmt.Errorf("module store: %w", err)
	}
	digests := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(modules)) {
		digest, ct, err := SealModule(key, service, version, modules[name])
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", name, err)
		}
		if _, err := store.PutBytes(ctx, orchestrator.ModuleObject(service, version, digest), ct); err != nil {
			return nil, fmt.Errorf("storing module %s: %w", name, err)
		}
		digests[name] = digest
	}
	return digests, nil
}

// FetchModule reads a module's ciphertext from the store and opens it with
// the code key (see OpenModule).
func FetchModule(ctx context.Context, store jetstream.ObjectStore, service string, version int64, digest string, key []byte) ([]byte, error) {
	name := orchestrator.ModuleObject(service, version, digest)
	info, err := store.GetInfo(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("module %s of service %s version %d is not in the module store (the provider uploads it at submit)", digest, service, version)
	}
	if err != nil {
		return nil, err
	}
	if info.Size > MaxModuleSize {
		return nil, &attest.Refusal{Rule: RuleModuleSize, Reason: fmt.Sprintf("the stored module %s is %d bytes, more than %d", digest, info.Size, MaxModuleSize)}
	}
	ct, err := store.GetBytes(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("fetching module %s: %w", digest, err)
	}
	return OpenModule(key, service, version, digest, ct)
}

// PrepareCode readies a service version's modules for submission: it
// generates the version's code key, uploads each module's ciphertext to the
// module store, sets the manifest's code digests to the modules' digests and
// returns the service.submit body with the code key wrapped to the verified
// orchestrator. Every module the manifest's JobSpecs name must be given, and
// no other. With no modules it returns the manifest alone.
func PrepareCode(ctx context.Context, js jetstream.JetStream, t *Trust, man orchestrator.Manifest, modules map[string][]byte) (*orchestrator.SubmitService, error) {
	named, err := orchestrator.ManifestModules(&man)
	if err != nil {
		return nil, err
	}
	given := map[string]string{}
	for name, wasm := range modules {
		given[ModuleDigest(wasm)] = name
	}
	for _, d := range named {
		if _, ok := given[d]; !ok {
			return nil, fmt.Errorf("service %s runs module %s, which is not among the modules given", man.ID, d)
		}
	}
	for d, name := range given {
		if !slices.Contains(named, d) {
			return nil, fmt.Errorf("module %s (%s) is not run by any JobSpec of service %s", name, d, man.ID)
		}
	}
	if len(named) == 0 {
		man.CodeDigests = nil
		return &orchestrator.SubmitService{Manifest: man}, nil
	}
	if man.Version < 0 || man.Version > 1<<32-1 {
		return nil, fmt.Errorf("service %s has version %d: a service with code has a version between 0 and 2^32-1", man.ID, man.Version)
	}
	key := NewCodeKey()
	defer clear(key)
	if _, err := UploadModules(ctx, js, man.ID, man.Version, key, modules); err != nil {
		return nil, err
	}
	wrapped, err := WrapCodeKey(t, man.ID, man.Version, key)
	if err != nil {
		return nil, err
	}
	man.CodeDigests = named
	return &orchestrator.SubmitService{Manifest: man, CodeKey: wrapped}, nil
}
