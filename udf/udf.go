// Package udf runs sealflow user-defined functions: WebAssembly modules,
// executed by wazero in a sandbox, called a batch of records at a time.
//
// A Runtime compiles each module once per digest (through a wazero
// compilation cache) and refuses, at load, modules whose digest differs from
// the one the JobSpec names and modules that import anything beyond the
// deterministic subset of WASI the host provides (no filesystem, no sockets).
// An Instance is one instantiation of a module for one function of a udf
// node: it has no filesystem, no network, and a fake clock and random source
// unless the JobSpec grants the "clock" or "random" capability. Its memory is
// bounded by the Runtime's page limit and every batch by a CPU time deadline,
// enforced by interrupting the call when the deadline passes (Load adds the
// checks to the module's loops); the next batch gets a fresh instance.
//
// The batch ABI between host and guest is described in ABI.md; package
// udf/sdk implements the guest side for Go.
package udf

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
)

// Refusal rules: the names RefusedBy returns.
const (
	RuleDigest     = "udf-digest"     // the module's bytes do not hash to the named digest
	RuleImport     = "udf-import"     // the module imports something the sandbox does not provide
	RuleExport     = "udf-export"     // the module lacks an export the ABI needs, or has the wrong signature
	RuleCapability = "udf-capability" // the spec asks for a capability the sandbox never grants
	RuleDecode     = "udf-decode"     // the bytes are not a valid WebAssembly module
)

// Refusal is the error for a module or capability the sandbox will not run.
type Refusal struct {
	Rule   string // one of the Rule constants
	Reason string // what was wrong, with which input
}

// Error implements error.
func (r *Refusal) Error() string { return fmt.Sprintf("refused by rule %s: %s", r.Rule, r.Reason) }

// RefusedBy returns the name of the rule that refused.
func (r *Refusal) RefusedBy() string { return r.Rule }

func refuse(rule, format string, args ...any) error {
	return &Refusal{Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

// Capabilities a JobSpec may grant a udf node (engine/jobspec AllowClock and
// AllowRandom).
const (
	CapClock  = "clock"
	CapRandom = "random"
)

// wasiModule is the WASI import module name.
const wasiModule = wasi_snapshot_preview1.ModuleName

// allowedWASI lists the WASI functions a module may import. None reaches a
// file, a socket or the host: there are no preopened directories, standard
// input is empty, standard output and error go to a bounded buffer, the
// environment and arguments are empty, and the clock and random source are
// deterministic fakes unless granted. Everything else (path_*, sock_*, fd_*
// on files) is refused at load.
var allowedWASI = map[string]bool{
	"args_get": true, "args_sizes_get": true,
	"environ_get": true, "environ_sizes_get": true,
	"clock_res_get": true, "clock_time_get": true,
	"random_get": true, "poll_oneoff": true, "sched_yield": true, "proc_exit": true,
	"fd_write": true, "fd_read": true, "fd_close": true, "fd_fdstat_get": true, "fd_fdstat_set_flags": true,
	"fd_prestat_get": true, "fd_prestat_dir_name": true,
}

// ABI export names (see ABI.md).
const (
	exportAlloc   = "sealflow_alloc"
	exportVersion = "sealflow_abi_version"
	exportInit    = "_initialize"
	abiVersion    = 1
)

// Config configures a Runtime. Zero fields take the defaults.
type Config struct {
	// MemoryLimitPages bounds each instance's linear memory, in 64 KiB
	// pages (default 1024: 64 MiB).
	MemoryLimitPages uint32
	// BatchTimeout is the deadline of one batch call, and of
	// instantiation (default 1s). It is wall-clock time; since a call does
	// no I/O it bounds the CPU time a batch can take.
	BatchTimeout time.Duration
	// Cache, if set, is a compilation cache shared with other Runtimes
	// (wazero.NewCompilationCache or NewCompilationCacheWithDir); by
	// default each Runtime has its own in-memory cache.
	Cache wazero.CompilationCache
	// Interpreter selects wazero's interpreter instead of its compiler
	// (for platforms the compiler does not support).
	Interpreter bool
	// Logger receives instance restarts (default slog.Default()). Guest
	// output is not logged; errors quote its start.
	Logger *slog.Logger

	// unbounded loads modules without the interrupt checks (interrupt.go),
	// so the batch deadline cannot stop a call. Only the benchmarks set it,
	// to measure what the checks cost (see RATIONALE.md).
	unbounded bool
}

// Default limits.
const (
	DefaultMemoryLimitPages = 1024
	DefaultBatchTimeout     = time.Second
)

// Runtime loads and instantiates UDF modules. It is safe for concurrent use.
type Runtime struct {
	cfg     Config
	rt      wazero.Runtime
	cache   wazero.CompilationCache
	ownsC   bool
	mu      sync.Mutex
	modules map[string]*Module // by digest
}

// NewRuntime creates a Runtime with the given limits. Close it to free the
// compiled modules.
func NewRuntime(ctx context.Context, cfg Config) (*Runtime, error) {
	if cfg.MemoryLimitPages == 0 {
		cfg.MemoryLimitPages = DefaultMemoryLimitPages
	}
	if cfg.MemoryLimitPages > 65536 {
		return nil, fmt.Errorf("udf: memory limit of %d pages exceeds the 65536 pages (4 GiB) of wasm32", cfg.MemoryLimitPages)
	}
	if cfg.BatchTimeout <= 0 {
		cfg.BatchTimeout = DefaultBatchTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Runtime{cfg: cfg, cache: cfg.Cache, modules: map[string]*Module{}}
	if r.cache == nil {
		r.cache, r.ownsC = wazero.NewCompilationCache(), true
	}
	rc := wazero.NewRuntimeConfig()
	if cfg.Interpreter {
		rc = wazero.NewRuntimeConfigInterpreter()
	}
	rc = rc.WithCompilationCache(r.cache).
		WithMemoryLimitPages(cfg.MemoryLimitPages).
		// Not WithCloseOnContextDone: Load instruments modules so that
		// the host can stop a call far more cheaply (interrupt.go).
		WithCloseOnContextDone(false)
	r.rt = wazero.NewRuntimeWithConfig(ctx, rc)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, r.rt); err != nil {
		r.rt.Close(ctx)
		return nil, fmt.Errorf("udf: instantiate WASI: %w", err)
	}
	return r, nil
}

// Close frees the runtime, its compiled modules and its instances.
func (r *Runtime) Close(ctx context.Context) error {
	err := r.rt.Close(ctx)
	if r.ownsC {
		err = errors.Join(err, r.cache.Close(ctx))
	}
	return err
}

// Module is a compiled, checked UDF module.
type Module struct {
	// Digest is "sha256:<hex>" of the module's bytes.
	Digest   string
	compiled wazero.CompiledModule
	r        *Runtime
}

// Digest returns the digest of a module's bytes as JobSpecs name it:
// "sha256:" and 64 lowercase hex digits.
func Digest(wasm []byte) string {
	sum := sha256.Sum256(wasm)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Load checks that wasm hashes to digest, compiles it (once per digest: a
// second Load of the same digest returns the compiled module) and checks its
// imports and exports against the sandbox and the ABI. Refusals are *Refusal
// errors naming the rule.
func (r *Runtime) Load(ctx context.Context, digest string, wasm []byte) (*Module, error) {
	if got := Digest(wasm); got != strings.ToLower(digest) {
		return nil, refuse(RuleDigest, "module bytes hash to %s, the job names %s", got, digest)
	}
	digest = strings.ToLower(digest)
	if m := r.loaded(digest); m != nil {
		return m, nil
	}
	if !r.cfg.unbounded {
		var err error
		if wasm, err = instrument(wasm); err != nil {
			return nil, refuse(RuleDecode, "module %s is not valid WebAssembly the host can bound: %v", digest, err)
		}
	}
	// Compile outside the lock: compiling takes seconds, and other
	// modules' loads need not wait for it.
	c, err := r.rt.CompileModule(ctx, wasm)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("udf: compile module %s: %w", digest, ctx.Err())
		}
		return nil, refuse(RuleDecode, "module %s is not valid WebAssembly: %v", digest, err)
	}
	if err := checkModule(c); err != nil {
		c.Close(ctx)
		var rf *Refusal
		if errors.As(err, &rf) {
			rf.Reason = "module " + digest + ": " + rf.Reason
		}
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if m, ok := r.modules[digest]; ok { // loaded concurrently
		c.Close(ctx)
		return m, nil
	}
	m := &Module{Digest: digest, compiled: c, r: r}
	r.modules[digest] = m
	return m, nil
}

// checkModule refuses imports the sandbox does not provide and checks the
// ABI's exports.
func checkModule(c wazero.CompiledModule) error {
	for _, f := range c.ImportedFunctions() {
		mod, name, _ := f.Import()
		if mod != wasiModule {
			return refuse(RuleImport, "imports %s.%s: only WASI (%s) is provided", mod, name, wasiModule)
		}
		if !allowedWASI[name] {
			return refuse(RuleImport, "imports %s.%s: the sandbox grants no %s", mod, name, wasiKind(name))
		}
	}
	if len(c.ImportedMemories()) > 0 {
		mod, name, _ := c.ImportedMemories()[0].Import()
		return refuse(RuleImport, "imports memory %s.%s: a module must define its own memory", mod, name)
	}
	exp := c.ExportedFunctions()
	if err := checkSig(exp, exportAlloc, []api.ValueType{api.ValueTypeI32}, []api.ValueType{api.ValueTypeI32}); err != nil {
		return err
	}
	if len(c.ExportedMemories()) == 0 {
		return refuse(RuleExport, "exports no memory (the ABI needs one)")
	}
	return nil
}

func wasiKind(name string) string {
	switch {
	case strings.HasPrefix(name, "sock_"):
		return "network access"
	case strings.HasPrefix(name, "path_"), strings.HasPrefix(name, "fd_"):
		return "filesystem access"
	}
	return "such function"
}

func checkSig(exp map[string]api.FunctionDefinition, name string, params, results []api.ValueType) error {
	f, ok := exp[name]
	if !ok {
		return refuse(RuleExport, "does not export function %q", name)
	}
	if !equalTypes(f.ParamTypes(), params) || !equalTypes(f.ResultTypes(), results) {
		return refuse(RuleExport, "export %q has type %s -> %s, the ABI needs %s -> %s", name,
			typeNames(f.ParamTypes()), typeNames(f.ResultTypes()), typeNames(params), typeNames(results))
	}
	return nil
}

func equalTypes(a, b []api.ValueType) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func typeNames(ts []api.ValueType) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = api.ValueTypeName(t)
	}
	return "(" + strings.Join(s, ", ") + ")"
}
