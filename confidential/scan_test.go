package confidential

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestScanCoversStreamsKeyValueAndObjectStores stores needles in a plain
// stream (in the data, a header and a subject), a key-value bucket and an
// object store, and checks that the scan reports each place and nothing
// for a needle that is nowhere.
func TestScanCoversStreamsKeyValueAndObjectStores(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, nc, js := startNATS(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "PLAIN", Subjects: []string{"plain.>"}}); err != nil {
		t.Fatal(err)
	}
	needles := [][]byte{[]byte("needle-in-data"), []byte("needle-in-header"), []byte("needle-in-subject"),
		[]byte("needle-in-kv"), []byte("needle-in-object"), []byte("needle-nowhere")}
	if _, err := js.Publish(ctx, "plain.a", []byte("xx needle-in-data xx")); err != nil {
		t.Fatal(err)
	}
	msg := jetstreamMsg("plain.b", []byte("nothing"))
	msg.Header.Set("X-Note", "needle-in-header")
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "plain.needle-in-subject", nil); err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "state"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("needle-in-kv")); err != nil {
		t.Fatal(err)
	}
	obj, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "snapshots"})
	if err != nil {
		t.Fatal(err)
	}
	// Large enough to be chunked: the needle straddles no chunk boundary.
	blob := append(bytes.Repeat([]byte{'.'}, 300<<10), "needle-in-object"...)
	if _, err := obj.PutBytes(ctx, "snap-1", blob); err != nil {
		t.Fatal(err)
	}
	found, err := ScanForPlaintext(ctx, nc, needles)
	if err != nil {
		t.Fatal(err)
	}
	got := map[int][]string{}
	for _, f := range found {
		got[f.Needle] = append(got[f.Needle], f.Stream+"/"+f.Where)
	}
	for i, want := range []string{"PLAIN/data", "PLAIN/header", "PLAIN/subject", "KV_state/data", "OBJ_snapshots/data"} {
		if !slices.Contains(got[i], want) {
			t.Errorf("needle %q found at %v, want %s", needles[i], got[i], want)
		}
	}
	if len(got[5]) != 0 {
		t.Errorf("needle that is nowhere found at %v", got[5])
	}
}
