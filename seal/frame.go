package seal

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
)

// Sizes of the parts of a sealed body.
const (
	NonceSize = 12 // the random AES-GCM nonce that starts a sealed body
	TagSize   = 16 // the AES-GCM tag that ends it
	// Overhead is what sealing adds to a body, besides the header and padding.
	Overhead = NonceSize + TagSize
	// padTrailer is the sealed length field that ends a padded plaintext.
	padTrailer = 4
)

// Reason says why an Opener rejected a frame. Reasons are short, fixed strings
// meant to be used as Prometheus label values.
type Reason string

// The reasons for rejecting a frame.
const (
	// ReasonMalformed: the frame does not parse (bad version, kind, flags,
	// scope, time range or length).
	ReasonMalformed Reason = "malformed"
	// ReasonTampered: the AEAD refused the frame: its header or body was
	// changed, or it was sealed with another key under a forged key id.
	ReasonTampered Reason = "tampered"
	// ReasonReplayed: the frame's sequence number is below the next expected
	// one for its partition: it was delivered before.
	ReasonReplayed Reason = "replayed"
	// ReasonGap: the frame's sequence number is above the next expected one:
	// frames in between are missing or the frames were reordered.
	ReasonGap Reason = "gap"
	// ReasonForeign: the frame is of another kind or scope than this Opener
	// reads, or is sealed with a key that is not this scope's key for its epoch.
	ReasonForeign Reason = "foreign"
	// ReasonUnknownEpoch: no key is held for the frame's scope and epoch
	// (never received, or already dropped).
	ReasonUnknownEpoch Reason = "unknown-epoch"
	// ReasonTruncated: the stream ended without its last-of-stream frame
	// (reported by CheckEnd).
	ReasonTruncated Reason = "truncated"
	// ReasonPlaintext: the frame is not encrypted and the Opener was not told
	// to accept plaintext frames.
	ReasonPlaintext Reason = "plaintext"
	// ReasonAfterEnd: a frame arrived for a partition after its last-of-stream
	// frame.
	ReasonAfterEnd Reason = "after-end"
)

// Reasons returns every Reason, for example to initialise metric labels.
func Reasons() []Reason {
	return []Reason{ReasonMalformed, ReasonTampered, ReasonReplayed, ReasonGap, ReasonForeign,
		ReasonUnknownEpoch, ReasonTruncated, ReasonPlaintext, ReasonAfterEnd}
}

// Rejection is the error an Opener returns for a frame it does not accept.
// It is a refusal of the trust plane: RefusedBy names the rule "seal.<reason>".
type Rejection struct {
	Reason    Reason
	Kind      Kind
	Scope     string
	Partition uint32
	Epoch     uint32
	// Seq is the frame's sequence number; Expected the next one the Opener
	// expected in the partition (for replayed, gap and truncated).
	Seq, Expected uint64
	// Detail explains the rejection in words.
	Detail string
	// Err is the underlying error, if any (a parse or AEAD error).
	Err error
}

// Error implements error.
func (r *Rejection) Error() string {
	if r.Scope == "" {
		return fmt.Sprintf("seal: frame rejected (%s): %s", r.Reason, r.Detail)
	}
	return fmt.Sprintf("seal: %s frame of scope %q partition %d seq %d epoch %d rejected (%s): %s",
		r.Kind, truncate(r.Scope), r.Partition, r.Seq, r.Epoch, r.Reason, r.Detail)
}

// RefusedBy returns the rule that refused the frame: "seal." and the reason.
func (r *Rejection) RefusedBy() string { return "seal." + string(r.Reason) }

// Unwrap returns the underlying error.
func (r *Rejection) Unwrap() error { return r.Err }

// ReasonOf returns the Reason of a *Rejection in err's chain, or "" if there is
// none.
func ReasonOf(err error) Reason {
	if r := asRejection(err); r != nil {
		return r.Reason
	}
	return ""
}

func asRejection(err error) *Rejection {
	var r *Rejection
	if errors.As(err, &r) {
		return r
	}
	return nil
}

// Sealer seals the frames of one producer partition: it assigns consecutive
// sequence numbers, seals with its scope's current key in a Keyring, and
// optionally pads plaintexts to a bucket size. A Sealer is not safe for
// concurrent use; the Keyring under it is.
type Sealer struct {
	keys      *Keyring
	kind      Kind
	scope     string
	partition uint32
	next      uint64
	bucket    int
	plaintext bool
	ended     bool
}

// SealerOption configures a Sealer.
type SealerOption func(*Sealer) error

// WithPadding pads every plaintext (plus a 4-byte length) to a multiple of
// bucket bytes before sealing, so that frame sizes reveal only a bucket count.
func WithPadding(bucket int) SealerOption {
	return func(s *Sealer) error {
		if bucket < 16 || bucket > MaxBody {
			return fmt.Errorf("seal: padding bucket %d out of range [16, %d]", bucket, MaxBody)
		}
		s.bucket = bucket
		return nil
	}
}

// WithStartSeq makes the first frame's sequence number seq instead of 0, to
// resume a partition's stream (after a checkpoint, say).
func WithStartSeq(seq uint64) SealerOption {
	return func(s *Sealer) error { s.next = seq; return nil }
}

// WithPlaintext makes the Sealer write unencrypted frames with FlagPlaintext
// set. It exists only to measure the cost of sealing; Openers refuse such
// frames unless built with AcceptPlaintext. A plaintext Sealer needs no keys.
func WithPlaintext() SealerOption {
	return func(s *Sealer) error { s.plaintext = true; return nil }
}

// NewSealer returns a Sealer for frames of kind for (scope, partition), sealing
// with the current key of scope in keys at the time of each Seal.
func NewSealer(keys *Keyring, kind Kind, scope string, partition uint32, opts ...SealerOption) (*Sealer, error) {
	if !kind.Valid() {
		return nil, fmt.Errorf("seal: sealer kind %d is not a known frame kind", uint8(kind))
	}
	if err := checkScope(scope); err != nil {
		return nil, err
	}
	s := &Sealer{keys: keys, kind: kind, scope: scope, partition: partition}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	if keys == nil && !s.plaintext {
		return nil, fmt.Errorf("seal: sealer for scope %q has no keyring", truncate(scope))
	}
	return s, nil
}

// Next returns the sequence number the next frame will carry.
func (s *Sealer) Next() uint64 { return s.next }

// Seal appends to dst a frame holding body, whose records have event times in
// [minTime, maxTime], and returns the extended buffer. dst must not overlap
// body. Seal does not allocate when dst has room for the frame.
func (s *Sealer) Seal(dst, body []byte, minTime, maxTime int64) ([]byte, error) {
	return s.seal(dst, body, minTime, maxTime, 0)
}

// SealLast is Seal for the last frame of the partition's stream: it sets
// FlagLast, and the Sealer refuses to seal anything after it.
func (s *Sealer) SealLast(dst, body []byte, minTime, maxTime int64) ([]byte, error) {
	return s.seal(dst, body, minTime, maxTime, FlagLast)
}

// InPlaceOffset returns where SealInPlace expects the body in its buffer:
// after room for the frame's header and, unless the Sealer writes plaintext
// frames, the nonce. It is the same for every frame of the Sealer.
func (s *Sealer) InPlaceOffset() int {
	n := HeaderSizeFor(s.scope)
	if !s.plaintext {
		n += NonceSize
	}
	return n
}

// SealInPlace is Seal for a body that already lies in the frame's buffer:
// buf[InPlaceOffset():] is the body and buf[:InPlaceOffset()] is room for
// the header and nonce, which it overwrites. It pads (if configured) and
// encrypts the body where it lies and appends the tag, so sealing needs no
// second frame-sized buffer, and returns the frame: buf extended, or a copy
// of buf if its capacity was short. The frame is the same as Seal would
// produce. On error the body is unchanged.
func (s *Sealer) SealInPlace(buf []byte, minTime, maxTime int64) ([]byte, error) {
	off := s.InPlaceOffset()
	if len(buf) < off {
		return buf, fmt.Errorf("seal: in-place buffer of %d bytes is shorter than its header room of %d", len(buf), off)
	}
	for range 3 {
		out, err := s.sealOnceInPlace(buf, off, minTime, maxTime)
		if !errors.Is(err, ErrKeyZeroed) {
			return out, err
		}
	}
	return s.sealOnceInPlace(buf, off, minTime, maxTime)
}

func (s *Sealer) seal(dst, body []byte, minTime, maxTime int64, flags Flags) ([]byte, error) {
	// A key taken as current may be dropped (and zeroed) by a concurrent
	// rotation before it seals; then the new current key is used.
	for range 3 {
		out, err := s.sealOnce(dst, body, minTime, maxTime, flags)
		if !errors.Is(err, ErrKeyZeroed) {
			return out, err
		}
		dst = out
	}
	return s.sealOnce(dst, body, minTime, maxTime, flags)
}

// prepare checks that the Sealer may seal a body of bodySize bytes and
// returns the frame's header, the AEAD of the current key to seal with (nil
// for a plaintext Sealer), and the padded plaintext's length.
func (s *Sealer) prepare(bodySize int, minTime, maxTime int64, flags Flags) (h Header, gcm cipher.AEAD, ptLen int, err error) {
	if s.ended {
		return h, nil, 0, fmt.Errorf("seal: %s stream of scope %q partition %d already ended at seq %d", s.kind, truncate(s.scope), s.partition, s.next-1)
	}
	if minTime > maxTime {
		return h, nil, 0, fmt.Errorf("seal: time range [%d, %d] is inverted", minTime, maxTime)
	}
	h = Header{Version: Version, Kind: s.kind, Flags: flags, Scope: s.scope, Partition: s.partition, Seq: s.next, MinTime: minTime, MaxTime: maxTime}
	if !s.plaintext {
		key, ok := s.keys.Current(s.scope)
		if !ok {
			return h, nil, 0, fmt.Errorf("seal: no key for scope %q in the keyring", truncate(s.scope))
		}
		if key.sealed.Add(1) > MaxFramesPerKey {
			return h, nil, 0, fmt.Errorf("seal: %s has sealed %d frames, the most one key may; rotate the scope's key epoch", key, uint64(MaxFramesPerKey))
		}
		h.Epoch, h.KeyID = key.epoch, key.id
		if gcm = key.gcm(); gcm == nil {
			return h, nil, 0, fmt.Errorf("seal: sealing %s: %w", key, ErrKeyZeroed)
		}
	} else {
		h.Flags |= FlagPlaintext
	}
	ptLen = bodySize
	if s.bucket > 0 {
		h.Flags |= FlagPadded
		ptLen = (bodySize + padTrailer + s.bucket - 1) / s.bucket * s.bucket
	}
	bodyLen := ptLen
	if !s.plaintext {
		bodyLen += Overhead
	}
	if bodyLen > MaxBody || ptLen < bodySize {
		return h, nil, 0, fmt.Errorf("seal: body of %d bytes makes a frame body of %d bytes, more than the maximum %d", bodySize, bodyLen, MaxBody)
	}
	h.BodyLen = uint32(bodyLen)
	return h, gcm, ptLen, nil
}

func (s *Sealer) sealOnceInPlace(buf []byte, off int, minTime, maxTime int64) ([]byte, error) {
	bodySize := len(buf) - off
	h, gcm, ptLen, err := s.prepare(bodySize, minTime, maxTime, 0)
	if err != nil {
		return buf, err
	}
	hdrEnd := HeaderSizeFor(s.scope)
	total := off + ptLen
	if gcm != nil {
		total += TagSize
	}
	buf = growTo(buf, total)
	h.appendUnchecked(buf[:0]) // writes buf[:hdrEnd]: growTo left room
	if s.bucket > 0 {
		pad := buf[off+bodySize : off+ptLen]
		clear(pad[:len(pad)-padTrailer])
		binary.BigEndian.PutUint32(pad[len(pad)-padTrailer:], uint32(bodySize))
	}
	if gcm != nil {
		nonce := buf[hdrEnd:off]
		rand.Read(nonce) // never returns an error; crashes the program if the system's randomness fails
		pt := buf[off : off+ptLen]
		gcm.Seal(pt[:0], nonce, pt, buf[:hdrEnd]) // exactly in place: the tag fills buf[off+ptLen:]
	}
	s.advance(0)
	return buf, nil
}

func (s *Sealer) sealOnce(dst, body []byte, minTime, maxTime int64, flags Flags) ([]byte, error) {
	h, gcm, ptLen, err := s.prepare(len(body), minTime, maxTime, flags)
	if err != nil {
		return dst, err
	}
	bodyLen := int(h.BodyLen)
	start := len(dst)
	dst = h.appendUnchecked(dst)
	hdrEnd := len(dst)
	if s.plaintext {
		dst = appendPadded(dst, body, ptLen, s.bucket > 0)
		s.advance(flags)
		return dst, nil
	}
	dst = growTo(dst, hdrEnd+bodyLen)
	nonce := dst[hdrEnd : hdrEnd+NonceSize]
	rand.Read(nonce) // never returns an error; crashes the program if the system's randomness fails
	pt := body
	if s.bucket > 0 {
		// Build the padded plaintext where the ciphertext goes and seal it in place.
		pt = appendPadded(dst[hdrEnd+NonceSize:hdrEnd+NonceSize], body, ptLen, true)
	}
	dst = gcm.Seal(dst[:hdrEnd+NonceSize], nonce, pt, dst[start:hdrEnd])
	s.advance(flags)
	return dst, nil
}

func (s *Sealer) advance(flags Flags) {
	s.next++
	if flags&FlagLast != 0 {
		s.ended = true
	}
}

// growTo returns b with length n, reallocating if its capacity is short; the
// bytes beyond the old length are unspecified.
func growTo(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	nb := make([]byte, n, n+n/4)
	copy(nb, b)
	return nb
}

// appendPadded appends body, then (if padded) zeros and body's length as a
// big-endian uint32 so that exactly ptLen bytes are appended.
func appendPadded(dst, body []byte, ptLen int, padded bool) []byte {
	dst = append(dst, body...)
	if !padded {
		return dst
	}
	zeros := ptLen - len(body) - padTrailer
	dst = growTo(dst, len(dst)+zeros)
	clear(dst[len(dst)-zeros:])
	return binary.BigEndian.AppendUint32(dst, uint32(len(body)))
}

// Opener opens the frames of one kind for a set of scopes, as one consumer
// sees them. It keeps the next expected sequence number of every (scope,
// partition) and rejects, with a *Rejection, every frame that is not exactly
// the next authentic frame of its partition. An Opener is not safe for
// concurrent use; the Keyring under it is.
type Opener struct {
	keys            *Keyring
	kind            Kind
	scopes          map[string]*scopeState
	acceptPlaintext bool
}

type scopeState struct {
	name  string
	parts map[uint32]*partState
}

type partState struct {
	next  uint64
	ended bool
}

// OpenerOption configures an Opener.
type OpenerOption func(*Opener)

// AcceptPlaintext makes the Opener accept unencrypted frames (FlagPlaintext),
// for measuring the cost of sealing only.
func AcceptPlaintext() OpenerOption { return func(o *Opener) { o.acceptPlaintext = true } }

// NewOpener returns an Opener of frames of kind for the given scopes, opening
// them with the keys in keys. Every partition starts expecting sequence number
// 0; see Resume.
func NewOpener(keys *Keyring, kind Kind, scopes []string, opts ...OpenerOption) (*Opener, error) {
	if !kind.Valid() {
		return nil, fmt.Errorf("seal: opener kind %d is not a known frame kind", uint8(kind))
	}
	if len(scopes) == 0 {
		return nil, errors.New("seal: opener needs at least one scope")
	}
	o := &Opener{keys: keys, kind: kind, scopes: make(map[string]*scopeState, len(scopes))}
	for _, sc := range scopes {
		if err := checkScope(sc); err != nil {
			return nil, err
		}
		o.scopes[sc] = &scopeState{name: sc, parts: map[uint32]*partState{}}
	}
	for _, opt := range opts {
		opt(o)
	}
	if keys == nil && !o.acceptPlaintext {
		return nil, errors.New("seal: opener has no keyring")
	}
	return o, nil
}

func (o *Opener) part(scope string, partition uint32) (*partState, error) {
	st := o.scopes[scope]
	if st == nil {
		return nil, fmt.Errorf("seal: opener does not read scope %q", truncate(scope))
	}
	p := st.parts[partition]
	if p == nil {
		p = &partState{}
		st.parts[partition] = p
	}
	return p, nil
}

// Resume sets the next sequence number expected from (scope, partition), for
// a consumer restarting from a checkpoint that recorded Next.
func (o *Opener) Resume(scope string, partition uint32, next uint64) error {
	p, err := o.part(scope, partition)
	if err != nil {
		return err
	}
	p.next, p.ended = next, false
	return nil
}

// Next returns the next sequence number expected from (scope, partition).
func (o *Opener) Next(scope string, partition uint32) uint64 {
	if st := o.scopes[scope]; st != nil {
		if p := st.parts[partition]; p != nil {
			return p.next
		}
	}
	return 0
}

// Ended reports whether the last-of-stream frame of (scope, partition) was
// opened.
func (o *Opener) Ended(scope string, partition uint32) bool {
	if st := o.scopes[scope]; st != nil {
		if p := st.parts[partition]; p != nil {
			return p.ended
		}
	}
	return false
}

// CheckEnd is called when the consumer believes scope's stream has ended. It
// returns a *Rejection with ReasonTruncated unless every given partition (or,
// with none given, every partition seen so far) delivered its last-of-stream
// frame.
func (o *Opener) CheckEnd(scope string, partitions ...uint32) error {
	st := o.scopes[scope]
	if st == nil {
		return fmt.Errorf("seal: opener does not read scope %q", truncate(scope))
	}
	if len(partitions) == 0 {
		for p := range st.parts {
			partitions = append(partitions, p)
		}
	}
	var errs []error
	for _, pn := range partitions {
		p := st.parts[pn]
		if p != nil && p.ended {
			continue
		}
		next := uint64(0)
		if p != nil {
			next = p.next
		}
		errs = append(errs, &Rejection{Reason: ReasonTruncated, Kind: o.kind, Scope: scope, Partition: pn, Expected: next,
			Detail: fmt.Sprintf("the stream ended after %d frames without a last-of-stream frame", next)})
	}
	return errors.Join(errs...)
}

// Open checks frame and, if it is the next authentic frame of its partition,
// appends its plaintext body to dst and returns the header and the extended
// buffer. Otherwise it returns a *Rejection and dst unchanged, and the
// partition still expects the same frame. dst must not overlap frame. Open
// does not allocate in steady state when dst has room for the body; the
// returned Header's Scope is the Opener's own copy of the scope string.
func (o *Opener) Open(dst, frame []byte) (Header, []byte, error) {
	return o.open(dst, frame, false)
}

// OpenInPlace is Open that decrypts the body in frame's own buffer instead of
// appending it to a second one: the plaintext it returns is a subslice of
// frame, whose body it overwrites. The caller must own frame and not read its
// body afterwards: even a rejected frame's body may have been overwritten
// (with zeros, when authentication fails). It accepts and rejects exactly
// the frames Open does.
func (o *Opener) OpenInPlace(frame []byte) (Header, []byte, error) {
	return o.open(nil, frame, true)
}

func (o *Opener) open(dst, frame []byte, inPlace bool) (Header, []byte, error) {
	var r rawHeader
	if err := parseRaw(frame, &r); err != nil {
		return Header{}, dst, &Rejection{Reason: ReasonMalformed, Detail: err.Error(), Err: err}
	}
	keep := dst // what a rejection returns: dst unchanged
	reject := func(reason Reason, expected uint64, format string, args ...any) (Header, []byte, error) {
		return Header{}, keep, &Rejection{Reason: reason, Kind: r.Kind, Scope: string(r.scope), Partition: r.Partition,
			Epoch: r.Epoch, Seq: r.Seq, Expected: expected, Detail: fmt.Sprintf(format, args...)}
	}
	if r.Kind != o.kind {
		return reject(ReasonForeign, 0, "this opener reads %s frames", o.kind)
	}
	st := o.scopes[string(r.scope)]
	if st == nil {
		return reject(ReasonForeign, 0, "this opener does not read this scope")
	}
	body := frame[r.size:]
	var pt []byte // the (padded) plaintext: at the end of dst, or in body
	if r.Flags&FlagPlaintext != 0 {
		if !o.acceptPlaintext {
			return reject(ReasonPlaintext, 0, "the frame is not encrypted and this opener requires sealed frames")
		}
		if inPlace {
			pt = body
		} else {
			dst = append(dst, body...)
			pt = dst[len(keep):]
		}
	} else {
		if o.keys == nil {
			return reject(ReasonUnknownEpoch, 0, "this opener holds no keys")
		}
		key, _ := o.keys.lookup(st.name, r.Epoch)
		if key == nil {
			return reject(ReasonUnknownEpoch, 0, "no key held for this epoch (not received or already dropped)")
		}
		if key.id != r.KeyID {
			return reject(ReasonForeign, 0, "the frame names key %s, but this scope's key for the epoch is %s", r.KeyID, key.id)
		}
		gcm := key.gcm()
		if gcm == nil {
			return reject(ReasonUnknownEpoch, 0, "the key for this epoch was dropped")
		}
		if len(body) < Overhead {
			return reject(ReasonMalformed, 0, "sealed body of %d bytes is shorter than nonce and tag", len(body))
		}
		out := dst
		if inPlace {
			// Exactly in place: the plaintext overwrites the ciphertext.
			out = body[NonceSize:NonceSize]
		}
		out, err := gcm.Open(out, body[:NonceSize], body[NonceSize:], frame[:r.size])
		if err != nil {
			return reject(ReasonTampered, 0, "authentication failed: header or body changed, or sealed with another key")
		}
		if inPlace {
			pt = out
		} else {
			dst = out
			pt = dst[len(keep):]
		}
	}
	if r.Flags&FlagPadded != 0 {
		if len(pt) < padTrailer {
			return reject(ReasonMalformed, 0, "padded body of %d bytes has no length trailer", len(pt))
		}
		n := binary.BigEndian.Uint32(pt[len(pt)-padTrailer:])
		if uint64(n) > uint64(len(pt)-padTrailer) {
			return reject(ReasonMalformed, 0, "padded body of %d bytes claims %d bytes of content", len(pt), n)
		}
		pt = pt[:n]
	}
	p := st.parts[r.Partition]
	if p == nil {
		p = &partState{}
		st.parts[r.Partition] = p
	}
	switch {
	case r.Seq < p.next:
		return reject(ReasonReplayed, p.next, "sequence number %d is below the next expected %d", r.Seq, p.next)
	case p.ended:
		return reject(ReasonAfterEnd, p.next, "the partition's stream already ended before seq %d", p.next)
	case r.Seq > p.next:
		return reject(ReasonGap, p.next, "sequence number %d is above the next expected %d: frames missing or reordered", r.Seq, p.next)
	}
	p.next++
	if r.Flags&FlagLast != 0 {
		p.ended = true
	}
	h := r.Header
	h.Scope = st.name
	if inPlace {
		return h, pt, nil
	}
	return h, dst[:len(keep)+len(pt)], nil
}
