package seal

import (
	"fmt"
	"testing"
)

var benchSizes = []int{4 << 10, 64 << 10}

// BenchmarkCopy is the baseline: copying the same bytes into a reused buffer.
func BenchmarkCopy(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("%dKiB", n>>10), func(b *testing.B) {
			body := make([]byte, n)
			dst := make([]byte, 0, n+256)
			b.SetBytes(int64(n))
			for b.Loop() {
				dst = append(dst[:0], body...)
			}
		})
	}
}

func benchSealer(b *testing.B, plaintext bool) (*Sealer, *Opener) {
	keys := NewKeyring()
	keys.Generate("bench", 1)
	var so []SealerOption
	var oo []OpenerOption
	if plaintext {
		so, oo = append(so, WithPlaintext()), append(oo, AcceptPlaintext())
	}
	s, err := NewSealer(keys, KindExchange, "bench", 0, so...)
	if err != nil {
		b.Fatal(err)
	}
	o, err := NewOpener(keys, KindExchange, []string{"bench"}, oo...)
	if err != nil {
		b.Fatal(err)
	}
	return s, o
}

func BenchmarkSeal(b *testing.B) {
	for _, mode := range []string{"sealed", "plaintext"} {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%s/%dKiB", mode, n>>10), func(b *testing.B) {
				s, _ := benchSealer(b, mode == "plaintext")
				body := make([]byte, n)
				dst := make([]byte, 0, n+256)
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					var err error
					if dst, err = s.Seal(dst[:0], body, 0, 0); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	for _, mode := range []string{"sealed", "plaintext"} {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%s/%dKiB", mode, n>>10), func(b *testing.B) {
				s, o := benchSealer(b, mode == "plaintext")
				frame, _ := s.Seal(nil, make([]byte, n), 0, 0)
				dst := make([]byte, 0, n)
				if _, _, err := o.Open(nil, frame); err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					// Reopen the same frame: rewind the partition so it is not a replay.
					o.scopes["bench"].parts[0].next = 0
					var err error
					if _, dst, err = o.Open(dst[:0], frame); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkWrap(b *testing.B) {
	for _, name := range []string{"x25519", "mlkem768x25519"} {
		kem, _ := KEMByName(name)
		priv, _ := kem.GenerateKey()
		info := WrapInfo{"stream-key", "k", "r"}.Bytes()
		secret := make([]byte, KeySize)
		w, _ := Wrap(priv.PublicKey(), info, secret)
		b.Run("wrap/"+name, func(b *testing.B) {
			for b.Loop() {
				Wrap(priv.PublicKey(), info, secret)
			}
		})
		b.Run("unwrap/"+name, func(b *testing.B) {
			for b.Loop() {
				if _, err := Unwrap(priv, info, w); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
