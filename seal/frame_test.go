package seal

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// stream seals n frames of scope with a fresh keyring; the last is
// last-of-stream when last is set.
type fixture struct {
	keys   *Keyring
	frames [][]byte
	bodies [][]byte
}

func newFixture(t testing.TB, scope string, n int, last bool, opts ...SealerOption) *fixture {
	t.Helper()
	keys := NewKeyring()
	if _, err := keys.Generate(scope, 1); err != nil {
		t.Fatal(err)
	}
	s, err := NewSealer(keys, KindIngest, scope, 7, opts...)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{keys: keys}
	for i := range n {
		body := fmt.Appendf(nil, "record batch %d of %s", i, scope)
		var frame []byte
		if last && i == n-1 {
			frame, err = s.SealLast(nil, body, int64(i*10), int64(i*10+9))
		} else {
			frame, err = s.Seal(nil, body, int64(i*10), int64(i*10+9))
		}
		if err != nil {
			t.Fatal(err)
		}
		f.frames = append(f.frames, frame)
		f.bodies = append(f.bodies, body)
	}
	return f
}

func flip(frame []byte, i int) []byte {
	c := bytes.Clone(frame)
	c[i] ^= 0x01
	return c
}

// headerOffset returns the offset of a field in a frame of scope length n.
func headerOffset(n int, field string) int {
	base := 4 + n
	switch field {
	case "partition":
		return base
	case "epoch":
		return base + 4
	case "seq":
		return base + 8 + 7
	case "mintime":
		return base + 16 + 7
	case "maxtime":
		return base + 24 + 7
	case "keyid":
		return base + 32
	}
	panic(field)
}

func TestOpenerRejects(t *testing.T) {
	const scope = "stream-a"
	main := newFixture(t, scope, 3, true)
	other := newFixture(t, "stream-b", 1, false)
	sameScopeOtherKey := newFixture(t, scope, 1, false) // another key claiming (stream-a, epoch 1)
	plain := newFixture(t, scope, 1, false, WithPlaintext())
	hs := HeaderSizeFor(scope)

	// A frame of stream-b relabelled as stream-a (same length scope).
	relabelled := bytes.Replace(bytes.Clone(other.frames[0]), []byte("stream-b"), []byte("stream-a"), 1)
	// The same, with stream-a's key id forged into the header.
	forged := bytes.Clone(relabelled)
	copy(forged[headerOffset(len(scope), "keyid"):], main.frames[0][headerOffset(len(scope), "keyid"):headerOffset(len(scope), "keyid")+KeyIDSize])

	// A frame sealed under epoch 2, which the consumer never received.
	newer := newFixture(t, scope, 0, false)
	newer.keys = main.keys
	keys2 := NewKeyring()
	k1, _ := main.keys.Key(scope, 1)
	if _, err := keys2.Add(k1); err != nil {
		t.Fatal(err)
	}
	if _, err := keys2.Generate(scope, 2); err != nil {
		t.Fatal(err)
	}
	s2, _ := NewSealer(keys2, KindIngest, scope, 7)
	epoch2, err := s2.Seal(nil, []byte("x"), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A later frame sealed after the last-of-stream frame.
	s3, _ := NewSealer(main.keys, KindIngest, scope, 7, WithStartSeq(3))
	afterEnd, _ := s3.Seal(nil, []byte("late"), 0, 0)
	// An exchange frame of the same scope and key.
	sx, _ := NewSealer(main.keys, KindExchange, scope, 7)
	exchange, _ := sx.Seal(nil, []byte("x"), 0, 0)

	unknownFlag := flip(main.frames[0], 2)
	unknownFlag[2] |= 0x80

	f0, f1, f2 := main.frames[0], main.frames[1], main.frames[2]
	tests := []struct {
		name     string
		accepted [][]byte // delivered first, each must be accepted
		frame    []byte   // then this one must be rejected
		want     Reason
	}{
		{"flipped bit in seq", nil, flip(f0, headerOffset(len(scope), "seq")), ReasonTampered},
		{"flipped bit in partition", nil, flip(f0, headerOffset(len(scope), "partition")), ReasonTampered},
		{"flipped bit in min time", nil, flip(f0, headerOffset(len(scope), "mintime")), ReasonTampered},
		{"flipped bit in max time", nil, flip(f0, headerOffset(len(scope), "maxtime")), ReasonTampered},
		{"last flag set", nil, flip(f0, 2), ReasonTampered},
		{"flipped bit in nonce", nil, flip(f0, hs), ReasonTampered},
		{"flipped bit in body", nil, flip(f0, hs+NonceSize+3), ReasonTampered},
		{"flipped bit in tag", nil, flip(f0, len(f0)-1), ReasonTampered},
		{"replayed", [][]byte{f0}, f0, ReasonReplayed},
		{"replayed older", [][]byte{f0, f1}, f0, ReasonReplayed},
		{"reordered", nil, f1, ReasonGap},
		{"gap", [][]byte{f0}, f2, ReasonGap},
		{"other stream's frame", nil, other.frames[0], ReasonForeign},
		{"other stream's frame relabelled", nil, relabelled, ReasonForeign},
		{"other stream's key under forged key id", nil, forged, ReasonTampered},
		{"another key for the same scope and epoch", nil, sameScopeOtherKey.frames[0], ReasonForeign},
		{"other kind", nil, exchange, ReasonForeign},
		{"plaintext to sealing opener", nil, plain.frames[0], ReasonPlaintext},
		{"wrong epoch", nil, epoch2, ReasonUnknownEpoch},
		{"after last-of-stream", [][]byte{f0, f1, f2}, afterEnd, ReasonAfterEnd},
		{"replay after last-of-stream", [][]byte{f0, f1, f2}, f2, ReasonReplayed},
		{"truncated frame", nil, f0[:len(f0)-1], ReasonMalformed},
		{"trailing byte", nil, append(bytes.Clone(f0), 0), ReasonMalformed},
		{"header only", nil, f0[:hs-1], ReasonMalformed},
		{"empty", nil, nil, ReasonMalformed},
		{"unknown version", nil, flip(f0, 0), ReasonMalformed},
		{"unknown kind", nil, func() []byte { c := bytes.Clone(f0); c[1] = 9; return c }(), ReasonMalformed},
		{"unknown flag", nil, unknownFlag, ReasonMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := NewOpener(main.keys, KindIngest, []string{scope})
			if err != nil {
				t.Fatal(err)
			}
			var buf []byte
			for i, f := range tc.accepted {
				var h Header
				h, buf, err = o.Open(buf[:0], f)
				if err != nil {
					t.Fatalf("frame %d of the prefix refused: %v", i, err)
				}
				if !bytes.Equal(buf, main.bodies[h.Seq]) {
					t.Fatalf("frame %d opened to %q, want %q", i, buf, main.bodies[h.Seq])
				}
			}
			before := o.Next(scope, 7)
			dst := []byte("prefix")
			h, got, err := o.Open(dst, tc.frame)
			var rej *Rejection
			if !errors.As(err, &rej) {
				t.Fatalf("Open = %v, want a *Rejection with reason %s", err, tc.want)
			}
			if rej.Reason != tc.want || rej.RefusedBy() != "seal."+string(tc.want) || ReasonOf(err) != tc.want {
				t.Fatalf("reason %s (rule %s), want %s: %v", rej.Reason, rej.RefusedBy(), tc.want, err)
			}
			if string(got) != "prefix" || h != (Header{}) {
				t.Errorf("rejected frame leaked into the output: %q, header %+v", got, h)
			}
			if o.Next(scope, 7) != before {
				t.Errorf("rejected frame advanced the partition from %d to %d", before, o.Next(scope, 7))
			}
		})
	}
}

func TestCheckEnd(t *testing.T) {
	const scope = "s"
	f := newFixture(t, scope, 3, true)
	tests := []struct {
		name       string
		deliver    int
		partitions []uint32
		truncated  bool
	}{
		{"nothing delivered", 0, []uint32{7}, true},
		{"nothing delivered, no partition named", 0, nil, false},
		{"cut before the last frame", 2, nil, true},
		{"cut before the last frame, named", 2, []uint32{7}, true},
		{"complete", 3, nil, false},
		{"complete, named", 3, []uint32{7}, false},
		{"complete, but another partition silent", 3, []uint32{7, 8}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, _ := NewOpener(f.keys, KindIngest, []string{scope})
			for _, fr := range f.frames[:tc.deliver] {
				if _, _, err := o.Open(nil, fr); err != nil {
					t.Fatal(err)
				}
			}
			err := o.CheckEnd(scope, tc.partitions...)
			if got := ReasonOf(err) == ReasonTruncated; got != tc.truncated {
				t.Fatalf("CheckEnd = %v, want truncated %v", err, tc.truncated)
			}
			if o.Ended(scope, 7) != (tc.deliver == 3) {
				t.Errorf("Ended = %v after %d frames", o.Ended(scope, 7), tc.deliver)
			}
		})
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	sizes := []int{0, 1, 15, 16, 100, 4096, 65536}
	for _, pad := range []int{0, 64, 4096} {
		for _, plaintext := range []bool{false, true} {
			t.Run(fmt.Sprintf("pad=%d/plaintext=%v", pad, plaintext), func(t *testing.T) {
				keys := NewKeyring()
				if _, err := keys.Generate("job/edge-1", 3); err != nil {
					t.Fatal(err)
				}
				var opts []SealerOption
				if pad > 0 {
					opts = append(opts, WithPadding(pad))
				}
				var oopts []OpenerOption
				if plaintext {
					opts = append(opts, WithPlaintext())
					oopts = append(oopts, AcceptPlaintext())
				}
				s, err := NewSealer(keys, KindExchange, "job/edge-1", 2, opts...)
				if err != nil {
					t.Fatal(err)
				}
				o, err := NewOpener(keys, KindExchange, []string{"job/edge-1", "job/edge-2"}, oopts...)
				if err != nil {
					t.Fatal(err)
				}
				for i, n := range sizes {
					body := bytes.Repeat([]byte{byte(i + 1)}, n)
					frame, err := s.Seal([]byte("keep"), body, int64(i), int64(i+5))
					if err != nil {
						t.Fatal(err)
					}
					if string(frame[:4]) != "keep" {
						t.Fatal("Seal overwrote dst")
					}
					frame = frame[4:]
					if !plaintext && bytes.Contains(frame, body) && n >= 16 {
						t.Fatalf("sealed frame contains its plaintext")
					}
					if pad > 0 {
						want := HeaderSizeFor("job/edge-1") + (n+4+pad-1)/pad*pad
						if !plaintext {
							want += Overhead
						}
						if len(frame) != want {
							t.Fatalf("padded frame of a %d-byte body has %d bytes, want %d", n, len(frame), want)
						}
					}
					h, got, err := o.Open(nil, frame)
					if err != nil {
						t.Fatalf("body of %d bytes: %v", n, err)
					}
					if !bytes.Equal(got, body) {
						t.Fatalf("body of %d bytes opened to %d bytes", n, len(got))
					}
					want := Header{Version: Version, Kind: KindExchange, Scope: "job/edge-1", Partition: 2, Epoch: 3,
						Seq: uint64(i), MinTime: int64(i), MaxTime: int64(i + 5), BodyLen: h.BodyLen, KeyID: h.KeyID, Flags: h.Flags}
					if plaintext {
						want.Epoch = 0
					}
					if h != want {
						t.Fatalf("header %+v, want %+v", h, want)
					}
					if (h.Flags&FlagPadded != 0) != (pad > 0) || (h.Flags&FlagPlaintext != 0) != plaintext {
						t.Fatalf("flags %b with pad %d plaintext %v", h.Flags, pad, plaintext)
					}
					if ph, err := ParseHeader(frame); err != nil || ph != h {
						t.Fatalf("ParseHeader = %+v, %v; want %+v", ph, err, h)
					}
				}
			})
		}
	}
}

func TestEpochRotation(t *testing.T) {
	keys := NewKeyring()
	if _, err := keys.Rotate("s"); err != nil {
		t.Fatal(err)
	}
	s, _ := NewSealer(keys, KindIngest, "s", 0)
	f1, _ := s.Seal(nil, []byte("one"), 0, 0)
	if _, err := keys.Rotate("s"); err != nil {
		t.Fatal(err)
	}
	f2, _ := s.Seal(nil, []byte("two"), 0, 0)
	o, _ := NewOpener(keys, KindIngest, []string{"s"})
	h1, _, err := o.Open(nil, f1)
	if err != nil || h1.Epoch != 1 {
		t.Fatalf("epoch-1 frame: epoch %d, %v", h1.Epoch, err)
	}
	h2, _, err := o.Open(nil, f2)
	if err != nil || h2.Epoch != 2 || h2.Seq != 1 {
		t.Fatalf("epoch-2 frame: epoch %d seq %d, %v (want epoch 2 seq 1)", h2.Epoch, h2.Seq, err)
	}
	// Once epoch 1 is dropped, its frames no longer open.
	if n := keys.DropBefore("s", 2); n != 1 {
		t.Fatalf("DropBefore dropped %d keys, want 1", n)
	}
	o2, _ := NewOpener(keys, KindIngest, []string{"s"})
	if _, _, err := o2.Open(nil, f1); ReasonOf(err) != ReasonUnknownEpoch {
		t.Fatalf("frame of a dropped epoch: %v, want unknown-epoch", err)
	}
}

func TestResume(t *testing.T) {
	f := newFixture(t, "s", 3, false)
	o, _ := NewOpener(f.keys, KindIngest, []string{"s"})
	if err := o.Resume("s", 7, 2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := o.Open(nil, f.frames[1]); ReasonOf(err) != ReasonReplayed {
		t.Fatalf("frame before the resume point: %v, want replayed", err)
	}
	if _, _, err := o.Open(nil, f.frames[2]); err != nil {
		t.Fatalf("frame at the resume point: %v", err)
	}
	if err := o.Resume("other", 7, 2); err == nil {
		t.Fatal("Resume of a scope the opener does not read succeeded")
	}
}

func TestSealerRefuses(t *testing.T) {
	keys := NewKeyring()
	k, _ := keys.Generate("s", 1)
	tests := []struct {
		name string
		do   func() error
	}{
		{"after last", func() error {
			s, _ := NewSealer(keys, KindIngest, "s", 0)
			if _, err := s.SealLast(nil, nil, 0, 0); err != nil {
				return nil // wrong failure: report as success so the test fails
			}
			_, err := s.Seal(nil, nil, 0, 0)
			return err
		}},
		{"inverted time range", func() error {
			s, _ := NewSealer(keys, KindIngest, "s", 0)
			_, err := s.Seal(nil, nil, 5, 4)
			return err
		}},
		{"scope without key", func() error {
			s, _ := NewSealer(keys, KindIngest, "t", 0)
			_, err := s.Seal(nil, nil, 0, 0)
			return err
		}},
		{"bad kind", func() error { _, err := NewSealer(keys, Kind(0), "s", 0); return err }},
		{"empty scope", func() error { _, err := NewSealer(keys, KindIngest, "", 0); return err }},
		{"long scope", func() error { _, err := NewSealer(keys, KindIngest, string(make([]byte, 256)), 0); return err }},
		{"non-UTF-8 scope", func() error { _, err := NewSealer(keys, KindIngest, "\xff", 0); return err }},
		{"tiny bucket", func() error { _, err := NewSealer(keys, KindIngest, "s", 0, WithPadding(1)); return err }},
		{"key used up", func() error {
			kr := NewKeyring()
			k, _ := kr.Generate("u", 1)
			s, _ := NewSealer(kr, KindIngest, "u", 0)
			if _, err := s.Seal(nil, nil, 0, 0); err != nil {
				return nil
			}
			k.sealed.Store(MaxFramesPerKey)
			_, err := s.Seal(nil, nil, 0, 0)
			return err
		}},
		{"no keyring", func() error { _, err := NewSealer(nil, KindIngest, "s", 0); return err }},
		{"zeroed key", func() error {
			k2, _ := NewKey("z", 1, make([]byte, KeySize))
			kr := NewKeyring()
			kr.Add(k2)
			s, _ := NewSealer(kr, KindIngest, "z", 0)
			k2.Zero()
			_, err := s.Seal(nil, nil, 0, 0)
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.do(); err == nil {
				t.Fatal("no error")
			}
		})
	}
	_ = k
}

func TestSealOpenDoNotAllocate(t *testing.T) {
	for _, pad := range []int{0, 1024} {
		keys := NewKeyring()
		keys.Generate("s", 1)
		var opts []SealerOption
		if pad > 0 {
			opts = append(opts, WithPadding(pad))
		}
		s, _ := NewSealer(keys, KindExchange, "s", 0, opts...)
		o, _ := NewOpener(keys, KindExchange, []string{"s"})
		body := make([]byte, 4096)
		frame := make([]byte, 0, 8192)
		out := make([]byte, 0, 8192)
		var err error
		// Warm up: the first frame creates the partition's state.
		frame, _ = s.Seal(frame[:0], body, 0, 0)
		_, out, _ = o.Open(out[:0], frame)
		allocs := testing.AllocsPerRun(200, func() {
			frame, err = s.Seal(frame[:0], body, 1, 2)
			if err != nil {
				t.Fatal(err)
			}
			_, out, err = o.Open(out[:0], frame)
			if err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("pad %d: Seal+Open allocate %.1f times per frame, want 0", pad, allocs)
		}
	}
}

func TestHeaderEncoding(t *testing.T) {
	h := Header{Version: Version, Kind: KindCheckpoint, Flags: FlagLast, Scope: "job-1/op-3", Partition: 1 << 31,
		Epoch: 9, Seq: 1<<64 - 1, MinTime: -5, MaxTime: 1 << 62, KeyID: KeyID{1, 2, 3, 4, 5, 6, 7, 8}, BodyLen: 3}
	b, err := h.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != h.Size() {
		t.Fatalf("encoding has %d bytes, Size says %d", len(b), h.Size())
	}
	frame := append(b, 1, 2, 3)
	got, err := ParseHeader(frame)
	if err != nil || got != h {
		t.Fatalf("ParseHeader = %+v, %v; want %+v", got, err, h)
	}
	two := append(bytes.Clone(frame), frame...)
	n, err := FrameLen(two)
	if err != nil || n != len(frame) {
		t.Fatalf("FrameLen = %d, %v; want %d", n, err, len(frame))
	}
	if _, err := FrameLen(two[:len(frame)-1]); err == nil {
		t.Fatal("FrameLen accepted a cut frame")
	}
	bad := []Header{
		{Version: 2, Kind: KindIngest, Scope: "s"},
		{Version: Version, Kind: 0, Scope: "s"},
		{Version: Version, Kind: KindIngest, Scope: ""},
		{Version: Version, Kind: KindIngest, Scope: "s", Flags: 0x40},
		{Version: Version, Kind: KindIngest, Scope: "s", MinTime: 2, MaxTime: 1},
		{Version: Version, Kind: KindIngest, Scope: "s", BodyLen: MaxBody + 1},
	}
	for _, h := range bad {
		if _, err := h.AppendBinary(nil); err == nil {
			t.Errorf("AppendBinary accepted %+v", h)
		}
	}
}

func FuzzParseHeader(f *testing.F) {
	fx := newFixture(f, "stream-a", 2, true, WithPadding(32))
	for _, fr := range fx.frames {
		f.Add(fr)
	}
	f.Add([]byte{})
	f.Add([]byte{1, 1, 0, 1, 's'})
	f.Fuzz(func(t *testing.T, frame []byte) {
		h, err := ParseHeader(frame)
		if err != nil {
			return
		}
		b, err := h.AppendBinary(nil)
		if err != nil {
			t.Fatalf("parsed header %+v does not encode: %v", h, err)
		}
		if !bytes.Equal(b, frame[:len(b)]) || len(frame)-len(b) != int(h.BodyLen) {
			t.Fatalf("header %+v re-encodes differently", h)
		}
		if n, err := FrameLen(frame); err != nil || n != len(frame) {
			t.Fatalf("FrameLen = %d, %v for a frame of %d bytes", n, err, len(frame))
		}
	})
}

func FuzzOpen(f *testing.F) {
	fx := newFixture(f, "stream-a", 3, true)
	padded := newFixture(f, "stream-a", 1, false, WithPadding(32))
	keys := fx.keys
	for _, fr := range fx.frames {
		f.Add(fr)
	}
	f.Add(padded.frames[0])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, frame []byte) {
		o, err := NewOpener(keys, KindIngest, []string{"stream-a"}, AcceptPlaintext())
		if err != nil {
			t.Fatal(err)
		}
		_, body, err := o.Open(nil, frame)
		if err != nil {
			var rej *Rejection
			if !errors.As(err, &rej) || rej.Reason == "" {
				t.Fatalf("Open returned %T %v, want a *Rejection", err, err)
			}
			return
		}
		// Only the genuine first frame or a plaintext frame may open.
		h, _ := ParseHeader(frame)
		if h.Flags&FlagPlaintext == 0 && !bytes.Equal(frame, fx.frames[0]) {
			t.Fatalf("Open accepted a sealed frame that is not the genuine first frame: %x", frame)
		}
		if h.Flags&FlagPlaintext == 0 && !bytes.Equal(body, fx.bodies[0]) {
			t.Fatalf("genuine frame opened to %q", body)
		}
	})
}

// TestSealOpenInPlace checks that SealInPlace makes frames Open accepts and
// OpenInPlace opens frames of Seal, with padding and plaintext frames, that
// the frames have the same layout as Seal's, and that OpenInPlace rejects
// what Open rejects.
func TestSealOpenInPlace(t *testing.T) {
	const scope = "job/edge-1"
	sizes := []int{0, 1, 15, 16, 100, 4096, 65536}
	for _, pad := range []int{0, 64, 4096} {
		for _, plaintext := range []bool{false, true} {
			t.Run(fmt.Sprintf("pad=%d/plaintext=%v", pad, plaintext), func(t *testing.T) {
				keys := NewKeyring()
				if _, err := keys.Generate(scope, 3); err != nil {
					t.Fatal(err)
				}
				var opts []SealerOption
				if pad > 0 {
					opts = append(opts, WithPadding(pad))
				}
				var oopts []OpenerOption
				if plaintext {
					opts = append(opts, WithPlaintext())
					oopts = append(oopts, AcceptPlaintext())
				}
				inPlace, _ := NewSealer(keys, KindExchange, scope, 2, opts...)
				appending, _ := NewSealer(keys, KindExchange, scope, 2, opts...)
				open1, _ := NewOpener(keys, KindExchange, []string{scope}, oopts...)
				open2, _ := NewOpener(keys, KindExchange, []string{scope}, oopts...)
				off := inPlace.InPlaceOffset()
				if want := HeaderSizeFor(scope) + NonceSize; !plaintext && off != want || plaintext && off != HeaderSizeFor(scope) {
					t.Fatalf("InPlaceOffset = %d", off)
				}
				for i, n := range sizes {
					body := bytes.Repeat([]byte{byte(i + 1)}, n)
					// Short capacity on odd frames: SealInPlace must grow.
					buf := make([]byte, off, off+n+(i%2)*(pad+64))
					buf = append(buf, body...)
					f1, err := inPlace.SealInPlace(buf, int64(i), int64(i+5))
					if err != nil {
						t.Fatal(err)
					}
					f2, err := appending.Seal(nil, body, int64(i), int64(i+5))
					if err != nil {
						t.Fatal(err)
					}
					if len(f1) != len(f2) || !bytes.Equal(f1[:HeaderSizeFor(scope)], f2[:HeaderSizeFor(scope)]) {
						t.Fatalf("body of %d bytes: in-place frame of %d bytes differs from Seal's %d in layout or header", n, len(f1), len(f2))
					}
					if !plaintext && n >= 16 && bytes.Contains(f1, body) {
						t.Fatal("in-place sealed frame contains its plaintext")
					}
					h1, got1, err := open1.Open(nil, f1)
					if err != nil || !bytes.Equal(got1, body) {
						t.Fatalf("Open of the in-place frame of %d bytes: %d bytes, %v", n, len(got1), err)
					}
					h2, got2, err := open2.OpenInPlace(f2)
					if err != nil || !bytes.Equal(got2, body) {
						t.Fatalf("OpenInPlace of a %d-byte body: %d bytes, %v", n, len(got2), err)
					}
					if h1 != h2 {
						t.Fatalf("headers %+v and %+v differ", h1, h2)
					}
					if n > 0 && &got2[0] != &f2[off] {
						t.Fatal("OpenInPlace did not open in the frame's buffer")
					}
				}
			})
		}
	}
}

func TestOpenInPlaceRejects(t *testing.T) {
	f := newFixture(t, "scope-a", 3, false)
	sealedBody := HeaderSizeFor("scope-a") + NonceSize
	for _, tc := range []struct {
		name   string
		frames [][]byte // opened in order; the last must be rejected
		reason Reason
	}{
		{"tampered body", [][]byte{flip(f.frames[0], sealedBody+1)}, ReasonTampered},
		{"tampered header", [][]byte{flip(f.frames[0], headerOffset(len("scope-a"), "mintime"))}, ReasonTampered},
		{"replayed", [][]byte{f.frames[0], f.frames[0]}, ReasonReplayed},
		{"gap", [][]byte{f.frames[0], f.frames[2]}, ReasonGap},
		{"truncated", [][]byte{f.frames[0][:10]}, ReasonMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, _ := NewOpener(f.keys, KindIngest, []string{"scope-a"})
			for i, fr := range tc.frames {
				_, _, err := o.OpenInPlace(bytes.Clone(fr))
				if i < len(tc.frames)-1 {
					if err != nil {
						t.Fatalf("frame %d: %v", i, err)
					}
					continue
				}
				if got := ReasonOf(err); got != tc.reason {
					t.Fatalf("rejection %q (%v), want %q", got, err, tc.reason)
				}
			}
			// The partition still expects the rejected frame's successor of
			// the last accepted one: the next authentic frame opens.
			next := len(tc.frames) - 1
			if tc.name == "replayed" || tc.name == "gap" {
				next = 1
			}
			if _, got, err := o.OpenInPlace(bytes.Clone(f.frames[next])); err != nil || !bytes.Equal(got, f.bodies[next]) {
				t.Fatalf("frame %d after the rejection: %q, %v", next, got, err)
			}
		})
	}
}

func TestSealOpenInPlaceDoNotAllocate(t *testing.T) {
	for _, pad := range []int{0, 1024} {
		keys := NewKeyring()
		keys.Generate("s", 1)
		var opts []SealerOption
		if pad > 0 {
			opts = append(opts, WithPadding(pad))
		}
		s, _ := NewSealer(keys, KindExchange, "s", 0, opts...)
		o, _ := NewOpener(keys, KindExchange, []string{"s"})
		off := s.InPlaceOffset()
		buf := make([]byte, off+4096, 8192)
		var err error
		frame, _ := s.SealInPlace(buf, 0, 0)
		o.OpenInPlace(frame)
		allocs := testing.AllocsPerRun(200, func() {
			frame, err = s.SealInPlace(buf[:off+4096], 1, 2)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err = o.OpenInPlace(frame); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("pad %d: SealInPlace+OpenInPlace allocate %.1f times per frame, want 0", pad, allocs)
		}
	}
}
