package sim

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// testPlatform returns a fresh platform in a temporary directory.
func testPlatform(t testing.TB) *Platform {
	t.Helper()
	p, err := LoadOrCreate(filepath.Join(t.TempDir(), "sim"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadOrCreateModesAndReload(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "sim")
	p, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o700 {
		t.Errorf("directory mode %v, want 0700", m)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if m := info.Mode().Perm(); m != 0o600 {
			t.Errorf("%s has mode %v, want 0600", e.Name(), m)
		}
	}
	if got := strings.Join(names, ","); got != PlatformFile+","+RootFile { // ReadDir sorts by name
		t.Errorf("directory holds %s, want %s,%s and no temporary files", got, PlatformFile, RootFile)
	}

	q, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p.ID(), q.ID()) {
		t.Errorf("reload changed the platform id: %x then %x", p.ID(), q.ID())
	}
	if !bytes.Equal(p.RootCertPEM(), q.RootCertPEM()) {
		t.Error("reload changed the root certificate")
	}
	if len(p.ID()) != 32 {
		t.Errorf("platform id is %d bytes, want 32", len(p.ID()))
	}
}

// TestLoadOrCreateConcurrent starts several loaders on one fresh directory:
// all must end with the same platform.
func TestLoadOrCreateConcurrent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sim")
	ids := make([][]byte, 6)
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			p, err := LoadOrCreate(dir)
			errs[i] = err
			if err == nil {
				ids[i] = p.ID()
			}
		})
	}
	wg.Wait()
	for i := range ids {
		if errs[i] != nil {
			t.Fatalf("loader %d: %v", i, errs[i])
		}
		if !bytes.Equal(ids[i], ids[0]) {
			t.Fatalf("loader %d got platform %x, loader 0 got %x", i, ids[i], ids[0])
		}
	}
}

func TestLoadOrCreateSharedRoot(t *testing.T) {
	a := testPlatform(t)
	dir := filepath.Join(t.TempDir(), "b")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	root, err := os.ReadFile(filepath.Join(a.Dir(), RootFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, RootFile), root, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a.ID(), b.ID()) {
		t.Fatal("second machine got the same platform key")
	}
	if !bytes.Equal(a.RootCertPEM(), b.RootCertPEM()) {
		t.Fatal("second machine did not use the shared root")
	}
}

func TestLoadOrCreateRefuses(t *testing.T) {
	other := testPlatform(t)
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string) // dir holds a valid platform
		wantErr string
	}{
		{"directory writable by others", func(t *testing.T, dir string) { chmod(t, dir, 0o757) }, "chmod 700"},
		{"directory writable by group", func(t *testing.T, dir string) { chmod(t, dir, 0o770) }, "chmod 700"},
		{"loose root file", func(t *testing.T, dir string) { chmod(t, filepath.Join(dir, RootFile), 0o644) }, "chmod 600"},
		{"loose platform file", func(t *testing.T, dir string) { chmod(t, filepath.Join(dir, PlatformFile), 0o640) }, "chmod 600"},
		{"garbage root", func(t *testing.T, dir string) { write(t, filepath.Join(dir, RootFile), []byte("not pem")) }, "not PEM"},
		{"root without key", func(t *testing.T, dir string) { write(t, filepath.Join(dir, RootFile), other.RootCertPEM()) }, "no \"PRIVATE KEY\""},
		{"platform of another root", func(t *testing.T, dir string) {
			data, err := os.ReadFile(filepath.Join(other.Dir(), PlatformFile))
			if err != nil {
				t.Fatal(err)
			}
			write(t, filepath.Join(dir, PlatformFile), data)
		}, "is not certified by the root"},
		{"platform without secret", func(t *testing.T, dir string) {
			data, err := os.ReadFile(filepath.Join(dir, PlatformFile))
			if err != nil {
				t.Fatal(err)
			}
			i := bytes.Index(data, []byte("-----BEGIN "+pemSecret))
			write(t, filepath.Join(dir, PlatformFile), data[:i])
		}, pemSecret},
		{"not a directory", func(t *testing.T, dir string) {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			write(t, dir, []byte("x"))
		}, "not a directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := testPlatform(t).Dir()
			tc.prepare(t, dir)
			_, err := LoadOrCreate(dir)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("LoadOrCreate: %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestSealingKey(t *testing.T) {
	p := testPlatform(t)
	q := testPlatform(t)
	reloaded, err := LoadOrCreate(p.Dir())
	if err != nil {
		t.Fatal(err)
	}
	m1 := bytes.Repeat([]byte{1}, 48)
	m2 := bytes.Repeat([]byte{2}, 48)
	base := p.SealingKey(m1, "state")
	if base == ([32]byte{}) {
		t.Fatal("sealing key is all zero")
	}
	tests := []struct {
		name string
		key  [32]byte
		same bool
	}{
		{"same inputs", p.SealingKey(m1, "state"), true},
		{"reloaded directory", reloaded.SealingKey(m1, "state"), true},
		{"other measurement", p.SealingKey(m2, "state"), false},
		{"other label", p.SealingKey(m1, "checkpoint"), false},
		{"other platform", q.SealingKey(m1, "state"), false},
		// Length-prefixing keeps measurement and label apart.
		{"label moved into measurement", p.SealingKey(append(bytes.Clone(m1), 's'), "tate"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.key == base; got != tc.same {
				t.Fatalf("key equal to base: %v, want %v", got, tc.same)
			}
		})
	}
}

func TestExecutableMeasurement(t *testing.T) {
	m, err := ExecutableMeasurement()
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	want, err := MeasureFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 48 || !bytes.Equal(m, want) {
		t.Fatalf("ExecutableMeasurement %x, want the SHA-384 of %s: %x", m, exe, want)
	}
	m[0] ^= 0xff // callers get a copy
	if again, _ := ExecutableMeasurement(); !bytes.Equal(again, want) {
		t.Fatal("modifying the returned measurement changed the cached one")
	}
	other := filepath.Join(t.TempDir(), "other")
	write(t, other, []byte("another binary"))
	if o, err := MeasureFile(other); err != nil || bytes.Equal(o, want) {
		t.Fatalf("MeasureFile of another file: %x, %v; want a different measurement", o, err)
	}
}
