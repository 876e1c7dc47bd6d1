package checkpoint

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/sealflow/sealflow/engine/state"
)

// Position is where a source read a partition of a stream up to when the
// checkpoint was taken: the JetStream stream sequence of the last frame taken
// and the sealed sequence number expected next (as confidential.Position).
type Position struct {
	StreamSeq uint64 `json:"stream_seq"`
	Next      uint64 `json:"next"`
}

// TaskSnapshot is one task's snapshot in a manifest.
type TaskSnapshot struct {
	Task      string      `json:"task"`
	KeyGroups state.Range `json:"key_groups"`
	Digest    Digest      `json:"digest"`
}

// Manifest describes one complete checkpoint of a job: every task's snapshot
// and digest, and the source positions to rewind to, per stream and
// partition. Its canonical binary encoding (MarshalBinary) is what its Digest
// covers; two manifests with the same content encode identically.
type Manifest struct {
	Job        string                         `json:"job"`
	Version    int64                          `json:"version"`
	Checkpoint uint64                         `json:"checkpoint"`
	Snapshots  []TaskSnapshot                 `json:"snapshots"`
	Positions  map[string]map[uint32]Position `json:"positions,omitempty"`
}

// SnapshotID returns the id of the manifest's i-th snapshot.
func (m *Manifest) SnapshotID(i int) SnapshotID {
	s := m.Snapshots[i]
	return SnapshotID{Job: m.Job, Version: m.Version, Task: s.Task, KeyGroups: s.KeyGroups, Checkpoint: m.Checkpoint}
}

// Snapshot returns the snapshot of task holding key groups r.
func (m *Manifest) Snapshot(task string, r state.Range) (TaskSnapshot, bool) {
	for _, s := range m.Snapshots {
		if s.Task == task && s.KeyGroups == r {
			return s, true
		}
	}
	return TaskSnapshot{}, false
}

const manifestMagic = "SFCM"

// Limits of a manifest.
const (
	// MaxSnapshots is the most snapshots one manifest lists.
	MaxSnapshots = 1 << 16
	// MaxStreamName is the longest stream name, in bytes.
	MaxStreamName = 255
)

func compareSnapshots(a, b TaskSnapshot) int {
	return cmp.Or(cmp.Compare(a.Task, b.Task), cmp.Compare(a.KeyGroups.From, b.KeyGroups.From), cmp.Compare(a.KeyGroups.To, b.KeyGroups.To))
}

// Validate checks the manifest's fields: ids, ranges, digests, no snapshot
// listed twice.
func (m *Manifest) Validate() error {
	if err := validName("job", m.Job); err != nil {
		return err
	}
	if len(m.Snapshots) == 0 {
		return fmt.Errorf("checkpoint: manifest of job %q checkpoint %d lists no snapshot", short(m.Job), m.Checkpoint)
	}
	if len(m.Snapshots) > MaxSnapshots {
		return fmt.Errorf("checkpoint: manifest of job %q lists %d snapshots, more than %d", short(m.Job), len(m.Snapshots), MaxSnapshots)
	}
	sorted := slices.SortedFunc(slices.Values(m.Snapshots), compareSnapshots)
	for i, s := range sorted {
		if err := m.snapshotCheck(s); err != nil {
			return err
		}
		if i > 0 && compareSnapshots(sorted[i-1], s) == 0 {
			return fmt.Errorf("checkpoint: manifest of job %q lists the snapshot of task %q key groups %v twice", short(m.Job), short(s.Task), s.KeyGroups)
		}
	}
	for name := range m.Positions {
		if len(name) == 0 || len(name) > MaxStreamName {
			return fmt.Errorf("checkpoint: manifest of job %q: stream name %q has %d bytes, want 1 to %d", short(m.Job), short(name), len(name), MaxStreamName)
		}
	}
	return nil
}

func (m *Manifest) snapshotCheck(s TaskSnapshot) error {
	id := SnapshotID{Job: m.Job, Version: m.Version, Task: s.Task, KeyGroups: s.KeyGroups, Checkpoint: m.Checkpoint}
	if err := id.Validate(); err != nil {
		return err
	}
	if s.Digest.IsZero() {
		return fmt.Errorf("checkpoint: manifest of job %q: snapshot of task %q has no digest", short(m.Job), short(s.Task))
	}
	return nil
}

// MarshalBinary returns the manifest's canonical encoding, all integers big
// endian, snapshots sorted by (task, key groups), streams and partitions in
// increasing order:
//
//	"SFCM" | format u8 | job length u8 | job | version i64 | checkpoint u64 |
//	snapshots u32 | { task length u8 | task | from u32 | to u32 | digest [32] } |
//	streams u32 | { name length u8 | name | partitions u32 |
//	                { partition u32 | stream seq u64 | next u64 } }
func (m *Manifest) MarshalBinary() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b := append([]byte(manifestMagic), Format, byte(len(m.Job)))
	b = append(b, m.Job...)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Version))
	b = binary.BigEndian.AppendUint64(b, m.Checkpoint)
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Snapshots)))
	for _, s := range slices.SortedFunc(slices.Values(m.Snapshots), compareSnapshots) {
		b = append(b, byte(len(s.Task)))
		b = append(b, s.Task...)
		b = binary.BigEndian.AppendUint32(b, uint32(s.KeyGroups.From))
		b = binary.BigEndian.AppendUint32(b, uint32(s.KeyGroups.To))
		b = append(b, s.Digest[:]...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Positions)))
	for _, name := range slices.Sorted(maps.Keys(m.Positions)) {
		parts := m.Positions[name]
		b = append(b, byte(len(name)))
		b = append(b, name...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(parts)))
		for _, p := range slices.Sorted(maps.Keys(parts)) {
			b = binary.BigEndian.AppendUint32(b, p)
			b = binary.BigEndian.AppendUint64(b, parts[p].StreamSeq)
			b = binary.BigEndian.AppendUint64(b, parts[p].Next)
		}
	}
	return b, nil
}

// Digest returns the SHA-256 of the manifest's canonical encoding, under a
// domain label.
func (m *Manifest) Digest() (Digest, error) {
	b, err := m.MarshalBinary()
	if err != nil {
		return Digest{}, err
	}
	h := sha256.New()
	h.Write([]byte("sealflow checkpoint manifest v1\x00"))
	h.Write(b)
	var d Digest
	h.Sum(d[:0])
	return d, nil
}

var errShortManifest = errors.New("checkpoint: manifest ends early")

// DecodeManifest decodes a manifest's canonical encoding. It accepts only
// the canonical form: sorted, without duplicates or trailing bytes, so that
// one manifest has exactly one encoding and one digest.
func DecodeManifest(b []byte) (*Manifest, error) {
	d := decoder{b: b}
	if string(d.take(len(manifestMagic))) != manifestMagic {
		return nil, errors.New("checkpoint: not a manifest (bad magic)")
	}
	if f := d.u8(); f != Format {
		if d.err != nil {
			return nil, d.err
		}
		return nil, fmt.Errorf("checkpoint: manifest format %d, want %d", f, Format)
	}
	m := &Manifest{}
	m.Job = string(d.take(int(d.u8())))
	m.Version = int64(d.u64())
	m.Checkpoint = d.u64()
	n := d.u32()
	// Each snapshot takes at least 1+1+4+4+32 bytes: bound n by what is left.
	if d.err == nil && (n == 0 || n > MaxSnapshots || uint64(n)*42 > uint64(len(d.b))) {
		return nil, fmt.Errorf("checkpoint: manifest lists %d snapshots in %d bytes", n, len(d.b))
	}
	m.Snapshots = make([]TaskSnapshot, 0, n)
	for range n {
		var s TaskSnapshot
		s.Task = string(d.take(int(d.u8())))
		s.KeyGroups.From = int(d.u32())
		s.KeyGroups.To = int(d.u32())
		copy(s.Digest[:], d.take(len(s.Digest)))
		if d.err != nil {
			return nil, d.err
		}
		if s.KeyGroups.From > state.MaxMaxParallelism || s.KeyGroups.To > state.MaxMaxParallelism {
			return nil, fmt.Errorf("checkpoint: manifest key-group range %v exceeds the maximum parallelism %d", s.KeyGroups, state.MaxMaxParallelism)
		}
		if k := len(m.Snapshots); k > 0 && compareSnapshots(m.Snapshots[k-1], s) >= 0 {
			return nil, fmt.Errorf("checkpoint: manifest snapshots are not in canonical order at task %q key groups %v", short(s.Task), s.KeyGroups)
		}
		m.Snapshots = append(m.Snapshots, s)
	}
	ns := d.u32()
	if d.err == nil && uint64(ns)*5 > uint64(len(d.b)) {
		return nil, fmt.Errorf("checkpoint: manifest lists %d streams in %d bytes", ns, len(d.b))
	}
	if ns > 0 {
		m.Positions = make(map[string]map[uint32]Position, ns)
	}
	prev := ""
	for i := range ns {
		name := string(d.take(int(d.u8())))
		np := d.u32()
		if d.err != nil {
			return nil, d.err
		}
		if i > 0 && name <= prev {
			return nil, fmt.Errorf("checkpoint: manifest streams are not in canonical order at %q", short(name))
		}
		prev = name
		if uint64(np)*20 > uint64(len(d.b)) {
			return nil, fmt.Errorf("checkpoint: manifest stream %q lists %d partitions in %d bytes", short(name), np, len(d.b))
		}
		parts := make(map[uint32]Position, np)
		last := uint32(0)
		for j := range np {
			p := d.u32()
			pos := Position{StreamSeq: d.u64(), Next: d.u64()}
			if d.err != nil {
				return nil, d.err
			}
			if j > 0 && p <= last {
				return nil, fmt.Errorf("checkpoint: manifest partitions of stream %q are not in canonical order at %d", short(name), p)
			}
			last = p
			parts[p] = pos
		}
		m.Positions[name] = parts
	}
	if d.err != nil {
		return nil, d.err
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("checkpoint: manifest has %d trailing bytes", len(d.b))
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// decoder reads big-endian fields, remembering the first short read.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.err = errShortManifest
		d.b = nil
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() uint8 {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if v := d.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}
