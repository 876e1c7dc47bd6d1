package confidential

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/substrate"
)

// startNATS starts an embedded server on a free loopback port, stopped when
// the test ends, and returns a connection and its JetStream context.
func startNATS(t testing.TB) (*substrate.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv, err := substrate.Start(ctx, substrate.Options{StoreDir: t.TempDir(), Sync: substrate.SyncRelaxed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc := connect(t, srv, "confidential-test")
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return srv, nc, js
}

func connect(t testing.TB, srv *substrate.Server, name string) *nats.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := substrate.Connect(ctx, srv.ClientURL(), name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// meterSchema is a smart meter reading.
var meterSchema = &record.Schema{Fields: []record.Field{
	{Name: "household", Type: record.TypeString},
	{Name: "feeder", Type: record.TypeString},
	{Name: "wh", Type: record.TypeInt},
	{Name: "ts", Type: record.TypeInt},
}}

var (
	households = []string{"hh-Quillfeather-Lane-7", "hh-Marrowdale-Court-12", "hh-Vesperine-Row-3", "hh-Oakhollow-Way-41", "hh-Brindlemoor-Close-9"}
	feeders    = []string{"feeder-Norwick-North", "feeder-Saltmarsh-East", "feeder-Glenharrow-West"}
)

// meterReading returns reading i: household i mod 5 on feeder i mod 3,
// every 100 ms of event time.
func meterReading(i int) record.Record {
	ts := int64(1_700_000_000_000) + int64(i)*100
	return record.Record{Time: ts, Values: []record.Value{
		record.String(households[i%len(households)]),
		record.String(feeders[i%len(feeders)]),
		record.Int(int64(100 + i%37)),
		record.Int(ts),
	}}
}

// plaintextNeedles are the field values no one but the job may see.
func plaintextNeedles() [][]byte {
	var out [][]byte
	for _, s := range slices.Concat(households, feeders) {
		out = append(out, []byte(s))
	}
	return out
}

func batchOf(recs ...record.Record) *record.Batch { return &record.Batch{Records: recs} }

// canonical renders records as sorted strings, for comparing outputs whose
// order depends on scheduling.
func canonical(recs []record.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = fmt.Sprint(r.Time, r.Values)
	}
	slices.Sort(out)
	return out
}

func jetstreamMsg(subject string, data []byte) *nats.Msg {
	return &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
}
