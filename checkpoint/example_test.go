package checkpoint_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/checkpoint"
	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/substrate"
)

// A task seals its snapshot into the store; the orchestrator records the
// digest; a restore with that digest gets the state back, and an older
// checkpoint's object put back in its place is refused.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "checkpoint-example")
	defer os.RemoveAll(dir)
	srv, err := substrate.Start(ctx, substrate.Options{StoreDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := substrate.Connect(ctx, srv.ClientURL(), "example")
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	store, err := checkpoint.Open(ctx, js, "", checkpoint.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		log.Fatal(err)
	}

	// The worker holds the job's checkpoint key as the orchestrator released it.
	keys := seal.NewKeyring()
	keys.Generate(checkpoint.KeyScope("balance"), 0)

	id := checkpoint.SnapshotID{Job: "balance", Version: 1, Task: "balance/agg", KeyGroups: state.Range{From: 0, To: 128}, Checkpoint: 1}
	old, _ := store.Put(ctx, id, []byte("sum=41"), keys)
	id.Checkpoint = 2
	recorded, _ := store.Put(ctx, id, []byte("sum=42"), keys)

	got, err := store.Get(ctx, id, recorded, keys)
	fmt.Printf("%s %v\n", got, err)

	// The infrastructure puts checkpoint 1's object under checkpoint 2's name.
	id1 := id
	id1.Checkpoint = 1
	raw, _ := store.ObjectStore().GetBytes(ctx, id1.Object())
	store.ObjectStore().PutBytes(ctx, id.Object(), raw)
	_, err = store.Get(ctx, id, recorded, keys)
	fmt.Println(checkpoint.RuleOf(err))
	// Even with checkpoint 1's digest it does not pass for checkpoint 2.
	_, err = store.Get(ctx, id, old, keys)
	fmt.Println(checkpoint.RuleOf(err))
	// Output:
	// sum=42 <nil>
	// checkpoint.digest
	// checkpoint.foreign
}
