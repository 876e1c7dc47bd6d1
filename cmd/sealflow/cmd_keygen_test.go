package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
)

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	// Keep the command's output out of the test log.
	stdout := os.Stdout
	os.Stdout, _ = os.Open(os.DevNull)
	defer func() { os.Stdout = stdout }()

	tests := []struct {
		name  string
		args  []string
		usage bool // want errUsage
		fail  bool // want another error
		kem   uint16
		role  party.Role
	}{
		{"owner", []string{"--role", "owner", "--name", "Household 17", "--out", "owner.key"}, false, false, seal.KEMX25519, party.RoleOwner},
		{"post-quantum recipient", []string{"--role", "recipient", "--name", "Emergency", "--kem", "mlkem768x25519", "--json", "--out", "r.key"}, false, false, seal.KEMMLKEM768X25519, party.RoleRecipient},
		{"overwrite", []string{"--role", "owner", "--name", "Other", "--out", "owner.key"}, false, true, 0, ""},
		{"worker role", []string{"--role", "worker", "--name", "w", "--out", "w.key"}, true, false, 0, ""},
		{"no role", []string{"--name", "w", "--out", "w.key"}, true, false, 0, ""},
		{"no out", []string{"--role", "owner", "--name", "w"}, true, false, 0, ""},
		{"bad kem", []string{"--role", "owner", "--name", "w", "--kem", "rsa", "--out", "w.key"}, true, false, 0, ""},
		{"bad name", []string{"--role", "owner", "--name", "a\tb", "--out", "w.key"}, false, true, 0, ""},
		{"extra argument", []string{"--role", "owner", "--name", "w", "--out", "w.key", "x"}, true, false, 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string(nil), tc.args...)
			var out string
			for i, a := range args {
				if a == "--out" {
					args[i+1] = filepath.Join(dir, args[i+1])
					out = args[i+1]
				}
			}
			before, _ := os.ReadFile(out)
			err := runKeygen(ctx, args)
			switch {
			case tc.usage:
				if !errors.Is(err, errUsage) {
					t.Fatalf("keygen %v = %v, want a usage error", tc.args, err)
				}
			case tc.fail:
				if err == nil || errors.Is(err, errUsage) {
					t.Fatalf("keygen %v = %v, want a failure", tc.args, err)
				}
				if after, _ := os.ReadFile(out); string(after) != string(before) {
					t.Fatal("a failed keygen changed the existing file")
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				kf, err := party.Load(out)
				if err != nil {
					t.Fatal(err)
				}
				if id := kf.Identity(); id.KEM != tc.kem || id.Role != tc.role {
					t.Fatalf("key file holds %s, want role %s KEM %s", id, tc.role, seal.KEMName(tc.kem))
				}
			}
			if tc.usage {
				if _, err := os.Stat(out); err == nil && before == nil {
					t.Fatal("a refused keygen created the key file")
				}
			}
		})
	}
}
