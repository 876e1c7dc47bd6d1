package confidential

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// positionsVersion starts every encoding of positions (MarshalPositions).
const positionsVersion = 1

// MarshalPositions encodes the positions of some partitions of an ingest
// stream, as an IngestSource subtask records them in a checkpoint: a version
// byte (1), the number of partitions as a uvarint, then for each partition in
// increasing order its number, StreamSeq and Next as uvarints and a flags
// byte (1 if Ended, else 0). Every position must come from a frame that was
// taken (StreamSeq and Next at least 1) of a partition below MaxPartitions.
// The encoding is canonical: UnmarshalPositions accepts nothing else.
func MarshalPositions(pos map[uint32]Position) ([]byte, error) {
	b := []byte{positionsVersion}
	b = binary.AppendUvarint(b, uint64(len(pos)))
	for _, p := range slices.Sorted(maps.Keys(pos)) {
		ps := pos[p]
		if err := checkPosition(p, ps); err != nil {
			return nil, err
		}
		b = binary.AppendUvarint(b, uint64(p))
		b = binary.AppendUvarint(b, ps.StreamSeq)
		b = binary.AppendUvarint(b, ps.Next)
		var flags byte
		if ps.Ended {
			flags = 1
		}
		b = append(b, flags)
	}
	return b, nil
}

func checkPosition(p uint32, ps Position) error {
	if p >= MaxPartitions {
		return fmt.Errorf("confidential: position of partition %d, but a stream has at most %d", p, MaxPartitions)
	}
	if ps.StreamSeq == 0 || ps.Next == 0 {
		return fmt.Errorf("confidential: position of partition %d has stream sequence %d and next sealed sequence %d; a position after a frame has both at least 1", p, ps.StreamSeq, ps.Next)
	}
	return nil
}

// errPositions starts every error of UnmarshalPositions.
var errPositions = errors.New("confidential: malformed source positions")

// UnmarshalPositions decodes what MarshalPositions encoded. It refuses
// anything else: another version, non-minimal or overlong uvarints,
// partitions out of order or repeated, positions MarshalPositions refuses,
// unknown flags and trailing bytes.
func UnmarshalPositions(b []byte) (map[uint32]Position, error) {
	if len(b) == 0 || b[0] != positionsVersion {
		return nil, fmt.Errorf("%w: does not start with version %d", errPositions, positionsVersion)
	}
	off := 1
	uvarint := func(what string) (uint64, error) {
		v, k := binary.Uvarint(b[off:])
		if k <= 0 || k != len(binary.AppendUvarint(nil, v)) {
			return 0, fmt.Errorf("%w: no minimal uvarint %s at offset %d", errPositions, what, off)
		}
		off += k
		return v, nil
	}
	n, err := uvarint("count")
	if err != nil {
		return nil, err
	}
	// An entry takes at least 4 bytes, so a count the input cannot hold is
	// refused before anything is allocated for it.
	if n > MaxPartitions || n > uint64(len(b)-off)/4 {
		return nil, fmt.Errorf("%w: %d partitions in %d bytes", errPositions, n, len(b))
	}
	pos := make(map[uint32]Position, n)
	prev := int64(-1)
	for range n {
		p, err := uvarint("partition")
		if err != nil {
			return nil, err
		}
		if p >= MaxPartitions || int64(p) <= prev {
			return nil, fmt.Errorf("%w: partition %d after %d (want increasing, below %d)", errPositions, p, prev, MaxPartitions)
		}
		prev = int64(p)
		var ps Position
		if ps.StreamSeq, err = uvarint("stream sequence"); err != nil {
			return nil, err
		}
		if ps.Next, err = uvarint("next sequence"); err != nil {
			return nil, err
		}
		if off >= len(b) || b[off] > 1 {
			return nil, fmt.Errorf("%w: no flags byte 0 or 1 at offset %d", errPositions, off)
		}
		ps.Ended = b[off] == 1
		off++
		if err := checkPosition(uint32(p), ps); err != nil {
			return nil, fmt.Errorf("%w: %w", errPositions, err)
		}
		pos[uint32(p)] = ps
	}
	if off != len(b) {
		return nil, fmt.Errorf("%w: %d bytes after the last position", errPositions, len(b)-off)
	}
	return pos, nil
}
