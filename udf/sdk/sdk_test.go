package sdk

import (
	"bytes"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

var (
	in  = &record.Schema{Fields: []record.Field{{Name: "meter", Type: record.TypeString}, {Name: "kwh", Type: record.TypeFloat}}}
	out = &record.Schema{Fields: []record.Field{{Name: "ok", Type: record.TypeBool}}}
)

func TestRequestHeaderRoundTrip(t *testing.T) {
	hdr := AppendRequestHeader(nil, in, out)
	req := append(hdr, 0xB1, 2, 0)
	gi, gout, body, err := DecodeRequestHeader(req)
	if err != nil {
		t.Fatal(err)
	}
	if !equalSchema(gi, in) || !equalSchema(gout, out) || !bytes.Equal(body, []byte{0xB1, 2, 0}) {
		t.Fatalf("decoded %v %v %x", gi, gout, body)
	}
}

func TestDecodeRequestHeaderErrors(t *testing.T) {
	good := AppendRequestHeader(nil, in, out)
	for _, tc := range []struct {
		name string
		req  []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"version", append([]byte{2}, good[1:]...), "ABI version 2"},
		{"truncated count", []byte{1}, "input schema: truncated or non-minimal field count"},
		{"too many fields", []byte{1, 0x80, 0x10}, "2048 fields"},
		{"name overrun", []byte{1, 1, 9, 'a'}, "overruns"},
		{"bad type", []byte{1, 1, 1, 'a', 9}, "unknown type 9"},
		{"null type", []byte{1, 1, 1, 'a', 0}, "unknown type 0"},
		{"output truncated", good[:len(good)-1], "output schema"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := DecodeRequestHeader(tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("DecodeRequestHeader(%x) = %v, want an error containing %q", tc.req, err, tc.want)
			}
		})
	}
}

func FuzzDecodeRequestHeader(f *testing.F) {
	f.Add(AppendRequestHeader(nil, in, out))
	f.Add(append(AppendRequestHeader(nil, out, out), 0xB1, 1, 0))
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, req []byte) {
		i, o, body, err := DecodeRequestHeader(req)
		if err != nil {
			return
		}
		// An accepted header re-encodes to the bytes it was read from.
		if re := AppendRequestHeader(nil, i, o); !bytes.Equal(append(re, body...), req) {
			t.Fatalf("header %x re-encodes to %x", req[:len(req)-len(body)], re)
		}
	})
}

func equalSchema(a, b *record.Schema) bool {
	if len(a.Fields) != len(b.Fields) {
		return false
	}
	for i := range a.Fields {
		if a.Fields[i] != b.Fields[i] {
			return false
		}
	}
	return true
}
