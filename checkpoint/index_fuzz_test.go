package checkpoint

import (
	"bytes"
	"testing"

	"github.com/sealflow/sealflow/engine/state"
)

// FuzzDecodeIndex: a snapshot index decodes strictly or is refused with an
// error, never a panic; whatever decodes keeps the invariants restores rely
// on (every chunk inside its pack, every pack used, the chunks adding up to
// the length) and encodes back to the same bytes.
func FuzzDecodeIndex(f *testing.F) {
	id := SnapshotID{Job: "job", Version: 1, Task: "t", KeyGroups: state.Range{From: 0, To: 8}, Checkpoint: 5, Writer: "n1"}
	base := id
	base.Checkpoint = 4
	x := &Index{ID: id, Length: 300, Packs: []PackRef{{ID: base, Length: 200}, {ID: id, Length: 100}},
		Chunks: []ChunkRef{{Pack: 0, Offset: 0, Length: 120}, {Pack: 1, Offset: 0, Length: 100}, {Pack: 0, Offset: 120, Length: 80}}}
	if _, err := decodeIndex(id, x.marshal(), 1<<20); err != nil {
		f.Fatalf("the seed index does not decode: %v", err)
	}
	f.Add(x.marshal())
	f.Add((&Index{ID: id, Length: 0}).marshal())
	f.Add([]byte(indexMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeIndex(id, b, 1<<20)
		if err != nil {
			return
		}
		var total uint64
		used := make([]bool, len(got.Packs))
		for i, c := range got.Chunks {
			if c.Pack < 0 || c.Pack >= len(got.Packs) || c.Length == 0 || c.Offset+c.Length > got.Packs[c.Pack].Length {
				t.Fatalf("chunk %d %+v outside its pack", i, c)
			}
			used[c.Pack] = true
			total += c.Length
		}
		if total != got.Length || got.Length > 1<<20 {
			t.Fatalf("chunks hold %d bytes, index says %d", total, got.Length)
		}
		for i, u := range used {
			if !u {
				t.Fatalf("pack %d unused", i)
			}
		}
		if re := got.marshal(); !bytes.Equal(re, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", re, b)
		}
	})
}
