package runtime

import (
	"errors"
	"fmt"

	"github.com/sealflow/sealflow/engine/state"
)

// Snapshot is the decoded form of a run's checkpoint: what Persist receives,
// encoded by MarshalBinary. It is opened only after the checkpoint store has
// authenticated it, but DecodeSnapshot is strict all the same.
type Snapshot struct {
	// ID is the checkpoint id.
	ID uint64
	// Finished is set on the final checkpoint of a bounded run.
	Finished bool
	// Parts holds one part per subtask.
	Parts []SubtaskSnapshot
}

// SubtaskSnapshot is one subtask's share of a checkpoint.
type SubtaskSnapshot struct {
	// Node is the ID of the head node of the subtask's task; Subtask and
	// Parallelism identify the subtask.
	Node                 string
	Subtask, Parallelism int
	// Source is the position of a source subtask (nil for other subtasks,
	// and for a source that registered no snapshotter).
	Source []byte
	// Done is set when the subtask had finished (all its input consumed and
	// its operators finished) when the snapshot was taken.
	Done bool
	// Ops holds the keyed state of the task's stateful operators.
	Ops []OperatorSnapshot
	// Sinks holds the output of sink operators not yet committed.
	Sinks []SinkPending
}

// OperatorSnapshot is the state of one operator over a key-group range.
type OperatorSnapshot struct {
	Node      string
	KeyGroups state.Range
	Data      []byte
}

// SinkPending is the uncommitted output of one sink subtask, by checkpoint.
type SinkPending struct {
	Node   string
	Epochs []Epoch
}

// Epoch is the output a sink subtask received before the barrier of
// checkpoint ID (and after the previous one): batches encoded with
// record.AppendBatch, each preceded by its length (uvarint).
type Epoch struct {
	ID      uint64
	Batches int
	Data    []byte
}

const snapshotMagic = "SFCK\x01"

// MarshalBinary encodes the snapshot.
func (s *Snapshot) MarshalBinary() ([]byte, error) {
	// One allocation of the right size: the operators' state may be large.
	size := len(snapshotMagic) + 32
	for i := range s.Parts {
		p := &s.Parts[i]
		size += len(p.Node) + len(p.Source) + 48
		for _, op := range p.Ops {
			size += len(op.Node) + len(op.Data) + 32
		}
		for _, sp := range p.Sinks {
			size += len(sp.Node) + 16
			for _, e := range sp.Epochs {
				size += len(e.Data) + 32
			}
		}
	}
	b := append(make([]byte, 0, size), snapshotMagic...)
	b = state.AppendUvarint(b, s.ID)
	if s.Finished {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = state.AppendUvarint(b, uint64(len(s.Parts)))
	for i := range s.Parts {
		p := &s.Parts[i]
		b = state.AppendString(b, p.Node)
		b = state.AppendUvarint(b, uint64(p.Subtask))
		b = state.AppendUvarint(b, uint64(p.Parallelism))
		flags := byte(0)
		if p.Source != nil {
			flags |= 1
		}
		if p.Done {
			flags |= 2
		}
		b = append(b, flags)
		if p.Source != nil {
			b = appendBytes(b, p.Source)
		}
		b = state.AppendUvarint(b, uint64(len(p.Ops)))
		for _, op := range p.Ops {
			b = state.AppendString(b, op.Node)
			b = state.AppendUvarint(b, uint64(op.KeyGroups.From))
			b = state.AppendUvarint(b, uint64(op.KeyGroups.To))
			b = appendBytes(b, op.Data)
		}
		b = state.AppendUvarint(b, uint64(len(p.Sinks)))
		for _, sp := range p.Sinks {
			b = state.AppendString(b, sp.Node)
			b = state.AppendUvarint(b, uint64(len(sp.Epochs)))
			for _, e := range sp.Epochs {
				b = state.AppendUvarint(b, e.ID)
				b = state.AppendUvarint(b, uint64(e.Batches))
				b = appendBytes(b, e.Data)
			}
		}
	}
	return b, nil
}

func appendBytes(b, data []byte) []byte {
	b = state.AppendUvarint(b, uint64(len(data)))
	return append(b, data...)
}

// errBadSnapshot is wrapped by DecodeSnapshot's errors.
var errBadSnapshot = errors.New("malformed run snapshot")

// maxCount bounds the counts DecodeSnapshot accepts before it allocates.
const maxCount = 1 << 20

// DecodeSnapshot strictly decodes a snapshot written by MarshalBinary. The
// result refers to data, which must not change while it is used.
func DecodeSnapshot(data []byte) (*Snapshot, error) {
	if len(data) < len(snapshotMagic) || string(data[:len(snapshotMagic)]) != snapshotMagic {
		return nil, fmt.Errorf("%w: not a run snapshot (bad magic or version)", errBadSnapshot)
	}
	d := state.NewDecoder(data[len(snapshotMagic):])
	s := &Snapshot{ID: d.Uvarint()}
	switch d.Byte() {
	case 0:
	case 1:
		s.Finished = true
	default:
		d.Fail(errors.New("finished flag is not 0 or 1"))
	}
	count := func() int {
		n := d.Uvarint()
		if n > maxCount || n > uint64(d.Remaining()) {
			d.Fail(fmt.Errorf("count %d exceeds the data", n))
			return 0
		}
		return int(n)
	}
	// The parts alias data, which the caller hands over (no copy of what
	// may be a large state).
	bytesOf := func() []byte {
		n := d.Uvarint()
		if n > uint64(d.Remaining()) {
			d.Fail(fmt.Errorf("length %d exceeds the data", n))
			return nil
		}
		return d.Bytes(int(n))
	}
	nparts := count()
	for range nparts {
		if d.Err() != nil {
			break
		}
		var p SubtaskSnapshot
		p.Node = d.String()
		p.Subtask, p.Parallelism = int(d.Uvarint()), int(d.Uvarint())
		if p.Parallelism < 1 || p.Parallelism > maxCount || p.Subtask >= p.Parallelism {
			d.Fail(fmt.Errorf("subtask %d of %d", p.Subtask, p.Parallelism))
		}
		flags := d.Byte()
		if flags&^3 != 0 {
			d.Fail(fmt.Errorf("unknown subtask flags 0x%02x", flags))
		}
		p.Done = flags&2 != 0
		if flags&1 != 0 {
			p.Source = bytesOf()
		}
		nops := count()
		for range nops {
			if d.Err() != nil {
				break
			}
			op := OperatorSnapshot{Node: d.String()}
			from, to := d.Uvarint(), d.Uvarint()
			if from >= to || to > maxCount {
				d.Fail(fmt.Errorf("key-group range [%d,%d)", from, to))
			}
			op.KeyGroups = state.Range{From: int(from), To: int(to)}
			op.Data = bytesOf()
			p.Ops = append(p.Ops, op)
		}
		nsinks := count()
		for range nsinks {
			if d.Err() != nil {
				break
			}
			sp := SinkPending{Node: d.String()}
			neps := count()
			for range neps {
				if d.Err() != nil {
					break
				}
				e := Epoch{ID: d.Uvarint()}
				nb := d.Uvarint()
				if nb > maxCount {
					d.Fail(fmt.Errorf("%d batches", nb))
				}
				e.Batches = int(nb)
				e.Data = bytesOf()
				sp.Epochs = append(sp.Epochs, e)
			}
			p.Sinks = append(p.Sinks, sp)
		}
		s.Parts = append(s.Parts, p)
	}
	if err := d.Done(); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadSnapshot, err)
	}
	return s, nil
}

// part returns the snapshot's part of the subtask.
func (s *Snapshot) part(node string, subtask int) *SubtaskSnapshot {
	for i := range s.Parts {
		if s.Parts[i].Node == node && s.Parts[i].Subtask == subtask {
			return &s.Parts[i]
		}
	}
	return nil
}
