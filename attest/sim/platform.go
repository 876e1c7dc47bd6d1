// Package sim is an honest software TEE for development: the sim attestation
// backend of sealflow.
//
// A Platform is a per-machine simulated TEE kept in a directory: a simulated
// vendor root CA, a platform key certified by that root and a platform secret.
// Its Issuer signs reports that state the SHA-384 of the running executable,
// a simulated TCB version, a debug flag, the platform id and the caller's 64
// bytes of report data. A Verifier trusts only the root certificates it was
// given, and checks the chain, the signature and the report data.
//
// The sim backend is honest (it reports what runs) but protects nothing: the
// keys are files readable by whoever controls the machine, and anyone holding
// them can sign any report. attest.Validate refuses sim claims unless the
// reference values set AllowSim. Use it for development, tests and demos;
// use the snp or tdx backends for real protection.
package sim

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Files a Platform keeps in its directory. Each is created once, atomically
// (written to a temporary file, then linked into place without overwriting),
// so that processes starting together agree on one platform.
const (
	// RootFile holds the simulated root CA: its certificate and private key
	// (PEM). Copy it to other machines' directories before their first
	// LoadOrCreate to have their platforms certified by the same root.
	RootFile = "root.pem"
	// PlatformFile holds the platform certificate, key and secret (PEM).
	PlatformFile = "platform.pem"
)

const (
	pemCert   = "CERTIFICATE"
	pemKey    = "PRIVATE KEY"
	pemSecret = "SEALFLOW SIM PLATFORM SECRET"

	rootLifetime     = 20 * 365 * 24 * time.Hour
	platformLifetime = 10 * 365 * 24 * time.Hour
)

// Platform is a simulated TEE platform loaded from a directory.
type Platform struct {
	dir     string
	root    *x509.Certificate
	rootPEM []byte
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	secret  [32]byte
	id      [32]byte
}

// LoadOrCreate loads the simulated platform kept in dir, creating what is
// missing: the directory (mode 0700), the root CA (RootFile, mode 0600) and
// the platform key certified by it (PlatformFile, mode 0600). Like ssh, it
// refuses key files that group or others can access, and a directory that
// they can write.
func LoadOrCreate(dir string) (*Platform, error) {
	if dir == "" {
		return nil, errors.New("sim: LoadOrCreate: empty directory name")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("sim: create platform directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("sim: platform directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("sim: platform directory %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("sim: platform directory %s has mode %v: others could replace its key files; run chmod 700 %s", dir, fi.Mode().Perm(), dir)
	}

	rootPath := filepath.Join(dir, RootFile)
	rootData, err := loadOrCreateFile(rootPath, newRoot)
	if err != nil {
		return nil, err
	}
	root, rootKey, err := parseRoot(rootData)
	if err != nil {
		return nil, fmt.Errorf("sim: %s: %w", rootPath, err)
	}

	platPath := filepath.Join(dir, PlatformFile)
	platData, err := loadOrCreateFile(platPath, func() ([]byte, error) { return newPlatform(root, rootKey) })
	if err != nil {
		return nil, err
	}
	p, err := parsePlatform(platData)
	if err != nil {
		return nil, fmt.Errorf("sim: %s: %w", platPath, err)
	}
	if err := p.cert.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("sim: %s is not certified by the root in %s (%v); remove %s to create a platform under this root", platPath, rootPath, err, platPath)
	}
	p.dir = dir
	p.root = root
	p.rootPEM = pem.EncodeToMemory(&pem.Block{Type: pemCert, Bytes: root.Raw})
	return p, nil
}

// Dir returns the directory p was loaded from.
func (p *Platform) Dir() string { return p.dir }

// RootCertPEM returns the PEM certificate of the simulated root CA that
// certified p; give it to NewVerifier on the verifying side.
func (p *Platform) RootCertPEM() []byte { return bytes.Clone(p.rootPEM) }

// ID returns the platform id: the SHA-256 of the platform key's
// SubjectPublicKeyInfo, as it appears in Claims.PlatformID.
func (p *Platform) ID() []byte { return bytes.Clone(p.id[:]) }

// SealingKey returns a 32-byte key for sealing data to this platform and to
// the code with the given measurement, under label: HKDF-SHA384 of the
// platform secret with the measurement and label as context. A different
// platform, binary or label gets an unrelated key; the same directory gives
// the same key across restarts.
//
// It is the sim equivalent of a TEE sealing facility (SNP's
// MSG_KEY_REQ bound to the measurement). Unlike hardware, the sim trusts the
// caller to pass its own measurement (see ExecutableMeasurement).
func (p *Platform) SealingKey(measurement []byte, label string) [32]byte {
	var info []byte
	info = append(info, "sealflow sim sealing key v1\x00"...)
	info = binary.BigEndian.AppendUint64(info, uint64(len(measurement)))
	info = append(info, measurement...)
	info = append(info, label...)
	k, err := hkdf.Key(sha512.New384, p.secret[:], nil, string(info), 32)
	if err != nil {
		// Unreachable: 32 bytes is far below HKDF-SHA384's output limit.
		panic("sim: hkdf: " + err.Error())
	}
	return [32]byte(k)
}

// executableMeasurement measures the running executable once per process.
var executableMeasurement = sync.OnceValues(func() ([]byte, error) {
	path, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("sim: locate the running executable: %w", err)
	}
	return MeasureFile(path)
})

// ExecutableMeasurement returns the SHA-384 of the running executable, the
// measurement sim evidence reports. It reads the file once per process.
func ExecutableMeasurement() ([]byte, error) {
	m, err := executableMeasurement()
	return bytes.Clone(m), err
}

// MeasureFile returns the SHA-384 of the file at path: the sim measurement of
// that executable, for reference values.
func MeasureFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("sim: measure executable: %w", err)
	}
	defer f.Close()
	h := sha512.New384()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("sim: measure executable %s: %w", path, err)
	}
	return h.Sum(nil), nil
}

// loadOrCreateFile returns the contents of path, or creates it with gen's
// output without ever overwriting: if another process created it first, its
// version wins and is returned.
func loadOrCreateFile(path string, gen func() ([]byte, error)) ([]byte, error) {
	data, err := readPrivate(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return data, err
	}
	data, err = gen()
	if err != nil {
		return nil, fmt.Errorf("sim: create %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*") // mode 0600
	if err != nil {
		return nil, fmt.Errorf("sim: create %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(data)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return nil, fmt.Errorf("sim: write %s: %w", tmp.Name(), err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readPrivate(path) // another process was first
		}
		return nil, fmt.Errorf("sim: create %s: %w", path, err)
	}
	return data, nil
}

// readPrivate reads a key file, refusing one that group or others can access.
func readPrivate(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("sim: %s has mode %v; it holds a private key: run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<16))
	if err != nil {
		return nil, fmt.Errorf("sim: read %s: %w", path, err)
	}
	return data, nil
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// newRoot creates a self-signed ECDSA P-384 root CA, PEM encoded with its key.
func newRoot() ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	kid := sha256.Sum256(spki)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"sealflow simulated TEE vendor (not a real TEE)"},
			CommonName:   "sealflow sim root " + hex.EncodeToString(kid[:8]),
		},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(rootLifetime),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          kid[:20],
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return encodePEM(der, key, nil)
}

// newPlatform creates a platform key certified by root, and a platform secret.
func newPlatform(root *x509.Certificate, rootKey *ecdsa.PrivateKey) ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	id := sha256.Sum256(spki)
	now := time.Now()
	notAfter := now.Add(platformLifetime)
	if notAfter.After(root.NotAfter) {
		notAfter = root.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"sealflow simulated TEE platform (not a real TEE)"},
			CommonName:   "sealflow sim platform " + hex.EncodeToString(id[:8]),
		},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		SubjectKeyId:          id[:20],
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, &key.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	return encodePEM(der, key, secret)
}

func encodePEM(certDER []byte, key *ecdsa.PrivateKey, secret []byte) ([]byte, error) {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	pem.Encode(&b, &pem.Block{Type: pemCert, Bytes: certDER})
	pem.Encode(&b, &pem.Block{Type: pemKey, Bytes: keyDER})
	if secret != nil {
		pem.Encode(&b, &pem.Block{Type: pemSecret, Bytes: secret})
	}
	return b.Bytes(), nil
}

// pemBlocks splits data into its PEM blocks by type; each type at most once.
func pemBlocks(data []byte) (map[string][]byte, error) {
	blocks := map[string][]byte{}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if _, dup := blocks[b.Type]; dup {
			return nil, fmt.Errorf("two %q PEM blocks", b.Type)
		}
		blocks[b.Type] = b.Bytes
	}
	if len(bytes.TrimSpace(data)) != 0 {
		return nil, errors.New("bytes that are not PEM after the last block")
	}
	return blocks, nil
}

// parseCertAndKey reads the certificate and matching P-384 key of a PEM file.
func parseCertAndKey(blocks map[string][]byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certDER, ok := blocks[pemCert]
	if !ok {
		return nil, nil, fmt.Errorf("no %q PEM block", pemCert)
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate: %w", err)
	}
	keyDER, ok := blocks[pemKey]
	if !ok {
		return nil, nil, fmt.Errorf("no %q PEM block", pemKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		return nil, nil, fmt.Errorf("private key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P384() {
		return nil, nil, fmt.Errorf("private key is a %T, want ECDSA P-384", k)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, nil, errors.New("private key does not match the certificate")
	}
	return cert, key, nil
}

func parseRoot(data []byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	blocks, err := pemBlocks(data)
	if err != nil {
		return nil, nil, err
	}
	cert, key, err := parseCertAndKey(blocks)
	if err != nil {
		return nil, nil, err
	}
	if !cert.IsCA {
		return nil, nil, errors.New("root certificate is not a CA")
	}
	return cert, key, nil
}

func parsePlatform(data []byte) (*Platform, error) {
	blocks, err := pemBlocks(data)
	if err != nil {
		return nil, err
	}
	cert, key, err := parseCertAndKey(blocks)
	if err != nil {
		return nil, err
	}
	secret, ok := blocks[pemSecret]
	if !ok || len(secret) != 32 {
		return nil, fmt.Errorf("want a 32-byte %q PEM block", pemSecret)
	}
	p := &Platform{cert: cert, key: key, secret: [32]byte(secret), id: platformID(cert)}
	return p, nil
}

// platformID is the SHA-256 of a platform certificate's public key.
func platformID(cert *x509.Certificate) [32]byte {
	return sha256.Sum256(cert.RawSubjectPublicKeyInfo)
}
