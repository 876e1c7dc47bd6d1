package confidential

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sealflow/sealflow/seal"
)

// TestConstructorsRefuseBadInput checks that each constructor names what was
// wrong with its input.
func TestConstructorsRefuseBadInput(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, js := startNATS(t)
	keys := seal.NewKeyring()
	if _, err := keys.Generate("ok", 1); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		err  func() error
		want string
	}{
		{"exchange without job", func() error { _, err := NewExchangeCodec("", keys); return err }, "job id"},
		{"exchange without key", func() error { _, err := NewExchangeCodec("job-9", keys); return err }, `no exchange key for job "job-9"`},
		{"exchange without keyring", func() error { _, err := NewExchangeCodec("job-9", nil); return err }, "no keyring"},
		{"padding too small", func() error { _, err := NewEphemeralExchangeCodec("j", WithPadding(8)); return err }, "padding bucket 8"},
		{"negative end timeout", func() error { _, err := NewIngestSource(js, "ok", 1, keys, WithEndTimeout(-time.Second)); return err }, "negative end timeout"},
		{"stream id with a dot", func() error { _, err := NewPublisher(ctx, js, "a.b", meterSchema, keys, 1); return err }, `"a.b" has '.'`},
		{"zero partitions", func() error { _, err := NewPublisher(ctx, js, "ok", meterSchema, keys, 0); return err }, "0 partitions"},
		{"publisher without key", func() error { _, err := NewPublisher(ctx, js, "nokey", meterSchema, keys, 1); return err }, `no key for ingest stream "nokey"`},
		{"sink without schema", func() error { _, err := NewOutputSink(ctx, js, "ok", nil, keys, 1); return err }, "no schema"},
		{"resume beyond partitions", func() error {
			_, err := NewIngestSource(js, "ok", 2, keys, WithResume(map[uint32]Position{5: {}}))
			return err
		}, "partition 5"},
		{"channel out of range", func() error { _, err := ChannelPartition(1, MaxExchangeParallelism, 0); return err }, "out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.err()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestChannelPartitionIsInjective(t *testing.T) {
	seen := map[uint32][3]int{}
	for _, e := range []int{0, 1, MaxExchangeEdges - 1} {
		for _, f := range []int{0, 1, MaxExchangeParallelism - 1} {
			for _, to := range []int{0, 1, MaxExchangeParallelism - 1} {
				p, err := ChannelPartition(e, f, to)
				if err != nil {
					t.Fatal(err)
				}
				if prev, ok := seen[p]; ok {
					t.Fatalf("channels %v and %v share partition %#x", prev, [3]int{e, f, to}, p)
				}
				seen[p] = [3]int{e, f, to}
			}
		}
	}
}
