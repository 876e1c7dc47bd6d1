package party

import (
	"container/heap"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/sealflow/sealflow/attest"
)

// Statement is a signed governance action: what (Type and Body), who (Issuer),
// when (IssuedAt, Expires) and a random Nonce that makes it unique, so that a
// ReplayGuard can refuse it the second time.
type Statement struct {
	// Type names the action ("stream.register", "service.approve", ...).
	Type string `json:"type"`
	// Issuer is the ID of the party that signed the statement.
	Issuer ID `json:"issuer"`
	// Nonce is 16 random bytes.
	Nonce []byte `json:"nonce"`
	// IssuedAt and Expires bound the statement's validity.
	IssuedAt time.Time `json:"issued_at"`
	Expires  time.Time `json:"expires"`
	// Body is the action's arguments, a JSON value defined by Type.
	Body json.RawMessage `json:"body,omitempty"`
}

// Limits and defaults of statements.
const (
	// NonceSize is the size of a statement's nonce.
	NonceSize = 16
	// MaxStatement is the largest signed statement Verify reads, in bytes.
	MaxStatement = 256 << 10
	// MaxType is the longest statement type, in bytes.
	MaxType = 64
	// DefaultMaxLifetime is the longest validity (Expires - IssuedAt) Verify
	// accepts by default.
	DefaultMaxLifetime = 24 * time.Hour
	// DefaultSkew is how far in the future IssuedAt may be, by default, to
	// tolerate clocks that disagree.
	DefaultSkew = time.Minute
	// DefaultReplayCapacity is how many unexpired statements a ReplayGuard
	// remembers by default.
	DefaultReplayCapacity = 1 << 20
)

// The signed form of a statement is
//
//	magic "SFST" | version u8 (1) | issuer (32 bytes) | payload length u32 |
//	payload (the statement as JSON) | Ed25519 signature (64 bytes)
//
// where the signature is over signDomain followed by every byte before it. A
// verifier parses the payload only after the signature holds, and the payload
// it parses is exactly the bytes that were signed.
const (
	signMagic   = "SFST"
	signVersion = 1
	signDomain  = "sealflow signed statement v1\x00"
	envPrefix   = len(signMagic) + 1 + 32 + 4
)

// Rules that refuse statements, as named by attest.Refusal.Rule.
const (
	RuleMalformed      = "statement.malformed"
	RuleUnknownParty   = "statement.unknown-party"
	RuleSignature      = "statement.signature"
	RuleExpired        = "statement.expired"
	RuleNotYetValid    = "statement.not-yet-valid"
	RuleTooLongLived   = "statement.too-long-lived"
	RuleReplayed       = "statement.replayed"
	RuleReplayCapacity = "statement.replay-capacity"
)

func refuse(rule, format string, args ...any) error {
	return &attest.Refusal{Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

func checkType(t string) error {
	if len(t) == 0 || len(t) > MaxType {
		return fmt.Errorf("statement type %q must be 1 to %d bytes", t, MaxType)
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_' || c == '/') {
			return fmt.Errorf("statement type %q: byte %q is not one of a-z 0-9 . - _ /", t, c)
		}
	}
	return nil
}

// Sign returns a statement of type typ with body (marshalled as JSON; a
// json.RawMessage is taken as is), issued by kf at now and valid for ttl,
// signed by kf.
func Sign(kf *KeyFile, typ string, body any, ttl time.Duration, now time.Time) ([]byte, error) {
	if err := checkType(typ); err != nil {
		return nil, fmt.Errorf("party: sign: %w", err)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("party: sign %s: ttl %v must be positive", typ, ttl)
	}
	st := Statement{Type: typ, Issuer: kf.ID(), Nonce: make([]byte, NonceSize),
		IssuedAt: now.UTC().Truncate(time.Millisecond)}
	st.Expires = st.IssuedAt.Add(ttl)
	rand.Read(st.Nonce)
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("party: sign %s: body: %w", typ, err)
		}
		st.Body = b
	}
	payload, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("party: sign %s: %w", typ, err)
	}
	return signPayload(kf, payload)
}

// signPayload wraps payload in the signed form.
func signPayload(kf *KeyFile, payload []byte) ([]byte, error) {
	if len(payload) > MaxStatement-envPrefix-ed25519.SignatureSize {
		return nil, fmt.Errorf("party: sign: statement of %d bytes exceeds the maximum %d", len(payload), MaxStatement-envPrefix-ed25519.SignatureSize)
	}
	issuer, _ := hex.DecodeString(string(kf.ID()))
	b := make([]byte, 0, envPrefix+len(payload)+ed25519.SignatureSize)
	b = append(b, signMagic...)
	b = append(b, signVersion)
	b = append(b, issuer...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = append(b, payload...)
	sig := ed25519.Sign(kf.signing, append([]byte(signDomain), b...))
	return append(b, sig...), nil
}

// Verifier verifies signed statements with configurable limits; the zero value
// uses DefaultMaxLifetime and DefaultSkew.
type Verifier struct {
	// MaxLifetime is the longest Expires - IssuedAt accepted.
	MaxLifetime time.Duration
	// Skew is how far IssuedAt may lie after now.
	Skew time.Duration
}

// Verify is Verifier{}.Verify.
func Verify(signed []byte, lookup func(ID) (*Identity, error), now time.Time) (*Statement, error) {
	return Verifier{}.Verify(signed, lookup, now)
}

// Verify checks a signed statement at time now and returns it. lookup returns
// the identity of an issuer (an error or nil when unknown). Refusals are
// *attest.Refusal naming one of the rules statement.malformed,
// statement.unknown-party, statement.signature, statement.expired,
// statement.not-yet-valid and statement.too-long-lived. Verify does not
// detect replays: pass the statement to a ReplayGuard.
func (v Verifier) Verify(signed []byte, lookup func(ID) (*Identity, error), now time.Time) (*Statement, error) {
	maxLife, skew := v.MaxLifetime, v.Skew
	if maxLife == 0 {
		maxLife = DefaultMaxLifetime
	}
	if skew == 0 {
		skew = DefaultSkew
	}
	issuer, payload, err := splitEnvelope(signed)
	if err != nil {
		return nil, err
	}
	if lookup == nil {
		return nil, refuse(RuleUnknownParty, "no party lookup to find issuer %s", issuer.Short())
	}
	id, err := lookup(issuer)
	if err != nil || id == nil {
		return nil, refuse(RuleUnknownParty, "issuer %s is not a known party: %v", issuer.Short(), err)
	}
	if len(id.SigningKey) != ed25519.PublicKeySize || id.ID() != issuer {
		return nil, refuse(RuleUnknownParty, "the identity found for issuer %s has another signing key (id %s)", issuer.Short(), IDOf(id.SigningKey).Short())
	}
	body := signed[:len(signed)-ed25519.SignatureSize]
	sig := signed[len(body):]
	msg := make([]byte, 0, len(signDomain)+len(body))
	msg = append(append(msg, signDomain...), body...)
	if !ed25519.Verify(ed25519.PublicKey(id.SigningKey), msg, sig) {
		return nil, refuse(RuleSignature, "the signature is not %s's (%s %q) over this statement", issuer.Short(), id.Role, id.Name)
	}

	// Only now that the issuer vouches for the bytes, parse them.
	var st Statement
	if err := decodeStrict(payload, MaxStatement, &st); err != nil {
		return nil, refuse(RuleMalformed, "statement by %s does not parse: %v", issuer.Short(), err)
	}
	switch {
	case st.Issuer != issuer:
		return nil, refuse(RuleMalformed, "statement names issuer %s but is signed by %s", st.Issuer.Short(), issuer.Short())
	case checkType(st.Type) != nil:
		return nil, refuse(RuleMalformed, "%v", checkType(st.Type))
	case len(st.Nonce) != NonceSize:
		return nil, refuse(RuleMalformed, "statement %s by %s: nonce of %d bytes, want %d", st.Type, issuer.Short(), len(st.Nonce), NonceSize)
	case !st.Expires.After(st.IssuedAt):
		return nil, refuse(RuleMalformed, "statement %s by %s expires (%s) before it is issued (%s)", st.Type, issuer.Short(), st.Expires.Format(time.RFC3339), st.IssuedAt.Format(time.RFC3339))
	case st.Expires.Sub(st.IssuedAt) > maxLife:
		return nil, refuse(RuleTooLongLived, "statement %s by %s is valid for %v, longer than the maximum %v", st.Type, issuer.Short(), st.Expires.Sub(st.IssuedAt), maxLife)
	case st.IssuedAt.After(now.Add(skew)):
		return nil, refuse(RuleNotYetValid, "statement %s by %s is issued at %s, after now (%s) plus %v of clock skew", st.Type, issuer.Short(), st.IssuedAt.Format(time.RFC3339), now.UTC().Format(time.RFC3339), skew)
	case !now.Before(st.Expires):
		return nil, refuse(RuleExpired, "statement %s by %s expired at %s (now %s)", st.Type, issuer.Short(), st.Expires.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return &st, nil
}

// PeekUnverified parses a signed statement's envelope and payload strictly
// WITHOUT checking the signature or the times. It exists for self-certifying
// statements (a registration carries the identity whose key signs it): use the
// result only to choose the candidate identity for Verify of the same bytes,
// and trust nothing in it before Verify accepts them.
func PeekUnverified(signed []byte) (*Statement, error) {
	issuer, payload, err := splitEnvelope(signed)
	if err != nil {
		return nil, err
	}
	var st Statement
	if err := decodeStrict(payload, MaxStatement, &st); err != nil {
		return nil, refuse(RuleMalformed, "statement does not parse: %v", err)
	}
	if st.Issuer != issuer {
		return nil, refuse(RuleMalformed, "statement names issuer %s but its envelope names %s", st.Issuer.Short(), issuer.Short())
	}
	return &st, nil
}

// splitEnvelope checks the signed form's envelope and returns the issuer named
// in it and the payload.
func splitEnvelope(signed []byte) (ID, []byte, error) {
	if len(signed) > MaxStatement {
		return "", nil, refuse(RuleMalformed, "signed statement of %d bytes exceeds the maximum %d", len(signed), MaxStatement)
	}
	if len(signed) < envPrefix+ed25519.SignatureSize {
		return "", nil, refuse(RuleMalformed, "signed statement of %d bytes is shorter than its envelope", len(signed))
	}
	if string(signed[:4]) != signMagic || signed[4] != signVersion {
		return "", nil, refuse(RuleMalformed, "not a signed statement of version %d (magic %q, version %d)", signVersion, signed[:4], signed[4])
	}
	n := binary.BigEndian.Uint32(signed[37:41])
	if uint64(n) != uint64(len(signed)-envPrefix-ed25519.SignatureSize) {
		return "", nil, refuse(RuleMalformed, "payload length %d, but %d bytes lie between envelope and signature", n, len(signed)-envPrefix-ed25519.SignatureSize)
	}
	return ID(hex.EncodeToString(signed[5:37])), signed[envPrefix : len(signed)-ed25519.SignatureSize], nil
}

// ReplayGuard refuses a statement it has seen before. It remembers each
// statement's (issuer, nonce) until the statement expires, and no more than a
// fixed number at once, so its memory is bounded. It reads no clock: callers
// pass the time, and time never runs backwards for it (it uses the latest
// time it was given). A ReplayGuard is safe for concurrent use.
type ReplayGuard struct {
	mu   sync.Mutex
	max  int
	now  time.Time
	seen map[string]struct{}
	exp  expiryHeap
}

// NewReplayGuard returns a guard that remembers at most max unexpired
// statements (DefaultReplayCapacity when max <= 0); beyond that it refuses new
// ones (rule statement.replay-capacity) until some expire.
func NewReplayGuard(max int) *ReplayGuard {
	if max <= 0 {
		max = DefaultReplayCapacity
	}
	return &ReplayGuard{max: max, seen: map[string]struct{}{}}
}

// Check records st as seen at time now, or refuses it: statement.replayed if it
// was seen before, statement.expired if it has expired (it could no longer be
// told apart from a replay), statement.replay-capacity if the guard is full.
func (g *ReplayGuard) Check(st *Statement, now time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.After(g.now) {
		g.now = now
	}
	for len(g.exp) > 0 && !g.now.Before(g.exp[0].expires) {
		e := heap.Pop(&g.exp).(expiry)
		delete(g.seen, e.key)
	}
	if !g.now.Before(st.Expires) {
		return refuse(RuleExpired, "statement %s by %s expired at %s", st.Type, st.Issuer.Short(), st.Expires.Format(time.RFC3339))
	}
	key := string(st.Issuer) + "\x00" + string(st.Nonce)
	if _, ok := g.seen[key]; ok {
		return refuse(RuleReplayed, "statement %s by %s with nonce %x was seen before", st.Type, st.Issuer.Short(), st.Nonce)
	}
	if len(g.seen) >= g.max {
		return refuse(RuleReplayCapacity, "the replay guard holds %d unexpired statements, its maximum; retry when some expire", len(g.seen))
	}
	g.seen[key] = struct{}{}
	heap.Push(&g.exp, expiry{st.Expires, key})
	return nil
}

// Len returns how many statements the guard remembers.
func (g *ReplayGuard) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.seen)
}

type expiry struct {
	expires time.Time
	key     string
}

// expiryHeap is a min-heap of expiries (container/heap).
type expiryHeap []expiry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires.Before(h[j].expires) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// Directory is a set of known identities by ID; its Lookup method serves as
// Verify's lookup.
type Directory map[ID]*Identity

// Add adds identities to the directory.
func (d Directory) Add(ids ...*Identity) {
	for _, id := range ids {
		d[id.ID()] = id
	}
}

// Lookup returns the identity of id, or an error when it is not in d.
func (d Directory) Lookup(id ID) (*Identity, error) {
	if i, ok := d[id]; ok {
		return i, nil
	}
	return nil, fmt.Errorf("party %s is not in the directory", id.Short())
}
