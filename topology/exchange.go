package topology

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// CrossSite describes a durable exchange from a site to the hub: a stream in
// the site's JetStream domain that buffers what the site writes, and a stream
// in the hub's domain that sources it across domains. During a WAN outage the
// site's stream keeps accepting writes up to its limits; when the link returns
// the hub's source catches up, in order and without duplicates.
type CrossSite struct {
	// Stream names the site's stream; the hub's stream is HubStream.
	Stream string
	// Subjects are the subjects the site's stream captures.
	Subjects []string
	// Domain is the JetStream domain of the site's stream.
	Domain string
	// HubStream names the hub's stream; Stream if empty.
	HubStream string
	// MaxBytes bounds the site's buffer; required. When it is full, writes
	// are refused (discard new), never silently dropped.
	MaxBytes int64
	// MaxMsgs bounds the number of buffered messages; unlimited if zero.
	MaxMsgs int64
	// Storage is where both streams keep messages; file storage if zero.
	Storage jetstream.StorageType
	// Duplicates is the window in which both streams drop a repeated
	// Nats-Msg-Id; two minutes if zero.
	Duplicates time.Duration
	// KeepLast makes [Exchange.Trim] keep the last message of each subject
	// even when the hub holds it: a writer that continues a stream after a
	// restart (a sealed stream's commit sink) looks that message up.
	KeepLast bool
}

// Exchange is an ensured cross-site exchange.
type Exchange struct {
	cfg      CrossSite
	site     jetstream.JetStream
	hub      jetstream.JetStream
	siteS    jetstream.Stream
	pollBase time.Duration

	mu      sync.Mutex
	hubS    jetstream.Stream // nil until linked
	trimMu  sync.Mutex
	trimmed uint64
}

// ErrNotLinked reports that the hub's side of an exchange opened with
// [OpenCrossSite] has not been set up yet.
var ErrNotLinked = errors.New("topology: the hub's side of the exchange is not set up yet")

// ErrBufferFull reports that a site's buffer refused a write because it holds
// MaxBytes (or MaxMsgs) not yet copied to the hub.
var ErrBufferFull = errors.New("topology: site buffer full")

// EnsureCrossSite creates or updates the exchange's two streams. site is a
// JetStream context in the site's domain (a connection at the site, or
// jetstream.NewWithDomain); hub is one in the hub's domain. It waits until the
// hub reaches the site's stream, so it blocks through a WAN outage; a writer
// at the site that must not wait uses [OpenCrossSite] and [Exchange.Run].
func EnsureCrossSite(ctx context.Context, site, hub jetstream.JetStream, c CrossSite) (*Exchange, error) {
	x, err := OpenCrossSite(ctx, site, hub, c)
	if err != nil {
		return nil, err
	}
	if err := x.Link(ctx); err != nil {
		return nil, err
	}
	return x, nil
}

// OpenCrossSite creates or updates the site's stream of the exchange only,
// which needs no WAN link: writes at the site are buffered there from now
// on. [Exchange.Link] (or [Exchange.Run]) sets up the hub's side.
func OpenCrossSite(ctx context.Context, site, hub jetstream.JetStream, c CrossSite) (*Exchange, error) {
	switch {
	case c.Stream == "":
		return nil, errors.New("topology: cross-site exchange has no stream name")
	case len(c.Subjects) == 0:
		return nil, fmt.Errorf("topology: cross-site stream %q has no subjects", c.Stream)
	case c.Domain == "" || c.Domain == HubDomain:
		return nil, fmt.Errorf("topology: cross-site stream %q: domain %q must be a site's leafnode domain", c.Stream, c.Domain)
	case strings.ContainsAny(c.Domain, ".*> \t"):
		return nil, fmt.Errorf("topology: cross-site stream %q: domain %q is not a single subject token", c.Stream, c.Domain)
	case c.MaxBytes <= 0:
		return nil, fmt.Errorf("topology: cross-site stream %q: MaxBytes %d; a site buffer needs a positive bound", c.Stream, c.MaxBytes)
	}
	if c.HubStream == "" {
		c.HubStream = c.Stream
	}
	if c.Duplicates == 0 {
		c.Duplicates = 2 * time.Minute
	}
	maxMsgs := c.MaxMsgs
	if maxMsgs == 0 {
		maxMsgs = -1
	}
	siteS, err := site.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        c.Stream,
		Description: "sealflow cross-site buffer, sourced by hub stream " + c.HubStream,
		Subjects:    c.Subjects,
		Storage:     c.Storage,
		MaxBytes:    c.MaxBytes,
		MaxMsgs:     maxMsgs,
		Discard:     jetstream.DiscardNew,
		Duplicates:  c.Duplicates,
	})
	if err != nil {
		return nil, fmt.Errorf("topology: ensuring site stream %q in domain %q: %w", c.Stream, c.Domain, err)
	}
	return &Exchange{cfg: c, site: site, hub: hub, siteS: siteS, pollBase: 10 * time.Millisecond}, nil
}

// Link sets up the hub's side: it waits until the hub sees the site's
// stream, creates or updates the hub's stream sourcing it, and waits until
// the source is active. It blocks while the WAN link is down.
func (x *Exchange) Link(ctx context.Context) error {
	c := x.cfg
	// A source whose first request fails waits 10 s before its retry, so
	// first wait until the hub sees the site's stream across the leafnodes.
	if err := reachable(ctx, x.hub, c.Domain, c.Stream); err != nil {
		return err
	}
	hubS, err := x.hub.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        c.HubStream,
		Description: "sealflow cross-site copy of " + c.Stream + " in domain " + c.Domain,
		Storage:     c.Storage,
		Duplicates:  c.Duplicates,
		Sources: []*jetstream.StreamSource{{
			Name:     c.Stream,
			External: &jetstream.ExternalStream{APIPrefix: "$JS." + c.Domain + ".API"},
		}},
	})
	if err != nil {
		return fmt.Errorf("topology: ensuring hub stream %q sourcing %q from domain %q: %w", c.HubStream, c.Stream, c.Domain, err)
	}
	x.mu.Lock()
	x.hubS = hubS
	x.mu.Unlock()
	return x.waitSourcing(ctx)
}

// Run links the exchange, retrying every interval (1 s if zero) while the
// hub is unreachable, and then watches it ([Exchange.Watch]) until ctx ends.
// It is meant to run beside a writer at the site for the writer's lifetime;
// it returns ctx's error.
func (x *Exchange) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = time.Second
	}
	for {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := x.Link(lctx)
		cancel()
		if err == nil {
			break
		}
		tm := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			tm.Stop()
			return ctx.Err()
		case <-tm.C:
		}
	}
	return x.Watch(ctx, interval)
}

// hubStream returns the hub's stream, or ErrNotLinked.
func (x *Exchange) hubStream() (jetstream.Stream, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.hubS == nil {
		return nil, fmt.Errorf("topology: hub stream %q: %w", x.cfg.HubStream, ErrNotLinked)
	}
	return x.hubS, nil
}

// reachable waits until the stream named in domain answers a JetStream
// request sent over hub's connection, or ctx ends.
func reachable(ctx context.Context, hub jetstream.JetStream, domain, stream string) error {
	remote, err := jetstream.NewWithDomain(hub.Conn(), domain)
	if err != nil {
		return fmt.Errorf("topology: JetStream for domain %q: %w", domain, err)
	}
	for {
		probe, cancel := context.WithTimeout(ctx, time.Second)
		_, err = remote.Stream(probe, stream)
		cancel()
		if err == nil {
			return nil
		}
		tm := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			tm.Stop()
			return fmt.Errorf("topology: the hub cannot reach stream %q in domain %q (last error %v): %w", stream, domain, err, ctx.Err())
		case <-tm.C:
		}
	}
}

// waitSourcing waits until the hub's source has reached the site's stream
// once. A source whose first consumer request is lost (the link dropped while
// it was in flight) is retried by nats-server only after a backoff of 10 s or
// more, so returning before the source is active would let an early outage
// delay catch-up needlessly.
func (x *Exchange) waitSourcing(ctx context.Context) error {
	hubS, err := x.hubStream()
	if err != nil {
		return err
	}
	for {
		info, err := hubS.Info(ctx)
		if err == nil && len(info.Sources) == 1 && info.Sources[0].Active >= 0 {
			return nil
		}
		if err == nil && len(info.Sources) == 1 && info.Sources[0].Error != nil {
			err = info.Sources[0].Error
		}
		tm := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			tm.Stop()
			return fmt.Errorf("topology: hub stream %q has not reached site stream %q in domain %q (last error %v): %w", x.cfg.HubStream, x.cfg.Stream, x.cfg.Domain, err, ctx.Err())
		case <-tm.C:
		}
	}
}

// SiteStream is the buffering stream at the site.
func (x *Exchange) SiteStream() jetstream.Stream { return x.siteS }

// HubStream is the hub's copy; nil until the exchange is linked.
func (x *Exchange) HubStream() jetstream.Stream {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.hubS
}

// Copied returns the sequence, in the site's stream, of the last message the
// hub holds; 0 if the hub holds none.
func (x *Exchange) Copied(ctx context.Context) (uint64, error) {
	hubS, err := x.hubStream()
	if err != nil {
		return 0, err
	}
	info, err := hubS.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("topology: reading hub stream %q: %w", x.cfg.HubStream, err)
	}
	if info.State.LastSeq == 0 || info.State.Msgs == 0 {
		return 0, nil
	}
	m, err := hubS.GetMsg(ctx, info.State.LastSeq)
	if err != nil {
		return 0, fmt.Errorf("topology: reading hub stream %q message %d: %w", x.cfg.HubStream, info.State.LastSeq, err)
	}
	return SourceSeq(m.Header.Get(sourceHeader))
}

// Restart makes the hub re-establish its source now. nats-server retries a
// source whose consumer requests failed (as they do through a WAN outage
// longer than about 10 s) with a backoff that grows by 10 s per failure up
// to 2 min, so catch-up can start long after the link has returned. Restart
// removes the source and adds it back; the hub resumes after the last
// message it holds (it finds the position in the messages' source headers),
// so nothing is copied twice. Call it when the link to the site returns.
func (x *Exchange) Restart(ctx context.Context) error {
	hubS, err := x.hubStream()
	if err != nil {
		return err
	}
	info, err := hubS.Info(ctx)
	if err != nil {
		return fmt.Errorf("topology: reading hub stream %q: %w", x.cfg.HubStream, err)
	}
	cfg := info.Config
	src := cfg.Sources
	cfg.Sources = nil
	if _, err := x.hub.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("topology: restarting source of hub stream %q (removing it): %w", x.cfg.HubStream, err)
	}
	cfg.Sources = src
	if _, err := x.hub.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("topology: restarting source of hub stream %q (adding it back): %w", x.cfg.HubStream, err)
	}
	return nil
}

// StaleAfter is how long the hub's source may be silent before [Exchange.Heal]
// restarts it (once the site is reachable). The source consumer sends a
// heartbeat every second while it is healthy.
const StaleAfter = 3 * time.Second

// Heal restarts the hub's source if it has been silent for StaleAfter while
// the hub can reach the site's stream, which is the state a WAN outage
// leaves behind. It reports whether it restarted the source.
func (x *Exchange) Heal(ctx context.Context) (bool, error) {
	hubS, err := x.hubStream()
	if err != nil {
		return false, err
	}
	info, err := hubS.Info(ctx)
	if err != nil {
		return false, fmt.Errorf("topology: reading hub stream %q: %w", x.cfg.HubStream, err)
	}
	if len(info.Sources) != 1 {
		return false, fmt.Errorf("topology: hub stream %q has %d sources, want 1", x.cfg.HubStream, len(info.Sources))
	}
	if si := info.Sources[0]; si.Active >= 0 && si.Active < StaleAfter {
		return false, nil
	}
	probe, cancel := context.WithTimeout(ctx, time.Second)
	err = reachable(probe, x.hub, x.cfg.Domain, x.cfg.Stream)
	cancel()
	if err != nil {
		// The site is still unreachable; nothing to heal yet.
		return false, nil
	}
	if err := x.Restart(ctx); err != nil {
		return false, err
	}
	return true, nil
}

// Watch calls Heal every interval (1 s if zero) until ctx ends; it is meant
// to run beside the exchange for its lifetime. A failed Heal (the hub itself
// unreachable) is retried at the next tick. Watch returns ctx's error.
func (x *Exchange) Watch(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			_, _ = x.Heal(ctx)
		}
	}
}

// SourceSeq extracts the origin sequence from a Nats-Stream-Source header
// ("<stream> <seq> <filter> <transform> <subject>").
func SourceSeq(h string) (uint64, error) {
	f := strings.Fields(h)
	if len(f) < 2 {
		return 0, fmt.Errorf("topology: source header %q has no sequence", h)
	}
	seq, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil || seq == 0 {
		return 0, fmt.Errorf("topology: source header %q: sequence %q is not a positive integer", h, f[1])
	}
	return seq, nil
}

// Trim removes from the site's buffer every message the hub already holds
// (with CrossSite.KeepLast, except the last message of each subject) and
// returns how many the buffer still holds.
func (x *Exchange) Trim(ctx context.Context) (uint64, error) {
	x.trimMu.Lock()
	defer x.trimMu.Unlock()
	seq, err := x.Copied(ctx)
	if err != nil {
		return 0, err
	}
	if seq > x.trimmed {
		if err := x.purgeBelow(ctx, seq+1); err != nil {
			return 0, fmt.Errorf("topology: trimming site stream %q below %d: %w", x.cfg.Stream, seq+1, err)
		}
		x.trimmed = seq
	}
	info, err := x.siteS.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("topology: reading site stream %q: %w", x.cfg.Stream, err)
	}
	return info.State.Msgs, nil
}

// purgeBelow removes the site's messages below seq, keeping each subject's
// last message under KeepLast.
func (x *Exchange) purgeBelow(ctx context.Context, seq uint64) error {
	if !x.cfg.KeepLast {
		return x.siteS.Purge(ctx, jetstream.WithPurgeSequence(seq))
	}
	info, err := x.siteS.Info(ctx, jetstream.WithSubjectFilter(">"))
	if err != nil {
		return err
	}
	for subj := range info.State.Subjects {
		last, err := x.siteS.GetLastMsgForSubject(ctx, subj)
		if err != nil {
			return err
		}
		if upTo := min(seq, last.Sequence); upTo > 1 {
			if err := x.siteS.Purge(ctx, jetstream.WithPurgeSubject(subj), jetstream.WithPurgeSequence(upTo)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Publish writes m to the site's buffer. When the buffer is full it trims
// what the hub already holds and retries, waiting (with backoff up to 1 s)
// until there is room or ctx ends: the writer is slowed, nothing is dropped.
// Set a Nats-Msg-Id header on m to make retries after an ambiguous failure
// safe (or pass jetstream.WithMsgID in opts). Safe for concurrent use.
func (x *Exchange) Publish(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	wait := x.pollBase
	full := false
	for {
		ack, err := x.site.PublishMsg(ctx, m, opts...)
		if err == nil {
			return ack, nil
		}
		if !IsBufferFull(err) {
			if full && ctx.Err() != nil {
				// The deadline struck while retrying into a full buffer.
				return nil, fmt.Errorf("topology: publishing %q: %w: %w", m.Subject, ErrBufferFull, ctx.Err())
			}
			return nil, fmt.Errorf("topology: publishing %q to site stream %q: %w", m.Subject, x.cfg.Stream, err)
		}
		full = true
		if _, terr := x.Trim(ctx); terr != nil && ctx.Err() == nil {
			// The hub is unreachable during an outage; keep waiting.
			wait = min(2*wait, time.Second)
		} else {
			wait = x.pollBase
		}
		tm := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			tm.Stop()
			return nil, fmt.Errorf("topology: publishing %q: %w: %w", m.Subject, ErrBufferFull, ctx.Err())
		case <-tm.C:
		}
	}
}

// IsBufferFull reports whether err is a stream refusing a write because it
// reached MaxBytes or MaxMsgs under discard-new.
func IsBufferFull(err error) bool {
	if errors.Is(err, ErrBufferFull) {
		return true
	}
	var ae *jetstream.APIError
	if !errors.As(err, &ae) {
		return false
	}
	return ae.ErrorCode == 10077 && (strings.Contains(ae.Description, "maximum bytes exceeded") || strings.Contains(ae.Description, "maximum messages exceeded"))
}

// sourceHeader is the header nats-server sets on a sourced message, naming
// the origin stream and sequence.
const sourceHeader = "Nats-Stream-Source"
