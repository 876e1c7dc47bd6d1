package confidential

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/exchange"
	"github.com/sealflow/sealflow/seal"
)

// tamperTransport is a man in the middle on the exchanges: it changes the
// second frame every sender sends.
type tamperTransport struct {
	exchange.Transport
	mode string
}

func (t *tamperTransport) Sender(ctx context.Context, id exchange.ChannelID) (exchange.Sender, error) {
	s, err := t.Transport.Sender(ctx, id)
	if err != nil {
		return nil, err
	}
	return &tamperSender{Sender: s, mode: t.mode}, nil
}

type tamperSender struct {
	exchange.Sender
	mode string
	n    int
	prev []byte
	held []byte
}

func (s *tamperSender) Send(ctx context.Context, frame []byte) error {
	s.n++
	defer func() { s.prev = frame }()
	if s.n == 3 && s.held != nil {
		if err := s.Sender.Send(ctx, frame); err != nil {
			return err
		}
		return s.Sender.Send(ctx, s.held)
	}
	if s.n != 2 {
		return s.Sender.Send(ctx, frame)
	}
	switch s.mode {
	case "flip":
		f := bytes.Clone(frame)
		f[len(f)-1] ^= 0x80
		return s.Sender.Send(ctx, f)
	case "replay":
		return s.Sender.Send(ctx, s.prev)
	case "reorder":
		s.held = frame
		return nil
	case "unadmitted":
		// The frame an unadmitted sender would send in its place: same
		// channel and sequence, sealed with a key the job never received.
		h, err := seal.ParseHeader(frame)
		if err != nil {
			return err
		}
		keys := seal.NewKeyring()
		if _, err := keys.Generate(h.Scope, h.Epoch); err != nil {
			return err
		}
		sl, err := seal.NewSealer(keys, seal.KindExchange, h.Scope, h.Partition, seal.WithStartSeq(h.Seq))
		if err != nil {
			return err
		}
		f, err := sl.Seal(nil, []byte{0x02, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 0, 0) // a final watermark
		if err != nil {
			return err
		}
		return s.Sender.Send(ctx, f)
	}
	return s.Sender.Send(ctx, frame)
}

func (s *tamperSender) Close(ctx context.Context) error {
	if s.held != nil && s.n == 2 {
		if err := s.Sender.Send(ctx, s.held); err != nil {
			return err
		}
	}
	return s.Sender.Close(ctx)
}

// TestExchangeTamperingOverNATS runs the sealed pipeline with a man in the
// middle on its NATS exchanges: each attack fails the job with the seal rule
// that refused it, and the recipient never gets a complete output.
func TestExchangeTamperingOverNATS(t *testing.T) {
	_, nc, js := startNATS(t)
	base, err := exchange.NewNATS(nc, exchange.NATSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec, outSchema := pipelineSpec(t)
	for i, tc := range []struct {
		mode   string
		reason seal.Reason
	}{
		{"flip", seal.ReasonTampered},
		{"replay", seal.ReasonReplayed},
		{"reorder", seal.ReasonGap},
		{"unadmitted", seal.ReasonForeign},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			in, out := "meter-x"+string(rune('a'+i)), "totals-x"+string(rune('a'+i))
			keys := seal.NewKeyring()
			for _, sc := range []string{in, out} {
				if _, err := keys.Generate(sc, 1); err != nil {
					t.Fatal(err)
				}
			}
			pub, err := NewPublisher(ctx, js, in, meterSchema, keys, 2)
			if err != nil {
				t.Fatal(err)
			}
			for p := range 2 {
				var b record.Batch
				for n := p; n < 1000; n += 2 {
					b.Records = append(b.Records, meterReading(n))
				}
				if err := pub.Publish(ctx, uint32(p), &b); err != nil {
					t.Fatal(err)
				}
			}
			if err := pub.Close(ctx); err != nil {
				t.Fatal(err)
			}
			src, err := NewIngestSource(js, in, 2, keys)
			if err != nil {
				t.Fatal(err)
			}
			sink, err := NewOutputSink(ctx, js, out, outSchema, keys, 2)
			if err != nil {
				t.Fatal(err)
			}
			var rej rejections
			job := "tamper-" + tc.mode
			codec, err := NewEphemeralExchangeCodec(job, WithRejectHandler(rej.handler()))
			if err != nil {
				t.Fatal(err)
			}
			s2 := *spec
			s2.Nodes = slices.Clone(spec.Nodes)
			for k := range s2.Nodes {
				n := s2.Nodes[k]
				switch n.Params.Stream {
				case pipelineIngest:
					n.Params.Stream = in
				case pipelineOutput:
					n.Params.Stream = out
				}
				s2.Nodes[k] = n
			}
			_, err = runtime.Run(ctx, &s2, runtime.Options{
				Sources:         map[string]runtime.Source{in: src.Source()},
				Sinks:           map[string]runtime.Sink{out: sink.Sink()},
				Transport:       &tamperTransport{Transport: base, mode: tc.mode},
				Codec:           codec,
				JobID:           job,
				BatchSize:       64,
				DisableChaining: true,
			})
			var r *seal.Rejection
			if !errors.As(err, &r) || r.Reason != tc.reason {
				t.Fatalf("run error %v, want a %s rejection", err, tc.reason)
			}
			if got := rej.list(); !slices.Contains(got, string(tc.reason)) {
				t.Errorf("reported rejections %v, want %s among them", got, tc.reason)
			}
			// The failed job never closed its output: a recipient sees it
			// incomplete, never as a result.
			if recs, err := ReadOutput(ctx, js, out, outSchema, keys); err == nil {
				t.Errorf("recipient read %d records of a failed job's output", len(recs))
			}
		})
	}
}
