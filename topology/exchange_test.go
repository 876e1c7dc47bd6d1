package topology

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sealflow/sealflow/substrate"
)

// chain is cloud (hub) <- regional <- edge <- device, so the edge's data
// crosses two emulated links on its way to the hub.
const chain = `
name: chain
sites:
  - {name: cloud, tier: cloud, region: eu, nats: {role: hub}}
  - name: regional
    tier: regional
    region: eu-north
    parent: cloud
    nats: {role: leafnode}
    link: {latencyMs: 10}
  - name: edge
    tier: edge
    region: eu-north
    parent: regional
    nats: {role: leafnode, domain: edge-dom}
    link: {latencyMs: 5, bandwidth: 100Mbit}
  - name: meter
    tier: device
    region: eu-north
    parent: edge
    nats: {role: client}
    link: {latencyMs: 2}
`

func startChain(t *testing.T) *Running {
	t.Helper()
	topo, err := Parse([]byte(chain))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	r, err := Start(ctx, topo, t.TempDir(), WithSync(substrate.SyncRelaxed), WithReconnectInterval(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	if err := r.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	return r
}

func js(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := substrate.Connect(t.Context(), url, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	j, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// ensure retries EnsureCrossSite until the leafnode routes the domain's API
// (interest propagates just after the connection is up).
func ensure(t *testing.T, site, hub jetstream.JetStream, c CrossSite) *Exchange {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for {
		x, err := EnsureCrossSite(ctx, site, hub, c)
		if err == nil {
			return x
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// hubMsgs waits until the hub stream holds want messages and returns their
// bodies in stream order and when the count was reached.
func hubMsgs(t *testing.T, x *Exchange, want int, within time.Duration) ([]string, time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), within)
	defer cancel()
	for {
		info, err := x.HubStream().Info(ctx)
		if err == nil && info.State.Msgs >= uint64(want) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("hub stream holds %v messages after %v, want %d (last error %v)", msgsOf(info), within, want, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	reached := time.Now()
	c, err := x.HubStream().OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := x.HubStream().Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for uint64(len(out)) < info.State.Msgs {
		batch, err := c.Fetch(min(1000, int(info.State.Msgs)-len(out)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatalf("reading hub messages from %d: %v", len(out)+1, err)
		}
		n := len(out)
		for m := range batch.Messages() {
			out = append(out, string(m.Data()))
		}
		if err := batch.Error(); err != nil && len(out) == n {
			t.Fatalf("reading hub messages from %d: %v", len(out)+1, err)
		}
	}
	return out, reached
}

func msgsOf(info *jetstream.StreamInfo) any {
	if info == nil {
		return "unknown"
	}
	return info.State.Msgs
}

// checkSequence fails unless got is exactly body-0 .. body-(n-1) in order.
func checkSequence(t *testing.T, got []string, n int) {
	t.Helper()
	if len(got) != n {
		t.Errorf("hub holds %d messages, want exactly %d", len(got), n)
	}
	for i, g := range got {
		if want := "m-" + strconv.Itoa(i); g != want {
			t.Fatalf("hub message %d is %q, want %q (lost, duplicated or reordered)", i+1, g, want)
		}
	}
}

func msg(subject string, i int) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = []byte("m-" + strconv.Itoa(i))
	m.Header.Set(jetstream.MsgIDHeader, "m-"+strconv.Itoa(i))
	return m
}

func TestCrossSiteSurvivesOutage(t *testing.T) {
	r := startChain(t)
	// Devices publish through their own link into the edge's domain.
	dev := js(t, r.URL("meter"))
	hub := js(t, r.URL("cloud"))
	x := ensure(t, dev, hub, CrossSite{Stream: "READINGS", Subjects: []string{"readings.>"}, Domain: r.Site("edge").Domain, MaxBytes: 8 << 20})
	ctx := t.Context()

	n := 0
	publish := func() {
		if _, err := x.Publish(ctx, msg("readings.meter", n)); err != nil {
			t.Fatalf("publishing message %d: %v", n, err)
		}
		n++
	}
	for range 50 {
		publish()
	}
	got, _ := hubMsgs(t, x, 50, 10*time.Second)
	checkSequence(t, got, 50)

	// An outage of the edge's uplink (3 s unless SEALFLOW_GEO_OUTAGE says
	// otherwise, such as 30s): the edge keeps accepting writes.
	outage := 3 * time.Second
	if v := os.Getenv("SEALFLOW_GEO_OUTAGE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("SEALFLOW_GEO_OUTAGE=%q: %v", v, err)
		}
		outage = d
	}
	// The watcher restarts the hub's source once the edge is reachable again.
	wctx, stop := context.WithCancel(ctx)
	watched := make(chan error, 1)
	go func() { watched <- x.Watch(wctx, 200*time.Millisecond) }()
	defer func() { stop(); <-watched }()

	link := r.Link("edge")
	link.SetDown(true)
	before := n
	end := time.Now().Add(outage)
	tick := time.NewTicker(5 * time.Millisecond) // about 200 writes a second
	defer tick.Stop()
	for time.Now().Before(end) {
		<-tick.C
		publish()
	}
	if n-before < 50 {
		t.Fatalf("only %d writes accepted at the edge during the outage", n-before)
	}
	info, err := x.HubStream().Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 50 {
		t.Fatalf("hub got %d messages during the outage, want the 50 from before it", info.State.Msgs)
	}

	up := time.Now()
	link.SetDown(false)
	got, reached := hubMsgs(t, x, n, 20*time.Second+outage)
	checkSequence(t, got, n)
	t.Logf("backlog of %d messages written during a %v outage drained %v after the link returned", n-before, outage, reached.Sub(up))

	left, err := x.Trim(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("after Trim the edge buffer holds %d messages the hub already has", left)
	}
}

// padded is message i with a 1000-byte header, so the body stays "m-<i>".
func padded(i int) *nats.Msg {
	m := msg("small.x", i)
	m.Header.Set("Pad", strings.Repeat("p", 1000))
	return m
}

func TestCrossSiteBackpressure(t *testing.T) {
	r := startChain(t)
	edge := js(t, r.URL("edge"))
	hub := js(t, r.URL("cloud"))
	x := ensure(t, edge, hub, CrossSite{Stream: "SMALL", Subjects: []string{"small.>"}, Domain: r.Site("edge").Domain, MaxBytes: 32 << 10})
	ctx := t.Context()
	r.Link("edge").SetDown(true)

	// Fill the buffer with raw publishes until the edge refuses.
	accepted := 0
	var refusal error
	for i := range 1000 {
		if _, err := edge.PublishMsg(ctx, padded(i)); err != nil {
			refusal = err
			break
		}
		accepted++
	}
	if refusal == nil || !IsBufferFull(refusal) {
		t.Fatalf("after %d writes of 1 KB into a 32 KiB buffer: error %v, want a buffer-full refusal", accepted, refusal)
	}
	if accepted < 10 {
		t.Fatalf("only %d writes accepted before the buffer was full", accepted)
	}
	info, err := x.SiteStream().Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.FirstSeq != 1 || info.State.Msgs != uint64(accepted) {
		t.Fatalf("full edge buffer holds seqs %d.. (%d msgs), want 1.. (%d msgs): it discarded old data", info.State.FirstSeq, info.State.Msgs, accepted)
	}

	// A blocking publish waits for room rather than failing or dropping.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = x.Publish(short, padded(accepted))
	cancel()
	if !errors.Is(err, ErrBufferFull) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish into a full buffer during an outage = %v, want ErrBufferFull after the deadline", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := x.Publish(ctx, padded(accepted))
		done <- err
	}()
	r.Link("edge").SetDown(false)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Publish after the link returned: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Publish still blocked 20 s after the link returned")
	}
	got, _ := hubMsgs(t, x, accepted+1, 20*time.Second)
	checkSequence(t, got, accepted+1)
}

func TestSourceSeq(t *testing.T) {
	for _, tc := range []struct {
		h    string
		want uint64
		ok   bool
	}{
		{"READINGS:abcd 42 > > readings.x", 42, true},
		{"READINGS 7", 7, true},
		{"READINGS", 0, false},
		{"", 0, false},
		{"READINGS x > >", 0, false},
		{"READINGS 0 > >", 0, false},
	} {
		got, err := SourceSeq(tc.h)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("SourceSeq(%q) = %d, %v; want %d, ok=%v", tc.h, got, err, tc.want, tc.ok)
		}
	}
}

func TestEnsureCrossSiteRefusesBadConfig(t *testing.T) {
	for _, c := range []CrossSite{
		{Subjects: []string{"a"}, Domain: "e", MaxBytes: 1},
		{Stream: "S", Domain: "e", MaxBytes: 1},
		{Stream: "S", Subjects: []string{"a"}, Domain: "hub", MaxBytes: 1},
		{Stream: "S", Subjects: []string{"a"}, Domain: "a.b", MaxBytes: 1},
		{Stream: "S", Subjects: []string{"a"}, Domain: "e"},
	} {
		if _, err := EnsureCrossSite(context.Background(), nil, nil, c); err == nil {
			t.Errorf("EnsureCrossSite(%+v) accepted a bad config", c)
		}
	}
}

// TestCrossSiteOpenedDuringOutageKeepsLast opens an exchange while the link is
// down: the site's stream takes writes at once, Run links the hub's side when
// the link returns, and a KeepLast Trim removes what the hub holds except each
// subject's last message, which a continuing writer looks up.
func TestCrossSiteOpenedDuringOutageKeepsLast(t *testing.T) {
	r := startChain(t)
	edge := js(t, r.URL("edge"))
	hub := js(t, r.URL("cloud"))
	ctx := t.Context()
	r.Link("edge").SetDown(true)
	x, err := OpenCrossSite(ctx, edge, hub, CrossSite{Stream: "KL", Subjects: []string{"kl.*"}, Domain: r.Site("edge").Domain, MaxBytes: 1 << 20, KeepLast: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x.Trim(ctx); !errors.Is(err, ErrNotLinked) {
		t.Fatalf("Trim before the hub's side exists = %v, want ErrNotLinked", err)
	}
	rctx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- x.Run(rctx, 100*time.Millisecond) }()
	defer func() { stop(); <-ran }()
	const n = 10
	for i := range n {
		if _, err := x.Publish(ctx, msg("kl."+strconv.Itoa(i%2), i)); err != nil {
			t.Fatalf("publish %d at the site during the outage: %v", i, err)
		}
	}
	r.Link("edge").SetDown(false)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if seq, err := x.Copied(ctx); err == nil && seq == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the hub did not copy the site's 10 messages within 30 s of the link returning")
		}
		time.Sleep(50 * time.Millisecond)
	}
	left, err := x.Trim(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if left != 2 {
		t.Fatalf("after a KeepLast Trim the site holds %d messages, want 2 (the last of kl.0 and kl.1)", left)
	}
	for subj, want := range map[string]uint64{"kl.0": n - 1, "kl.1": n} {
		m, err := x.SiteStream().GetLastMsgForSubject(ctx, subj)
		if err != nil || m.Sequence != want {
			t.Fatalf("last message of %s at the site: %v %v, want sequence %d", subj, m, err, want)
		}
	}
}
