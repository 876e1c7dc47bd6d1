package seal

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hpke"
	"encoding/json"
	"testing"

	"github.com/sealflow/sealflow/attest"
)

func TestWrapUnwrap(t *testing.T) {
	info := WrapInfo{Purpose: "stream-key", KeyID: "0102030405060708", Recipient: "node-1"}
	secret := bytes.Repeat([]byte{0x5a}, KeySize)
	for _, name := range []string{"x25519", "mlkem768x25519"} {
		t.Run(name, func(t *testing.T) {
			kem, err := KEMByName(name)
			if err != nil {
				t.Fatal(err)
			}
			priv, _ := kem.GenerateKey()
			other, _ := kem.GenerateKey()
			w, err := Wrap(priv.PublicKey(), info.Bytes(), secret)
			if err != nil {
				t.Fatal(err)
			}
			if KEMName(w.KEM) != name {
				t.Fatalf("wrapped with KEM %s, want %s", KEMName(w.KEM), name)
			}
			got, err := Unwrap(priv, info.Bytes(), w)
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("Unwrap = %x, %v", got, err)
			}
			// The wire and text encodings round-trip.
			bin, _ := w.MarshalBinary()
			w2, err := ParseWrapped(bin)
			if err != nil {
				t.Fatal(err)
			}
			js, _ := json.Marshal(struct{ K Wrapped }{w})
			var w3 struct{ K Wrapped }
			if err := json.Unmarshal(js, &w3); err != nil {
				t.Fatal(err)
			}
			for _, ww := range []Wrapped{w2, w3.K} {
				if got, err := Unwrap(priv, info.Bytes(), ww); err != nil || !bytes.Equal(got, secret) {
					t.Fatalf("Unwrap after decoding = %x, %v", got, err)
				}
			}

			otherKEM := "x25519"
			if name == otherKEM {
				otherKEM = "mlkem768x25519"
			}
			k2, _ := KEMByName(otherKEM)
			wrongSuite, _ := k2.GenerateKey()
			flipped := func(b []byte, i int) []byte { c := bytes.Clone(b); c[i] ^= 1; return c }
			refusals := []struct {
				name string
				priv hpke.PrivateKey
				info WrapInfo
				w    Wrapped
			}{
				{"wrong recipient", other, info, w},
				{"wrong KEM", wrongSuite, info, w},
				{"wrong purpose", priv, WrapInfo{"code-key", info.KeyID, info.Recipient}, w},
				{"wrong key id", priv, WrapInfo{info.Purpose, "0102030405060709", info.Recipient}, w},
				{"wrong recipient id", priv, WrapInfo{info.Purpose, info.KeyID, "node-2"}, w},
				{"changed ciphertext", priv, info, Wrapped{w.KEM, w.KDF, w.AEAD, w.Enc, flipped(w.Ciphertext, 0)}},
				{"changed encapsulated key", priv, info, Wrapped{w.KEM, w.KDF, w.AEAD, flipped(w.Enc, 5), w.Ciphertext}},
			}
			for _, tc := range refusals {
				got, err := Unwrap(tc.priv, tc.info.Bytes(), tc.w)
				r, ok := err.(*attest.Refusal)
				if !ok || r.RefusedBy() != "seal.unwrap" || got != nil {
					t.Errorf("%s: Unwrap = %x, %v; want a seal.unwrap refusal", tc.name, got, err)
				}
			}
		})
	}
}

func TestWrapRefusesBadInput(t *testing.T) {
	kem, _ := KEMByName("x25519")
	priv, _ := kem.GenerateKey()
	info := WrapInfo{"p", "k", "r"}.Bytes()
	if _, err := Wrap(priv.PublicKey(), nil, make([]byte, 32)); err == nil {
		t.Error("Wrap accepted empty info")
	}
	if _, err := Wrap(priv.PublicKey(), info, nil); err == nil {
		t.Error("Wrap accepted an empty secret")
	}
	if _, err := Wrap(priv.PublicKey(), info, make([]byte, MaxWrappedSecret+1)); err == nil {
		t.Error("Wrap accepted an oversized secret")
	}
	p256, _ := hpke.DHKEM(ecdhP256()).GenerateKey()
	if _, err := Wrap(p256.PublicKey(), info, make([]byte, 32)); err == nil {
		t.Error("Wrap accepted a P-256 recipient")
	}
	if _, err := KEMByName("rsa"); err == nil {
		t.Error("KEMByName accepted rsa")
	}
	// WrapInfo fields are length-prefixed: moving a byte between fields changes the info.
	if bytes.Equal(WrapInfo{"ab", "c", ""}.Bytes(), WrapInfo{"a", "bc", ""}.Bytes()) {
		t.Error("WrapInfo encodings collide")
	}
}

func TestParseWrappedRejects(t *testing.T) {
	kem, _ := KEMByName("x25519")
	priv, _ := kem.GenerateKey()
	w, _ := Wrap(priv.PublicKey(), []byte("info"), make([]byte, 32))
	good, _ := w.MarshalBinary()
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	tests := map[string][]byte{
		"empty":              nil,
		"short":              good[:8],
		"version":            mod(func(b []byte) []byte { b[0] = 2; return b }),
		"unknown KEM":        mod(func(b []byte) []byte { b[2] = 0x10; return b }),
		"other KDF":          mod(func(b []byte) []byte { b[4] = 2; return b }),
		"other AEAD":         mod(func(b []byte) []byte { b[6] = 3; return b }),
		"enc length":         mod(func(b []byte) []byte { b[8]--; return b }),
		"truncated":          good[:len(good)-1],
		"trailing":           append(bytes.Clone(good), 0),
		"no ciphertext":      mod(func(b []byte) []byte { b = b[:9+32]; return append(b, 0, 0) }),
		"oversized":          make([]byte, maxWrappedWire+1),
		"enc length too big": mod(func(b []byte) []byte { b[7] = 0xff; return b }),
	}
	for name, b := range tests {
		if _, err := ParseWrapped(b); err == nil {
			t.Errorf("%s: ParseWrapped accepted %x", name, b)
		}
	}
	var w2 Wrapped
	if err := w2.UnmarshalText([]byte("!!")); err == nil {
		t.Error("UnmarshalText accepted non-base64")
	}
}

func FuzzParseWrapped(f *testing.F) {
	for _, name := range []string{"x25519", "mlkem768x25519"} {
		kem, _ := KEMByName(name)
		priv, _ := kem.GenerateKey()
		w, _ := Wrap(priv.PublicKey(), []byte("info"), make([]byte, 32))
		b, _ := w.MarshalBinary()
		f.Add(b)
	}
	f.Add([]byte{1, 0, 0x20, 0, 1, 0, 2, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		w, err := ParseWrapped(b)
		if err != nil {
			return
		}
		again, err := w.MarshalBinary()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("parsed %x re-encodes to %x, %v", b, again, err)
		}
	})
}

func ecdhP256() ecdh.Curve { return ecdh.P256() }
