// Package state holds keyed operator state partitioned into key groups.
//
// A job has a fixed maximum parallelism M (the number of key groups). Every key
// is a 64-bit value (the result of an operator's key function); KeyGroup maps it
// to one of the M groups with a well-mixed hash, and a subtask i of a task with
// parallelism p owns the contiguous range of groups RangeFor(i, p, M), exactly as
// Flink assigns key-group ranges. State is stored and snapshotted per group, so a
// checkpoint taken at one parallelism can be restored at another by handing each
// new subtask the groups of its range, and a migration moves whole groups.
package state

import (
	"fmt"
	"math/bits"
)

// DefaultMaxParallelism is the number of key groups used when a job does not
// choose one. It bounds the parallelism a keyed task can ever be scaled to.
const DefaultMaxParallelism = 128

// MaxMaxParallelism is the largest supported number of key groups.
const MaxMaxParallelism = 1 << 15

// Mix scrambles a 64-bit key hash (the murmur3 64-bit finalizer) so that keys
// that differ in few bits, such as consecutive ids, spread over all key groups.
func Mix(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// KeyGroup returns the key group, in [0, maxParallelism), of a key hash.
// maxParallelism must be positive.
func KeyGroup(keyHash uint64, maxParallelism int) int {
	hi, _ := bits.Mul64(Mix(keyHash), uint64(maxParallelism))
	return int(hi)
}

// Range is a half-open range of key groups [From, To).
type Range struct {
	From, To int
}

// Contains reports whether key group kg is in the range.
func (r Range) Contains(kg int) bool { return kg >= r.From && kg < r.To }

// Len returns the number of key groups in the range.
func (r Range) Len() int { return r.To - r.From }

// Intersect returns the groups common to r and o (possibly empty).
func (r Range) Intersect(o Range) Range {
	x := Range{From: max(r.From, o.From), To: min(r.To, o.To)}
	if x.To < x.From {
		x.To = x.From
	}
	return x
}

// String formats the range as "[from,to)".
func (r Range) String() string { return fmt.Sprintf("[%d,%d)", r.From, r.To) }

// Validate checks that the range is non-empty and within [0, maxParallelism).
func (r Range) Validate(maxParallelism int) error {
	if err := validateMax(maxParallelism); err != nil {
		return err
	}
	if r.From < 0 || r.To > maxParallelism || r.From >= r.To {
		return fmt.Errorf("key-group range %v is empty or outside [0,%d)", r, maxParallelism)
	}
	return nil
}

func validateMax(maxParallelism int) error {
	if maxParallelism < 1 || maxParallelism > MaxMaxParallelism {
		return fmt.Errorf("max parallelism %d is outside [1,%d]", maxParallelism, MaxMaxParallelism)
	}
	return nil
}

// RangeFor returns the key groups owned by subtask (0-based) of a task with the
// given parallelism, using Flink's assignment: the groups are split into
// parallelism contiguous ranges whose sizes differ by at most one. It panics if
// the arguments are inconsistent (subtask outside [0,parallelism), parallelism
// outside [1,maxParallelism]); CheckParallelism validates user input first.
func RangeFor(subtask, parallelism, maxParallelism int) Range {
	if err := CheckParallelism(parallelism, maxParallelism); err != nil {
		panic(err)
	}
	if subtask < 0 || subtask >= parallelism {
		panic(fmt.Sprintf("state: subtask %d outside [0,%d)", subtask, parallelism))
	}
	from := (subtask*maxParallelism + parallelism - 1) / parallelism
	to := ((subtask+1)*maxParallelism-1)/parallelism + 1
	return Range{From: from, To: to}
}

// SubtaskFor returns the subtask that owns key group kg, the inverse of RangeFor.
// Exchanges use it to route a keyed record: SubtaskFor(KeyGroup(key, M), p, M).
func SubtaskFor(kg, parallelism, maxParallelism int) int {
	return kg * parallelism / maxParallelism
}

// CheckParallelism reports whether a keyed task can run with the given
// parallelism under the given maximum parallelism.
func CheckParallelism(parallelism, maxParallelism int) error {
	if err := validateMax(maxParallelism); err != nil {
		return err
	}
	if parallelism < 1 || parallelism > maxParallelism {
		return fmt.Errorf("parallelism %d is outside [1,%d] (the job's max parallelism)", parallelism, maxParallelism)
	}
	return nil
}
