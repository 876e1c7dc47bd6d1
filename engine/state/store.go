package state

import (
	"fmt"
	"slices"
)

// snapshotMagic and snapshotVersion open every Store snapshot.
const (
	snapshotMagic   = "SFKS"
	snapshotVersion = 1
)

// Store is an in-memory keyed store of values of type V, organized by key group,
// for one subtask owning a range of key groups. Each group is a map from key to
// *V; the pointer stays valid until the key is deleted, so an operator updates
// state in place with one lookup and no allocation. Deleted values are recycled.
//
// A Store is not safe for concurrent use: a subtask's operator owns it.
type Store[V any] struct {
	maxP   int
	owned  Range
	groups []map[uint64]*V
	free   []*V
	codec  Codec[V]
	n      int
	// lastSnapshot is the size of the previous snapshot, to size the next.
	lastSnapshot int
}

// NewStore returns an empty store for the key groups in owned, out of
// maxParallelism groups, encoding values with codec in snapshots.
func NewStore[V any](maxParallelism int, owned Range, codec Codec[V]) (*Store[V], error) {
	if err := owned.Validate(maxParallelism); err != nil {
		return nil, err
	}
	if codec == nil {
		return nil, fmt.Errorf("state: store needs a codec")
	}
	return &Store[V]{
		maxP:   maxParallelism,
		owned:  owned,
		groups: make([]map[uint64]*V, owned.Len()),
		codec:  codec,
	}, nil
}

// MaxParallelism returns the number of key groups of the job.
func (s *Store[V]) MaxParallelism() int { return s.maxP }

// Owned returns the key groups this store holds.
func (s *Store[V]) Owned() Range { return s.owned }

// Len returns the number of keys held.
func (s *Store[V]) Len() int { return s.n }

// Owns reports whether key falls in one of this store's key groups.
func (s *Store[V]) Owns(key uint64) bool {
	return s.owned.Contains(KeyGroup(key, s.maxP))
}

// Get returns the value of key, or nil if absent (or in a group not owned).
func (s *Store[V]) Get(key uint64) *V {
	kg := KeyGroup(key, s.maxP)
	if !s.owned.Contains(kg) {
		return nil
	}
	m := s.groups[kg-s.owned.From]
	if m == nil {
		return nil
	}
	return m[key]
}

// GetOrCreate returns the value of key, creating it if absent. A created value
// is either new (zero) or recycled from a deleted key after its Reset method
// (if V has one, as `func (*V) Reset()`) was called; created reports which keys
// are new so the caller can initialize them. It returns an error if key belongs
// to a key group this store does not own, which means the record was routed to
// the wrong subtask.
func (s *Store[V]) GetOrCreate(key uint64) (v *V, created bool, err error) {
	kg := KeyGroup(key, s.maxP)
	if !s.owned.Contains(kg) {
		return nil, false, fmt.Errorf("state: key %#x is in key group %d, outside this subtask's range %v", key, kg, s.owned)
	}
	m := s.groups[kg-s.owned.From]
	if m == nil {
		m = make(map[uint64]*V)
		s.groups[kg-s.owned.From] = m
	} else if v = m[key]; v != nil {
		return v, false, nil
	}
	if n := len(s.free); n > 0 {
		v = s.free[n-1]
		s.free = s.free[:n-1]
	} else {
		v = new(V)
	}
	m[key] = v
	s.n++
	return v, true, nil
}

type resetter interface{ Reset() }

// Delete removes key and recycles its value.
func (s *Store[V]) Delete(key uint64) {
	kg := KeyGroup(key, s.maxP)
	if !s.owned.Contains(kg) {
		return
	}
	m := s.groups[kg-s.owned.From]
	v, ok := m[key]
	if !ok {
		return
	}
	delete(m, key)
	s.n--
	if r, ok := any(v).(resetter); ok {
		r.Reset()
	} else {
		var zero V
		*v = zero
	}
	s.free = append(s.free, v)
}

// ForEach calls fn for every key and value, in no particular order, until fn
// returns false. fn must not add or delete keys.
func (s *Store[V]) ForEach(fn func(key uint64, v *V) bool) {
	for _, m := range s.groups {
		for k, v := range m {
			if !fn(k, v) {
				return
			}
		}
	}
}

// Snapshot encodes the keys of the groups in r (which must lie within the
// owned range) in a deterministic order: groups ascending, keys ascending. The
// encoding is versioned: "SFKS", version, max parallelism, range, then for each
// non-empty group its number, its key count and each key with its value.
func (s *Store[V]) Snapshot(r Range) ([]byte, error) {
	return s.AppendSnapshot(nil, r)
}

// AppendSnapshot appends the encoding Snapshot returns to dst. The buffer
// grows to the size of the store's previous snapshot at once, so a large
// snapshot is not copied again and again as it grows.
func (s *Store[V]) AppendSnapshot(dst []byte, r Range) ([]byte, error) {
	if r.From < s.owned.From || r.To > s.owned.To || r.From > r.To {
		return nil, fmt.Errorf("state: snapshot range %v is not within the owned range %v", r, s.owned)
	}
	nonEmpty := 0
	for kg := r.From; kg < r.To; kg++ {
		if len(s.groups[kg-s.owned.From]) > 0 {
			nonEmpty++
		}
	}
	start := len(dst)
	if want := s.lastSnapshot + s.lastSnapshot/8; cap(dst)-len(dst) < want {
		dst = slices.Grow(dst, want)
	}
	buf := append(dst, snapshotMagic...)
	buf = append(buf, snapshotVersion)
	buf = AppendUvarint(buf, uint64(s.maxP))
	buf = AppendUvarint(buf, uint64(r.From))
	buf = AppendUvarint(buf, uint64(r.To))
	buf = AppendUvarint(buf, uint64(nonEmpty))
	var keys []uint64
	var val []byte
	for kg := r.From; kg < r.To; kg++ {
		m := s.groups[kg-s.owned.From]
		if len(m) == 0 {
			continue
		}
		keys = keys[:0]
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		buf = AppendUvarint(buf, uint64(kg))
		buf = AppendUvarint(buf, uint64(len(keys)))
		for _, k := range keys {
			val = s.codec.Append(val[:0], m[k])
			buf = append(buf, byte(k>>56), byte(k>>48), byte(k>>40), byte(k>>32), byte(k>>24), byte(k>>16), byte(k>>8), byte(k))
			buf = AppendUvarint(buf, uint64(len(val)))
			buf = append(buf, val...)
		}
	}
	s.lastSnapshot = len(buf) - start
	return buf, nil
}

// Entry is one decoded key and value of a snapshot.
type Entry[V any] struct {
	Group int
	Key   uint64
	Value V
}

// DecodeSnapshot strictly decodes a snapshot written by Snapshot for a job with
// maxParallelism key groups: it checks the magic, version and max parallelism,
// that groups lie in the snapshot's range and ascend, that keys ascend and
// belong to their group, that each value decodes exactly, and that no bytes
// follow. It returns the snapshot's range and entries.
func DecodeSnapshot[V any](data []byte, maxParallelism int, codec Codec[V]) (Range, []Entry[V], error) {
	d := NewDecoder(data)
	if string(d.Bytes(len(snapshotMagic))) != snapshotMagic {
		return Range{}, nil, fmt.Errorf("state: snapshot does not start with %q", snapshotMagic)
	}
	if v := d.Byte(); d.Err() == nil && v != snapshotVersion {
		return Range{}, nil, fmt.Errorf("state: snapshot version %d is not supported (want %d)", v, snapshotVersion)
	}
	maxP := d.Uvarint()
	from, to := d.Uvarint(), d.Uvarint()
	if d.Err() != nil {
		return Range{}, nil, d.Err()
	}
	if maxP != uint64(maxParallelism) {
		return Range{}, nil, fmt.Errorf("state: snapshot has max parallelism %d, this job has %d", maxP, maxParallelism)
	}
	if from > to || to > maxP {
		return Range{}, nil, fmt.Errorf("state: snapshot range [%d,%d) is invalid for max parallelism %d", from, to, maxP)
	}
	r := Range{From: int(from), To: int(to)}
	ngroups := d.Count(3)
	if ngroups > r.Len() {
		return Range{}, nil, fmt.Errorf("state: snapshot claims %d groups in range %v", ngroups, r)
	}
	var out []Entry[V]
	prevKG := -1
	for g := 0; g < ngroups && d.Err() == nil; g++ {
		kg := d.Uvarint()
		nkeys := d.Count(9)
		if d.Err() != nil {
			break
		}
		if kg < from || kg >= to || int(kg) <= prevKG {
			return Range{}, nil, fmt.Errorf("state: snapshot group %d is out of order or outside %v", kg, r)
		}
		if nkeys == 0 {
			return Range{}, nil, fmt.Errorf("state: snapshot group %d is empty", kg)
		}
		prevKG = int(kg)
		var prevKey uint64
		for i := 0; i < nkeys && d.Err() == nil; i++ {
			key := d.Uint64()
			val := d.Bytes(d.Count(1))
			if d.Err() != nil {
				break
			}
			if i > 0 && key <= prevKey {
				return Range{}, nil, fmt.Errorf("state: snapshot group %d: key %#x out of order", kg, key)
			}
			prevKey = key
			if got := KeyGroup(key, maxParallelism); got != int(kg) {
				return Range{}, nil, fmt.Errorf("state: snapshot key %#x filed under group %d, belongs to %d", key, kg, got)
			}
			out = append(out, Entry[V]{Group: int(kg), Key: key})
			if err := codec.Decode(val, &out[len(out)-1].Value); err != nil {
				return Range{}, nil, fmt.Errorf("state: snapshot key %#x in group %d: %w", key, kg, err)
			}
		}
	}
	if err := d.Done(); err != nil {
		return Range{}, nil, err
	}
	return r, out, nil
}

// Restore replaces the contents of the key groups in r ∩ (the snapshot's range)
// with the snapshot's entries for them. r must lie within the owned range. The
// whole snapshot is decoded and checked first, so a malformed snapshot changes
// nothing. To rescale, each new subtask restores its own range from every old
// subtask's snapshot.
func (s *Store[V]) Restore(r Range, data []byte) error {
	if r.From < s.owned.From || r.To > s.owned.To || r.From > r.To {
		return fmt.Errorf("state: restore range %v is not within the owned range %v", r, s.owned)
	}
	snapRange, entries, err := DecodeSnapshot(data, s.maxP, s.codec)
	if err != nil {
		return err
	}
	x := r.Intersect(snapRange)
	for kg := x.From; kg < x.To; kg++ {
		m := s.groups[kg-s.owned.From]
		for k := range m {
			s.Delete(k)
		}
	}
	for i := range entries {
		e := &entries[i]
		if !x.Contains(e.Group) {
			continue
		}
		v, _, err := s.GetOrCreate(e.Key)
		if err != nil {
			return err
		}
		*v = e.Value
	}
	return nil
}
