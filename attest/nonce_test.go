package attest

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"
)

// ruleOf returns the rule of a refusal, "" for nil, and "not-a-refusal" for
// other errors.
func ruleOf(err error) string {
	if err == nil {
		return ""
	}
	var r interface{ RefusedBy() string }
	if errors.As(err, &r) {
		return r.RefusedBy()
	}
	return "not-a-refusal"
}

func TestNoncesConsume(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 23, 0, 0, 0, time.UTC)
	const ttl = time.Minute
	type attempt struct {
		at   time.Duration // after issue
		rule string        // "" for accepted
	}
	tests := []struct {
		name     string
		mutate   func(nonce []byte) []byte // what the caller presents
		attempts []attempt
	}{
		{"fresh accepted once", nil, []attempt{{0, ""}}},
		{"accepted just before expiry", nil, []attempt{{ttl - time.Nanosecond, ""}}},
		{"replayed", nil, []attempt{{time.Second, ""}, {2 * time.Second, RuleNonceReplayed}}},
		{"replayed after expiry", nil, []attempt{{time.Second, ""}, {ttl + time.Second, RuleNonceReplayed}}},
		{"expired at ttl", nil, []attempt{{ttl, RuleNonceExpired}}},
		{"stale", nil, []attempt{{ttl + 30*time.Second, RuleNonceExpired}}},
		{"still expired when retried", nil, []attempt{{ttl, RuleNonceExpired}, {ttl + time.Second, RuleNonceExpired}}},
		{"forgotten long after expiry", nil, []attempt{{2*ttl + time.Second, RuleNonceUnknown}}},
		{"unknown", func(n []byte) []byte {
			o := bytes.Clone(n)
			o[0] ^= 1
			return o
		}, []attempt{{0, RuleNonceUnknown}}},
		{"truncated", func(n []byte) []byte { return n[:31] }, []attempt{{0, RuleNonceUnknown}}},
		{"empty", func([]byte) []byte { return nil }, []attempt{{0, RuleNonceUnknown}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ns := NewNonces(ttl, 0)
			nonce := ns.Issue(t0)
			if len(nonce) != NonceSize {
				t.Fatalf("nonce is %d bytes, want %d", len(nonce), NonceSize)
			}
			present := nonce
			if tc.mutate != nil {
				present = tc.mutate(nonce)
			}
			for i, a := range tc.attempts {
				err := ns.Consume(present, t0.Add(a.at))
				if got := ruleOf(err); got != a.rule {
					t.Fatalf("attempt %d at +%s: rule %q (%v), want %q", i, a.at, got, err, a.rule)
				}
			}
		})
	}
}

func TestNoncesDistinct(t *testing.T) {
	ns := NewNonces(time.Minute, 0)
	now := time.Unix(0, 0)
	seen := map[string]bool{}
	for range 1000 {
		n := string(ns.Issue(now))
		if seen[n] {
			t.Fatalf("nonce %x issued twice", n)
		}
		seen[n] = true
	}
}

func TestNoncesBoundedMemory(t *testing.T) {
	const ttl = time.Second
	t.Run("expired are dropped", func(t *testing.T) {
		ns := NewNonces(ttl, 0)
		now := time.Unix(1000, 0)
		// One nonce every 10ms for 100 TTLs: at most 2 TTLs' worth (200)
		// may be remembered at any time.
		for i := range 10000 {
			ns.Issue(now.Add(time.Duration(i) * 10 * time.Millisecond))
			if l := ns.Len(); l > 201 {
				t.Fatalf("after %d issues %d nonces remembered, want at most 201", i+1, l)
			}
		}
	})
	t.Run("limit drops the oldest", func(t *testing.T) {
		ns := NewNonces(time.Hour, 10)
		now := time.Unix(1000, 0)
		first := ns.Issue(now)
		var last []byte
		for range 10 {
			last = ns.Issue(now)
		}
		if l := ns.Len(); l != 10 {
			t.Fatalf("%d nonces remembered, want the limit 10", l)
		}
		if got := ruleOf(ns.Consume(first, now)); got != RuleNonceUnknown {
			t.Fatalf("oldest nonce beyond the limit: rule %q, want %q", got, RuleNonceUnknown)
		}
		if err := ns.Consume(last, now); err != nil {
			t.Fatalf("newest nonce refused: %v", err)
		}
	})
}

// TestNoncesConcurrent races many consumers over the same nonces: each nonce
// must be accepted exactly once. Run with -race.
func TestNoncesConcurrent(t *testing.T) {
	ns := NewNonces(time.Minute, 0)
	now := time.Unix(1000, 0)
	nonces := make([][]byte, 200)
	for i := range nonces {
		nonces[i] = ns.Issue(now)
	}
	accepted := make([]int, len(nonces))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i, n := range nonces {
				ns.Issue(now) // concurrent issues too
				if ns.Consume(n, now.Add(time.Second)) == nil {
					mu.Lock()
					accepted[i]++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	for i, c := range accepted {
		if c != 1 {
			t.Errorf("nonce %d accepted %d times, want exactly once", i, c)
		}
	}
}
