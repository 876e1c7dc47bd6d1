package operator

import (
	"math"

	"github.com/sealflow/sealflow/engine/record"
)

// KeyOf returns a KeyFunc over the given field indexes. A single int (or bool)
// field is its own key, so distinct ids never collide; otherwise the key is
// HashValues of the fields. With no fields every record has key 0 (a global,
// non-keyed grouping). A field beyond a record's length counts as null (the
// JobSpec type check guarantees arity; a key function must never panic).
func KeyOf(fields ...int) KeyFunc {
	fs := append([]int(nil), fields...)
	switch len(fs) {
	case 0:
		return func(*record.Record) uint64 { return 0 }
	case 1:
		f := fs[0]
		return func(r *record.Record) uint64 {
			if f >= len(r.Values) {
				return hashValue(fnvOffset, &record.Value{})
			}
			v := &r.Values[f]
			if v.T == record.TypeInt || v.T == record.TypeBool {
				return uint64(v.I)
			}
			return hashValue(fnvOffset, v)
		}
	}
	return func(r *record.Record) uint64 { return HashValues(r.Values, fs) }
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// HashValues returns a 64-bit FNV-1a hash of the values at the given indexes,
// including their types, so int 1 and string "1" differ. Indexes beyond vals
// hash as null.
func HashValues(vals []record.Value, fields []int) uint64 {
	h := uint64(fnvOffset)
	for _, f := range fields {
		if f >= len(vals) {
			h = hashValue(h, &record.Value{})
			continue
		}
		h = hashValue(h, &vals[f])
	}
	return h
}

func hashValue(h uint64, v *record.Value) uint64 {
	h = (h ^ uint64(v.T)) * fnvPrime
	var x uint64
	switch v.T {
	case record.TypeInt, record.TypeBool:
		x = uint64(v.I)
	case record.TypeFloat:
		x = math.Float64bits(v.F)
	case record.TypeString:
		for i := 0; i < len(v.S); i++ {
			h = (h ^ uint64(v.S[i])) * fnvPrime
		}
		x = uint64(len(v.S))
	}
	for i := 0; i < 8; i++ {
		h = (h ^ (x & 0xff)) * fnvPrime
		x >>= 8
	}
	return h
}
