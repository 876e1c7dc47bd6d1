package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
)

// gatedStore is a MemStore whose saves can be held back, counting saves.
type gatedStore struct {
	mu      sync.Mutex
	mem     api.MemStore
	saves   int
	gate    chan struct{} // when not nil, Save waits for it to close
	entered chan struct{}
}

func (g *gatedStore) Load(ctx context.Context) ([]byte, error) { return g.mem.Load(ctx) }

func (g *gatedStore) Save(ctx context.Context, b []byte) error {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		select {
		case g.entered <- struct{}{}:
		default:
		}
		<-gate
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.saves++
	return g.mem.Save(ctx, b)
}

// TestGroupCommit checks that statements are answered only once the sealed
// state holding them is saved, and that statements applied while a save is
// in flight share the next save.
func TestGroupCommit(t *testing.T) {
	e := newEnv(t)
	store := &gatedStore{entered: make(chan struct{}, 1)}
	srv, err := api.New(context.Background(), api.Config{Genesis: e.genesis, Issuer: e.plat.Issuer(), SealingKey: [32]byte{1},
		Verifiers: map[attest.TEE]attest.Verifier{attest.TEESim: e.verifier}, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	register := func(name string) error {
		kf, _ := party.Generate(party.RoleOwner, name, nil)
		signed, _ := party.Sign(kf, orchestrator.TypePartyRegister, orchestrator.RegisterParty{Identity: orchestrator.Identity{Identity: kf.Identity()}}, time.Minute, time.Now())
		r, err := srv.Submit(context.Background(), signed)
		if err == nil && !r.OK {
			err = fmt.Errorf("refused: %s", r.Error)
		}
		return err
	}
	parties := func() int {
		rec := httptest.NewRecorder()
		srv.Handler(nil).ServeHTTP(rec, httptest.NewRequest("GET", "/v1/parties", nil))
		var ps []json.RawMessage
		_ = json.Unmarshal(rec.Body.Bytes(), &ps)
		return len(ps)
	}

	gate := make(chan struct{})
	store.mu.Lock()
	store.gate, store.saves = gate, 0
	store.mu.Unlock()
	const n = 8
	var done atomic.Int32
	errs := make(chan error, n+1)
	go func() { errs <- register("first"); done.Add(1) }()
	<-store.entered // the first save is in flight
	for i := range n {
		go func() { errs <- register(fmt.Sprintf("p%d", i)); done.Add(1) }()
	}
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond) // poll the HTTP view with a deadline
	defer tick.Stop()
	for parties() != 2+n { // the operator, first, and n more
		if time.Now().After(deadline) {
			t.Fatalf("statements were not applied while a save was in flight (%d parties)", parties())
		}
		<-tick.C
	}
	if d := done.Load(); d != 0 {
		t.Fatalf("%d statements were answered before their state was saved", d)
	}
	close(gate)
	for range n + 1 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	store.mu.Lock()
	saves := store.saves
	store.mu.Unlock()
	if saves != 2 {
		t.Fatalf("%d saves for %d statements applied during one save, want 2 (group commit)", saves, n+1)
	}
	// The last save holds every statement.
	again, err := api.New(context.Background(), api.Config{Genesis: e.genesis, Issuer: e.plat.Issuer(), SealingKey: [32]byte{1}, Store: &store.mem})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	again.Handler(nil).ServeHTTP(rec, httptest.NewRequest("GET", "/v1/parties", nil))
	var ps []json.RawMessage
	if json.Unmarshal(rec.Body.Bytes(), &ps); len(ps) != 2+n {
		t.Fatalf("the restored state has %d parties, want %d", len(ps), 2+n)
	}
}
