package substrate

import (
	"context"
	"fmt"
	"net"
	"strings"
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
	}{
		{"sync", SyncAlways, true},
		{"always", SyncAlways, true},
		{"", SyncAlways, true},
		{"relaxed", SyncRelaxed, true},
		{"never", 0, false},
		{"Sync", 0, false},
		{"fast", 0, false},
	} {
		got, err := ParseSync(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("ParseSync(%q) = %v, %v", tc.in, got, err)
		}
		if !tc.ok && err != nil && !strings.Contains(err.Error(), "want sync or relaxed") {
			t.Errorf("ParseSync(%q) error %q does not name the accepted values", tc.in, err)
		}
	}
}

// TestSyncReachesServer checks that the durability setting is what the
// running nats-server's JetStream uses: fsync before every acknowledgement for
// SyncAlways, nats-server's periodic flush (two minutes, or the given
// interval) for SyncRelaxed.
func TestSyncReachesServer(t *testing.T) {
	for _, tc := range []struct {
		name         string
		o            Options
		wantAlways   bool
		wantInterval time.Duration
	}{
		{"default", Options{}, true, 2 * time.Minute},
		{"sync", Options{Sync: SyncAlways}, true, 2 * time.Minute},
		{"relaxed", Options{Sync: SyncRelaxed}, false, 2 * time.Minute},
		{"relaxed 5s", Options{Sync: SyncRelaxed, SyncInterval: 5 * time.Second}, false, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			tc.o.StoreDir = t.TempDir()
			s, err := Start(ctx, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Shutdown()
			jc := s.ns.JetStreamConfig()
			if jc == nil {
				t.Fatal("server has no JetStream config")
			}
			if jc.SyncAlways != tc.wantAlways {
				t.Errorf("JetStream SyncAlways = %v, want %v", jc.SyncAlways, tc.wantAlways)
			}
			if !tc.wantAlways && jc.SyncInterval != tc.wantInterval {
				t.Errorf("JetStream SyncInterval = %v, want %v", jc.SyncInterval, tc.wantInterval)
			}
			if got := s.Options().Sync; got != tc.o.Sync {
				t.Errorf("Options().Sync = %v, want %v", got, tc.o.Sync)
			}
		})
	}
}
