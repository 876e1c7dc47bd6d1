package party

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/sealflow/sealflow/attest"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// signRaw signs an arbitrary payload as kf, with issuer written in the envelope.
func signRaw(t testing.TB, kf *KeyFile, issuer ID, payload []byte) []byte {
	t.Helper()
	raw, _ := hex.DecodeString(string(issuer))
	b := append([]byte(signMagic), signVersion)
	b = append(b, raw...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = append(b, payload...)
	sig := ed25519.Sign(kf.SigningKey(), append([]byte(signDomain), b...))
	return append(b, sig...)
}

func payloadOf(t testing.TB, kf *KeyFile, mutate func(m map[string]any)) []byte {
	t.Helper()
	signed, err := Sign(kf, "stream.register", map[string]string{"stream": "meters"}, time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	payload := signed[envPrefix : len(signed)-64]
	if mutate == nil {
		return payload
	}
	var m map[string]any
	if err := json.Unmarshal(payload, &m); err != nil {
		t.Fatal(err)
	}
	mutate(m)
	b, _ := json.Marshal(m)
	return b
}

func TestVerify(t *testing.T) {
	alice, _ := Generate(RoleOwner, "alice", nil)
	mallory, _ := Generate(RoleOwner, "mallory", nil)
	dir := Directory{}
	dir.Add(alice.Identity())
	good, err := Sign(alice, "stream.register", map[string]string{"stream": "meters"}, time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte { c := bytes.Clone(good); c[i] ^= 1; return c }
	long, _ := Sign(alice, "stream.register", nil, 25*time.Hour, t0)
	impostor := func(ID) (*Identity, error) { return mallory.Identity(), nil }

	tests := []struct {
		name   string
		signed []byte
		lookup func(ID) (*Identity, error)
		now    time.Time
		rule   string // "" when the statement must verify
	}{
		{"valid", good, dir.Lookup, t0, ""},
		{"valid until just before expiry", good, dir.Lookup, t0.Add(time.Hour - time.Nanosecond), ""},
		{"valid within clock skew", good, dir.Lookup, t0.Add(-30 * time.Second), ""},
		{"expired", good, dir.Lookup, t0.Add(time.Hour), RuleExpired},
		{"not yet valid", good, dir.Lookup, t0.Add(-2 * time.Minute), RuleNotYetValid},
		{"too long lived", long, dir.Lookup, t0, RuleTooLongLived},
		{"unknown party", good, Directory{}.Lookup, t0, RuleUnknownParty},
		{"lookup returns another identity", good, impostor, t0, RuleUnknownParty},
		{"no lookup", good, nil, t0, RuleUnknownParty},
		{"flipped payload byte", flip(envPrefix + 10), dir.Lookup, t0, RuleSignature},
		{"flipped signature byte", flip(len(good) - 1), dir.Lookup, t0, RuleSignature},
		{"signed by another party under alice's id", signRaw(t, mallory, alice.ID(), payloadOf(t, alice, nil)), dir.Lookup, t0, RuleSignature},
		{"issuer in payload differs", signRaw(t, mallory, mallory.ID(), payloadOf(t, alice, nil)), Directory{mallory.ID(): mallory.Identity()}.Lookup, t0, RuleMalformed},
		{"payload not JSON", signRaw(t, alice, alice.ID(), []byte("not json")), dir.Lookup, t0, RuleMalformed},
		{"unknown field", signRaw(t, alice, alice.ID(), payloadOf(t, alice, func(m map[string]any) { m["admin"] = true })), dir.Lookup, t0, RuleMalformed},
		{"trailing data", signRaw(t, alice, alice.ID(), append(payloadOf(t, alice, nil), "{}"...)), dir.Lookup, t0, RuleMalformed},
		{"duplicate key", signRaw(t, alice, alice.ID(), bytes.Replace(payloadOf(t, alice, nil), []byte(`{"type":"stream.register"`), []byte(`{"type":"stream.register","type":"stream.delete"`), 1)), dir.Lookup, t0, RuleMalformed},
		{"short nonce", signRaw(t, alice, alice.ID(), payloadOf(t, alice, func(m map[string]any) { m["nonce"] = "AAAA" })), dir.Lookup, t0, RuleMalformed},
		{"bad type", signRaw(t, alice, alice.ID(), payloadOf(t, alice, func(m map[string]any) { m["type"] = "Stream Register" })), dir.Lookup, t0, RuleMalformed},
		{"expires before issued", signRaw(t, alice, alice.ID(), payloadOf(t, alice, func(m map[string]any) { m["expires"] = t0.Add(-time.Second) })), dir.Lookup, t0, RuleMalformed},
		{"truncated", good[:len(good)-1], dir.Lookup, t0, RuleMalformed},
		{"trailing byte", append(bytes.Clone(good), 0), dir.Lookup, t0, RuleMalformed},
		{"bad magic", flip(0), dir.Lookup, t0, RuleMalformed},
		{"bad version", flip(4), dir.Lookup, t0, RuleMalformed},
		{"empty", nil, dir.Lookup, t0, RuleMalformed},
		{"oversized", make([]byte, MaxStatement+1), dir.Lookup, t0, RuleMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, err := Verify(tc.signed, tc.lookup, tc.now)
			if tc.rule == "" {
				if err != nil {
					t.Fatal(err)
				}
				if st.Type != "stream.register" || st.Issuer != alice.ID() || string(st.Body) != `{"stream":"meters"}` ||
					!st.IssuedAt.Equal(t0) || !st.Expires.Equal(t0.Add(time.Hour)) || len(st.Nonce) != NonceSize {
					t.Fatalf("verified statement %+v", st)
				}
				return
			}
			var r *attest.Refusal
			if !errors.As(err, &r) || r.RefusedBy() != tc.rule || st != nil {
				t.Fatalf("Verify = %v, %v; want refusal by %s", st, err, tc.rule)
			}
		})
	}
}

func TestVerifierLimits(t *testing.T) {
	alice, _ := Generate(RoleOwner, "alice", nil)
	dir := Directory{}
	dir.Add(alice.Identity())
	signed, _ := Sign(alice, "node.claim", nil, 48*time.Hour, t0)
	if _, err := (Verifier{MaxLifetime: 72 * time.Hour}).Verify(signed, dir.Lookup, t0); err != nil {
		t.Fatalf("72h verifier refused a 48h statement: %v", err)
	}
	if _, err := (Verifier{MaxLifetime: time.Hour}).Verify(signed, dir.Lookup, t0); !isRule(err, RuleTooLongLived) {
		t.Fatalf("1h verifier: %v", err)
	}
	if _, err := (Verifier{Skew: time.Hour}).Verify(signed, dir.Lookup, t0.Add(-59*time.Minute)); isRule(err, RuleNotYetValid) {
		t.Fatalf("1h skew refused a statement 59m early: %v", err)
	}
	if _, err := Sign(alice, "x", nil, 0, t0); err == nil {
		t.Error("Sign accepted a zero ttl")
	}
	if _, err := Sign(alice, "", nil, time.Hour, t0); err == nil {
		t.Error("Sign accepted an empty type")
	}
	if _, err := Sign(alice, "x", func() {}, time.Hour, t0); err == nil {
		t.Error("Sign accepted a body that is not JSON")
	}
}

func isRule(err error, rule string) bool {
	var r *attest.Refusal
	return errors.As(err, &r) && r.RefusedBy() == rule
}

func TestPeekUnverified(t *testing.T) {
	alice, _ := Generate(RoleOwner, "alice", nil)
	mallory, _ := Generate(RoleOwner, "mallory", nil)
	signed, _ := Sign(alice, "party.register", map[string]string{"name": "alice"}, time.Hour, t0)
	st, err := PeekUnverified(signed)
	if err != nil || st.Issuer != alice.ID() || st.Type != "party.register" {
		t.Fatalf("PeekUnverified = %+v, %v", st, err)
	}
	// It does not check signatures: a forged signature still peeks...
	forged := bytes.Clone(signed)
	forged[len(forged)-1] ^= 1
	if _, err := PeekUnverified(forged); err != nil {
		t.Fatalf("PeekUnverified checked the signature: %v", err)
	}
	// ...but it is as strict as Verify about the envelope and the payload.
	bad := [][]byte{nil, signed[:len(signed)-1], signRaw(t, mallory, mallory.ID(), payloadOf(t, alice, nil)),
		signRaw(t, alice, alice.ID(), payloadOf(t, alice, func(m map[string]any) { m["x"] = 1 }))}
	for i, b := range bad {
		if _, err := PeekUnverified(b); !isRule(err, RuleMalformed) {
			t.Errorf("case %d: PeekUnverified = %v, want statement.malformed", i, err)
		}
	}
}

func TestReplayGuard(t *testing.T) {
	alice, _ := Generate(RoleOwner, "alice", nil)
	bob, _ := Generate(RoleOwner, "bob", nil)
	st := func(kf *KeyFile, nonce byte, ttl time.Duration) *Statement {
		return &Statement{Type: "t", Issuer: kf.ID(), Nonce: bytes.Repeat([]byte{nonce}, NonceSize), IssuedAt: t0, Expires: t0.Add(ttl)}
	}
	g := NewReplayGuard(3)
	steps := []struct {
		st   *Statement
		now  time.Time
		rule string
		len  int
	}{
		{st(alice, 1, time.Hour), t0, "", 1},
		{st(alice, 1, time.Hour), t0.Add(time.Minute), RuleReplayed, 1},
		{st(bob, 1, time.Hour), t0, "", 2},     // same nonce, other issuer
		{st(alice, 2, 2*time.Hour), t0, "", 3}, // full now
		{st(alice, 3, time.Hour), t0, RuleReplayCapacity, 3},
		{st(alice, 1, time.Hour), t0.Add(time.Hour), RuleExpired, 1}, // the two 1h entries expire
		{st(alice, 3, 3*time.Hour), t0.Add(time.Hour), "", 2},
		// Time running backwards does not bring expired nonces back.
		{st(alice, 1, time.Hour), t0, RuleExpired, 2},
		{st(alice, 2, 2*time.Hour), t0.Add(time.Hour), RuleReplayed, 2},
		{st(alice, 9, 3*time.Hour), t0.Add(2 * time.Hour), "", 2},
	}
	for i, s := range steps {
		err := g.Check(s.st, s.now)
		if s.rule == "" && err != nil || s.rule != "" && !isRule(err, s.rule) {
			t.Fatalf("step %d: Check = %v, want rule %q", i, err, s.rule)
		}
		if g.Len() != s.len {
			t.Fatalf("step %d: guard holds %d statements, want %d", i, g.Len(), s.len)
		}
	}
}

func TestReplayGuardBoundedMemory(t *testing.T) {
	alice, _ := Generate(RoleOwner, "alice", nil)
	g := NewReplayGuard(100)
	for i := range 10000 {
		now := t0.Add(time.Duration(i) * time.Second)
		n := make([]byte, NonceSize)
		binary.BigEndian.PutUint64(n, uint64(i))
		s := &Statement{Type: "t", Issuer: alice.ID(), Nonce: n, IssuedAt: now, Expires: now.Add(time.Minute)}
		if err := g.Check(s, now); err != nil {
			t.Fatalf("statement %d: %v", i, err)
		}
		if g.Len() > 61 {
			t.Fatalf("after %d statements of 1m lifetime at 1/s the guard holds %d", i, g.Len())
		}
	}
}

func FuzzVerify(f *testing.F) {
	alice, _ := Generate(RoleOwner, "alice", nil)
	dir := Directory{}
	dir.Add(alice.Identity())
	var genuine [][]byte
	for i := range 3 {
		s, _ := Sign(alice, "t", map[string]int{"i": i}, time.Hour, t0)
		genuine = append(genuine, s)
		f.Add(s)
	}
	f.Add([]byte("SFST\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		peek, perr := PeekUnverified(b)
		st, err := Verify(b, dir.Lookup, t0)
		if perr != nil && err == nil {
			t.Fatalf("Verify accepted what PeekUnverified refused: %v", perr)
		}
		if err != nil {
			var r *attest.Refusal
			if !errors.As(err, &r) {
				t.Fatalf("Verify returned %T %v, want *attest.Refusal", err, err)
			}
			return
		}
		if peek.Type != st.Type || peek.Issuer != st.Issuer || !bytes.Equal(peek.Body, st.Body) {
			t.Fatalf("PeekUnverified %+v differs from Verify %+v", peek, st)
		}
		for _, g := range genuine {
			if bytes.Equal(b, g) {
				return
			}
		}
		t.Fatalf("Verify accepted bytes alice never signed: %x (%+v)", b, st)
	})
}

func ExampleSign() {
	owner, _ := Generate(RoleOwner, "Household 17", nil)
	dir := Directory{}
	dir.Add(owner.Identity())
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	signed, _ := Sign(owner, "service.approve", map[string]string{"digest": "sha256:ab12"}, 10*time.Minute, now)

	guard := NewReplayGuard(0)
	st, err := Verify(signed, dir.Lookup, now.Add(time.Minute))
	if err == nil {
		err = guard.Check(st, now.Add(time.Minute))
	}
	fmt.Println(st.Type, string(st.Body), err)
	st, _ = Verify(signed, dir.Lookup, now.Add(2*time.Minute))
	err = guard.Check(st, now.Add(2*time.Minute))
	fmt.Println(err.(interface{ RefusedBy() string }).RefusedBy())
	// Output:
	// service.approve {"digest":"sha256:ab12"} <nil>
	// statement.replayed
}
