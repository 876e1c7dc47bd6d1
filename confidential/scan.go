package confidential

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Finding is a message that contains one of the needles ScanForPlaintext or
// a WireTap looked for.
type Finding struct {
	// Stream is the JetStream stream holding the message ("" for a message
	// seen on the wire by a WireTap).
	Stream string
	// Subject and Seq locate the message (Seq is 0 on the wire).
	Subject string
	Seq     uint64
	// Needle is the index of the needle found, Where the part of the message
	// it was found in: "data", "header" or "subject".
	Needle int
	Where  string
}

// String describes the finding.
func (f Finding) String() string {
	if f.Stream == "" {
		return fmt.Sprintf("needle %d in the %s of a message on subject %q", f.Needle, f.Where, f.Subject)
	}
	return fmt.Sprintf("needle %d in the %s of message %d (subject %q) of stream %s", f.Needle, f.Where, f.Seq, f.Subject, f.Stream)
}

func findNeedles(needles [][]byte, stream, subject string, seq uint64, data []byte, hdr nats.Header) []Finding {
	var out []Finding
	for i, n := range needles {
		if len(n) == 0 {
			continue
		}
		switch {
		case bytes.Contains(data, n):
			out = append(out, Finding{Stream: stream, Subject: subject, Seq: seq, Needle: i, Where: "data"})
		case bytes.Contains([]byte(subject), n):
			out = append(out, Finding{Stream: stream, Subject: subject, Seq: seq, Needle: i, Where: "subject"})
		default:
			for k, vs := range hdr {
				found := bytes.Contains([]byte(k), n)
				for _, v := range vs {
					found = found || bytes.Contains([]byte(v), n)
				}
				if found {
					out = append(out, Finding{Stream: stream, Subject: subject, Seq: seq, Needle: i, Where: "header"})
					break
				}
			}
		}
	}
	return out
}

// ScanForPlaintext reads every message of every JetStream stream the
// connection can see (key-value buckets and object stores are the streams
// KV_* and OBJ_*), as the infrastructure stores it, and reports each message
// whose data, headers or subject contain any of needles (record field
// values, key bytes). Streams that grow during the scan are read up to their
// last message at the time the scan reached them. Each message is searched
// on its own: a needle split across two object-store chunks is not found.
func ScanForPlaintext(ctx context.Context, nc *nats.Conn, needles [][]byte) ([]Finding, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("confidential: scan: %w", err)
	}
	var names []string
	lister := js.StreamNames(ctx)
	for name := range lister.Name() {
		names = append(names, name)
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("confidential: scan: listing streams: %w", err)
	}
	var out []Finding
	for _, name := range names {
		stream, err := js.Stream(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("confidential: scan: stream %s: %w", name, err)
		}
		info, err := stream.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("confidential: scan: stream %s: %w", name, err)
		}
		if info.State.Msgs == 0 {
			continue
		}
		err = readStream(ctx, stream, info.State.LastSeq, func(m jetstream.Msg) (bool, error) {
			md, err := m.Metadata()
			if err != nil {
				return false, err
			}
			out = append(out, findNeedles(needles, name, m.Subject(), md.Sequence.Stream, m.Data(), m.Headers())...)
			return false, nil
		})
		if err != nil {
			return nil, fmt.Errorf("confidential: scan: %w", err)
		}
	}
	return out, nil
}

// WireTap records every core NATS message published on a server while it
// runs, as an eavesdropper on the infrastructure would see them (exchange
// frames travel on core NATS and are not stored). Stop it before Scan. It
// keeps every message in memory: use it in tests and demos only.
type WireTap struct {
	sub  *nats.Subscription
	mu   sync.Mutex
	msgs []*nats.Msg
}

// NewWireTap subscribes to every subject (">") on nc.
func NewWireTap(nc *nats.Conn) (*WireTap, error) {
	t := &WireTap{}
	sub, err := nc.Subscribe(">", func(m *nats.Msg) {
		t.mu.Lock()
		t.msgs = append(t.msgs, m)
		t.mu.Unlock()
	})
	if err != nil {
		return nil, fmt.Errorf("confidential: wire tap: %w", err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return nil, fmt.Errorf("confidential: wire tap: %w", err)
	}
	if err := nc.Flush(); err != nil {
		return nil, fmt.Errorf("confidential: wire tap: %w", err)
	}
	t.sub = sub
	return t, nil
}

// Stop ends the recording.
func (t *WireTap) Stop() error { return t.sub.Unsubscribe() }

// Len returns the number of messages recorded.
func (t *WireTap) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.msgs)
}

// Scan reports the recorded messages containing any of needles.
func (t *WireTap) Scan(needles [][]byte) []Finding {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Finding
	for _, m := range t.msgs {
		out = append(out, findNeedles(needles, "", m.Subject, 0, m.Data, m.Header)...)
	}
	return out
}
