package confidential

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/exchange"
	"github.com/sealflow/sealflow/seal"
)

const (
	pipelineJob    = "grid-balance-1"
	pipelineIngest = "meter"
	pipelineOutput = "feeder-totals"
	pipelineN      = 3000
)

// pipelineSpec sums each feeder's readings per 5 s, with every edge an
// exchange between parallel tasks.
func pipelineSpec(t testing.TB) (*jobspec.Spec, *record.Schema) {
	t.Helper()
	b := jobspec.New("grid-balance").Parallelism(2).
		Schema("meter", jobspec.String("household"), jobspec.String("feeder"), jobspec.Int("wh"), jobspec.Int("ts"))
	b.Source(pipelineIngest, "meter", jobspec.EventTime("ts", 0)).
		Filter("wh > 0").
		KeyBy("feeder").
		Window(jobspec.Tumbling(5*time.Second), jobspec.Sum("wh", "wh"), jobspec.Count("n")).
		Sink(pipelineOutput)
	spec, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	r, err := spec.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range r.Nodes {
		if info.Node.Kind == jobspec.KindSink {
			return spec, info.Out
		}
	}
	t.Fatal("no sink node")
	return nil, nil
}

// pipelineRun is what one run of the pipeline left behind.
type pipelineRun struct {
	out      []record.Record
	nc       *nats.Conn
	tap      *WireTap
	keyBytes [][]byte
}

// runPipeline publishes the meter readings to the ingest stream, runs the
// job over NATS exchanges into the output stream and reads the output back
// as the recipient, all sealed, or all plaintext.
func runPipeline(t *testing.T, sealed bool) pipelineRun {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, nc, js := startNATS(t)
	tap, err := NewWireTap(connect(t, srv, "eavesdropper"))
	if err != nil {
		t.Fatal(err)
	}
	spec, outSchema := pipelineSpec(t)

	// The owner's gateway, the job's worker and the recipient hold
	// different keys.
	ownerKeys, jobKeys, recipientKeys := seal.NewKeyring(), seal.NewKeyring(), seal.NewKeyring()
	var opts []Option
	var codec runtime.FrameCodec = runtime.IdentityCodec{}
	var keyBytes [][]byte
	if sealed {
		ik, err := ownerKeys.Generate(pipelineIngest, 1)
		if err != nil {
			t.Fatal(err)
		}
		ok, err := jobKeys.Generate(pipelineOutput, 1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := jobKeys.Add(ik); err != nil {
			t.Fatal(err)
		}
		if _, err := recipientKeys.Add(ok); err != nil {
			t.Fatal(err)
		}
		ec, err := NewEphemeralExchangeCodec(pipelineJob)
		if err != nil {
			t.Fatal(err)
		}
		codec = ec
		xk, _ := ec.keys.Current(pipelineJob)
		for _, k := range []*seal.Key{ik, ok, xk} {
			b, err := k.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			keyBytes = append(keyBytes, b)
		}
	} else {
		opts = append(opts, WithPlaintext())
	}

	pub, err := NewPublisher(ctx, js, pipelineIngest, meterSchema, ownerKeys, 2, opts...)
	if err != nil {
		t.Fatal(err)
	}
	var parts [2][]record.Record
	for i := range pipelineN {
		parts[i%2] = append(parts[i%2], meterReading(i))
	}
	for p, recs := range parts {
		for len(recs) > 0 {
			n := min(len(recs), 200)
			if err := pub.Publish(ctx, uint32(p), batchOf(recs[:n]...)); err != nil {
				t.Fatal(err)
			}
			recs = recs[n:]
		}
	}
	if err := pub.Close(ctx); err != nil {
		t.Fatal(err)
	}

	var rej rejections
	src, err := NewIngestSource(js, pipelineIngest, 2, jobKeys, append(opts, WithRejectHandler(rej.handler()))...)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := NewOutputSink(ctx, js, pipelineOutput, outSchema, jobKeys, 2, opts...)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := exchange.NewNATS(nc, exchange.NATSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := runtime.Run(ctx, spec, runtime.Options{
		Sources:         map[string]runtime.Source{pipelineIngest: src.Source()},
		Sinks:           map[string]runtime.Sink{pipelineOutput: sink.Sink()},
		Transport:       tr,
		Codec:           codec,
		JobID:           pipelineJob,
		BatchSize:       128,
		DisableChaining: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Frames == 0 {
		t.Fatal("the job exchanged no frames")
	}
	if err := sink.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if r := rej.list(); len(r) > 0 {
		t.Fatalf("frames rejected in an untampered run: %v", r)
	}
	pos := src.Positions()
	if len(pos) != 2 || pos[0].Next != pos[1].Next || pos[0].Next == 0 {
		t.Errorf("source positions %v, want both partitions read to their last frame", pos)
	}
	out, err := ReadOutput(ctx, js, pipelineOutput, outSchema, recipientKeys, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := tap.Stop(); err != nil {
		t.Fatal(err)
	}
	return pipelineRun{out: out, nc: nc, tap: tap, keyBytes: keyBytes}
}

// TestSealedPipelineEqualsPlaintext runs the pipeline sealed and in
// plaintext: the outputs are equal and add up to the input; after the sealed
// run no field value and no key is anywhere on NATS (streams or wire), while
// after the plaintext run the same scan finds them.
func TestSealedPipelineEqualsPlaintext(t *testing.T) {
	sealedRun := runPipeline(t, true)
	plainRun := runPipeline(t, false)

	got, want := canonical(sealedRun.out), canonical(plainRun.out)
	if len(got) == 0 || len(got) != len(want) {
		t.Fatalf("sealed run output %d records, plaintext %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("record %d: sealed %s, plaintext %s", i, got[i], want[i])
		}
	}
	_, outSchema := pipelineSpec(t)
	wh, n := outSchema.Index("wh"), outSchema.Index("n")
	var sumWh, sumN, wantWh int64
	for _, r := range sealedRun.out {
		sumWh += r.Values[wh].I
		sumN += r.Values[n].I
	}
	for i := range pipelineN {
		wantWh += meterReading(i).Values[2].I
	}
	if sumWh != wantWh || sumN != pipelineN {
		t.Errorf("output sums to %d Wh over %d readings, input has %d Wh over %d", sumWh, sumN, wantWh, pipelineN)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	needles := append(plaintextNeedles(), sealedRun.keyBytes...)
	if len(sealedRun.keyBytes) != 3 {
		t.Fatalf("%d key needles, want 3", len(sealedRun.keyBytes))
	}
	found, err := ScanForPlaintext(ctx, sealedRun.nc, needles)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range found {
		t.Errorf("sealed run: plaintext on NATS: %s", f)
	}
	if sealedRun.tap.Len() == 0 {
		t.Fatal("the wire tap saw no messages")
	}
	for _, f := range sealedRun.tap.Scan(needles) {
		t.Errorf("sealed run: plaintext on the wire: %s", f)
	}

	found, err = ScanForPlaintext(ctx, plainRun.nc, plaintextNeedles())
	if err != nil {
		t.Fatal(err)
	}
	streams := map[string]bool{}
	for _, f := range found {
		streams[f.Stream] = true
	}
	if !streams[IngestStreamPrefix+pipelineIngest] || !streams[OutputStreamPrefix+pipelineOutput] {
		t.Errorf("plaintext run: the scan found needles in streams %v, want the ingest and the output stream", streams)
	}
	wire := 0
	for _, f := range plainRun.tap.Scan(plaintextNeedles()) {
		if f.Stream == "" && len(f.Subject) > 4 && f.Subject[:4] == "sf.x" {
			wire++
		}
	}
	if wire == 0 {
		t.Error("plaintext run: the wire tap found no needle in exchange frames")
	}
}
