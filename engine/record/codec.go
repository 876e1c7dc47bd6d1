package record

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// The binary batch encoding, version 1. It is schema-aware: the schema is not
// in the bytes, only its field count, and each value is written in the form
// its field type calls for.
//
//	batch  = magic:0xB1 uvarint(fields) uvarint(records) record*
//	record = varint(time) nullmap value*        (one value per non-null field)
//	nullmap = ceil(fields/8) bytes, bit i set when field i is null
//	int    = varint (zig-zag)
//	float  = 8 bytes, little-endian IEEE 754 bits
//	string = uvarint(len) bytes
//	bool   = 1 byte, 0 or 1
//
// Varints are minimal (no redundant 0x80 continuation bytes) and unused
// null-map bits are zero, so every batch has exactly one encoding: decoding
// and re-encoding returns the same bytes.

// BatchMagic is the first byte of a binary batch.
const BatchMagic = 0xB1

// ErrMalformed is wrapped by every error DecodeBatch returns for bytes that
// are not a valid batch of the schema.
var ErrMalformed = errors.New("malformed record batch")

// AppendBatch appends the binary encoding of b, whose records follow s, to
// dst and returns the extended buffer. It fails if a record does not have one
// value per field or a value's type is neither the field's type nor null.
func AppendBatch(dst []byte, s *Schema, b *Batch) ([]byte, error) {
	nf := len(s.Fields)
	dst = append(dst, BatchMagic)
	dst = binary.AppendUvarint(dst, uint64(nf))
	dst = binary.AppendUvarint(dst, uint64(len(b.Records)))
	var err error
	for i := range b.Records {
		if dst, err = appendRecord(dst, s, &b.Records[i]); err != nil {
			return dst, fmt.Errorf("encode record %d: %w", i, err)
		}
	}
	return dst, nil
}

func appendRecord(dst []byte, s *Schema, r *Record) ([]byte, error) {
	nf := len(s.Fields)
	if len(r.Values) != nf {
		return dst, fmt.Errorf("record has %d values, schema has %d fields", len(r.Values), nf)
	}
	dst = binary.AppendVarint(dst, r.Time)
	mapAt := len(dst)
	for range (nf + 7) / 8 {
		dst = append(dst, 0)
	}
	for i := range r.Values {
		v := &r.Values[i]
		if v.T == TypeNull {
			dst[mapAt+i/8] |= 1 << (i % 8)
			continue
		}
		if v.T != s.Fields[i].Type {
			return dst, fmt.Errorf("field %q: value is %s, schema says %s", s.Fields[i].Name, v.T, s.Fields[i].Type)
		}
		switch v.T {
		case TypeInt:
			dst = binary.AppendVarint(dst, v.I)
		case TypeFloat:
			dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(v.F))
		case TypeString:
			dst = binary.AppendUvarint(dst, uint64(len(v.S)))
			dst = append(dst, v.S...)
		case TypeBool:
			if v.I != 0 {
				dst = append(dst, 1)
			} else {
				dst = append(dst, 0)
			}
		default:
			return dst, fmt.Errorf("field %q: unknown value type %d", s.Fields[i].Name, v.T)
		}
	}
	return dst, nil
}

// Decoder decodes binary batches, reusing its storage across calls: the
// records and values of a decoded batch stay valid only until the next
// Decode with the same Decoder. Strings stay valid for good: each is its own
// copy (so an operator that keeps one string keeps only that string, not the
// batch), and short strings seen before are shared from a bounded intern
// table, so low-cardinality fields (channels, states, categories) do not
// allocate. The zero Decoder is ready to use. A Decoder is not safe for
// concurrent use.
type Decoder struct {
	values []Value
	intern map[string]string
}

// Interning bounds: strings up to maxInternLen bytes are interned, and the
// table is cleared when it reaches maxInterned entries.
const (
	maxInternLen = 32
	maxInterned  = 4096
)

// str returns b as a string, from the intern table when it is short.
func (d *Decoder) str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if len(b) > maxInternLen {
		return string(b)
	}
	if s, ok := d.intern[string(b)]; ok {
		return s
	}
	if d.intern == nil || len(d.intern) >= maxInterned {
		d.intern = make(map[string]string, 256)
	}
	s := string(b)
	d.intern[s] = s
	return s
}

// Decode decodes data, a batch of records of schema s, into b, replacing its
// records. Errors wrap ErrMalformed and say what was wrong at which offset.
func (d *Decoder) Decode(data []byte, s *Schema, b *Batch) error {
	b.Records = b.Records[:0]
	r := reader{data: data}
	if len(data) == 0 || data[0] != BatchMagic {
		return r.fail("missing batch magic byte 0x%X", BatchMagic)
	}
	r.pos = 1
	nf, err := r.uvarint("field count")
	if err != nil {
		return err
	}
	if nf != uint64(len(s.Fields)) {
		return r.fail("batch has %d fields per record, schema has %d", nf, len(s.Fields))
	}
	n, err := r.uvarint("record count")
	if err != nil {
		return err
	}
	mapLen := (len(s.Fields) + 7) / 8
	if n > uint64(len(data)-r.pos)/uint64(1+mapLen) {
		return r.fail("record count %d is more than the %d remaining bytes can hold", n, len(data)-r.pos)
	}
	total := int(n) * len(s.Fields)
	if cap(d.values) < total {
		d.values = make([]Value, total)
	}
	vals := d.values[:total]
	if cap(b.Records) < int(n) {
		b.Records = make([]Record, n)
	}
	b.Records = b.Records[:n]
	for i := 0; i < int(n); i++ {
		rec := &b.Records[i]
		rec.Values = vals[i*len(s.Fields) : (i+1)*len(s.Fields) : (i+1)*len(s.Fields)]
		if rec.Time, err = r.varint("time"); err != nil {
			b.Records = b.Records[:0]
			return fmt.Errorf("record %d: %w", i, err)
		}
		if r.pos+mapLen > len(data) {
			b.Records = b.Records[:0]
			return fmt.Errorf("record %d: %w", i, r.fail("truncated null map"))
		}
		nulls := data[r.pos : r.pos+mapLen]
		r.pos += mapLen
		if rem := len(s.Fields) % 8; rem != 0 && nulls[mapLen-1]>>rem != 0 {
			b.Records = b.Records[:0]
			return fmt.Errorf("record %d: %w", i, r.fail("null map has bits set beyond the %d fields", len(s.Fields)))
		}
		for j, f := range s.Fields {
			v := &rec.Values[j]
			if nulls[j/8]&(1<<(j%8)) != 0 {
				v.T, v.I, v.F = TypeNull, 0, 0
				clearString(v)
				continue
			}
			if err := r.value(v, f.Type, d); err != nil {
				b.Records = b.Records[:0]
				return fmt.Errorf("record %d field %q: %w", i, f.Name, err)
			}
		}
	}
	if r.pos != len(data) {
		b.Records = b.Records[:0]
		return r.fail("%d trailing bytes after %d records", len(data)-r.pos, n)
	}
	return nil
}

// reader walks a batch's bytes.
type reader struct {
	data []byte
	pos  int
}

func (r *reader) fail(format string, args ...any) error {
	return fmt.Errorf("%w: at byte %d: %s", ErrMalformed, r.pos, fmt.Sprintf(format, args...))
}

func (r *reader) uvarint(what string) (uint64, error) {
	if r.pos < len(r.data) && r.data[r.pos] < 0x80 { // one-byte fast path
		r.pos++
		return uint64(r.data[r.pos-1]), nil
	}
	v, n := binary.Uvarint(r.data[r.pos:])
	if n <= 0 {
		if n == 0 {
			return 0, r.fail("truncated %s", what)
		}
		return 0, r.fail("%s overflows 64 bits", what)
	}
	if n > 1 && r.data[r.pos+n-1] == 0 {
		return 0, r.fail("%s is not minimally encoded", what)
	}
	r.pos += n
	return v, nil
}

func (r *reader) varint(what string) (int64, error) {
	u, err := r.uvarint(what)
	x := int64(u >> 1)
	if u&1 != 0 {
		x = ^x
	}
	return x, err
}

func (r *reader) value(v *Value, t Type, d *Decoder) error {
	switch t {
	// Values are written field by field, and S only when it changes: a
	// whole-struct store of a Value (which holds a pointer) costs a bulk
	// write barrier while the garbage collector runs.
	case TypeInt:
		i, err := r.varint("int")
		v.T, v.I, v.F = TypeInt, i, 0
		clearString(v)
		return err
	case TypeFloat:
		if len(r.data)-r.pos < 8 {
			return r.fail("truncated float")
		}
		v.T, v.I, v.F = TypeFloat, 0, math.Float64frombits(binary.LittleEndian.Uint64(r.data[r.pos:]))
		clearString(v)
		r.pos += 8
		return nil
	case TypeString:
		n, err := r.uvarint("string length")
		if err != nil {
			return err
		}
		if n > uint64(len(r.data)-r.pos) {
			return r.fail("string of %d bytes overruns the batch (%d bytes left)", n, len(r.data)-r.pos)
		}
		v.T, v.I, v.F, v.S = TypeString, 0, 0, d.str(r.data[r.pos:r.pos+int(n)])
		r.pos += int(n)
		return nil
	case TypeBool:
		if r.pos >= len(r.data) {
			return r.fail("truncated bool")
		}
		b := r.data[r.pos]
		if b > 1 {
			return r.fail("bool byte is %d, want 0 or 1", b)
		}
		v.T, v.I, v.F = TypeBool, int64(b), 0
		clearString(v)
		r.pos++
		return nil
	}
	return r.fail("schema field type %s cannot be decoded", t)
}

func clearString(v *Value) {
	if v.S != "" {
		v.S = ""
	}
}
