package record

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// JSONError is a JSON line that does not decode into a record of the schema.
type JSONError struct {
	// Line is the line number the caller passed to Decode.
	Line int
	// Field is the schema field concerned, or "" for a syntax error.
	Field string
	// Offset is the byte offset in the line.
	Offset int
	// Msg says what is wrong.
	Msg string
}

// Error says which line and field (or byte) is wrong, and why.
func (e *JSONError) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("line %d: field %q: %s", e.Line, e.Field, e.Msg)
	}
	return fmt.Sprintf("line %d: byte %d: %s", e.Line, e.Offset, e.Msg)
}

// maxJSONDepth bounds the nesting of unknown fields' values that the decoder
// skips.
const maxJSONDepth = 64

// JSONDecoder decodes JSON lines, one flat object per line, into records of a
// schema. Object members are matched to schema fields by name; members not in
// the schema are skipped (they may hold any JSON value); fields missing from
// the object, or given as null, are null values. A value of the wrong JSON
// type is an error naming the field and the line. Int fields accept only
// integers; float fields accept any number.
//
// A JSONDecoder is not safe for concurrent use.
type JSONDecoder struct {
	schema    *Schema
	index     map[string]int
	timeField int
	seen      []bool
}

// NewJSONDecoder returns a decoder for records of s. If timeField is not
// empty, it names an int field of s that holds each record's event time
// (epoch milliseconds), which must then be present in every line.
func NewJSONDecoder(s *Schema, timeField string) (*JSONDecoder, error) {
	d := &JSONDecoder{schema: s, index: make(map[string]int, len(s.Fields)), timeField: -1, seen: make([]bool, len(s.Fields))}
	for i, f := range s.Fields {
		if _, dup := d.index[f.Name]; dup {
			return nil, fmt.Errorf("schema has field %q twice", f.Name)
		}
		d.index[f.Name] = i
	}
	if timeField != "" {
		i, ok := d.index[timeField]
		if !ok {
			return nil, fmt.Errorf("time field %q is not in the schema", timeField)
		}
		if s.Fields[i].Type != TypeInt {
			return nil, fmt.Errorf("time field %q is %s, want int", timeField, s.Fields[i].Type)
		}
		d.timeField = i
	}
	return d, nil
}

// Decode decodes one line (without its newline; surrounding whitespace is
// allowed) into rec, reusing rec.Values. lineNo is used in errors only. On
// error rec is left in an unspecified state. The error is a *JSONError.
func (d *JSONDecoder) Decode(line []byte, lineNo int, rec *Record) error {
	nf := len(d.schema.Fields)
	if cap(rec.Values) < nf {
		rec.Values = make([]Value, nf)
	}
	rec.Values = rec.Values[:nf]
	for i := range rec.Values {
		rec.Values[i] = Value{}
		d.seen[i] = false
	}
	p := jsonParser{b: line, line: lineNo}
	next := 0 // the field expected next: producers usually keep one order
	p.ws()
	if !p.eat('{') {
		return p.fail("", "want a JSON object")
	}
	p.ws()
	if !p.eat('}') {
		for {
			p.ws()
			if p.peek() != '"' {
				return p.fail("", "want a member name string")
			}
			key, esc, err := p.stringToken()
			if err != nil {
				return err
			}
			var idx int
			var known bool
			if esc {
				var k string
				if err := json.Unmarshal(key, &k); err != nil {
					return p.fail("", "bad member name: "+err.Error())
				}
				idx, known = d.index[k]
			} else {
				idx, known = d.lookup(key[1:len(key)-1], &next)
			}
			p.ws()
			if !p.eat(':') {
				return p.fail("", "want ':' after member name")
			}
			p.ws()
			if known {
				name := d.schema.Fields[idx].Name
				if d.seen[idx] {
					return p.fail(name, "field appears twice")
				}
				d.seen[idx] = true
				if err := p.value(&rec.Values[idx], d.schema.Fields[idx].Type, name); err != nil {
					return err
				}
			} else if err := p.skip(0); err != nil {
				return err
			}
			p.ws()
			if p.eat(',') {
				continue
			}
			if p.eat('}') {
				break
			}
			return p.fail("", "want ',' or '}' after a member")
		}
	}
	p.ws()
	if p.pos != len(p.b) {
		return p.fail("", "trailing data after the object")
	}
	if d.timeField >= 0 {
		v := rec.Values[d.timeField]
		if v.T != TypeInt {
			return &JSONError{Line: lineNo, Field: d.schema.Fields[d.timeField].Name, Offset: p.pos, Msg: "time field is missing or null"}
		}
		rec.Time = v.I
	}
	return nil
}

// lookup finds the schema field named name, trying first the field after
// the previous match, since lines usually list fields in the same order.
func (d *JSONDecoder) lookup(name []byte, next *int) (int, bool) {
	if n := *next; n < len(d.schema.Fields) && d.schema.Fields[n].Name == string(name) {
		*next = n + 1
		return n, true
	}
	i, ok := d.index[string(name)]
	if ok {
		*next = i + 1
	}
	return i, ok
}

type jsonParser struct {
	b    []byte
	pos  int
	line int
}

func (p *jsonParser) fail(field, msg string) error {
	return &JSONError{Line: p.line, Field: field, Offset: p.pos, Msg: msg}
}

func (p *jsonParser) ws() {
	for p.pos < len(p.b) {
		switch p.b[p.pos] {
		case ' ', '\t', '\r', '\n':
			p.pos++
		default:
			return
		}
	}
}

func (p *jsonParser) peek() byte {
	if p.pos < len(p.b) {
		return p.b[p.pos]
	}
	return 0
}

func (p *jsonParser) eat(c byte) bool {
	if p.pos < len(p.b) && p.b[p.pos] == c {
		p.pos++
		return true
	}
	return false
}

func (p *jsonParser) literal(word string) bool {
	if len(p.b)-p.pos >= len(word) && string(p.b[p.pos:p.pos+len(word)]) == word {
		p.pos += len(word)
		return true
	}
	return false
}

// stringToken scans a JSON string starting at '"' and returns it with its
// quotes, and whether it contains escapes or bytes that need decoding.
func (p *jsonParser) stringToken() (tok []byte, escaped bool, err error) {
	start := p.pos
	p.pos++
	for p.pos < len(p.b) {
		c := p.b[p.pos]
		switch {
		case c == '"':
			p.pos++
			return p.b[start:p.pos], escaped, nil
		case c == '\\':
			escaped = true
			p.pos += 2
		case c < 0x20:
			return nil, false, p.fail("", "control character in string")
		case c >= 0x80:
			escaped = true // validate UTF-8 on the slow path
			p.pos++
		default:
			p.pos++
		}
	}
	return nil, false, p.fail("", "unterminated string")
}

// numberToken scans a JSON number and reports whether it is an integer.
func (p *jsonParser) numberToken() (tok []byte, isInt bool, ok bool) {
	start := p.pos
	p.eat('-')
	digits := p.digits()
	if digits == 0 || (digits > 1 && p.b[p.pos-digits] == '0') {
		p.pos = start
		return nil, false, false
	}
	isInt = true
	if p.eat('.') {
		isInt = false
		if p.digits() == 0 {
			p.pos = start
			return nil, false, false
		}
	}
	if p.peek() == 'e' || p.peek() == 'E' {
		isInt = false
		p.pos++
		if !p.eat('+') {
			p.eat('-')
		}
		if p.digits() == 0 {
			p.pos = start
			return nil, false, false
		}
	}
	return p.b[start:p.pos], isInt, true
}

func (p *jsonParser) digits() int {
	n := 0
	for p.pos < len(p.b) && p.b[p.pos] >= '0' && p.b[p.pos] <= '9' {
		p.pos++
		n++
	}
	return n
}

// kindAt names the JSON value starting at the current position, for errors.
func (p *jsonParser) kindAt() string {
	switch c := p.peek(); {
	case c == '"':
		return "a string"
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == 't' || c == 'f':
		return "a bool"
	case c == '-' || (c >= '0' && c <= '9'):
		return "a number"
	case c == 'n':
		return "null"
	}
	return "invalid JSON"
}

func (p *jsonParser) value(v *Value, t Type, field string) error {
	if p.literal("null") {
		*v = Value{}
		return nil
	}
	switch t {
	case TypeInt:
		c := p.peek()
		if c == '-' || (c >= '0' && c <= '9') {
			at := p.pos
			tok, isInt, ok := p.numberToken()
			if !ok {
				return p.fail(field, "malformed number")
			}
			if !isInt {
				p.pos = at
				return p.fail(field, fmt.Sprintf("want int, got %s", tok))
			}
			i, err := strconv.ParseInt(string(tok), 10, 64)
			if err != nil {
				p.pos = at
				return p.fail(field, fmt.Sprintf("int %s out of range", tok))
			}
			*v = Value{T: TypeInt, I: i}
			return nil
		}
	case TypeFloat:
		c := p.peek()
		if c == '-' || (c >= '0' && c <= '9') {
			tok, _, ok := p.numberToken()
			if !ok {
				return p.fail(field, "malformed number")
			}
			f, err := strconv.ParseFloat(string(tok), 64)
			if err != nil {
				return p.fail(field, fmt.Sprintf("float %s out of range", tok))
			}
			*v = Value{T: TypeFloat, F: f}
			return nil
		}
	case TypeString:
		if p.peek() == '"' {
			tok, esc, err := p.stringToken()
			if err != nil {
				return err
			}
			if !esc {
				*v = Value{T: TypeString, S: string(tok[1 : len(tok)-1])}
				return nil
			}
			var s string
			if err := json.Unmarshal(tok, &s); err != nil {
				return p.fail(field, "bad string: "+err.Error())
			}
			*v = Value{T: TypeString, S: s}
			return nil
		}
	case TypeBool:
		if p.literal("true") {
			*v = Value{T: TypeBool, I: 1}
			return nil
		}
		if p.literal("false") {
			*v = Value{T: TypeBool}
			return nil
		}
	}
	return p.fail(field, fmt.Sprintf("want %s, got %s", t, p.kindAt()))
}

// skip passes over one JSON value of any kind, checking its syntax.
func (p *jsonParser) skip(depth int) error {
	if depth > maxJSONDepth {
		return p.fail("", fmt.Sprintf("value nested more than %d levels", maxJSONDepth))
	}
	switch c := p.peek(); {
	case c == '"':
		tok, esc, err := p.stringToken()
		if err == nil && esc && !validJSONString(tok) {
			return p.fail("", "bad escape or UTF-8 in string")
		}
		return err
	case c == '{' || c == '[':
		close := byte('}')
		if c == '[' {
			close = ']'
		}
		p.pos++
		p.ws()
		if p.eat(close) {
			return nil
		}
		for {
			p.ws()
			if c == '{' {
				if p.peek() != '"' {
					return p.fail("", "want a member name string")
				}
				if _, _, err := p.stringToken(); err != nil {
					return err
				}
				p.ws()
				if !p.eat(':') {
					return p.fail("", "want ':' after member name")
				}
				p.ws()
			}
			if err := p.skip(depth + 1); err != nil {
				return err
			}
			p.ws()
			if p.eat(',') {
				continue
			}
			if p.eat(close) {
				return nil
			}
			return p.fail("", fmt.Sprintf("want ',' or '%c'", close))
		}
	case c == '-' || (c >= '0' && c <= '9'):
		if _, _, ok := p.numberToken(); !ok {
			return p.fail("", "malformed number")
		}
		return nil
	case p.literal("true"), p.literal("false"), p.literal("null"):
		return nil
	}
	return p.fail("", "want a JSON value")
}

func validJSONString(tok []byte) bool {
	var s string
	return json.Unmarshal(tok, &s) == nil && utf8.Valid(tok)
}

// JSONEncoder writes records as JSON lines with the schema's field names.
// It is safe for concurrent use.
type JSONEncoder struct {
	schema *Schema
	keys   [][]byte // `"name":` per field, with a leading ',' after the first
}

// NewJSONEncoder returns an encoder for records of s.
func NewJSONEncoder(s *Schema) *JSONEncoder {
	e := &JSONEncoder{schema: s, keys: make([][]byte, len(s.Fields))}
	for i, f := range s.Fields {
		var k []byte
		if i > 0 {
			k = append(k, ',')
		}
		k = AppendJSONString(k, f.Name)
		e.keys[i] = append(k, ':')
	}
	return e
}

// Append appends rec as one JSON object and a newline to dst. Null values,
// and floats that JSON cannot represent (NaN, ±Inf), are written as null.
// Values beyond the schema's fields are ignored; missing ones are null.
func (e *JSONEncoder) Append(dst []byte, rec *Record) []byte {
	dst = append(dst, '{')
	for i := range e.keys {
		dst = append(dst, e.keys[i]...)
		var v Value
		if i < len(rec.Values) {
			v = rec.Values[i]
		}
		switch v.T {
		case TypeInt:
			dst = strconv.AppendInt(dst, v.I, 10)
		case TypeFloat:
			dst = appendJSONFloat(dst, v.F)
		case TypeString:
			dst = AppendJSONString(dst, v.S)
		case TypeBool:
			dst = strconv.AppendBool(dst, v.I != 0)
		default:
			dst = append(dst, "null"...)
		}
	}
	return append(dst, '}', '\n')
}

// appendJSONFloat formats like encoding/json: shortest representation,
// exponent form only for very large or small magnitudes.
func appendJSONFloat(dst []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(dst, "null"...)
	}
	abs := math.Abs(f)
	fmtc := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		fmtc = 'e'
	}
	return strconv.AppendFloat(dst, f, fmtc, -1, 64)
}

const hexDigits = "0123456789abcdef"

// AppendJSONString appends s to dst as a JSON string: quotes, backslashes
// and control characters escaped, invalid UTF-8 replaced by U+FFFD as
// encoding/json does.
func AppendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
