package seal

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

func TestKeyring(t *testing.T) {
	r := NewKeyring()
	if _, ok := r.Current("s"); ok {
		t.Fatal("empty keyring has a current key")
	}
	k1, err := r.Rotate("s")
	if err != nil || k1.Epoch() != 1 {
		t.Fatalf("first Rotate = epoch %v, %v; want 1", k1, err)
	}
	k2, _ := r.Rotate("s")
	k5, err := r.Generate("s", 5)
	if err != nil {
		t.Fatal(err)
	}
	if cur, _ := r.Current("s"); cur != k5 {
		t.Fatalf("current is %v, want the highest epoch %v", cur, k5)
	}
	if _, err := r.Generate("s", 2); err == nil {
		t.Fatal("Generate replaced an existing epoch")
	}
	if got := r.Epochs("s"); !slices.Equal(got, []uint32{1, 2, 5}) {
		t.Fatalf("Epochs = %v", got)
	}
	// Adding the same key again is idempotent; a different one for a held epoch is refused.
	secret, _ := k2.Bytes()
	if got, err := r.AddSecret("s", 2, secret); err != nil || got != k2 {
		t.Fatalf("re-adding the same key: %v, %v", got, err)
	}
	if _, err := r.AddSecret("s", 2, bytes.Repeat([]byte{7}, KeySize)); err == nil {
		t.Fatal("a different key for a held epoch was accepted")
	}
	if _, err := r.AddSecret("s", 9, []byte("short")); err == nil {
		t.Fatal("a short key was accepted")
	}
	// Dropping the current key makes the next highest current and zeroes the key.
	if !r.Drop("s", 5) || r.Drop("s", 5) {
		t.Fatal("Drop did not report dropping exactly once")
	}
	if !k5.Zeroed() {
		t.Fatal("dropped key not zeroed")
	}
	if _, err := k5.Bytes(); !errors.Is(err, ErrKeyZeroed) {
		t.Fatalf("Bytes of a dropped key: %v", err)
	}
	if cur, _ := r.Current("s"); cur != k2 {
		t.Fatalf("after dropping epoch 5, current is %v, want epoch 2", cur)
	}
	if _, err := r.Add(k5); err == nil {
		t.Fatal("a zeroed key was added")
	}
	if n := r.DropBefore("s", 2); n != 1 || !k1.Zeroed() || k2.Zeroed() {
		t.Fatalf("DropBefore(2) dropped %d; k1 zeroed %v, k2 zeroed %v", n, k1.Zeroed(), k2.Zeroed())
	}
	r.Zero()
	if !k2.Zeroed() || len(r.Epochs("s")) != 0 {
		t.Fatal("Zero left keys")
	}
}

func TestKeyID(t *testing.T) {
	secret := bytes.Repeat([]byte{1}, KeySize)
	base := DeriveKeyID("s", 1, secret)
	others := []KeyID{
		DeriveKeyID("t", 1, secret),
		DeriveKeyID("s", 2, secret),
		DeriveKeyID("s", 1, bytes.Repeat([]byte{2}, KeySize)),
	}
	for i, o := range others {
		if o == base {
			t.Errorf("key id %d equals the base id: scope, epoch and secret must all count", i)
		}
	}
	got, err := ParseKeyID(base.String())
	if err != nil || got != base {
		t.Fatalf("ParseKeyID(%s) = %s, %v", base, got, err)
	}
	for _, bad := range []string{"", "zz", base.String() + "00"} {
		if _, err := ParseKeyID(bad); err == nil {
			t.Errorf("ParseKeyID(%q) succeeded", bad)
		}
	}
}

func TestNoncesDiffer(t *testing.T) {
	keys := NewKeyring()
	keys.Generate("s", 1)
	seen := map[string]bool{}
	for range 2 {
		s, _ := NewSealer(keys, KindIngest, "s", 0)
		for range 100 {
			f, err := s.Seal(nil, []byte("same body"), 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			hs := HeaderSizeFor("s")
			n := string(f[hs : hs+NonceSize])
			if seen[n] {
				t.Fatalf("nonce %x repeated", n)
			}
			seen[n] = true
		}
	}
}

// TestKeyringConcurrent seals and opens while another goroutine rotates and
// drops epochs; run with -race.
func TestKeyringConcurrent(t *testing.T) {
	keys := NewKeyring()
	keys.Rotate("s")
	s, _ := NewSealer(keys, KindIngest, "s", 0)
	o, _ := NewOpener(keys, KindIngest, []string{"s"})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 50 {
			k, err := keys.Rotate("s")
			if err != nil {
				t.Error(err)
				return
			}
			keys.DropBefore("s", k.Epoch()-1)
		}
	}()
	var frame, out []byte
	opened := 0
	for range 500 {
		var err error
		frame, err = s.Seal(frame[:0], []byte("x"), 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, out, err = o.Open(out[:0], frame); err == nil {
			opened++
		} else if r := ReasonOf(err); r != ReasonUnknownEpoch {
			t.Fatalf("Open while rotating: %v", err)
		} else {
			// The epoch was dropped between Seal and Open; skip that frame.
			o.Resume("s", 0, o.Next("s", 0)+1)
		}
	}
	<-done
	if opened == 0 {
		t.Fatal("no frame opened")
	}
}
