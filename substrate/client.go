package substrate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Connect dials the NATS server at url (an embedded server's ClientURL or an
// external cluster) and waits until the connection is established or ctx ends.
// name identifies the client in the server's monitoring. Extra nats.go options
// (credentials, TLS) are applied after sealflow's defaults.
func Connect(ctx context.Context, url, name string, opts ...nats.Option) (*nats.Conn, error) {
	if url == "" {
		return nil, errors.New("substrate: empty NATS URL; give an embedded server's ClientURL or nats://host:port")
	}
	timeout := 10 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
		if timeout <= 0 {
			return nil, fmt.Errorf("substrate: connecting to %s: %w", url, context.DeadlineExceeded)
		}
	}
	all := []nats.Option{
		nats.Name(name),
		nats.Timeout(timeout),
		// Exchanges and sources rely on the client never dropping silently; a
		// reconnect loses core-NATS messages, which the exchange detects by
		// sequence, so reconnecting is safe to leave on.
		nats.MaxReconnects(-1),
		nats.ReconnectBufSize(8 << 20),
	}
	all = append(all, opts...)
	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(url, all...)
		done <- result{nc, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("substrate: connecting to %s: %w", url, r.err)
		}
		return r.nc, nil
	case <-ctx.Done():
		go func() {
			if r := <-done; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, fmt.Errorf("substrate: connecting to %s: %w", url, ctx.Err())
	}
}

// EnsureStream creates the stream described by cfg, or updates it to cfg if it
// exists. File storage is used unless cfg says otherwise.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if cfg.Name == "" {
		return nil, errors.New("substrate: stream config has no name")
	}
	s, err := js.CreateOrUpdateStream(ctx, cfg)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		// Created by someone else between the update and the create that
		// CreateOrUpdateStream tries: update it now.
		s, err = js.CreateOrUpdateStream(ctx, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("substrate: ensuring stream %q (subjects %v): %w", cfg.Name, cfg.Subjects, err)
	}
	return s, nil
}

// EnsureKeyValue creates the key-value bucket described by cfg, or updates it
// to cfg if it exists.
func EnsureKeyValue(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("substrate: key-value config has no bucket name")
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("substrate: ensuring key-value bucket %q: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// EnsureObjectStore creates the object store described by cfg, or updates it
// to cfg if it exists.
func EnsureObjectStore(ctx context.Context, js jetstream.JetStream, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("substrate: object store config has no bucket name")
	}
	os, err := js.CreateOrUpdateObjectStore(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("substrate: ensuring object store %q: %w", cfg.Bucket, err)
	}
	return os, nil
}
