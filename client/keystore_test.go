package client

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOwnerKeys(t *testing.T) {
	dir := t.TempDir()
	path := KeystorePath(filepath.Join(dir, "alice.key"))
	ks, err := LoadOwnerKeys(path)
	if err != nil || len(ks.Streams) != 0 {
		t.Fatalf("missing keystore: %v %+v", err, ks)
	}
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	ks.Put("meter-a", 1, k1)
	ks.Put("meter-a", 2, k2)
	if err := ks.Save(path); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("keystore mode %v, want 0600", fi.Mode().Perm())
	}
	got, err := LoadOwnerKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	if e, k, ok := got.Latest("meter-a"); !ok || e != 2 || !bytes.Equal(k, k2) {
		t.Fatalf("latest = %d %x %v", e, k, ok)
	}
	if k, ok := got.Key("meter-a", 1); !ok || !bytes.Equal(k, k1) {
		t.Fatal("epoch 1 lost")
	}
	if _, _, ok := got.Latest("other"); ok {
		t.Fatal("a key for an unknown stream")
	}

	tests := []struct {
		name, data string
		mode       os.FileMode
		bad        string
	}{
		{"readable by others", `{"streams":{}}`, 0o644, "chmod 600"},
		{"short key", `{"streams":{"s":{"1":"AAAA"}}}`, 0o600, "want 32"},
		{"not JSON", `garbage`, 0o600, "keystore"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.WriteFile(p, []byte(tc.data), tc.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(p, tc.mode)
			if _, err := LoadOwnerKeys(p); err == nil || !strings.Contains(err.Error(), tc.bad) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.bad)
			}
		})
	}
}
