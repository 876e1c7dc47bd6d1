package checkpoint

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/engine/state"
)

func sampleManifest() *Manifest {
	return &Manifest{
		Job: "balance", Version: 2, Checkpoint: 7,
		Snapshots: []TaskSnapshot{
			{Task: "balance/src", KeyGroups: state.Range{From: 0, To: 128}, Digest: sha256.Sum256([]byte("src"))},
			{Task: "balance/agg", KeyGroups: state.Range{From: 64, To: 128}, Digest: sha256.Sum256([]byte("agg-2"))},
			{Task: "balance/agg", KeyGroups: state.Range{From: 0, To: 64}, Digest: sha256.Sum256([]byte("agg-1"))},
		},
		Positions: map[string]map[uint32]Position{
			"meter-b": {0: {StreamSeq: 10, Next: 4}},
			"meter-a": {3: {StreamSeq: 99, Next: 40}, 0: {StreamSeq: 12, Next: 6}},
		},
	}
}

func TestManifestCanonical(t *testing.T) {
	m := sampleManifest()
	enc, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	// The same content in another order encodes identically.
	m2 := sampleManifest()
	m2.Snapshots[0], m2.Snapshots[2] = m2.Snapshots[2], m2.Snapshots[0]
	enc2, _ := m2.MarshalBinary()
	if !bytes.Equal(enc, enc2) {
		t.Fatal("reordered snapshots changed the encoding")
	}
	dec, err := DecodeManifest(enc)
	if err != nil {
		t.Fatal(err)
	}
	re, _ := dec.MarshalBinary()
	if !bytes.Equal(re, enc) {
		t.Fatal("decode and encode do not round-trip")
	}
	if !reflect.DeepEqual(dec.Positions, m.Positions) || dec.Job != m.Job || dec.Version != m.Version || dec.Checkpoint != m.Checkpoint || len(dec.Snapshots) != 3 {
		t.Fatalf("decoded %+v, want %+v", dec, m)
	}
	if s, ok := dec.Snapshot("balance/agg", state.Range{From: 64, To: 128}); !ok || s.Digest != m.Snapshots[1].Digest {
		t.Fatal("Snapshot did not find the second agg range")
	}
	// Every field changes the digest.
	d0, _ := m.Digest()
	changes := map[string]func(*Manifest){
		"job":        func(m *Manifest) { m.Job = "balance2" },
		"version":    func(m *Manifest) { m.Version++ },
		"checkpoint": func(m *Manifest) { m.Checkpoint++ },
		"digest":     func(m *Manifest) { m.Snapshots[1].Digest[0] ^= 1 },
		"range":      func(m *Manifest) { m.Snapshots[1].KeyGroups.To = 127 },
		"task":       func(m *Manifest) { m.Snapshots[0].Task = "balance/sink" },
		"position":   func(m *Manifest) { m.Positions["meter-a"][3] = Position{StreamSeq: 100, Next: 40} },
		"next":       func(m *Manifest) { m.Positions["meter-a"][3] = Position{StreamSeq: 99, Next: 41} },
		"partition":  func(m *Manifest) { m.Positions["meter-b"][1] = Position{} },
		"stream":     func(m *Manifest) { m.Positions["meter-c"] = map[uint32]Position{} },
	}
	for name, change := range changes {
		m := sampleManifest()
		change(m)
		d, err := m.Digest()
		if err != nil || d == d0 {
			t.Errorf("changing the %s left the digest unchanged (err %v)", name, err)
		}
	}
	// JSON round trip keeps the digest (digests encode as hex).
	j, _ := json.Marshal(m)
	var mj Manifest
	if err := json.Unmarshal(j, &mj); err != nil {
		t.Fatal(err)
	}
	if d, _ := mj.Digest(); d != d0 {
		t.Fatal("the JSON form lost information")
	}
}

func TestManifestRefusals(t *testing.T) {
	good, _ := sampleManifest().MarshalBinary()
	dup := sampleManifest()
	dup.Snapshots = append(dup.Snapshots, dup.Snapshots[0])
	if _, err := dup.MarshalBinary(); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("a manifest listing a snapshot twice encoded: %v", err)
	}
	noDigest := sampleManifest()
	noDigest.Snapshots[0].Digest = Digest{}
	if _, err := noDigest.MarshalBinary(); err == nil {
		t.Fatal("a snapshot without digest encoded")
	}
	// Find the offsets of the first two snapshots to swap them.
	jobEnd := len(manifestMagic) + 2 + len("balance") + 8 + 8 + 4
	snapLen := func(off int) int { return 1 + int(good[off]) + 4 + 4 + 32 }
	s1 := snapLen(jobEnd)
	s2 := snapLen(jobEnd + s1)
	swapped := bytes.Clone(good[:jobEnd])
	swapped = append(swapped, good[jobEnd+s1:jobEnd+s1+s2]...)
	swapped = append(swapped, good[jobEnd:jobEnd+s1]...)
	swapped = append(swapped, good[jobEnd+s1+s2:]...)
	tests := []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "magic"},
		{"bad magic", append([]byte("XXXX"), good[4:]...), "magic"},
		{"bad format", append(append([]byte(manifestMagic), 9), good[5:]...), "format"},
		{"truncated in a snapshot", good[:jobEnd+5], "snapshots in"},
		{"truncated in the header", good[:jobEnd-6], "ends early"},
		{"truncated in the positions", good[:len(good)-1], "partitions in"},
		{"trailing", append(bytes.Clone(good), 0), "trailing"},
		{"non-canonical order", swapped, "canonical order"},
		{"huge count", append(bytes.Clone(good[:jobEnd-4]), 0xff, 0xff, 0xff, 0xff), "snapshots in"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := DecodeManifest(tc.b); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func FuzzDecodeManifest(f *testing.F) {
	good, _ := sampleManifest().MarshalBinary()
	f.Add(good)
	f.Add(good[:len(good)/2])
	one := &Manifest{Job: "j", Checkpoint: 1, Snapshots: []TaskSnapshot{{Task: "t", KeyGroups: state.Range{From: 0, To: 1}, Digest: Digest{1}}}}
	b, _ := one.MarshalBinary()
	f.Add(b)
	f.Add([]byte(manifestMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeManifest(b)
		if err != nil {
			return
		}
		// Only the canonical encoding decodes: re-encoding gives the input.
		re, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("a decoded manifest does not encode: %v", err)
		}
		if !bytes.Equal(re, b) {
			t.Fatalf("decoded %x, re-encoded %x", b, re)
		}
	})
}

func FuzzParseHeader(f *testing.F) {
	h := Header{ID: sid("job", "agg", 3), ChunkSize: DefaultChunk, Length: 12345, Epoch: 2}
	hb, _ := h.AppendBinary(nil)
	f.Add(hb)
	f.Add(append(bytes.Clone(hb), "body"...))
	f.Add(hb[:len(hb)-1])
	f.Add(hb[:10])
	f.Add([]byte("SFCK\x01\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := ParseHeader(b)
		if err != nil {
			return
		}
		if n > len(b) || n != h.Size() {
			t.Fatalf("ParseHeader consumed %d of %d bytes, header size %d", n, len(b), h.Size())
		}
		re, err := h.AppendBinary(nil)
		if err != nil {
			t.Fatalf("a parsed header does not encode: %v", err)
		}
		if !bytes.Equal(re, b[:n]) {
			t.Fatalf("parsed %x, re-encoded %x", b[:n], re)
		}
		if h.SealedSize() < uint64(n)+h.Length {
			t.Fatalf("sealed size %d is below header %d plus length %d", h.SealedSize(), n, h.Length)
		}
	})
}

func TestParseHeaderRefusals(t *testing.T) {
	h := Header{ID: sid("job", "agg", 3), ChunkSize: DefaultChunk, Length: 12345, Epoch: 2}
	hb, _ := h.AppendBinary(nil)
	got, n, err := ParseHeader(append(bytes.Clone(hb), "body"...))
	if err != nil || n != len(hb) || got != h {
		t.Fatalf("ParseHeader = %+v, %d, %v; want %+v, %d", got, n, err, h, len(hb))
	}
	mut := func(off int, v byte) []byte { b := bytes.Clone(hb); b[off] = v; return b }
	chunkOff := 6
	tests := []struct {
		name string
		b    []byte
		want string
	}{
		{"short", hb[:len(hb)-1], "ends inside"},
		{"magic", mut(0, 'X'), "magic"},
		{"format", mut(4, 2), "format"},
		{"flags", mut(5, 1), "flags"},
		{"chunk too small", mut(chunkOff+1, 0), "chunk size"},
		{"empty job", append(append(bytes.Clone(hb[:18]), 0), hb[19+len("job"):]...), "job id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := ParseHeader(tc.b); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}
