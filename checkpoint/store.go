package checkpoint

import (
	"bufio"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/url"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/seal"
	"github.com/sealflow/sealflow/substrate"
)

// DefaultBucket is the object store bucket Open uses when given none.
const DefaultBucket = "checkpoints"

// defaultNATSChunk is the size of the JetStream messages an object is split
// into: well below NATS's default 1 MiB payload limit.
const defaultNATSChunk = 256 << 10

// DefaultMaxSnapshot is the largest snapshot Get accepts unless configured
// otherwise (4 GiB): Get holds a whole snapshot in memory.
const DefaultMaxSnapshot = 4 << 30

// Store keeps sealed snapshots in a JetStream Object Store, one object per
// task snapshot named by SnapshotID.Object. It is safe for concurrent use.
type Store struct {
	obs         jetstream.ObjectStore
	chunk       uint32
	natsChunk   uint32
	maxSnapshot uint64
	log         *slog.Logger
}

// Option configures a Store.
type Option func(*Store) error

// WithChunkSize sets the plaintext size of a sealed chunk (DefaultChunk when
// not set), between MinChunk and MaxChunk. Put and Get buffer one chunk.
func WithChunkSize(n int) Option {
	return func(s *Store) error {
		if n < MinChunk || n > MaxChunk {
			return fmt.Errorf("checkpoint: chunk size %d is outside [%d, %d]", n, MinChunk, MaxChunk)
		}
		s.chunk = uint32(n)
		return nil
	}
}

// WithMaxSnapshot sets the largest snapshot Get reads (DefaultMaxSnapshot
// when not set).
func WithMaxSnapshot(n uint64) Option {
	return func(s *Store) error {
		if n == 0 || n > MaxPlaintext {
			return fmt.Errorf("checkpoint: maximum snapshot size %d is outside [1, %d]", n, uint64(MaxPlaintext))
		}
		s.maxSnapshot = n
		return nil
	}
}

// WithLogger sets the logger refusals are reported to (slog.Default when not
// set).
func WithLogger(l *slog.Logger) Option {
	return func(s *Store) error {
		s.log = l
		return nil
	}
}

// Open ensures the object store bucket (DefaultBucket if empty, file storage)
// and returns a Store over it. Whether writes are flushed before they are
// acknowledged is the server's sync setting (see substrate.Options.Sync).
func Open(ctx context.Context, js jetstream.JetStream, bucket string, opts ...Option) (*Store, error) {
	if bucket == "" {
		bucket = DefaultBucket
	}
	obs, err := substrate.EnsureObjectStore(ctx, js, jetstream.ObjectStoreConfig{
		Bucket:      bucket,
		Description: "sealflow sealed checkpoint snapshots",
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, err
	}
	return New(obs, opts...)
}

// New returns a Store over an existing object store.
func New(obs jetstream.ObjectStore, opts ...Option) (*Store, error) {
	if obs == nil {
		return nil, errors.New("checkpoint: no object store")
	}
	s := &Store{obs: obs, chunk: DefaultChunk, natsChunk: defaultNATSChunk, maxSnapshot: DefaultMaxSnapshot, log: slog.Default()}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// ObjectStore returns the underlying object store.
func (s *Store) ObjectStore() jetstream.ObjectStore { return s.obs }

// Put seals plaintext as the snapshot id with the current checkpoint key of
// the job in keys (scope KeyScope(id.Job)), stores it under id.Object(), and
// returns the SHA-256 digest of the sealed object, which the orchestrator must
// record. Sealing streams chunk by chunk into the store: besides plaintext,
// Put holds one sealed chunk at a time. An existing object of that name is
// replaced.
func (s *Store) Put(ctx context.Context, id SnapshotID, plaintext []byte, keys *seal.Keyring) (Digest, error) {
	return s.put(ctx, id, id.Object(), false, plaintext, keys)
}

// put seals plaintext as the snapshot id (an index object if index is set)
// and stores it under the object name.
func (s *Store) put(ctx context.Context, id SnapshotID, name string, index bool, plaintext []byte, keys *seal.Keyring) (Digest, error) {
	sr, h, err := s.sealer(id, index, plaintext, keys)
	if err != nil {
		return Digest{}, err
	}
	if err := s.putSealed(ctx, id, name, sr, h); err != nil {
		return Digest{}, err
	}
	if sr.i != sr.n {
		return Digest{}, fmt.Errorf("checkpoint: storing %s: the store stopped reading at chunk %d of %d", id, sr.i, sr.n)
	}
	var d Digest
	sr.sum.Sum(d[:0])
	return d, nil
}

// sealer returns a reader of plaintext sealed as the snapshot id, which
// hashes what it produces, and its header.
func (s *Store) sealer(id SnapshotID, index bool, plaintext []byte, keys *seal.Keyring) (*sealReader, Header, error) {
	if err := id.Validate(); err != nil {
		return nil, Header{}, err
	}
	if keys == nil {
		return nil, Header{}, fmt.Errorf("checkpoint: put %s: no keyring", id)
	}
	key, ok := keys.Current(KeyScope(id.Job))
	if !ok {
		return nil, Header{}, fmt.Errorf("checkpoint: put %s: the keyring holds no checkpoint key for job %q (scope %q)", id, id.Job, KeyScope(id.Job))
	}
	secret, err := key.Bytes()
	if err != nil {
		return nil, Header{}, fmt.Errorf("checkpoint: put %s: %w", id, err)
	}
	defer clear(secret)
	sealedFor := id
	sealedFor.Writer = "" // the writer names the object; it is not sealed
	h := Header{ID: sealedFor, ChunkSize: s.chunk, Length: uint64(len(plaintext)), Epoch: key.Epoch(), KeyID: key.ID(), Index: index}
	rand.Read(h.Salt[:])
	hb, err := h.AppendBinary(nil)
	if err != nil {
		return nil, Header{}, err
	}
	aead, err := objectAEAD(secret, h.Salt, hb)
	if err != nil {
		return nil, Header{}, err
	}
	sr := &sealReader{aead: aead, pt: plaintext, chunk: int(h.ChunkSize), n: h.Chunks(), out: hb, sum: sha256.New()}
	sr.sum.Write(hb)
	return sr, h, nil
}

// putSealed stores the sealed object r with header h under name.
func (s *Store) putSealed(ctx context.Context, id SnapshotID, name string, r io.Reader, h Header) error {
	info, err := s.obs.Put(ctx, jetstream.ObjectMeta{
		Name:        name,
		Description: "sealed snapshot",
		Opts:        &jetstream.ObjectMetaOptions{ChunkSize: s.natsChunk},
	}, r)
	if err != nil {
		return fmt.Errorf("checkpoint: storing %s as %q: %w", id, name, err)
	}
	if info.Size != h.SealedSize() {
		return fmt.Errorf("checkpoint: storing %s: the store took %d bytes, want %d", id, info.Size, h.SealedSize())
	}
	return nil
}

// sealReader produces a sealed object on demand: the header, then each chunk
// sealed when the previous one has been read, hashing what it produces.
type sealReader struct {
	aead  cipher.AEAD
	pt    []byte
	chunk int
	i, n  uint64 // next chunk, number of chunks
	out   []byte // bytes produced and not yet read
	buf   []byte // reused chunk buffer
	sum   hash.Hash
}

func (r *sealReader) Read(p []byte) (int, error) {
	for len(r.out) == 0 {
		if r.i == r.n {
			return 0, io.EOF
		}
		lo := min(uint64(len(r.pt)), r.i*uint64(r.chunk))
		hi := min(uint64(len(r.pt)), lo+uint64(r.chunk))
		last := r.i+1 == r.n
		nonce := chunkNonce(r.i, last)
		r.buf = r.aead.Seal(r.buf[:0], nonce[:], r.pt[lo:hi], nil)
		r.sum.Write(r.buf)
		r.out = r.buf
		r.i++
	}
	n := copy(p, r.out)
	r.out = r.out[n:]
	return n, nil
}

// maxHeader is the largest header: both ids at their longest.
const maxHeader = headerFixed + 2*MaxName

// Get reads the snapshot id back, checks that its sealed object has the digest
// want (the one the orchestrator recorded), opens it with the job's checkpoint
// key from keys and returns the plaintext. It refuses (a *Refusal) with
// RuleMissing, RuleDigest, RuleForeign, RuleTampered or RuleKey, and never
// returns part of a snapshot: the plaintext is returned only when every chunk
// opened and the digest matched. When several rules apply, a digest mismatch
// is reported in preference to what opening found.
//
// Get reads one object: the index of an incremental snapshot (written by
// PutIncremental) is refused with RuleForeign; GetSnapshot reads both kinds.
func (s *Store) Get(ctx context.Context, id SnapshotID, want Digest, keys *seal.Keyring) ([]byte, error) {
	pt, index, err := s.getObject(ctx, id, id.Object(), want, keys)
	if err == nil && index {
		clear(pt)
		pt, err = nil, refuse(RuleForeign, id, nil, "object %q is the index of an incremental snapshot, not a whole one (read it with GetSnapshot)", id.Object())
		s.logRefusal(id, id.Object(), err)
	}
	return pt, err
}

func (s *Store) logRefusal(id SnapshotID, name string, err error) {
	if r := RuleOf(err); r != "" {
		s.log.Warn("checkpoint snapshot refused", "rule", r, "snapshot", id.String(), "object", name, "err", err)
	}
}

// getObject reads the object name, checks its digest and opens it as the
// snapshot id, and reports whether it is an index. Refusals are logged.
func (s *Store) getObject(ctx context.Context, id SnapshotID, name string, want Digest, keys *seal.Keyring) ([]byte, bool, error) {
	pt, index, err := s.get(ctx, id, name, want, keys)
	if err != nil {
		s.logRefusal(id, name, err)
		return nil, false, err
	}
	return pt, index, nil
}

func (s *Store) get(ctx context.Context, id SnapshotID, name string, want Digest, keys *seal.Keyring) ([]byte, bool, error) {
	if err := id.Validate(); err != nil {
		return nil, false, err
	}
	if keys == nil {
		return nil, false, fmt.Errorf("checkpoint: get %s: no keyring", id)
	}
	if want.IsZero() {
		return nil, false, refuse(RuleDigest, id, nil, "no digest was recorded for it, so no object can be trusted")
	}
	res, err := s.obs.Get(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, false, refuse(RuleMissing, id, err, "object %q is not in the store", name)
	}
	if err != nil {
		return nil, false, fmt.Errorf("checkpoint: reading %s (object %q): %w", id, name, err)
	}
	defer res.Close()
	info, err := res.Info()
	if err != nil {
		return nil, false, fmt.Errorf("checkpoint: reading %s (object %q): %w", id, name, err)
	}
	sum := sha256.New()
	br := bufio.NewReaderSize(io.TeeReader(res, sum), maxHeader+64)
	pt, index, openErr := s.open(id, br, info.Size, keys)
	if openErr != nil && RuleOf(openErr) == "" {
		return nil, false, openErr
	}
	// Read to the end so the digest covers the whole object, whatever opening found.
	_, drainErr := io.Copy(io.Discard, br)
	if drainErr != nil && !contentErr(drainErr) {
		clear(pt)
		return nil, false, fmt.Errorf("checkpoint: reading %s (object %q): %w", id, name, drainErr)
	}
	var got Digest
	sum.Sum(got[:0])
	if got != want {
		clear(pt)
		return nil, false, refuse(RuleDigest, id, nil, "object %q has digest %s, but %s was recorded: it was substituted, modified or is stale", name, got, want)
	}
	if openErr != nil {
		return nil, false, openErr
	}
	if drainErr != nil {
		clear(pt)
		return nil, false, refuse(RuleTampered, id, drainErr, "the store's own record of the object does not match its chunks")
	}
	return pt, index, nil
}

// open parses the header, checks that it names id and opens every chunk; it
// reports whether the object is an index.
// Refusals are *Refusal; other errors are I/O errors.
func (s *Store) open(id SnapshotID, br *bufio.Reader, size uint64, keys *seal.Keyring) ([]byte, bool, error) {
	b, err := br.Peek(maxHeader)
	if len(b) == 0 && err != nil && err != io.EOF {
		return nil, false, ioErr(id, err)
	}
	h, n, err := ParseHeader(b)
	if err != nil {
		return nil, false, refuse(RuleTampered, id, err, "the sealed header does not parse")
	}
	// The writer names the object, not what is sealed: which writer's
	// object is the right one is the recorded digest's to say.
	sealedFor := id
	sealedFor.Writer = ""
	if h.ID != sealedFor {
		return nil, false, refuse(RuleForeign, id, nil, "the object was sealed for %s", h.ID)
	}
	key, ok := keys.Key(KeyScope(id.Job), h.Epoch)
	if !ok {
		return nil, false, refuse(RuleKey, id, nil, "it was sealed with epoch %d of the checkpoint key, which the keyring does not hold (scope %q)", h.Epoch, KeyScope(id.Job))
	}
	if key.ID() != h.KeyID {
		return nil, false, refuse(RuleForeign, id, nil, "it was sealed with key %s, not the job's checkpoint key %s of epoch %d", h.KeyID, key.ID(), h.Epoch)
	}
	if size != h.SealedSize() {
		return nil, false, refuse(RuleTampered, id, nil, "the object has %d bytes, its header says %d", size, h.SealedSize())
	}
	if h.Length > s.maxSnapshot {
		return nil, false, fmt.Errorf("checkpoint: snapshot %s has %d bytes, more than this store reads (%d; see WithMaxSnapshot)", id, h.Length, s.maxSnapshot)
	}
	secret, err := key.Bytes()
	if err != nil {
		return nil, false, fmt.Errorf("checkpoint: get %s: %w", id, err)
	}
	aead, err := objectAEAD(secret, h.Salt, b[:n])
	clear(secret)
	if err != nil {
		return nil, false, err
	}
	if _, err := br.Discard(n); err != nil {
		return nil, false, ioErr(id, err)
	}
	pt := make([]byte, 0, h.Length)
	buf := make([]byte, int(h.ChunkSize)+tagSize)
	chunks := h.Chunks()
	for i := range chunks {
		ct := buf[:min(uint64(h.ChunkSize), h.Length-uint64(len(pt)))+tagSize]
		if _, err := io.ReadFull(br, ct); err != nil {
			clear(pt)
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || contentErr(err) {
				return nil, false, refuse(RuleTampered, id, err, "the object ends in chunk %d of %d", i, chunks)
			}
			return nil, false, ioErr(id, err)
		}
		nonce := chunkNonce(i, i+1 == chunks)
		out, err := aead.Open(pt, nonce[:], ct, nil)
		if err != nil {
			clear(pt[:cap(pt)])
			return nil, false, refuse(RuleTampered, id, err, "chunk %d of %d does not open", i, chunks)
		}
		pt = out
	}
	return pt, h.Index, nil
}

// contentErr reports whether an error of the object store's reader is about
// what the store holds (its own digest of the object does not match, or is
// malformed) rather than about reaching it.
func contentErr(err error) bool {
	return errors.Is(err, jetstream.ErrDigestMismatch) || errors.Is(err, jetstream.ErrInvalidDigestFormat)
}

func ioErr(id SnapshotID, err error) error {
	return fmt.Errorf("checkpoint: reading %s (object %q): %w", id, id.Object(), err)
}

// Delete removes the snapshot id from the store. Deleting a missing snapshot
// is not an error.
func (s *Store) Delete(ctx context.Context, id SnapshotID) error {
	err := s.obs.Delete(ctx, id.Object())
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("checkpoint: deleting %s (object %q): %w", id, id.Object(), err)
	}
	return nil
}

// Restore reads every snapshot of task that the complete checkpoint m lists,
// each checked against its digest in m (whole or incremental, as
// GetSnapshot reads them), and returns them by key-group range.
// It returns all of them or none: a refusal of any one (see Get) fails the
// whole restore, so a task never starts from part of a checkpoint.
func (s *Store) Restore(ctx context.Context, m *Manifest, task string, keys *seal.Keyring) (map[state.Range][]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	out := map[state.Range][]byte{}
	for i, snap := range m.Snapshots {
		if snap.Task != task {
			continue
		}
		pt, _, err := s.GetSnapshot(ctx, m.SnapshotID(i), snap.Digest, keys)
		if err != nil {
			for _, b := range out {
				clear(b)
			}
			return nil, err
		}
		out[snap.KeyGroups] = pt
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("checkpoint: checkpoint %d of job %q lists no snapshot of task %q", m.Checkpoint, short(m.Job), short(task))
	}
	return out, nil
}

// Prune deletes the job's snapshots (and packs) of checkpoints older than
// keep (the last complete checkpoint, say), except the objects that a
// snapshot in live references (the indexes of the snapshots kept, whose
// packs may be older than they are), and returns how many objects it
// deleted.
func (s *Store) Prune(ctx context.Context, job string, keep uint64, live ...*Index) (int, error) {
	if err := validName("job", job); err != nil {
		return 0, err
	}
	list, err := s.obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("checkpoint: listing the snapshots of job %q: %w", short(job), err)
	}
	referenced := map[string]bool{}
	for _, x := range live {
		if x != nil {
			for _, o := range x.Objects() {
				referenced[o] = true
			}
		}
	}
	prefix := url.PathEscape(job) + "/"
	n := 0
	for _, info := range list {
		rest, ok := strings.CutPrefix(info.Name, prefix)
		if !ok {
			continue
		}
		num, _, _ := strings.Cut(rest, "/")
		ckpt, err := strconv.ParseUint(num, 10, 64)
		if err != nil || ckpt >= keep || referenced[info.Name] {
			continue
		}
		if err := s.obs.Delete(ctx, info.Name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return n, fmt.Errorf("checkpoint: pruning object %q of job %q: %w", info.Name, short(job), err)
		}
		n++
	}
	return n, nil
}
