package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/sealflow/sealflow/engine/record"
)

// Codec encodes the values of a Store. Append appends v's encoding to dst;
// Decode overwrites *v with the value encoded in exactly src, failing if src is
// malformed or has bytes left over. Decode receives a possibly recycled *V and
// must set every field.
type Codec[V any] interface {
	Append(dst []byte, v *V) []byte
	Decode(src []byte, v *V) error
}

// ErrTruncated is returned (wrapped) when encoded state ends early.
var ErrTruncated = errors.New("state: encoding truncated")

// AppendUvarint appends x as an unsigned varint.
func AppendUvarint(dst []byte, x uint64) []byte { return binary.AppendUvarint(dst, x) }

// AppendVarint appends x as a signed (zig-zag) varint.
func AppendVarint(dst []byte, x int64) []byte { return binary.AppendVarint(dst, x) }

// AppendString appends a length-prefixed string.
func AppendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// AppendValue appends one record value: its type, then its payload.
func AppendValue(dst []byte, v record.Value) []byte {
	dst = append(dst, byte(v.T))
	switch v.T {
	case record.TypeInt:
		dst = binary.AppendVarint(dst, v.I)
	case record.TypeBool:
		dst = append(dst, byte(v.I&1))
	case record.TypeFloat:
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(v.F))
	case record.TypeString:
		dst = AppendString(dst, v.S)
	}
	return dst
}

// AppendRecord appends a record: its time, its value count and its values.
func AppendRecord(dst []byte, r *record.Record) []byte {
	dst = binary.AppendVarint(dst, r.Time)
	dst = binary.AppendUvarint(dst, uint64(len(r.Values)))
	for _, v := range r.Values {
		dst = AppendValue(dst, v)
	}
	return dst
}

// Decoder reads what the Append functions wrote. The first error sticks: later
// reads return zero values and Err reports it, so a decoder of a composite value
// checks once at the end.
type Decoder struct {
	b   []byte
	off int
	err error
}

// NewDecoder returns a decoder reading b.
func NewDecoder(b []byte) *Decoder { return &Decoder{b: b} }

// Err returns the first error met, or nil.
func (d *Decoder) Err() error { return d.err }

// Remaining returns the number of unread bytes.
func (d *Decoder) Remaining() int { return len(d.b) - d.off }

// Fail records err (if no error was recorded yet).
func (d *Decoder) Fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

// Done fails unless every byte was read, and returns the decoder's error.
func (d *Decoder) Done() error {
	if d.err == nil && d.off != len(d.b) {
		d.err = fmt.Errorf("state: %d trailing bytes at offset %d", len(d.b)-d.off, d.off)
	}
	return d.err
}

// Uvarint reads an unsigned varint.
func (d *Decoder) Uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.err = fmt.Errorf("state: bad uvarint at offset %d: %w", d.off, ErrTruncated)
		return 0
	}
	if n > 1 && d.b[d.off+n-1] == 0 {
		d.err = fmt.Errorf("state: overlong uvarint at offset %d", d.off)
		return 0
	}
	d.off += n
	return x
}

// Count reads an unsigned varint used as the number of following items, each at
// least minSize bytes long; it fails if the remaining bytes cannot hold them, so
// a corrupt count never causes a huge allocation.
func (d *Decoder) Count(minSize int) int {
	at := d.off
	x := d.Uvarint()
	if d.err != nil {
		return 0
	}
	if x > uint64(d.Remaining()/max(minSize, 1)) {
		d.err = fmt.Errorf("state: count %d at offset %d exceeds the %d bytes left", x, at, d.Remaining())
		return 0
	}
	return int(x)
}

// Varint reads a signed varint.
func (d *Decoder) Varint() int64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		d.err = fmt.Errorf("state: bad varint at offset %d: %w", d.off, ErrTruncated)
		return 0
	}
	if n > 1 && d.b[d.off+n-1] == 0 {
		d.err = fmt.Errorf("state: overlong varint at offset %d", d.off)
		return 0
	}
	d.off += n
	return x
}

// Byte reads one byte.
func (d *Decoder) Byte() byte {
	if d.err != nil {
		return 0
	}
	if d.off >= len(d.b) {
		d.err = fmt.Errorf("state: missing byte at offset %d: %w", d.off, ErrTruncated)
		return 0
	}
	c := d.b[d.off]
	d.off++
	return c
}

// Bool reads a byte that must be 0 or 1.
func (d *Decoder) Bool() bool {
	at := d.off
	c := d.Byte()
	if c > 1 {
		d.Fail(fmt.Errorf("state: bool byte %d at offset %d is not 0 or 1", c, at))
	}
	return c == 1
}

// Uint64 reads 8 bytes, big-endian.
func (d *Decoder) Uint64() uint64 {
	b := d.Bytes(8)
	if len(b) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// Bytes reads n bytes; the result aliases the input.
func (d *Decoder) Bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > d.Remaining() {
		d.err = fmt.Errorf("state: %d bytes wanted at offset %d, %d left: %w", n, d.off, d.Remaining(), ErrTruncated)
		return nil
	}
	b := d.b[d.off : d.off+n : d.off+n]
	d.off += n
	return b
}

// String reads a length-prefixed string.
func (d *Decoder) String() string {
	n := d.Count(1)
	return string(d.Bytes(n))
}

// Value reads one record value.
func (d *Decoder) Value() record.Value {
	at := d.off
	t := record.Type(d.Byte())
	switch t {
	case record.TypeNull:
		return record.Value{}
	case record.TypeInt:
		return record.Int(d.Varint())
	case record.TypeBool:
		return record.Bool(d.Bool())
	case record.TypeFloat:
		b := d.Bytes(8)
		if b == nil {
			return record.Value{}
		}
		return record.Float(math.Float64frombits(binary.LittleEndian.Uint64(b)))
	case record.TypeString:
		return record.String(d.String())
	}
	d.Fail(fmt.Errorf("state: unknown value type %d at offset %d", t, at))
	return record.Value{}
}

// Record reads a record into r, reusing r.Values' storage.
func (d *Decoder) Record(r *record.Record) {
	r.Time = d.Varint()
	n := d.Count(1)
	r.Values = r.Values[:0]
	for i := 0; i < n && d.err == nil; i++ {
		r.Values = append(r.Values, d.Value())
	}
}
