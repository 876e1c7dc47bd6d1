package checkpoint

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/sealflow/sealflow/seal"
)

// sealBytes seals pt as id in memory, as Put does, in chunks of MinChunk.
func sealBytes(t testing.TB, id SnapshotID, pt []byte, keys *seal.Keyring) []byte {
	return sealChunked(t, id, pt, keys, MinChunk)
}

func sealChunked(t testing.TB, id SnapshotID, pt []byte, keys *seal.Keyring, chunk uint32) []byte {
	t.Helper()
	k, _ := keys.Current(KeyScope(id.Job))
	secret, _ := k.Bytes()
	h := Header{ID: id, ChunkSize: chunk, Length: uint64(len(pt)), Epoch: k.Epoch(), KeyID: k.ID()}
	rand.Read(h.Salt[:])
	hb, err := h.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := objectAEAD(secret, h.Salt, hb)
	if err != nil {
		t.Fatal(err)
	}
	r := &sealReader{aead: aead, pt: pt, chunk: int(chunk), n: h.Chunks(), out: bytes.Clone(hb), sum: sha256.New()}
	var out bytes.Buffer
	out.Grow(int(h.SealedSize()) + bytes.MinRead)
	if _, err := out.ReadFrom(r); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// FuzzOpen feeds arbitrary sealed objects to the opening half of Get: only
// the genuine objects open, and each yields exactly its snapshot,
// whatever was changed in the header, the chunks or the length.
func FuzzOpen(f *testing.F) {
	keys := ring(f, "job")
	id := sid("job", "agg", 9)
	pt := pattern(2*MinChunk+33, "fuzz")
	genuine := sealBytes(f, id, pt, keys)
	f.Add(genuine)
	f.Add(genuine[:len(genuine)-1])
	empty := sealBytes(f, id, nil, keys)
	f.Add(empty)
	other := id
	other.Checkpoint = 8
	f.Add(sealBytes(f, other, pt, keys))
	s := &Store{maxSnapshot: 1 << 20}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, _, err := s.open(id, bufio.NewReaderSize(bytes.NewReader(b), maxHeader+64), uint64(len(b)), keys)
		if err != nil {
			if RuleOf(err) == "" && len(b) <= 1<<20+maxHeader {
				t.Fatalf("not a refusal: %v", err)
			}
			return
		}
		switch {
		case bytes.Equal(b, genuine) && bytes.Equal(got, pt):
		case bytes.Equal(b, empty) && len(got) == 0:
		default:
			t.Fatalf("a forged object of %d bytes opened to %d bytes", len(b), len(got))
		}
	})
}
