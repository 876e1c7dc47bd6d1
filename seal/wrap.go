package seal

import (
	"crypto/ecdh"
	"crypto/hpke"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/sealflow/sealflow/attest"
)

// HPKE algorithm ids (RFC 9180 and draft-ietf-hpke-pq).
const (
	// KEMX25519 is DHKEM(X25519, HKDF-SHA256), the default KEM.
	KEMX25519 uint16 = 0x0020
	// KEMMLKEM768X25519 is the post-quantum hybrid MLKEM768-X25519 (X-Wing).
	KEMMLKEM768X25519 uint16 = 0x647a
	// KDFHKDFSHA256 is HKDF-SHA256, the only KDF used for wrapping.
	KDFHKDFSHA256 uint16 = 0x0001
	// AEADAES256GCM is AES-256-GCM, the only AEAD used for wrapping.
	AEADAES256GCM uint16 = 0x0002
)

// WrapVersion is the version of the Wrapped wire encoding.
const WrapVersion = 1

// MaxWrappedSecret is the largest secret Wrap accepts, in bytes.
const MaxWrappedSecret = 1024

// KEMByName returns the HPKE KEM named "x25519" (DHKEM(X25519, HKDF-SHA256))
// or "mlkem768x25519" (the post-quantum hybrid).
func KEMByName(name string) (hpke.KEM, error) {
	switch name {
	case "x25519":
		return hpke.DHKEM(ecdh.X25519()), nil
	case "mlkem768x25519":
		return hpke.MLKEM768X25519(), nil
	}
	return nil, fmt.Errorf("seal: unknown KEM %q (want x25519 or mlkem768x25519)", truncate(name))
}

// KEMByID returns the HPKE KEM with the given id, if it is one sealflow uses.
func KEMByID(id uint16) (hpke.KEM, error) {
	switch id {
	case KEMX25519:
		return hpke.DHKEM(ecdh.X25519()), nil
	case KEMMLKEM768X25519:
		return hpke.MLKEM768X25519(), nil
	}
	return nil, fmt.Errorf("seal: KEM id %#04x is not one sealflow uses (want %#04x x25519 or %#04x mlkem768x25519)", id, KEMX25519, KEMMLKEM768X25519)
}

// KEMName returns the name of a KEM id as KEMByName takes it.
func KEMName(id uint16) string {
	switch id {
	case KEMX25519:
		return "x25519"
	case KEMMLKEM768X25519:
		return "mlkem768x25519"
	}
	return fmt.Sprintf("kem(%#04x)", id)
}

// encSize is the size of the encapsulated key of each KEM.
func encSize(kem uint16) int {
	switch kem {
	case KEMX25519:
		return 32
	case KEMMLKEM768X25519:
		return 1088 + 32
	}
	return -1
}

// WrapInfo says what a wrapped key is for. Its Bytes are the HPKE info, so a
// key wrapped for one purpose, key id or recipient does not unwrap for another.
type WrapInfo struct {
	// Purpose names the use ("stream-key", "code-key", "checkpoint-key",
	// "output-key", ...).
	Purpose string
	// KeyID identifies the wrapped key (a KeyID's String for data keys).
	KeyID string
	// Recipient identifies the recipient (a party id or a node identity).
	Recipient string
}

// Bytes returns the canonical encoding of the info: a domain label and each
// field, length-prefixed.
func (i WrapInfo) Bytes() []byte {
	b := []byte("sealflow wrap info v1\x00")
	for _, f := range []string{i.Purpose, i.KeyID, i.Recipient} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

// Wrapped is a secret encrypted to a recipient's HPKE public key with the
// suite KEM + HKDF-SHA256 + AES-256-GCM.
type Wrapped struct {
	KEM, KDF, AEAD uint16
	// Enc is the HPKE encapsulated key.
	Enc []byte
	// Ciphertext is the sealed secret and its tag.
	Ciphertext []byte
}

// Wrap encrypts key to pub, bound to info (see WrapInfo). The suite is pub's
// KEM, HKDF-SHA256 and AES-256-GCM.
func Wrap(pub hpke.PublicKey, info []byte, key []byte) (Wrapped, error) {
	if pub == nil {
		return Wrapped{}, errors.New("seal: wrap: no recipient public key")
	}
	kem := pub.KEM().ID()
	if encSize(kem) < 0 {
		return Wrapped{}, fmt.Errorf("seal: wrap: recipient KEM %s is not one sealflow uses", KEMName(kem))
	}
	if len(info) == 0 {
		return Wrapped{}, errors.New("seal: wrap: empty info; bind the key's purpose, id and recipient (see WrapInfo)")
	}
	if len(key) == 0 || len(key) > MaxWrappedSecret {
		return Wrapped{}, fmt.Errorf("seal: wrap: secret of %d bytes, want 1 to %d", len(key), MaxWrappedSecret)
	}
	ct, err := hpke.Seal(pub, hpke.HKDFSHA256(), hpke.AES256GCM(), info, key)
	if err != nil {
		return Wrapped{}, fmt.Errorf("seal: wrap to %s key: %w", KEMName(kem), err)
	}
	n := encSize(kem)
	return Wrapped{KEM: kem, KDF: KDFHKDFSHA256, AEAD: AEADAES256GCM, Enc: ct[:n:n], Ciphertext: ct[n:]}, nil
}

// Unwrap decrypts w with priv and info. It fails with an *attest.Refusal of rule
// "seal.unwrap" when w was not wrapped to priv's public key with exactly this
// info, or was changed.
func Unwrap(priv hpke.PrivateKey, info []byte, w Wrapped) ([]byte, error) {
	if priv == nil {
		return nil, errors.New("seal: unwrap: no private key")
	}
	if err := w.check(); err != nil {
		return nil, err
	}
	if kem := priv.KEM().ID(); kem != w.KEM {
		return nil, &attest.Refusal{Rule: "seal.unwrap", Reason: fmt.Sprintf("the key is wrapped with KEM %s, the private key is %s", KEMName(w.KEM), KEMName(kem))}
	}
	ct := make([]byte, 0, len(w.Enc)+len(w.Ciphertext))
	ct = append(append(ct, w.Enc...), w.Ciphertext...)
	key, err := hpke.Open(priv, hpke.HKDFSHA256(), hpke.AES256GCM(), info, ct)
	if err != nil {
		return nil, &attest.Refusal{Rule: "seal.unwrap", Reason: "decryption failed: wrapped for another recipient or purpose, or changed"}
	}
	return key, nil
}

func (w *Wrapped) check() error {
	if encSize(w.KEM) < 0 {
		return fmt.Errorf("seal: wrapped key: KEM %s is not one sealflow uses", KEMName(w.KEM))
	}
	if w.KDF != KDFHKDFSHA256 || w.AEAD != AEADAES256GCM {
		return fmt.Errorf("seal: wrapped key: KDF %#04x and AEAD %#04x, want HKDF-SHA256 (%#04x) and AES-256-GCM (%#04x)", w.KDF, w.AEAD, KDFHKDFSHA256, AEADAES256GCM)
	}
	if len(w.Enc) != encSize(w.KEM) {
		return fmt.Errorf("seal: wrapped key: encapsulated key of %d bytes, want %d for %s", len(w.Enc), encSize(w.KEM), KEMName(w.KEM))
	}
	if len(w.Ciphertext) <= TagSize || len(w.Ciphertext) > MaxWrappedSecret+TagSize {
		return fmt.Errorf("seal: wrapped key: ciphertext of %d bytes, want %d to %d", len(w.Ciphertext), TagSize+1, MaxWrappedSecret+TagSize)
	}
	return nil
}

// AppendBinary appends the wire encoding of w:
//
//	version u8 (1) | kem u16 | kdf u16 | aead u16 | enc length u16 | enc |
//	ciphertext length u16 | ciphertext
func (w Wrapped) AppendBinary(b []byte) ([]byte, error) {
	if err := w.check(); err != nil {
		return b, err
	}
	b = append(b, WrapVersion)
	b = binary.BigEndian.AppendUint16(b, w.KEM)
	b = binary.BigEndian.AppendUint16(b, w.KDF)
	b = binary.BigEndian.AppendUint16(b, w.AEAD)
	b = binary.BigEndian.AppendUint16(b, uint16(len(w.Enc)))
	b = append(b, w.Enc...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(w.Ciphertext)))
	return append(b, w.Ciphertext...), nil
}

// MarshalBinary returns the wire encoding of w.
func (w Wrapped) MarshalBinary() ([]byte, error) { return w.AppendBinary(nil) }

// UnmarshalBinary parses the wire encoding strictly: see ParseWrapped.
func (w *Wrapped) UnmarshalBinary(b []byte) error {
	p, err := ParseWrapped(b)
	if err != nil {
		return err
	}
	*w = p
	return nil
}

// MarshalText returns the wire encoding in unpadded base64url, so Wrapped
// embeds in JSON as a string.
func (w Wrapped) MarshalText() ([]byte, error) {
	b, err := w.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return base64.RawURLEncoding.AppendEncode(nil, b), nil
}

// UnmarshalText parses what MarshalText writes.
func (w *Wrapped) UnmarshalText(t []byte) error {
	if len(t) > base64.RawURLEncoding.EncodedLen(maxWrappedWire) {
		return fmt.Errorf("seal: wrapped key text of %d bytes is too long", len(t))
	}
	b, err := base64.RawURLEncoding.DecodeString(string(t))
	if err != nil {
		return fmt.Errorf("seal: wrapped key text is not base64url: %w", err)
	}
	return w.UnmarshalBinary(b)
}

const maxWrappedWire = 1 + 2*4 + 1120 + 2 + MaxWrappedSecret + TagSize

// ParseWrapped parses the wire encoding of a Wrapped strictly: known version
// and suite, the KEM's exact encapsulated-key size, a ciphertext size in range
// and no trailing bytes. The result does not alias b.
func ParseWrapped(b []byte) (Wrapped, error) {
	var w Wrapped
	if len(b) > maxWrappedWire {
		return w, fmt.Errorf("seal: wrapped key of %d bytes exceeds the maximum %d", len(b), maxWrappedWire)
	}
	if len(b) < 9 {
		return w, fmt.Errorf("seal: wrapped key of %d bytes is shorter than its 9-byte prefix", len(b))
	}
	if b[0] != WrapVersion {
		return w, fmt.Errorf("seal: wrapped key version %d, want %d", b[0], WrapVersion)
	}
	w.KEM = binary.BigEndian.Uint16(b[1:])
	w.KDF = binary.BigEndian.Uint16(b[3:])
	w.AEAD = binary.BigEndian.Uint16(b[5:])
	n := int(binary.BigEndian.Uint16(b[7:]))
	rest := b[9:]
	if len(rest) < n+2 {
		return w, fmt.Errorf("seal: wrapped key truncated: encapsulated key of %d bytes in %d", n, len(rest))
	}
	w.Enc = append([]byte(nil), rest[:n]...)
	rest = rest[n:]
	m := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != m {
		return w, fmt.Errorf("seal: wrapped key: ciphertext length %d, but %d bytes follow", m, len(rest))
	}
	w.Ciphertext = append([]byte(nil), rest...)
	if err := w.check(); err != nil {
		return Wrapped{}, err
	}
	return w, nil
}
