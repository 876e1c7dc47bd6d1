package party

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hpke"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/seal"
)

func TestGenerateSaveLoad(t *testing.T) {
	for _, kemName := range []string{"x25519", "mlkem768x25519"} {
		t.Run(kemName, func(t *testing.T) {
			kem, _ := seal.KEMByName(kemName)
			kf, err := Generate(RoleOwner, "Household 17", kem)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "owner.key")
			if err := kf.Save(path); err != nil {
				t.Fatal(err)
			}
			st, _ := os.Stat(path)
			if st.Mode().Perm() != 0o600 {
				t.Fatalf("key file mode %v, want 0600", st.Mode().Perm())
			}
			if err := kf.Save(path); err == nil || !strings.Contains(err.Error(), "already exists") {
				t.Fatalf("second Save = %v, want a refusal to overwrite", err)
			}
			loaded, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			a, _ := json.Marshal(kf.Identity())
			b, _ := json.Marshal(loaded.Identity())
			if !bytes.Equal(a, b) || loaded.ID() != kf.ID() || !loaded.Created().Equal(kf.Created()) {
				t.Fatalf("loaded identity %s, want %s", b, a)
			}
			if !kf.ID().Valid() || len(kf.ID().Short()) != 12 {
				t.Fatalf("ID %q is not 64 hex digits", kf.ID())
			}
			// A key wrapped to the public identity opens with the loaded key file.
			pub, err := loaded.Identity().HPKEPublicKey()
			if err != nil {
				t.Fatal(err)
			}
			info := seal.WrapInfo{Purpose: "stream-key", KeyID: "k", Recipient: string(kf.ID())}.Bytes()
			w, err := seal.Wrap(pub, info, []byte("0123456789abcdef0123456789abcdef"))
			if err != nil {
				t.Fatal(err)
			}
			if got, err := kf.Unwrap(info, w); err != nil || string(got) != "0123456789abcdef0123456789abcdef" {
				t.Fatalf("Unwrap = %q, %v", got, err)
			}
			// Statements signed by the original verify with the loaded identity and vice versa.
			signed, _ := Sign(loaded, "test.ping", nil, 60e9, kf.Created())
			d := Directory{}
			d.Add(kf.Identity())
			if _, err := Verify(signed, d.Lookup, kf.Created()); err != nil {
				t.Fatal(err)
			}
			// Load refuses a key file others can read.
			os.Chmod(path, 0o644)
			if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
				t.Fatalf("Load of a 0644 key file = %v, want a refusal", err)
			}
		})
	}
}

func TestGenerateRefuses(t *testing.T) {
	tests := []struct {
		name string
		role Role
		who  string
		kem  hpke.KEM
	}{
		{"unknown role", Role("admin"), "x", nil},
		{"empty name", RoleOwner, "", nil},
		{"long name", RoleOwner, strings.Repeat("x", MaxName+1), nil},
		{"control character", RoleOwner, "a\nb", nil},
		{"P-256 KEM", RoleOwner, "x", hpke.DHKEM(ecdh.P256())},
	}
	for _, tc := range tests {
		if _, err := Generate(tc.role, tc.who, tc.kem); err == nil {
			t.Errorf("%s: Generate succeeded", tc.name)
		}
	}
	for _, r := range Roles() {
		if _, err := Generate(r, "n", nil); err != nil {
			t.Errorf("role %s: %v", r, err)
		}
	}
}

func TestParseIdentity(t *testing.T) {
	kf, _ := Generate(RoleProvider, "Grid balancing", nil)
	good, _ := json.Marshal(kf.Identity())
	id, err := ParseIdentity(good)
	if err != nil || id.ID() != kf.ID() {
		t.Fatalf("ParseIdentity = %v, %v", id, err)
	}
	if !strings.Contains(string(good), `"id":"`+string(kf.ID())+`"`) {
		t.Fatalf("identity JSON %s does not carry its id", good)
	}
	// Without the optional id it parses too.
	var m map[string]any
	json.Unmarshal(good, &m)
	delete(m, "id")
	noID, _ := json.Marshal(m)
	if id, err := ParseIdentity(noID); err != nil || id.ID() != kf.ID() {
		t.Fatalf("ParseIdentity without id = %v, %v", id, err)
	}
	edit := func(f func(m map[string]any)) []byte {
		var m map[string]any
		json.Unmarshal(good, &m)
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	bad := map[string][]byte{
		"unknown field":  edit(func(m map[string]any) { m["admin"] = true }),
		"bad role":       edit(func(m map[string]any) { m["role"] = "root" }),
		"short sign key": edit(func(m map[string]any) { m["signing_key"] = "AAAA" }),
		"short hpke key": edit(func(m map[string]any) { m["hpke_key"] = "AAAA" }),
		"unknown KEM":    edit(func(m map[string]any) { m["kem_id"] = 16 }),
		"trailing data":  append(bytes.Clone(good), []byte(" {}")...),
		"duplicate key":  []byte(strings.Replace(string(good), `"role":"provider"`, `"role":"provider","role":"owner"`, 1)),
		"id of another":  edit(func(m map[string]any) { m["id"] = strings.Repeat("ab", 32) }),
		"not an object":  []byte(`[]`),
		"oversized":      append(bytes.Clone(good), bytes.Repeat([]byte(" "), MaxIdentity)...),
	}
	for name, b := range bad {
		if _, err := ParseIdentity(b); err == nil {
			t.Errorf("%s: ParseIdentity accepted %s", name, b)
		}
	}
}

func TestParseKeyFileRejects(t *testing.T) {
	kf, _ := Generate(RoleOperator, "Road operator", nil)
	good, _ := kf.MarshalJSON()
	if _, err := ParseKeyFile(good); err != nil {
		t.Fatal(err)
	}
	other, _ := Generate(RoleOperator, "Road operator", nil)
	otherJSON, _ := other.MarshalJSON()
	edit := func(f func(m map[string]any)) []byte {
		var m map[string]any
		json.Unmarshal(good, &m)
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	var om map[string]any
	json.Unmarshal(otherJSON, &om)
	bad := map[string][]byte{
		"version":         edit(func(m map[string]any) { m["version"] = 2 }),
		"id of another":   edit(func(m map[string]any) { m["id"] = om["id"] }),
		"seed of another": edit(func(m map[string]any) { m["signing_seed"] = om["signing_seed"] }),
		"short seed":      edit(func(m map[string]any) { m["signing_seed"] = "AAAA" }),
		"bad hpke key":    edit(func(m map[string]any) { m["hpke_private"] = "AAAA" }),
		"unknown KEM":     edit(func(m map[string]any) { m["kem_id"] = 1 }),
		"bad role":        edit(func(m map[string]any) { m["role"] = "nobody" }),
		"unknown field":   edit(func(m map[string]any) { m["x"] = 1 }),
		"empty":           nil,
	}
	for name, b := range bad {
		if _, err := ParseKeyFile(b); err == nil {
			t.Errorf("%s: ParseKeyFile accepted it", name)
		}
	}
}

func FuzzParseIdentity(f *testing.F) {
	for _, k := range []string{"x25519", "mlkem768x25519"} {
		kem, _ := seal.KEMByName(k)
		kf, _ := Generate(RoleRecipient, "r", kem)
		b, _ := json.Marshal(kf.Identity())
		f.Add(b)
	}
	f.Add([]byte(`{"role":"owner"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := ParseIdentity(b)
		if err != nil {
			return
		}
		again, _ := json.Marshal(id)
		id2, err := ParseIdentity(again)
		if err != nil || id2.ID() != id.ID() || id2.KEM != id.KEM || !bytes.Equal(id2.HPKEKey, id.HPKEKey) {
			t.Fatalf("identity %s does not round-trip: %v", b, err)
		}
	})
}

func FuzzParseKeyFile(f *testing.F) {
	kf, _ := Generate(RoleOwner, "o", nil)
	b, _ := kf.MarshalJSON()
	f.Add(b)
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		kf, err := ParseKeyFile(b)
		if err != nil {
			return
		}
		if IDOf(kf.SigningKey().Public().(ed25519.PublicKey)) != kf.ID() {
			t.Fatal("parsed key file's id does not match its signing key")
		}
	})
}
