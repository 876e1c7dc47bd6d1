package confidential

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// EnsureIngestStream creates (or updates) the JetStream stream of the sealed
// ingest stream id, so that a reader may start before its first writer.
func EnsureIngestStream(ctx context.Context, js jetstream.JetStream, id string) error {
	if err := CheckStreamID(id); err != nil {
		return err
	}
	return ingestPlace.ensure(ctx, js, id)
}
