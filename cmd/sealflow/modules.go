package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"sigs.k8s.io/yaml"

	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/substrate"
)

// maxModuleFile bounds a module file a manifest names.
const maxModuleFile = client.MaxModuleSize - 64

// manifestModules reads the modules a manifest file lists under `modules:`
// (name → path of a .wasm file, relative to the manifest).
func manifestModules(path string) (map[string][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var mf struct {
		Modules map[string]string `json:"modules"`
	}
	if err := yaml.Unmarshal(data, &mf); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	out := map[string][]byte{}
	for name, p := range mf.Modules {
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(path), p)
		}
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("manifest %s: module %s: %w", path, name, err)
		}
		if st.Size() > maxModuleFile {
			return nil, fmt.Errorf("manifest %s: module %s is %d bytes, more than %d", path, name, st.Size(), maxModuleFile)
		}
		if out[name], err = os.ReadFile(p); err != nil {
			return nil, fmt.Errorf("manifest %s: module %s: %w", path, name, err)
		}
	}
	return out, nil
}

// submitBody returns the service.submit body for a manifest: the manifest
// alone when its JobSpecs run no module, and otherwise the manifest with its
// code digests and the code key wrapped to the orchestrator, after each
// module listed under `modules:` was encrypted and its ciphertext stored in
// the module store on NATS (natsURL, or the default of --nats). The
// plaintext of a module never leaves this process.
func submitBody(ctx context.Context, t *client.Trust, path string, man *orchestrator.Manifest, natsURL string) (any, error) {
	modules, err := manifestModules(path)
	if err != nil {
		return nil, err
	}
	named, err := orchestrator.ManifestModules(man)
	if err != nil {
		return nil, err
	}
	if len(named) == 0 && len(modules) == 0 {
		return man, nil
	}
	if len(man.CodeDigests) > 0 {
		listed := slices.Clone(man.CodeDigests)
		for i := range listed {
			listed[i] = strings.ToLower(listed[i])
		}
		slices.Sort(listed)
		if !slices.Equal(slices.Compact(listed), named) {
			return nil, fmt.Errorf("manifest %s: code_digests %v are not the modules its JobSpecs run %v (leave code_digests out: submit computes them)", path, man.CodeDigests, named)
		}
	}
	for _, d := range named {
		found := false
		for _, wasm := range modules {
			found = found || client.ModuleDigest(wasm) == d
		}
		if !found {
			return nil, fmt.Errorf("manifest %s: a JobSpec runs module %s: list its .wasm file under modules: (name: path)", path, d)
		}
	}
	url, err := natsURLOrDefault(natsURL)
	if err != nil {
		return nil, err
	}
	nc, err := substrate.Connect(ctx, url, "sealflow-service-submit")
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	body, err := client.PrepareCode(ctx, js, t, *man, modules)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	man.CodeDigests = body.CodeDigests
	return body, nil
}
