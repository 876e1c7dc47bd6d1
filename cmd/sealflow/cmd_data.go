package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/client"
	"github.com/sealflow/sealflow/confidential"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/substrate"
)

func init() {
	register("owner publish", "seal JSON-lines records at the source (the gateway role) into the owner's stream on NATS", runOwnerPublish)
	register("service results", "as an accepted recipient, fetch the output key and decrypt a job's output stream", runServiceResults)
}

// natsFlag adds --nats, defaulting to $SEALFLOW_NATS or the nats_url of the
// endpoints file `sealflow up` writes.
func natsFlag(fs *flag.FlagSet) *string {
	return fs.String("nats", os.Getenv("SEALFLOW_NATS"), "the NATS URL ($SEALFLOW_NATS; default: nats_url of .sealflow/up/endpoints.json)")
}

func natsURLOrDefault(u string) (string, error) {
	if u != "" {
		return u, nil
	}
	var ep Endpoints
	if err := readJSONFile(".sealflow/up/endpoints.json", &ep); err != nil || ep.NATSURL == "" {
		return "", fmt.Errorf("%w: --nats is required (no .sealflow/up/endpoints.json from 'sealflow up')", errUsage)
	}
	return ep.NATSURL, nil
}

func readJSONFile(path string, v any) error {
	return waitFile(context.Background(), path, 0, v)
}

func runOwnerPublish(ctx context.Context, args []string) error {
	fs := newFlags("owner publish")
	pf := addPartyFlags(fs)
	stream := fs.String("stream", "", "the stream to publish to (registered with 'owner register-stream')")
	input := fs.String("input", "-", "JSON lines, one record per line, with the stream's field names (- for standard input)")
	timeField := fs.String("time-field", "", "the int field holding each record's event time in epoch ms (default: none, time 0)")
	partition := fs.Uint("partition", 0, "the partition to publish to")
	batch := fs.Int("batch", 256, "records per sealed frame")
	pad := fs.Int("pad", 0, "pad every frame's contents to a multiple of this many bytes, so frame sizes say less about the records (0: no padding)")
	nats := natsFlag(fs)
	if err := parseParty(fs, args, 0); err != nil {
		return err
	}
	if *stream == "" {
		return fmt.Errorf("%w: --stream is required", errUsage)
	}
	c, err := pf.client()
	if err != nil {
		return err
	}
	if _, err := pf.keyFile(); err != nil {
		return err
	}
	url, err := natsURLOrDefault(*nats)
	if err != nil {
		return err
	}
	ks, err := client.LoadOwnerKeys(client.KeystorePath(pf.key))
	if err != nil {
		return err
	}
	epoch, key, ok := ks.Latest(*stream)
	if !ok {
		return fmt.Errorf("no data key for stream %s in %s: register the stream with this key file first", *stream, client.KeystorePath(pf.key))
	}
	schema, parts, err := streamSchema(ctx, c, *stream)
	if err != nil {
		return err
	}
	if int(*partition) >= parts {
		return fmt.Errorf("stream %s has %d partitions; --partition %d does not exist", *stream, parts, *partition)
	}
	ring := seal.NewKeyring()
	if _, err := ring.AddSecret(*stream, epoch, key); err != nil {
		return err
	}
	nc, err := substrate.Connect(ctx, url, "sealflow-owner-publish")
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	var opts []confidential.Option
	if *pad > 0 {
		opts = append(opts, confidential.WithPadding(*pad))
	}
	pub, err := confidential.NewPublisher(ctx, js, *stream, schema, ring, parts, opts...)
	if err != nil {
		return err
	}
	in := io.Reader(os.Stdin)
	if *input != "-" {
		f, err := os.Open(*input)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	dec, err := record.NewJSONDecoder(schema, *timeField)
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var b record.Batch
	n, line := 0, 0
	flush := func() error {
		if b.Len() == 0 {
			return nil
		}
		err := pub.Publish(ctx, uint32(*partition), &b)
		b.Reset()
		return err
	}
	for sc.Scan() {
		line++
		if len(sc.Bytes()) == 0 {
			continue
		}
		var rec record.Record
		if err := dec.Decode(sc.Bytes(), line, &rec); err != nil {
			return fmt.Errorf("%s: %w (nothing after line %d was published; %d records before it were)", *input, err, line-1, n)
		}
		b.Records = append(b.Records, rec)
		n++
		if b.Len() >= *batch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	if err := pub.Close(ctx); err != nil {
		return err
	}
	res := map[string]any{"stream": *stream, "records": n, "epoch": epoch, "partitions": parts}
	return pf.emit(res, func(w io.Writer) {
		fmt.Fprintf(w, "sealed and published %d records to %s (epoch %d) and closed the stream\n", n, *stream, epoch)
	})
}

// streamSchema fetches a registered stream's schema and partition count.
func streamSchema(ctx context.Context, c *client.Client, name string) (*record.Schema, int, error) {
	var vs []api.StreamView
	if err := c.Get(ctx, "/v1/streams", &vs); err != nil {
		return nil, 0, err
	}
	for _, v := range vs {
		if v.Name != name {
			continue
		}
		s := &record.Schema{}
		for _, f := range v.Schema {
			t, err := record.ParseType(f.Type)
			if err != nil {
				return nil, 0, fmt.Errorf("stream %s field %s: %w", name, f.Name, err)
			}
			s.Fields = append(s.Fields, record.Field{Name: f.Name, Type: t})
		}
		return s, max(v.Partitions, 1), nil
	}
	return nil, 0, fmt.Errorf("stream %q is not registered", name)
}

func runServiceResults(ctx context.Context, args []string) error {
	fs := newFlags("service results")
	pf := addPartyFlags(fs)
	job := fs.String("job", "", "the job whose output to read")
	output := fs.String("output", "", "the output stream (default: the job's only output)")
	nats := natsFlag(fs)
	if err := parseParty(fs, args, 0); err != nil {
		return err
	}
	if *job == "" {
		return fmt.Errorf("%w: --job is required", errUsage)
	}
	c, kf, err := pf.signer()
	if err != nil {
		return err
	}
	url, err := natsURLOrDefault(*nats)
	if err != nil {
		return err
	}
	svc, _, err := c.JobService(ctx, *job)
	if err != nil {
		return err
	}
	if *output == "" {
		if len(svc.Manifest.Outputs) != 1 {
			return fmt.Errorf("%w: job %s has outputs %v; name one with --output", errUsage, *job, svc.Manifest.Outputs)
		}
		*output = svc.Manifest.Outputs[0]
	}
	key, err := c.RequestOutputKey(ctx, kf, *job, *output)
	var re *client.RefusedError
	if errors.As(err, &re) {
		return fmt.Errorf("the orchestrator refused the output key by rule %s: %w", re.Rule, err)
	}
	if err != nil {
		return err
	}
	schema, err := svc.Manifest.SinkSchema(*output)
	if err != nil {
		return err
	}
	ring := seal.NewKeyring()
	if _, err := ring.AddSecret(*output, 0, key); err != nil {
		return err
	}
	clear(key)
	nc, err := substrate.Connect(ctx, url, "sealflow-results")
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	recs, err := confidential.ReadOutput(ctx, js, *output, schema, ring)
	if err != nil {
		return err
	}
	enc := record.NewJSONEncoder(schema)
	var buf []byte
	for i := range recs {
		buf = enc.Append(buf[:0], &recs[i])
		if _, err := cliOut.Write(buf); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "decrypted %d records of %s\n", len(recs), *output)
	return nil
}
