// Package substrate runs and connects to sealflow's messaging and storage
// substrate: NATS with JetStream. It starts the real nats-server embedded in the
// process (loopback, JetStream on, a store directory of the caller's choosing),
// connects clients to it or to an external NATS URL, and ensures the streams,
// key-value buckets and object stores the platform needs exist.
//
// Everything above this package only needs a NATS URL, so an embedded server and
// an external cluster are used the same way.
//
// # Durability
//
// JetStream acknowledges file-storage writes before they are flushed to disk by
// default (about every two minutes). Streams that hold data of record (ingest,
// sinks, checkpoints) must survive a power loss once acknowledged, so Start
// defaults to [SyncAlways]: every write is flushed before it is acknowledged.
// [SyncRelaxed] trades that guarantee for throughput and must be chosen
// explicitly (`sealflow up --durability relaxed`). The setting is per server,
// since nats-server applies it to every file-backed stream it stores. The
// measured cost is in docs/benchmarks.md, "Durability: sync vs relaxed"
// (BenchmarkPublish).
package substrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Sync is the durability setting of an embedded server: when JetStream flushes
// file-storage writes to disk relative to acknowledging them.
//
// The trade-off: [SyncAlways] pays an fsync per write (or per batch of writes
// the server stores together) before the publisher gets its acknowledgement,
// so an acknowledged write survives a power failure or kernel crash;
// [SyncRelaxed] acknowledges from the page cache and flushes periodically,
// which is faster but loses whatever was acknowledged since the last flush if
// the machine (not just the process) goes down. Jepsen's analysis of NATS
// 2.12.1 lost acknowledged writes exactly this way under JetStream's default
// (relaxed) flushing, which is why sealflow defaults to SyncAlways.
type Sync int

const (
	// SyncAlways flushes every write before acknowledging it ("sync" on the
	// command line). It is the default because streams of record must not lose
	// acknowledged data.
	SyncAlways Sync = iota
	// SyncRelaxed is nats-server's own default: flush every SyncInterval (two
	// minutes unless set), so an acknowledged write can be lost in a power
	// failure or kernel crash ("relaxed" on the command line).
	SyncRelaxed
)

// String returns "always" or "relaxed".
func (s Sync) String() string {
	switch s {
	case SyncAlways:
		return "always"
	case SyncRelaxed:
		return "relaxed"
	}
	return "sync(" + strconv.Itoa(int(s)) + ")"
}

// ParseSync parses a durability setting as given to --durability: "sync" (or
// "always", nats-server's word for it, or empty) for [SyncAlways], "relaxed"
// for [SyncRelaxed]. Any other value is an error naming the accepted ones.
func ParseSync(s string) (Sync, error) {
	switch s {
	case "sync", "always", "":
		return SyncAlways, nil
	case "relaxed":
		return SyncRelaxed, nil
	}
	return SyncAlways, fmt.Errorf("substrate: unknown durability %q (want sync or relaxed)", s)
}

// Options configure an embedded server.
type Options struct {
	// Host to listen on; loopback (127.0.0.1) if empty.
	Host string
	// Port to listen on; 0 picks a free port.
	Port int
	// StoreDir is where JetStream keeps its files. Required: sealflow never
	// stores data of record in a temporary directory it chose itself.
	StoreDir string
	// Sync is the durability setting: SyncAlways (the zero value) flushes
	// every write to disk before acknowledging it; SyncRelaxed acknowledges
	// first and flushes periodically, trading acknowledged writes lost on a
	// power failure or kernel crash for throughput. See [Sync].
	Sync Sync
	// SyncInterval is the flush interval under SyncRelaxed; nats-server's
	// default (two minutes) if zero.
	SyncInterval time.Duration
	// ServerName names the server in its logs and monitoring; "sealflow" if empty.
	ServerName string
	// MaxPayload is the largest message the server accepts; 8 MiB if zero,
	// enough for exchange frames and checkpoint chunks.
	MaxPayload int32
	// Logger receives the server's log lines; nothing is logged if nil.
	Logger *slog.Logger
	// ReadyTimeout bounds how long Start waits for the server to accept
	// connections; 10 s if zero.
	ReadyTimeout time.Duration
}

// Server is a running embedded nats-server.
type Server struct {
	ns   *server.Server
	opts Options
}

// Start starts an embedded nats-server with JetStream and waits until it accepts
// client connections or ctx ends.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.StoreDir == "" {
		return nil, errors.New("substrate: Options.StoreDir is empty; give the directory JetStream should store its data in")
	}
	if err := os.MkdirAll(o.StoreDir, 0o700); err != nil {
		return nil, fmt.Errorf("substrate: creating store directory %q: %w", o.StoreDir, err)
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port < 0 || o.Port > 65535 {
		return nil, fmt.Errorf("substrate: port %d out of range 0..65535", o.Port)
	}
	if o.ServerName == "" {
		o.ServerName = "sealflow"
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = 8 << 20
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 10 * time.Second
	}
	so := &server.Options{
		ServerName: o.ServerName,
		Host:       o.Host,
		Port:       o.Port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		MaxPayload: o.MaxPayload,
		NoSigs:     true,
		NoLog:      o.Logger == nil,
	}
	if so.Port == 0 {
		so.Port = server.RANDOM_PORT
	}
	switch o.Sync {
	case SyncAlways:
		so.SyncAlways = true
	case SyncRelaxed:
		so.SyncInterval = o.SyncInterval
	default:
		return nil, fmt.Errorf("substrate: unknown sync mode %v", o.Sync)
	}
	ns, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("substrate: configuring nats-server on %s: %w", net.JoinHostPort(o.Host, strconv.Itoa(o.Port)), err)
	}
	if o.Logger != nil {
		ns.SetLoggerV2(slogAdapter{o.Logger.With("component", "nats-server")}, false, false, false)
	}
	go ns.Start()

	deadline := time.Now().Add(o.ReadyTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	// ReadyForConnections polls internally; bound each wait so ctx is honoured.
	for !ns.ReadyForConnections(50 * time.Millisecond) {
		if err := ctx.Err(); err != nil {
			ns.Shutdown()
			return nil, fmt.Errorf("substrate: waiting for nats-server to start: %w", err)
		}
		if time.Now().After(deadline) {
			ns.Shutdown()
			return nil, fmt.Errorf("substrate: nats-server on %s with store %q not ready after %v", net.JoinHostPort(o.Host, strconv.Itoa(o.Port)), o.StoreDir, o.ReadyTimeout)
		}
	}
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		return nil, fmt.Errorf("substrate: nats-server started without JetStream (store %q)", o.StoreDir)
	}
	return &Server{ns: ns, opts: o}, nil
}

// ClientURL returns the URL clients connect to, such as nats://127.0.0.1:4222.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// Addr returns the address the server listens on for clients.
func (s *Server) Addr() net.Addr { return s.ns.Addr() }

// Options returns the options the server was started with, defaults filled in.
func (s *Server) Options() Options { return s.opts }

// Shutdown stops the server and waits until it has stopped. It is safe to call
// more than once.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// slogAdapter passes nats-server's log lines to slog.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Noticef(format string, v ...any) { a.l.Info(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Warnf(format string, v ...any)   { a.l.Warn(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Fatalf(format string, v ...any)  { a.l.Error(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Errorf(format string, v ...any)  { a.l.Error(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Debugf(format string, v ...any)  { a.l.Debug(fmt.Sprintf(format, v...)) }
func (a slogAdapter) Tracef(format string, v ...any)  { a.l.Debug(fmt.Sprintf(format, v...)) }
