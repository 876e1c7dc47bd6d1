package checkpoint

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/seal"
)

// Incremental snapshots.
//
// PutIncremental stores a snapshot as content-defined chunks (boundaries
// chosen by a rolling hash of the bytes, so an unchanged run of bytes gives
// the same chunks wherever it moved to) and writes only the chunks a base
// snapshot does not already hold: they go into one new "pack", an ordinary
// sealed object, and an index object lists, for every chunk in order, the
// pack holding it (by snapshot id and the digest of the pack's sealed
// object), its offset and length in the pack and its SHA-256. The index is
// itself a sealed object (header flag Index); its digest is what the
// orchestrator records, and it covers every pack digest, so a pack that is
// missing, substituted, stale or foreign is refused by the same rules as a
// whole snapshot. GetSnapshot returns the snapshot only after the index and
// every pack opened, their digests matched and every chunk's SHA-256 matched;
// never a part of it.
//
// An index lists every chunk of its snapshot directly (no chain of indexes
// to walk); packs are shared between the indexes of successive checkpoints.
// Deleting a snapshot must therefore spare the packs other live snapshots
// reference: Release and Prune take the indexes to keep.

// Chunking parameters: the smallest and largest chunk and the mask of the
// rolling hash's top bits that picks a boundary (13 bits: 8 KiB on average
// past the minimum).
const (
	cdcMin  = 2 << 10
	cdcMax  = 64 << 10
	cdcMask = uint64(1<<13-1) << (64 - 13)
)

// gear is the rolling hash's table of 256 random words, derived from a fixed
// string so that every process chunks the same bytes alike.
var gear = func() (g [256]uint64) {
	for i := range g {
		sum := sha256.Sum256([]byte{'s', 'f', 'c', 'd', 'c', byte(i)})
		g[i] = binary.BigEndian.Uint64(sum[:])
	}
	return g
}()

// cut returns the length of the first chunk of b: a gear hash over the last
// 64 bytes (h<<1 forgets older bytes) whose top bits are all zero ends a
// chunk, at least cdcMin and at most cdcMax bytes long.
func cut(b []byte) int {
	n := len(b)
	if n <= cdcMin {
		return n
	}
	end := min(n, cdcMax)
	var h uint64
	for _, c := range b[cdcMin-64 : cdcMin] {
		h = h<<1 + gear[c]
	}
	for i, c := range b[cdcMin:end] {
		h = h<<1 + gear[c]
		if h&cdcMask == 0 {
			return cdcMin + i + 1
		}
	}
	return end
}

// chunk splits b into content-defined chunks, returned as their lengths.
func chunk(b []byte) []int {
	var out []int
	for len(b) > 0 {
		n := cut(b)
		out = append(out, n)
		b = b[n:]
	}
	return out
}

// PackRef names a sealed object holding chunks of incremental snapshots.
type PackRef struct {
	// ID is the snapshot the pack was written for (its job, task and
	// key-group range are those of the index that lists it).
	ID SnapshotID
	// Whole is set when the pack is a whole snapshot (object ID.Object(),
	// as Put writes), not a pack (object ID.Object()+"#pack").
	Whole bool
	// Digest is the SHA-256 of the pack's sealed object.
	Digest Digest
	// Length is the plaintext length of the pack.
	Length uint64
}

// maxBufferedPack is the largest pack PutIncremental seals in memory before
// storing it.
const maxBufferedPack = 16 << 20

// packSuffix ends the object name of a pack; '#' is escaped in the ids of
// SnapshotID.Object, so no snapshot's name ends so.
const packSuffix = "#pack"

// Object returns the object name of the pack.
func (p PackRef) Object() string {
	if p.Whole {
		return p.ID.Object()
	}
	return p.ID.Object() + packSuffix
}

// ChunkRef is one chunk of an incremental snapshot, in order.
type ChunkRef struct {
	// Pack is the index of the pack in Index.Packs.
	Pack int
	// Offset and Length locate the chunk in the pack's plaintext.
	Offset, Length uint64
	// Sum is the SHA-256 of the chunk's plaintext.
	Sum Digest
}

// Index describes an incremental snapshot: the packs and chunks its
// plaintext is made of. PutIncremental and GetSnapshot return it, as the base
// of the next incremental snapshot and for Release.
type Index struct {
	// ID is the snapshot; its object is the index object (or, for a whole
	// snapshot read by GetSnapshot, the only pack).
	ID SnapshotID
	// Whole is set when ID's object is a whole snapshot, not an index.
	Whole bool
	// Length is the plaintext length of the snapshot.
	Length uint64
	// Packs are the objects holding the chunks.
	Packs []PackRef
	// Chunks are the snapshot's chunks, in order.
	Chunks []ChunkRef
}

// Objects returns the names of every object the snapshot needs: its own and
// its packs'.
func (x *Index) Objects() []string {
	out := []string{x.ID.Object()}
	for _, p := range x.Packs {
		if name := p.Object(); name != out[0] {
			out = append(out, name)
		}
	}
	return out
}

// Written returns the plaintext bytes of the pack written for the snapshot
// itself (0 when every chunk was in the base).
func (x *Index) Written() uint64 {
	for _, p := range x.Packs {
		if p.ID == x.ID && !p.Whole {
			return p.Length
		}
	}
	return 0
}

// PackBytes returns the plaintext bytes of the packs a restore reads.
func (x *Index) PackBytes() uint64 {
	var n uint64
	for _, p := range x.Packs {
		n += p.Length
	}
	return n
}

const indexMagic = "SFCI\x01"

// marshal encodes the index's packs and chunks (the plaintext of its
// object): magic | length | packs | {whole u8 | version | checkpoint | writer
// | digest [32] | length} | chunks | {pack | offset | length | sum [32]}, the
// integers as uvarints.
func (x *Index) marshal() []byte {
	b := make([]byte, 0, len(indexMagic)+16+len(x.Packs)*64+len(x.Chunks)*48)
	b = append(b, indexMagic...)
	b = binary.AppendUvarint(b, x.Length)
	b = binary.AppendUvarint(b, uint64(len(x.Packs)))
	for _, p := range x.Packs {
		w := byte(0)
		if p.Whole {
			w = 1
		}
		b = append(b, w)
		b = binary.AppendUvarint(b, uint64(p.ID.Version))
		b = binary.AppendUvarint(b, p.ID.Checkpoint)
		b = state.AppendString(b, p.ID.Writer)
		b = append(b, p.Digest[:]...)
		b = binary.AppendUvarint(b, p.Length)
	}
	b = binary.AppendUvarint(b, uint64(len(x.Chunks)))
	for _, c := range x.Chunks {
		b = binary.AppendUvarint(b, uint64(c.Pack))
		b = binary.AppendUvarint(b, c.Offset)
		b = binary.AppendUvarint(b, c.Length)
		b = append(b, c.Sum[:]...)
	}
	return b
}

// errIndex is wrapped by the errors of a malformed index.
var errIndex = errors.New("malformed snapshot index")

// decodeIndex strictly decodes the index of snapshot id, read from its
// authenticated object: every chunk lies inside its pack, every pack is used,
// the chunks add up to the length, which is at most maxLen.
func decodeIndex(id SnapshotID, b []byte, maxLen uint64) (*Index, error) {
	if len(b) < len(indexMagic) || string(b[:len(indexMagic)]) != indexMagic {
		return nil, fmt.Errorf("%w: bad magic or version", errIndex)
	}
	d := state.NewDecoder(b[len(indexMagic):])
	x := &Index{ID: id, Length: d.Uvarint()}
	if x.Length > maxLen {
		return nil, fmt.Errorf("checkpoint: snapshot %s has %d bytes, more than this store reads (%d; see WithMaxSnapshot)", id, x.Length, maxLen)
	}
	np := d.Uvarint()
	if np > uint64(d.Remaining()/34) {
		return nil, fmt.Errorf("%w: %d packs exceed the data", errIndex, np)
	}
	for range np {
		p := PackRef{ID: id}
		switch d.Byte() {
		case 0:
		case 1:
			p.Whole = true
		default:
			d.Fail(errors.New("pack kind is not 0 or 1"))
		}
		p.ID.Version = int64(d.Uvarint())
		p.ID.Checkpoint = d.Uvarint()
		p.ID.Writer = d.String()
		copy(p.Digest[:], d.Bytes(len(p.Digest)))
		p.Length = d.Uvarint()
		if d.Err() == nil {
			if err := p.ID.Validate(); err != nil {
				d.Fail(err)
			}
		}
		x.Packs = append(x.Packs, p)
	}
	nc := d.Uvarint()
	if nc > uint64(d.Remaining()/35) {
		return nil, fmt.Errorf("%w: %d chunks exceed the data", errIndex, nc)
	}
	used := make([]bool, len(x.Packs))
	var total uint64
	for i := range nc {
		var c ChunkRef
		pack := d.Uvarint()
		c.Offset, c.Length = d.Uvarint(), d.Uvarint()
		copy(c.Sum[:], d.Bytes(len(c.Sum)))
		if d.Err() != nil {
			break
		}
		if pack >= uint64(len(x.Packs)) {
			return nil, fmt.Errorf("%w: chunk %d names pack %d of %d", errIndex, i, pack, len(x.Packs))
		}
		c.Pack = int(pack)
		p := x.Packs[c.Pack]
		if c.Length == 0 || c.Length > cdcMax || c.Offset > p.Length || c.Length > p.Length-c.Offset {
			return nil, fmt.Errorf("%w: chunk %d [%d,+%d) is not inside pack %d (%d bytes)", errIndex, i, c.Offset, c.Length, pack, p.Length)
		}
		used[c.Pack] = true
		total += c.Length
		x.Chunks = append(x.Chunks, c)
	}
	if err := d.Done(); err != nil {
		return nil, fmt.Errorf("%w: %w", errIndex, err)
	}
	if total != x.Length {
		return nil, fmt.Errorf("%w: the chunks hold %d bytes, the index says %d", errIndex, total, x.Length)
	}
	if i := slices.Index(used, false); i >= 0 {
		return nil, fmt.Errorf("%w: pack %d holds no chunk", errIndex, i)
	}
	return x, nil
}

// PutIncremental seals plaintext as the snapshot id and returns the digest
// the orchestrator must record, with the snapshot's index (the base of the
// next one). Chunks that base (the index of a snapshot of the same job, task
// and key groups that is still recoverable: the restored one, or the last
// one accepted) already holds are referenced, not written again; the others
// go into one new pack (object id.Object()+"#pack"). If compact is set, a
// base pack that would keep less than three quarters of its bytes in use has
// its chunks written again, so the packs a restore reads stay within about
// 4/3 of the snapshot (what a restore, a migration's critical path, reads); a
// checkpoint on the critical path (a restored run's first,
// which a migration waits for) passes false and leaves that to the next. With no
// base (or one of another job, task or range) the pack is the whole
// snapshot. Then the index is written as object id.Object().
//
// The packs of base that the new snapshot references must stay in the store
// as long as it may be restored: see Release.
func (s *Store) PutIncremental(ctx context.Context, id SnapshotID, plaintext []byte, keys *seal.Keyring, base *Index, compact bool) (Digest, *Index, error) {
	if err := id.Validate(); err != nil {
		return Digest{}, nil, err
	}
	if base != nil && (base.ID.Job != id.Job || base.ID.Task != id.Task || base.ID.KeyGroups != id.KeyGroups) {
		base = nil
	}
	type loc struct {
		pack           int
		offset, length uint64
	}
	have := map[Digest]loc{}
	if base != nil {
		for _, c := range base.Chunks {
			have[c.Sum] = loc{c.Pack, c.Offset, c.Length}
		}
	}
	x := &Index{ID: id, Length: uint64(len(plaintext))}
	// First pass: chunk, hash and look each chunk up in the base.
	lens := chunk(plaintext)
	sums := make([]Digest, len(lens))
	found := make([]int, len(lens)) // base pack, or -1
	live := map[int]uint64{}
	off := 0
	for i, n := range lens {
		sums[i] = sha256.Sum256(plaintext[off : off+n])
		found[i] = -1
		if l, ok := have[sums[i]]; ok && l.length == uint64(n) {
			found[i] = l.pack
			live[l.pack] += uint64(n)
		}
		off += n
	}
	// Base packs a quarter unused or more are not kept alive: their chunks
	// are written again.
	kept := map[int]int{} // base pack -> its index in x.Packs
	for p := range len(livePacks(base)) {
		if n, ok := live[p]; ok && (!compact || 4*n >= 3*base.Packs[p].Length) {
			kept[p] = len(x.Packs)
			x.Packs = append(x.Packs, base.Packs[p])
		}
	}
	var newLen uint64
	for i, n := range lens {
		if _, ok := kept[found[i]]; !ok {
			found[i] = -1
			newLen += uint64(n)
		}
	}
	allNew := newLen == uint64(len(plaintext))
	var pack []byte
	if !allNew {
		pack = make([]byte, 0, newLen)
	}
	packIdx := len(x.Packs)
	off = 0
	x.Chunks = make([]ChunkRef, 0, len(lens))
	for i, n := range lens {
		if found[i] >= 0 {
			l := have[sums[i]]
			x.Chunks = append(x.Chunks, ChunkRef{Pack: kept[found[i]], Offset: l.offset, Length: l.length, Sum: sums[i]})
		} else {
			c := ChunkRef{Pack: packIdx, Offset: uint64(off), Length: uint64(n), Sum: sums[i]}
			if !allNew {
				c.Offset = uint64(len(pack))
				pack = append(pack, plaintext[off:off+n]...)
			}
			x.Chunks = append(x.Chunks, c)
		}
		off += n
	}
	if allNew {
		pack = plaintext // no copy
	}
	if newLen == 0 {
		d, err := s.put(ctx, id, id.Object(), true, x.marshal(), keys)
		if err != nil {
			return Digest{}, nil, err
		}
		return d, x, nil
	}
	pr := PackRef{ID: id, Length: newLen}
	if newLen > maxBufferedPack {
		// A large pack (a first, whole checkpoint) streams into the store;
		// the index follows once its digest is known.
		d, err := s.put(ctx, id, pr.Object(), false, pack, keys)
		if err != nil {
			return Digest{}, nil, err
		}
		pr.Digest = d
		x.Packs = append(x.Packs, pr)
		if d, err = s.put(ctx, id, id.Object(), true, x.marshal(), keys); err != nil {
			_ = s.deleteObject(context.WithoutCancel(ctx), id, pr.Object())
			return Digest{}, nil, err
		}
		return d, x, nil
	}
	// A small pack is sealed in memory first, so that its digest is known
	// and it and the index are stored concurrently (one store round trip
	// less on the checkpoint's path).
	sr, h, err := s.sealer(id, false, pack, keys)
	if err != nil {
		return Digest{}, nil, err
	}
	sealed, err := io.ReadAll(sr)
	if err != nil {
		return Digest{}, nil, fmt.Errorf("checkpoint: sealing pack of %s: %w", id, err)
	}
	sr.sum.Sum(pr.Digest[:0])
	x.Packs = append(x.Packs, pr)
	packErr := make(chan error, 1)
	go func() { packErr <- s.putSealed(ctx, id, pr.Object(), bytes.NewReader(sealed), h) }()
	d, err := s.put(ctx, id, id.Object(), true, x.marshal(), keys)
	if perr := <-packErr; err == nil {
		err = perr
	}
	if err != nil {
		_, _ = s.Release(context.WithoutCancel(ctx), &Index{ID: id, Packs: []PackRef{pr}}, 0, base)
		return Digest{}, nil, err
	}
	return d, x, nil
}

// livePacks returns base's packs (none for no base).
func livePacks(base *Index) []PackRef {
	if base == nil {
		return nil
	}
	return base.Packs
}

// GetSnapshot reads the snapshot id back, whether whole (Put) or incremental
// (PutIncremental), checked against the digest want that the orchestrator
// recorded, and returns its plaintext with its index (for a whole snapshot,
// an index of one pack, itself, so that the next snapshot can be incremental
// on it). An incremental snapshot is returned only when its index and every
// pack opened and matched its digest (each pack refused, if it is not, by
// the rules of Get, naming the pack) and every chunk matched its SHA-256
// (RuleTampered otherwise); never a part of it.
func (s *Store) GetSnapshot(ctx context.Context, id SnapshotID, want Digest, keys *seal.Keyring) ([]byte, *Index, error) {
	raw, index, err := s.getObject(ctx, id, id.Object(), want, keys)
	if err != nil {
		return nil, nil, err
	}
	if !index {
		x := &Index{ID: id, Whole: true, Length: uint64(len(raw))}
		x.Packs = []PackRef{{ID: id, Whole: true, Digest: want, Length: uint64(len(raw))}}
		off := 0
		for _, n := range chunk(raw) {
			x.Chunks = append(x.Chunks, ChunkRef{Offset: uint64(off), Length: uint64(n), Sum: sha256.Sum256(raw[off : off+n])})
			off += n
		}
		return raw, x, nil
	}
	x, err := decodeIndex(id, raw, s.maxSnapshot)
	if err != nil {
		err = refuse(RuleTampered, id, err, "its index does not decode")
		s.logRefusal(id, id.Object(), err)
		return nil, nil, err
	}
	// The packs are read concurrently: each read waits on round trips to
	// the store more than on this process.
	packs := make([][]byte, len(x.Packs))
	errs := make([]error, len(x.Packs))
	var wg sync.WaitGroup
	for i, p := range x.Packs {
		wg.Go(func() {
			b, pindex, err := s.getObject(ctx, p.ID, p.Object(), p.Digest, keys)
			if err == nil && (pindex || uint64(len(b)) != p.Length) {
				clear(b)
				b, err = nil, refuse(RuleForeign, p.ID, nil, "object %q is not the pack the index of %s lists (an index, or %d bytes instead of %d)", p.Object(), id, len(b), p.Length)
				s.logRefusal(p.ID, p.Object(), err)
			}
			if err != nil {
				err = fmt.Errorf("checkpoint: pack %d of %d of incremental snapshot %s: %w", i+1, len(x.Packs), id, err)
			}
			packs[i], errs[i] = b, err
		})
	}
	wg.Wait()
	wipe := func() {
		for _, p := range packs {
			clear(p)
		}
	}
	for _, err := range errs {
		if err != nil {
			wipe()
			return nil, nil, err
		}
	}
	// Check and copy the chunks in two halves at once (SHA-256 and copying
	// are most of the CPU a restore spends here).
	pt := make([]byte, x.Length)
	bad := []int{-1, -1}
	half := len(x.Chunks) / 2
	var off uint64
	for _, c := range x.Chunks[:half] {
		off += c.Length
	}
	var cw sync.WaitGroup
	for h, r := range [][2]int{{0, half}, {half, len(x.Chunks)}} {
		start := uint64(0)
		if h == 1 {
			start = off
		}
		cw.Go(func() {
			at := start
			for i := r[0]; i < r[1]; i++ {
				c := x.Chunks[i]
				b := packs[c.Pack][c.Offset : c.Offset+c.Length]
				if sha256.Sum256(b) != c.Sum {
					bad[h] = i
					return
				}
				at += uint64(copy(pt[at:], b))
			}
		})
	}
	cw.Wait()
	wipe()
	for _, i := range bad {
		if i >= 0 {
			clear(pt)
			err := refuse(RuleTampered, id, nil, "chunk %d of %d (pack %q) does not have the SHA-256 its index lists", i, len(x.Chunks), x.Packs[x.Chunks[i].Pack].Object())
			s.logRefusal(id, id.Object(), err)
			return nil, nil, err
		}
	}
	return pt, x, nil
}

// Release deletes the snapshot x (its index object and its packs) except
// the objects that a snapshot in keep references (the ones that may still be
// restored: the latest accepted, savepoints), and those written for a
// checkpoint up to keepThrough (0: none), which a snapshot the caller has no
// index of may reference. It returns how many objects it deleted.
func (s *Store) Release(ctx context.Context, x *Index, keepThrough uint64, keep ...*Index) (int, error) {
	if x == nil {
		return 0, nil
	}
	live := map[string]bool{}
	for _, k := range keep {
		if k != nil {
			for _, o := range k.Objects() {
				live[o] = true
			}
		}
	}
	ckpt := map[string]uint64{x.ID.Object(): x.ID.Checkpoint}
	for _, p := range x.Packs {
		ckpt[p.Object()] = p.ID.Checkpoint
	}
	n := 0
	for _, o := range x.Objects() {
		if live[o] || (keepThrough > 0 && ckpt[o] <= keepThrough) {
			continue
		}
		if err := s.deleteObject(ctx, x.ID, o); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

func (s *Store) deleteObject(ctx context.Context, id SnapshotID, name string) error {
	err := s.obs.Delete(ctx, name)
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("checkpoint: deleting %s (object %q): %w", id, name, err)
	}
	return nil
}
