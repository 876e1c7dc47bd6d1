package worker

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/udf"
)

// RuleModuleUnlisted refuses a module a JobSpec names that is not among the
// code digests of the service, which are what its owners approved.
const RuleModuleUnlisted = "module.unlisted"

// taskCode is what a task with udf nodes runs them with: the worker's UDF
// runtime and the source of its modules' plaintext.
type taskCode struct {
	udfs    *udf.Runtime
	modules udf.ModuleSource
}

// apply sets the engine options that run udf nodes; a nil taskCode (a task
// without udf nodes) sets nothing.
func (c *taskCode) apply(o *runtime.Options) {
	if c == nil {
		return
	}
	o.UDFs, o.Modules = c.udfs, c.modules
}

// udfRuntime returns the worker's UDF runtime, created at the first task
// that runs a udf node. Its compilation cache is in memory only, so neither
// a module nor its compiled code is ever written to disk.
func (w *Worker) udfRuntime(ctx context.Context) (*udf.Runtime, error) {
	w.udfMu.Lock()
	defer w.udfMu.Unlock()
	if w.udfs == nil {
		cfg := w.cfg.UDF
		if cfg.Logger == nil {
			cfg.Logger = w.log
		}
		rt, err := udf.NewRuntime(context.WithoutCancel(ctx), cfg)
		if err != nil {
			return nil, err
		}
		w.udfs = rt
	}
	return w.udfs, nil
}

// closeUDFs closes the UDF runtime once the worker's tasks have ended.
func (w *Worker) closeUDFs() {
	w.wg.Wait()
	w.udfMu.Lock()
	defer w.udfMu.Unlock()
	if w.udfs != nil {
		if err := w.udfs.Close(context.Background()); err != nil {
			w.log.Warn("closing the UDF runtime", "err", err)
		}
		w.udfs = nil
	}
}

// codeFor returns what a task of job running spec needs for its udf nodes,
// or nil when it has none. Its module source fetches a module's ciphertext
// from the module store, opens it with the service version's code key the
// orchestrator released to this node, and checks the plaintext's SHA-256
// against the digest; the plaintext stays in memory.
func (w *Worker) codeFor(ctx context.Context, svc *orchestrator.Service, job string, spec *jobspec.Spec) (*taskCode, error) {
	if len(spec.Modules()) == 0 {
		return nil, nil
	}
	rt, err := w.udfRuntime(ctx)
	if err != nil {
		return nil, err
	}
	service, version := svc.Manifest.ID, svc.Manifest.Version
	listed := make([]string, len(svc.Manifest.CodeDigests))
	for i, d := range svc.Manifest.CodeDigests {
		listed[i] = strings.ToLower(d)
	}
	src := func(ctx context.Context, digest string) ([]byte, error) {
		if !slices.Contains(listed, strings.ToLower(digest)) {
			return nil, &attest.Refusal{Rule: RuleModuleUnlisted, Reason: fmt.Sprintf("module %s is not among the code digests of service %s", digest, service)}
		}
		w.mu.Lock()
		ring := w.keys[job]
		w.mu.Unlock()
		if ring == nil {
			return nil, fmt.Errorf("no keys of job %s on this node", job)
		}
		k, ok := ring.Key(job+"/"+orchestrator.PurposeCode, orchestrator.CodeEpoch(version))
		if !ok {
			return nil, fmt.Errorf("the code key of service %s version %d was not released to this node", service, version)
		}
		key, err := k.Bytes()
		if err != nil {
			return nil, err
		}
		defer clear(key)
		js, err := jetstream.New(w.cfg.NATS)
		if err != nil {
			return nil, err
		}
		store, err := client.ModuleBucket(ctx, js, false)
		if err != nil {
			return nil, fmt.Errorf("module store: %w", err)
		}
		wasm, err := client.FetchModule(ctx, store, service, version, digest, key)
		if err != nil {
			return nil, err
		}
		w.log.Info("module decrypted", "service", service, "version", version, "digest", digest, "bytes", len(wasm))
		return wasm, nil
	}
	return &taskCode{udfs: rt, modules: src}, nil
}
