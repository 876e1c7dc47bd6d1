package attest

import (
	"crypto/rand"
	"sync"
	"time"
)

// NonceSize is the length in bytes of the nonces Nonces issues.
const NonceSize = 32

// DefaultNonceLimit is the number of nonces a Nonces remembers when
// NewNonces is given no limit.
const DefaultNonceLimit = 1 << 16

// Nonces issues fresh verifier nonces and accepts each of them exactly once
// within a time to live: the freshness half of attestation (the evidence binds
// the nonce through BindReportData, and the verifier consumes the nonce before
// it trusts the evidence).
//
// Nonces is pure with respect to time: the caller passes the current time to
// every call, so tests and replays control it. Memory is bounded: a nonce is
// forgotten one TTL after it expired, and when more than the limit are
// remembered, the oldest are forgotten first (a forgotten nonce is refused as
// unknown). It is safe for concurrent use.
type Nonces struct {
	ttl   time.Duration
	limit int

	mu    sync.Mutex
	byKey map[[NonceSize]byte]*nonceEntry
	queue []*nonceEntry // in issue order; queue[head:] are live entries
	head  int
}

type nonceEntry struct {
	key      [NonceSize]byte
	expires  time.Time // refused as expired from this instant on
	forget   time.Time // dropped from memory from this instant on
	consumed bool
}

// NewNonces returns a Nonces whose nonces are valid for ttl after their issue.
// limit bounds how many nonces it remembers (DefaultNonceLimit when limit <= 0).
// It panics if ttl is not positive, a programming error.
func NewNonces(ttl time.Duration, limit int) *Nonces {
	if ttl <= 0 {
		panic("attest: NewNonces: ttl must be positive")
	}
	if limit <= 0 {
		limit = DefaultNonceLimit
	}
	return &Nonces{ttl: ttl, limit: limit, byKey: make(map[[NonceSize]byte]*nonceEntry)}
}

// TTL returns how long an issued nonce stays valid.
func (n *Nonces) TTL() time.Duration { return n.ttl }

// Issue returns a fresh random nonce of NonceSize bytes, valid until now+TTL.
func (n *Nonces) Issue(now time.Time) []byte {
	e := &nonceEntry{expires: now.Add(n.ttl), forget: now.Add(n.ttl).Add(n.ttl)}
	rand.Read(e.key[:]) // crypto/rand.Read never fails (it crashes the program instead)

	n.mu.Lock()
	defer n.mu.Unlock()
	n.pruneLocked(now)
	for len(n.byKey) >= n.limit {
		n.dropOldestLocked()
	}
	n.byKey[e.key] = e
	n.queue = append(n.queue, e)
	return e.key[:]
}

// Consume accepts nonce once: it returns nil the first time a nonce issued by
// n is presented before it expired, and otherwise a *Refusal naming
// RuleNonceReplayed (already consumed), RuleNonceExpired (presented at or after
// its expiry) or RuleNonceUnknown (never issued by n, of the wrong size, or
// already forgotten).
func (n *Nonces) Consume(nonce []byte, now time.Time) error {
	if len(nonce) != NonceSize {
		return refuse(RuleNonceUnknown, "nonce is %d bytes, want %d: it was not issued by this verifier", len(nonce), NonceSize)
	}
	var k [NonceSize]byte
	copy(k[:], nonce)

	n.mu.Lock()
	defer n.mu.Unlock()
	n.pruneLocked(now)
	e, ok := n.byKey[k]
	switch {
	case !ok:
		return refuse(RuleNonceUnknown, "nonce %x was not issued by this verifier or was forgotten; ask for a fresh nonce", nonce[:8])
	case e.consumed:
		return refuse(RuleNonceReplayed, "nonce %x was already used; evidence must bind a fresh nonce", nonce[:8])
	case !now.Before(e.expires):
		return refuse(RuleNonceExpired, "nonce %x expired at %s (now %s, ttl %s); ask for a fresh nonce",
			nonce[:8], e.expires.UTC().Format(time.RFC3339Nano), now.UTC().Format(time.RFC3339Nano), n.ttl)
	}
	e.consumed = true
	return nil
}

// Len returns the number of nonces n currently remembers (outstanding,
// consumed or expired but not yet forgotten).
func (n *Nonces) Len() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.byKey)
}

// pruneLocked forgets the entries at the front of the issue queue whose
// forget time has come. Entries behind a younger front entry wait for it (time
// passed by callers may go backwards); the limit still bounds memory.
func (n *Nonces) pruneLocked(now time.Time) {
	for n.head < len(n.queue) {
		if now.Before(n.queue[n.head].forget) {
			break
		}
		n.dropOldestLocked()
	}
}

// dropOldestLocked forgets the oldest remembered entry and compacts the queue
// when most of it is spent.
func (n *Nonces) dropOldestLocked() {
	if n.head == len(n.queue) {
		return
	}
	delete(n.byKey, n.queue[n.head].key)
	n.queue[n.head] = nil
	n.head++
	if n.head > 32 && n.head*2 > len(n.queue) {
		live := copy(n.queue, n.queue[n.head:])
		clear(n.queue[live:])
		n.queue = n.queue[:live]
		n.head = 0
	}
}
