package udf

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sealflow/sealflow/engine/operator"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/udf/sdk"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/sys"
)

// Function describes the call a udf node makes: which exported function, on
// records of which schema, returning which schema, with which capabilities.
type Function struct {
	// Name is the exported function's name.
	Name string
	// In is the schema of the input records, Out of the output records.
	In, Out *record.Schema
	// Allow lists the granted capabilities: CapClock, CapRandom.
	Allow []string
}

// Instance is one sandboxed instantiation of a module, bound to one
// function. It is not safe for concurrent use; give each task its own.
type Instance struct {
	m      *Module
	fn     Function
	config wazero.ModuleConfig
	stderr *headBuffer

	mod   api.Module
	alloc api.Function
	call  api.Function
	mem   api.Memory

	header []byte // the request header, constant for the instance
	req    []byte
	// buf and bufLen are the guest buffer sealflow_alloc last returned
	// and its size: requests that fit reuse it without a call.
	buf, bufLen uint32
	dec         record.Decoder
	out         record.Batch // CallEach's version 1 output
	// columnar: the function is called with the columnar ABI (version
	// 2); cleared when it answers that it speaks version 1.
	columnar bool
	col      columnarState
	params   [2]uint64
	wd       watchdog
	// Restarts counts the instances replaced after a failed call.
	Restarts int
}

// Instantiate creates an instance of m for fn. It refuses capabilities the
// sandbox never grants and functions the module does not export with the
// ABI's signature, and runs the module's initializer (Go's _initialize)
// under the batch deadline.
func (m *Module) Instantiate(ctx context.Context, fn Function) (*Instance, error) {
	if fn.In == nil || fn.Out == nil {
		return nil, fmt.Errorf("udf: function %q needs both an input and an output schema", fn.Name)
	}
	if err := checkSig(m.compiled.ExportedFunctions(), fn.Name,
		[]api.ValueType{api.ValueTypeI32, api.ValueTypeI32}, []api.ValueType{api.ValueTypeI64}); err != nil {
		var rf *Refusal
		if errors.As(err, &rf) {
			rf.Reason = "module " + m.Digest + ": " + rf.Reason
		}
		return nil, err
	}
	stderr := &headBuffer{max: 1024}
	cfg := wazero.NewModuleConfig().
		WithName(""). // anonymous: many instances of one module may coexist
		// _initialize is called by start, under the watchdog.
		WithStartFunctions().
		WithStdout(stderr).
		WithStderr(stderr)
	for _, c := range fn.Allow {
		switch c {
		case CapClock:
			cfg = cfg.WithSysWalltime().WithSysNanotime().WithSysNanosleep()
		case CapRandom:
			cfg = cfg.WithRandSource(crand.Reader)
		default:
			return nil, refuse(RuleCapability, "function %q asks for capability %q: only %q and %q can be granted (never filesystem or network)", fn.Name, c, CapClock, CapRandom)
		}
	}
	in := &Instance{m: m, fn: fn, config: cfg, stderr: stderr}
	in.fn.Allow = slices.Clone(fn.Allow)
	in.header = sdk.AppendRequestHeader(nil, fn.In, fn.Out)
	in.col.header = sdk.AppendColumnarHeader(nil, fn.In, fn.Out)
	in.col.dec.typed = true // columnarSize checks every input value
	version, err := in.start(ctx)
	if err != nil {
		return nil, err
	}
	// A version 2 module may have functions of either version: ask in
	// version 2 first (see Call).
	in.columnar = version == sdk.ColumnarVersion
	return in, nil
}

// start instantiates the module, runs its initializer and checks its ABI
// version, all under the batch deadline. It returns the version (1 when the
// module does not say).
func (in *Instance) start(ctx context.Context) (version uint64, err error) {
	ctx, cancel := context.WithTimeout(ctx, in.m.r.cfg.BatchTimeout)
	defer cancel()
	in.stderr.Reset()
	mod, err := in.m.r.rt.InstantiateModule(ctx, in.m.compiled, in.config)
	if err != nil {
		return 0, in.explain(ctx, nil, "instantiate", 0, false, err)
	}
	in.wd.global = nil
	if !in.m.r.cfg.unbounded {
		g, ok := mod.ExportedGlobal(interruptExport).(api.MutableGlobal)
		if !ok { // Load added it
			mod.Close(ctx)
			return 0, fmt.Errorf("udf: module %s lacks its interrupt global", in.m.Digest)
		}
		in.wd.global = g
	}
	if f := mod.ExportedFunction(exportInit); f != nil {
		fired, err := in.wd.run(ctx, func() error { _, err := f.Call(ctx); return err })
		if err != nil {
			defer mod.Close(context.WithoutCancel(ctx))
			return 0, in.explain(ctx, mod, "initialize", 0, fired, err)
		}
	}
	version = abiVersion
	if v := mod.ExportedFunction(exportVersion); v != nil {
		var res []uint64
		fired, err := in.wd.run(ctx, func() (err error) { res, err = v.Call(ctx); return err })
		if err != nil {
			defer mod.Close(context.WithoutCancel(ctx))
			return 0, in.explain(ctx, mod, "read ABI version", 0, fired, err)
		}
		if len(res) != 1 || res[0] < abiVersion || res[0] > sdk.ColumnarVersion {
			mod.Close(ctx)
			return 0, refuse(RuleExport, "module %s speaks ABI version %v, the host speaks %d and %d", in.m.Digest, res, abiVersion, sdk.ColumnarVersion)
		}
		version = res[0]
	}
	in.mod, in.mem = mod, mod.Memory()
	in.buf, in.bufLen = 0, 0
	in.alloc, in.call = mod.ExportedFunction(exportAlloc), mod.ExportedFunction(in.fn.Name)
	return version, nil
}

// Call runs the function on batch b (records of the input schema) and
// replaces out's records with the output. The output's records and values
// are valid until the next Call. A call that fails (deadline, memory limit,
// trap, guest error) returns an error saying which; the instance is then
// replaced by a fresh one at the next Call, losing any state the guest kept.
func (in *Instance) Call(ctx context.Context, b *record.Batch, out *record.Batch) error {
	return in.run(ctx, b, out, nil)
}

// CallEach runs the function on batch b as Call does, and passes each
// output record in order to emit.Emit instead of collecting them: a record's
// storage is reused once Emit returns (operator.Emitter's contract), so a
// columnar function's output is never built as a whole batch. On an error
// nothing is emitted.
func (in *Instance) CallEach(ctx context.Context, b *record.Batch, emit operator.Emitter) error {
	if err := in.run(ctx, b, &in.out, emit); err != nil {
		return err
	}
	for i := range in.out.Records { // a version 1 function's output
		emit.Emit(in.out.Records[i])
	}
	return nil
}

// run makes a call for Call (each nil: decode into out) or CallEach
// (columnar output to each; a version 1 function's into out).
func (in *Instance) run(ctx context.Context, b *record.Batch, out *record.Batch, each operator.Emitter) error {
	out.Records = out.Records[:0]
	if in.mod == nil {
		in.Restarts++
		in.m.r.cfg.Logger.Info("udf: restarting instance after a failed call", "module", in.m.Digest, "function", in.fn.Name, "restarts", in.Restarts)
		if _, err := in.start(ctx); err != nil {
			return err
		}
	}
	in.stderr.Reset() // errors quote what the guest wrote during this call
	if in.columnar {
		err := in.callColumnar(ctx, b, out, each)
		if !errors.Is(err, errSpeaksV1) {
			return err
		}
		in.columnar = false // resend in version 1, and from now on
	}
	var err error
	in.req = append(in.req[:0], in.header...)
	if in.req, err = record.AppendBatch(in.req, in.fn.In, b); err != nil {
		return fmt.Errorf("udf %s: input batch does not match the input schema: %w", in.fn.Name, err)
	}
	return in.invoke(ctx, b.Len(), uint64(len(in.req)), func(dst []byte) {
		copy(dst, in.req)
	}, func(resp []byte) error {
		return DecodeResponse(&in.dec, resp, in.fn.Out, out)
	})
}

// callColumnar makes the call in the columnar ABI, decoding into out, or
// when each is not nil emitting to it.
func (in *Instance) callColumnar(ctx context.Context, b *record.Batch, out *record.Batch, each operator.Emitter) error {
	size, err := columnarSize(in.col.header, in.fn.In, in.col.dec.Reads, b)
	if err != nil {
		return fmt.Errorf("udf %s: input batch does not match the input schema: %w", in.fn.Name, err)
	}
	return in.invoke(ctx, b.Len(), size, func(dst []byte) {
		encodeColumnar(dst, in.col.header, in.fn.In, in.col.dec.Reads, b)
	}, func(resp []byte) error {
		if each != nil {
			return in.col.dec.DecodeEach(resp, b.Records, in.fn.In, in.fn.Out, each)
		}
		return in.col.dec.Decode(resp, b.Records, in.fn.In, in.fn.Out, out)
	})
}

// invoke makes one call of the function on a request of size bytes for n
// records: write fills the request in guest memory, decode reads the
// response (a view of guest memory, valid until the next call).
func (in *Instance) invoke(ctx context.Context, n int, size uint64, write func([]byte), decode func([]byte) error) error {
	if size > uint64(in.m.r.cfg.MemoryLimitPages)*65536 {
		return fmt.Errorf("udf %s: request of %d bytes exceeds the memory limit of %d pages; use smaller batches", in.fn.Name, size, in.m.r.cfg.MemoryLimitPages)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("udf %s (module %s): call on a batch of %d records: canceled: %w", in.fn.Name, in.m.Digest, n, err)
	}
	timeout := in.m.r.cfg.BatchTimeout
	// Calls use CallWithStack so the per-call slices are reused.
	if uint32(size) > in.bufLen {
		grow := uint32(size) + uint32(size)/4 // room to grow
		in.params[0] = uint64(grow)
		in.wd.armCall(ctx, timeout)
		err := in.alloc.CallWithStack(ctx, in.params[:1])
		if fired, expired := in.wd.disarmCall(); err != nil {
			return in.fail(expiredCtx(ctx, expired), "allocate input", n, fired, err)
		}
		in.buf, in.bufLen = uint32(in.params[0]), grow
	}
	ptr := in.buf
	// Write the request in place: the view is valid until the guest runs.
	dst, ok := in.mem.Read(ptr, uint32(size))
	if !ok {
		return in.fail(ctx, "write input", n, false, fmt.Errorf("sealflow_alloc returned %d, which with %d bytes is outside memory of %d bytes", ptr, size, in.mem.Size()))
	}
	write(dst)
	in.params[0], in.params[1] = uint64(ptr), size
	in.wd.armCall(ctx, timeout)
	err := in.call.CallWithStack(ctx, in.params[:2])
	if fired, expired := in.wd.disarmCall(); err != nil {
		return in.fail(expiredCtx(ctx, expired), "call", n, fired, err)
	}
	res := in.params[0]
	resp, ok := in.mem.Read(uint32(res>>32), uint32(res))
	if !ok {
		return in.fail(ctx, "read output", n, false, fmt.Errorf("response at %d (%d bytes) is outside memory of %d bytes", res>>32, uint32(res), in.mem.Size()))
	}
	if err := decode(resp); err != nil {
		if errors.Is(err, errSpeaksV1) {
			return err
		}
		// A bad response is the guest's fault, but the guest is still
		// consistent: keep the instance.
		return fmt.Errorf("udf %s (module %s): %w", in.fn.Name, in.m.Digest, err)
	}
	return nil
}

// expiredCtx returns ctx, or when the call's deadline expired a context
// whose error says so (explain tells a deadline from a cancellation by it).
func expiredCtx(ctx context.Context, expired bool) context.Context {
	if !expired {
		return ctx
	}
	dctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), time.Time{})
	cancel() // its Err stays DeadlineExceeded
	return dctx
}

// fail closes the instance after a failed call, so the next call starts a
// fresh one, and explains the failure. fired says whether the watchdog
// interrupted the call.
func (in *Instance) fail(ctx context.Context, what string, n int, fired bool, err error) error {
	err = in.explain(ctx, in.mod, what, n, fired, err)
	in.mod.Close(context.WithoutCancel(ctx))
	in.mod = nil
	return err
}

// explain turns a wazero error into one that says what happened; fired
// says whether the watchdog interrupted the call because ctx was done.
func (in *Instance) explain(ctx context.Context, mod api.Module, what string, n int, fired bool, err error) error {
	prefix := fmt.Sprintf("udf %s (module %s): %s", in.fn.Name, in.m.Digest, what)
	if n > 0 {
		prefix += fmt.Sprintf(" on a batch of %d records", n)
	}
	if fired {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%s: %w: exceeded the CPU time limit of %v per batch and was stopped", prefix, ErrDeadline, in.m.r.cfg.BatchTimeout)
		}
		return fmt.Errorf("%s: canceled: %w", prefix, context.Cause(ctx))
	}
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		switch exit.ExitCode() {
		case sys.ExitCodeDeadlineExceeded:
			return fmt.Errorf("%s: %w: exceeded the CPU time limit of %v per batch and was stopped", prefix, ErrDeadline, in.m.r.cfg.BatchTimeout)
		case sys.ExitCodeContextCanceled:
			return fmt.Errorf("%s: canceled: %w", prefix, context.Canceled)
		}
	}
	// wazero appends the guest's whole wasm stack trace: keep the first line.
	if msg := err.Error(); strings.Contains(msg, "\nwasm stack trace:") {
		err = errors.New(msg[:strings.Index(msg, "\nwasm stack trace:")])
	}
	limit := in.m.r.cfg.MemoryLimitPages
	if mod != nil && mod.Memory() != nil {
		// A guest that cannot grow its memory traps (or, for Go, exits
		// with "out of memory"): say so when memory is near the limit.
		// "Near": within an eighth of the limit, at most 64 pages (Go
		// grows its heap in steps of up to 4 MiB).
		near := min(64, limit/8)
		if pages := mod.Memory().Size() / 65536; pages+near >= limit || strings.Contains(in.stderr.String(), "out of memory") {
			err = fmt.Errorf("%w: memory is at %d of the %d pages (%d MiB) allowed: %v", ErrMemoryLimit, pages, limit, limit/16, err)
		}
	}
	if tail := in.stderr.String(); tail != "" {
		return fmt.Errorf("%s: %w (guest output: %q)", prefix, err, tail)
	}
	return fmt.Errorf("%s: %w", prefix, err)
}

// Errors a Call wraps, for callers that decide whether to retry.
var (
	// ErrDeadline: a batch exceeded the CPU time limit.
	ErrDeadline = errors.New("deadline exceeded")
	// ErrMemoryLimit: the guest ran out of its memory limit.
	ErrMemoryLimit = errors.New("memory limit reached")
	// ErrGuest: the guest's function returned an error.
	ErrGuest = errors.New("function failed")
)

// Close frees the instance.
func (in *Instance) Close(ctx context.Context) error {
	in.wd.release()
	if in.mod == nil {
		return nil
	}
	err := in.mod.Close(ctx)
	in.mod = nil
	return err
}

// MemoryBytes returns the instance's current linear memory size (0 if it is
// not running).
func (in *Instance) MemoryBytes() uint32 {
	if in.mod == nil {
		return 0
	}
	return in.mem.Size()
}

// DecodeResponse decodes a guest's response (untrusted bytes, see ABI.md)
// into out: a status byte, then a record batch of schema s or an error
// message. Guest errors wrap ErrGuest; malformed batches wrap
// record.ErrMalformed.
func DecodeResponse(d *record.Decoder, resp []byte, s *record.Schema, out *record.Batch) error {
	out.Records = out.Records[:0]
	if len(resp) == 0 {
		return fmt.Errorf("empty response (want a status byte)")
	}
	switch resp[0] {
	case sdk.StatusOK:
		if err := d.Decode(resp[1:], s, out); err != nil {
			return fmt.Errorf("output batch: %w", err)
		}
		return nil
	case sdk.StatusError:
		msg := resp[1:]
		if len(msg) > 1024 {
			msg = msg[:1024]
		}
		return fmt.Errorf("%w: %q", ErrGuest, msg)
	}
	return fmt.Errorf("response status byte %d (want %d or %d)", resp[0], sdk.StatusOK, sdk.StatusError)
}

// headBuffer keeps the first max bytes written to it since its last
// Reset: the start of a guest's output says what went wrong (a Go crash
// begins with "fatal error: ..."), the rest is goroutine dumps.
type headBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (h *headBuffer) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if room := h.max - len(h.b); room > 0 {
		h.b = append(h.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (h *headBuffer) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return strings.TrimSpace(string(h.b))
}

func (h *headBuffer) Reset() {
	h.mu.Lock()
	h.b = h.b[:0]
	h.mu.Unlock()
}
