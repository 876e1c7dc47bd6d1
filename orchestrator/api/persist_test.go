package api

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestDecodePersisted(t *testing.T) {
	header, _ := json.Marshal(persisted{Version: 2, KeyFile: json.RawMessage(`{"k":1}`), Genesis: "g"})
	v2 := encodePersisted(header, []byte(`{"applied":3}`), []byte("LOG"))
	v1, _ := json.Marshal(persisted{Version: 1, KeyFile: json.RawMessage(`{"k":1}`), Genesis: "g", State: json.RawMessage(`{"applied":3}`), Log: []byte("LOG")})
	tests := []struct {
		name  string
		plain []byte
		ok    bool
	}{
		{"version 2", v2, true},
		{"version 1", v1, true},
		{"truncated header", v2[:10], false},
		{"truncated state", v2[:len(v2)-10], false},
		{"header claims too much", append([]byte(persistMagic), 0xff, 0xff, 0xff, 0xff), false},
		{"wrong header version", encodePersisted([]byte(`{"version":1}`), nil, nil), false},
		{"garbage", []byte("garbage"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := decodePersisted(tc.plain)
			if !tc.ok {
				if err == nil {
					t.Fatalf("decoded %+v", p)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Genesis != "g" || string(p.State) != `{"applied":3}` || !bytes.Equal(p.Log, []byte("LOG")) || string(p.KeyFile) != `{"k":1}` {
				t.Fatalf("decoded %+v", p)
			}
		})
	}
}

func FuzzDecodePersisted(f *testing.F) {
	header, _ := json.Marshal(persisted{Version: 2, Genesis: "g"})
	f.Add(encodePersisted(header, []byte(`{}`), []byte("log")))
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(persistMagic))
	f.Fuzz(func(t *testing.T, plain []byte) {
		p, err := decodePersisted(plain)
		if err != nil {
			return
		}
		// What decodes re-encodes to the same state and log.
		if bytes.HasPrefix(plain, []byte(persistMagic)) {
			h, _ := json.Marshal(persisted{Version: p.Version, KeyFile: p.KeyFile, TLSKey: p.TLSKey, TLSCert: p.TLSCert, Genesis: p.Genesis})
			q, err := decodePersisted(encodePersisted(h, p.State, p.Log))
			if err != nil || !bytes.Equal(q.State, p.State) || !bytes.Equal(q.Log, p.Log) {
				t.Fatalf("round trip: %v", err)
			}
		}
	})
}
