package sdk

import (
	"math"

	"github.com/sealflow/sealflow/engine/record"
)

// Lean versions of engine/record's batch codec for the guest. Go compiles
// to WebAssembly with a high cost per function call (and the host's
// termination checks add to it), so these decode and encode in one loop
// with the varints inlined. They accept and produce exactly the bytes
// engine/record does; on anything unusual they report !ok and the caller
// falls back to engine/record, which also explains the error.

// stringCache keeps the last few distinct strings of each of up to 8 fields.
type stringCache [8][8]string

// fastDecode decodes data, a batch of schema s, into b, reusing vals for the
// values. It returns the grown vals and whether it succeeded.
func fastDecode(data []byte, s *record.Schema, b *record.Batch, vals []record.Value, strs *stringCache) ([]record.Value, bool) {
	nf := len(s.Fields)
	if nf == 0 || nf > 8 || len(data) < 3 || data[0] != record.BatchMagic || data[1] != byte(nf) {
		return vals, false
	}
	pos := 2
	var n uint64
	for shift := uint(0); ; shift += 7 {
		if pos >= len(data) || shift > 28 {
			return vals, false
		}
		c := data[pos]
		pos++
		n |= uint64(c&0x7F) << shift
		if c < 0x80 {
			if c == 0 && shift > 0 {
				return vals, false
			}
			break
		}
	}
	if n > uint64(len(data)-pos)/2 {
		return vals, false
	}
	total := int(n) * nf
	if cap(vals) < total {
		vals = make([]record.Value, total)
	}
	vals = vals[:total]
	if cap(b.Records) < int(n) {
		b.Records = make([]record.Record, n)
	}
	b.Records = b.Records[:n]
	for i := 0; i < int(n); i++ {
		rec := &b.Records[i]
		rec.Values = vals[i*nf : (i+1)*nf : (i+1)*nf]
		// time: zig-zag varint
		u, k := uvarintAt(data, pos)
		if k == 0 {
			return vals, false
		}
		pos += k
		rec.Time = int64(u>>1) ^ -int64(u&1)
		if pos >= len(data) {
			return vals, false
		}
		nulls := data[pos]
		pos++
		if nulls>>nf != 0 {
			return vals, false
		}
		for j := 0; j < nf; j++ {
			v := &rec.Values[j]
			if nulls&(1<<j) != 0 {
				*v = record.Value{}
				continue
			}
			switch s.Fields[j].Type {
			case record.TypeInt:
				u, k := uvarintAt(data, pos)
				if k == 0 {
					return vals, false
				}
				pos += k
				*v = record.Value{T: record.TypeInt, I: int64(u>>1) ^ -int64(u&1)}
			case record.TypeFloat:
				if len(data)-pos < 8 {
					return vals, false
				}
				d := data[pos : pos+8]
				bits := uint64(d[0]) | uint64(d[1])<<8 | uint64(d[2])<<16 | uint64(d[3])<<24 |
					uint64(d[4])<<32 | uint64(d[5])<<40 | uint64(d[6])<<48 | uint64(d[7])<<56
				*v = record.Value{T: record.TypeFloat, F: math.Float64frombits(bits)}
				pos += 8
			case record.TypeString:
				if pos >= len(data) || data[pos] >= 0x80 { // strings up to 127 bytes
					return vals, false
				}
				l := int(data[pos])
				pos++
				if l > len(data)-pos {
					return vals, false
				}
				str := data[pos : pos+l]
				pos += l
				// Reuse a recent string of the field when equal, so
				// repeated keys do not allocate (allocation is costly
				// in WebAssembly).
				cache := &strs[j]
				hit := false
				for k := range cache {
					if c := cache[k]; len(c) == l && c == string(str) {
						*v = record.Value{T: record.TypeString, S: c}
						hit = true
						break
					}
				}
				if !hit {
					c := string(str)
					copy(cache[1:], cache[:len(cache)-1])
					cache[0] = c
					*v = record.Value{T: record.TypeString, S: c}
				}
			case record.TypeBool:
				if pos >= len(data) || data[pos] > 1 {
					return vals, false
				}
				*v = record.Value{T: record.TypeBool, I: int64(data[pos])}
				pos++
			default:
				return vals, false
			}
		}
	}
	return vals, pos == len(data)
}

// fastEncode appends the encoding of b (schema s) to dst. It reports !ok,
// leaving dst's contents past its length undefined, for what it does not
// handle or for records that do not match s.
func fastEncode(dst []byte, s *record.Schema, b *record.Batch) ([]byte, bool) {
	nf := len(s.Fields)
	if nf == 0 || nf > 8 {
		return dst, false
	}
	dst = append(dst, record.BatchMagic, byte(nf))
	for n := uint64(len(b.Records)); ; n >>= 7 {
		if n < 0x80 {
			dst = append(dst, byte(n))
			break
		}
		dst = append(dst, byte(n)|0x80)
	}
	for i := range b.Records {
		r := &b.Records[i]
		if len(r.Values) != nf {
			return dst, false
		}
		for u := uint64(r.Time<<1) ^ uint64(r.Time>>63); ; u >>= 7 {
			if u < 0x80 {
				dst = append(dst, byte(u))
				break
			}
			dst = append(dst, byte(u)|0x80)
		}
		mapAt := len(dst)
		dst = append(dst, 0)
		for j := 0; j < nf; j++ {
			v := &r.Values[j]
			if v.T == record.TypeNull {
				dst[mapAt] |= 1 << j
				continue
			}
			if v.T != s.Fields[j].Type {
				return dst, false
			}
			switch v.T {
			case record.TypeInt:
				for u := uint64(v.I<<1) ^ uint64(v.I>>63); ; u >>= 7 {
					if u < 0x80 {
						dst = append(dst, byte(u))
						break
					}
					dst = append(dst, byte(u)|0x80)
				}
			case record.TypeFloat:
				x := math.Float64bits(v.F)
				dst = append(dst, byte(x), byte(x>>8), byte(x>>16), byte(x>>24), byte(x>>32), byte(x>>40), byte(x>>48), byte(x>>56))
			case record.TypeString:
				for u := uint64(len(v.S)); ; u >>= 7 {
					if u < 0x80 {
						dst = append(dst, byte(u))
						break
					}
					dst = append(dst, byte(u)|0x80)
				}
				dst = append(dst, v.S...)
			case record.TypeBool:
				dst = append(dst, byte(v.I&1))
				if v.I != 0 && v.I != 1 {
					return dst, false
				}
			default:
				return dst, false
			}
		}
	}
	return dst, true
}

// uvarintAt decodes the minimal uvarint at data[pos:] without a loop (in
// WebAssembly every loop iteration pays the host's termination check),
// returning its length, or 0 if it is truncated, overlong or not minimal.
func uvarintAt(data []byte, pos int) (uint64, int) {
	b := data[pos:]
	if len(b) >= 10 {
		b = b[:10]
	}
	var u uint64
	n := 0
	// Unrolled: each step reads one byte and stops at the last one.
	if n < len(b) {
		c := b[n]
		u |= uint64(c & 0x7F)
		n++
		if c < 0x80 {
			return u, n
		}
	}
	if n < len(b) {
		c := b[n]
		u |= uint64(c&0x7F) << 7
		n++
		if c < 0x80 {
			return u, minimal(c, n)
		}
	}
	if n < len(b) {
		c := b[n]
		u |= uint64(c&0x7F) << 14
		n++
		if c < 0x80 {
			return u, minimal(c, n)
		}
	}
	if n < len(b) {
		c := b[n]
		u |= uint64(c&0x7F) << 21
		n++
		if c < 0x80 {
			return u, minimal(c, n)
		}
	}
	if n < len(b) {
		c := b[n]
		u |= uint64(c&0x7F) << 28
		n++
		if c < 0x80 {
			return u, minimal(c, n)
		}
	}
	if n < len(b) {
		c := b[n]
		u |= uint64(c&0x7F) << 35
		n++
		if c < 0x80 {
			return u, minimal(c, n)
		}
	}
	if n < len(b) {
		c := b[n]
		u |= uint64(c&0x7F) << 42
		n++
		if c < 0x80 {
			return u, minimal(c, n)
		}
	}
	if n < len(b) {
		c := b[n]
		u |= uint64(c&0x7F) << 49
		n++
		if c < 0x80 {
			return u, minimal(c, n)
		}
	}
	if n < len(b) {
		c := b[n]
		u |= uint64(c&0x7F) << 56
		n++
		if c < 0x80 {
			return u, minimal(c, n)
		}
	}
	if n < len(b) {
		c := b[n]
		n++
		if c <= 1 {
			u |= uint64(c) << 63
			return u, minimal(c, n)
		}
	}
	return 0, 0
}

// minimal returns n, or 0 when the last byte c of an n-byte varint is zero
// (a redundant continuation).
func minimal(c byte, n int) int {
	if c == 0 {
		return 0
	}
	return n
}
