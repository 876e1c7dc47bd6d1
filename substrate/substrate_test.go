package substrate

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestStartPublishShutdown(t *testing.T) {
	for _, sync := range []Sync{SyncAlways, SyncRelaxed} {
		t.Run(sync.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			dir := t.TempDir()
			s, err := Start(ctx, Options{StoreDir: dir, Sync: sync})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Shutdown()
			nc, err := Connect(ctx, s.ClientURL(), "test")
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			cfg := jetstream.StreamConfig{Name: "ingest", Subjects: []string{"ingest.>"}}
			st, err := EnsureStream(ctx, js, cfg)
			if err != nil {
				t.Fatal(err)
			}
			// Ensuring again is idempotent.
			if _, err := EnsureStream(ctx, js, cfg); err != nil {
				t.Fatalf("second EnsureStream: %v", err)
			}
			for i := range 10 {
				if _, err := js.Publish(ctx, "ingest.a", fmt.Appendf(nil, "m%d", i)); err != nil {
					t.Fatal(err)
				}
			}
			info, err := st.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.State.Msgs != 10 {
				t.Fatalf("stream holds %d messages, want 10", info.State.Msgs)
			}
			kv, err := EnsureKeyValue(ctx, js, jetstream.KeyValueConfig{Bucket: "state"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
				t.Fatal(err)
			}
			e, err := kv.Get(ctx, "k")
			if err != nil || string(e.Value()) != "v" {
				t.Fatalf("kv get = %v, %v; want v", e, err)
			}
			obs, err := EnsureObjectStore(ctx, js, jetstream.ObjectStoreConfig{Bucket: "ckpt"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := obs.PutBytes(ctx, "snap", make([]byte, 300<<10)); err != nil {
				t.Fatal(err)
			}
			b, err := obs.GetBytes(ctx, "snap")
			if err != nil || len(b) != 300<<10 {
				t.Fatalf("object get: %d bytes, %v", len(b), err)
			}
			nc.Close()
			s.Shutdown()

			// Data survives a restart on the same store directory.
			s2, err := Start(ctx, Options{StoreDir: dir, Sync: sync})
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Shutdown()
			nc2, err := Connect(ctx, s2.ClientURL(), "test")
			if err != nil {
				t.Fatal(err)
			}
			defer nc2.Close()
			js2, _ := jetstream.New(nc2)
			st2, err := js2.Stream(ctx, "ingest")
			if err != nil {
				t.Fatal(err)
			}
			info, err = st2.Info(ctx)
			if err != nil || info.State.Msgs != 10 {
				t.Fatalf("after restart stream holds %v messages (%v), want 10", info.State.Msgs, err)
			}
		})
	}
}

func TestStartRejectsBadOptions(t *testing.T) {
	ctx := context.Background()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port
	tests := []struct {
		name string
		o    Options
	}{
		{"no store dir", Options{}},
		{"negative port", Options{StoreDir: t.TempDir(), Port: -5}},
		{"bad sync", Options{StoreDir: t.TempDir(), Sync: Sync(7)}},
		{"port in use", Options{StoreDir: t.TempDir(), Port: busyPort, ReadyTimeout: time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Start(ctx, tc.o)
			if err == nil {
				s.Shutdown()
				t.Fatal("Start succeeded, want error")
			}
		})
	}
}

func TestGivenPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s, err := Start(context.Background(), Options{StoreDir: t.TempDir(), Port: port})
	if err != nil {
		t.Skipf("port %d taken meanwhile: %v", port, err)
	}
	defer s.Shutdown()
	if want := fmt.Sprintf("nats://127.0.0.1:%d", port); s.ClientURL() != want {
		t.Fatalf("ClientURL = %q, want %q", s.ClientURL(), want)
	}
}

func TestParseSync(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Sync
		ok   bool
	}{{"always", SyncAlways, true}, {"", SyncAlways, true}, {"relaxed", SyncRelaxed, true}, {"never", 0, false}} {
		got, err := ParseSync(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("ParseSync(%q) = %v, %v", tc.in, got, err)
		}
	}
}
