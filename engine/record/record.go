// Package record holds the typed values, records, schemas and batches that move
// through the stream engine. A record is a row of typed values plus its event
// time; a batch is the unit that operators process and exchanges ship.
package record

import "fmt"

// Type is the type of a field in a schema.
type Type uint8

// The field types.
const (
	TypeNull Type = iota
	TypeInt
	TypeFloat
	TypeString
	TypeBool
)

// String returns the name of the type as written in JobSpecs ("int", "float",
// "string", "bool").
func (t Type) String() string {
	switch t {
	case TypeNull:
		return "null"
	case TypeInt:
		return "int"
	case TypeFloat:
		return "float"
	case TypeString:
		return "string"
	case TypeBool:
		return "bool"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// ParseType parses a type name as written in JobSpecs.
func ParseType(s string) (Type, error) {
	switch s {
	case "int", "long", "int64", "timestamp":
		return TypeInt, nil
	case "float", "double", "float64":
		return TypeFloat, nil
	case "string":
		return TypeString, nil
	case "bool", "boolean":
		return TypeBool, nil
	}
	return TypeNull, fmt.Errorf("unknown type %q (want int, float, string or bool)", s)
}

// Value is one typed value. Only the member selected by T is meaningful; Bool
// values are stored in I (0 or 1). Value is a plain struct, not an interface, so
// that rows of values do not allocate per field.
type Value struct {
	T Type    // the value's type; TypeNull for a null value
	I int64   // TypeInt value, or TypeBool as 0 or 1
	F float64 // TypeFloat value
	S string  // TypeString value
}

// Int returns an int value.
func Int(i int64) Value { return Value{T: TypeInt, I: i} }

// Float returns a float value.
func Float(f float64) Value { return Value{T: TypeFloat, F: f} }

// String returns a string value.
func String(s string) Value { return Value{T: TypeString, S: s} }

// Bool returns a bool value.
func Bool(b bool) Value {
	if b {
		return Value{T: TypeBool, I: 1}
	}
	return Value{T: TypeBool}
}

// Field is a named, typed column of a schema.
type Field struct {
	Name string `json:"name"` // the field's name
	Type Type   `json:"-"`    // the type of the field's values (or null)
}

// Schema is an ordered list of fields. Records of a schema hold one value per
// field, in order.
type Schema struct {
	Fields []Field // the fields, in record order
}

// Index returns the position of the named field, or -1.
func (s *Schema) Index(name string) int {
	for i, f := range s.Fields {
		if f.Name == name {
			return i
		}
	}
	return -1
}

// Record is one row with its event time in epoch milliseconds.
type Record struct {
	Time   int64   // event time, epoch milliseconds
	Values []Value // one value per schema field, in order
}

// Batch is an ordered group of records of one schema: the unit that operators
// process and that exchanges ship in one frame.
type Batch struct {
	Records []Record // the records, in order
}

// Len returns the number of records in the batch.
func (b *Batch) Len() int { return len(b.Records) }

// Reset empties the batch, keeping its capacity.
func (b *Batch) Reset() { b.Records = b.Records[:0] }

// MarshalText encodes the type as its JobSpec name, so that types appear as
// "int", "float", "string" or "bool" in JSON and YAML.
func (t Type) MarshalText() ([]byte, error) {
	if t > TypeBool {
		return nil, fmt.Errorf("cannot encode unknown type %d", uint8(t))
	}
	return []byte(t.String()), nil
}

// UnmarshalText parses a type name as ParseType does, and also "null" (the
// zero Type, which MarshalText writes for an unset type), so that encoding
// round-trips; schema validation refuses fields without a type.
func (t *Type) UnmarshalText(b []byte) error {
	if string(b) == "null" {
		*t = TypeNull
		return nil
	}
	v, err := ParseType(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}
