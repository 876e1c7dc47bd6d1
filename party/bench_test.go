package party

import (
	"testing"
	"time"
)

func BenchmarkSign(b *testing.B) {
	kf, _ := Generate(RoleOwner, "o", nil)
	body := map[string]string{"stream": "meters", "policy": "service.provider == 'grid'"}
	for b.Loop() {
		if _, err := Sign(kf, "stream.register", body, time.Hour, t0); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	kf, _ := Generate(RoleOwner, "o", nil)
	dir := Directory{}
	dir.Add(kf.Identity())
	signed, _ := Sign(kf, "stream.register", map[string]string{"stream": "meters"}, time.Hour, t0)
	for b.Loop() {
		if _, err := Verify(signed, dir.Lookup, t0); err != nil {
			b.Fatal(err)
		}
	}
}
