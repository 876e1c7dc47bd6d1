package confidential

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/sealflow/sealflow/engine/runtime"
	"github.com/sealflow/sealflow/seal"
)

// Limits of the exchange channels an ExchangeCodec can seal: a channel's seal
// partition packs the edge, the producing and the consuming subtask into 32
// bits.
const (
	MaxExchangeEdges       = 1 << 12 // edges per job
	MaxExchangeParallelism = 1 << 10 // subtasks per task
)

// ExchangeCodec seals the frames of a job's exchanges (seal.KindExchange)
// with the job's exchange key: the current key of scope job in its Keyring.
// Every exchange channel (edge, from, to) is its own seal partition with its
// own Sealer and Opener, so seal's sequence checks refuse a frame that is
// replayed, reordered, dropped, moved to another channel or job, tampered
// with, or sealed with a key the job never received. It implements
// runtime.FrameCodec and is safe for concurrent use.
type ExchangeCodec struct {
	job  string
	keys *seal.Keyring
	cfg  *config

	mu    sync.Mutex
	chans map[uint32]*exchangeChannel
}

type exchangeChannel struct {
	mu     sync.Mutex
	sealer *seal.Sealer
	opener *seal.Opener
}

var _ runtime.FrameCodec = (*ExchangeCodec)(nil)

// NewExchangeCodec returns a codec for the exchanges of job (which must be the
// run's runtime.Options.JobID), sealing with the current key of scope job in
// keys and opening with the keys of that scope. Options: WithPadding,
// WithRejectionCounter, WithRejectHandler, WithLogger, WithPlaintext.
func NewExchangeCodec(job string, keys *seal.Keyring, opts ...Option) (*ExchangeCodec, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	if job == "" || len(job) > seal.MaxScope {
		return nil, fmt.Errorf("confidential: exchange codec job id %q must have 1 to %d bytes", job, seal.MaxScope)
	}
	if !cfg.plaintext {
		if keys == nil {
			return nil, fmt.Errorf("confidential: exchange codec for job %q has no keyring", job)
		}
		if _, ok := keys.Current(job); !ok {
			return nil, fmt.Errorf("confidential: the keyring holds no exchange key for job %q; the orchestrator releases it with the job's tasks", job)
		}
	}
	return &ExchangeCodec{job: job, keys: keys, cfg: cfg, chans: map[uint32]*exchangeChannel{}}, nil
}

// NewEphemeralExchangeCodec returns a codec for job with a freshly generated
// exchange key (epoch 1) that exists only in this process: for runs without an
// orchestrator, such as `sealflow nexmark run`.
func NewEphemeralExchangeCodec(job string, opts ...Option) (*ExchangeCodec, error) {
	keys := seal.NewKeyring()
	if _, err := keys.Generate(job, 1); err != nil {
		return nil, fmt.Errorf("confidential: generating the exchange key of job %q: %w", job, err)
	}
	return NewExchangeCodec(job, keys, opts...)
}

// Job returns the job id the codec seals for.
func (c *ExchangeCodec) Job() string { return c.job }

// ChannelPartition returns the seal partition of an exchange channel: the
// edge in the top 12 bits, the producing subtask in the next 10 and the
// consuming subtask in the low 10.
func ChannelPartition(edge, from, to int) (uint32, error) {
	if edge < 0 || edge >= MaxExchangeEdges || from < 0 || from >= MaxExchangeParallelism || to < 0 || to >= MaxExchangeParallelism {
		return 0, fmt.Errorf("confidential: exchange channel e%d/%d->%d out of range (at most %d edges and %d subtasks per task)",
			edge, from, to, MaxExchangeEdges, MaxExchangeParallelism)
	}
	return uint32(edge)<<20 | uint32(from)<<10 | uint32(to), nil
}

func (c *ExchangeCodec) channel(hdr runtime.FrameHeader) (*exchangeChannel, uint32, error) {
	if hdr.Job != c.job {
		return nil, 0, fmt.Errorf("confidential: frame %s belongs to job %q, this codec seals job %q", hdr, hdr.Job, c.job)
	}
	part, err := ChannelPartition(hdr.Edge, hdr.From, hdr.To)
	if err != nil {
		return nil, 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := c.chans[part]
	if ch == nil {
		ch = &exchangeChannel{}
		c.chans[part] = ch
	}
	return ch, part, nil
}

var _ runtime.InPlaceCodec = (*ExchangeCodec)(nil)

// sealer returns hdr's channel, locked, with its Sealer, after checking that
// hdr is the channel's next frame. The caller unlocks ch.mu.
func (c *ExchangeCodec) sealer(hdr runtime.FrameHeader) (*exchangeChannel, error) {
	ch, part, err := c.channel(hdr)
	if err != nil {
		return nil, err
	}
	ch.mu.Lock()
	if ch.sealer == nil {
		var so []seal.SealerOption
		if c.cfg.padding > 0 {
			so = append(so, seal.WithPadding(c.cfg.padding))
		}
		if c.cfg.plaintext {
			so = append(so, seal.WithPlaintext())
		}
		if ch.sealer, err = seal.NewSealer(c.keys, seal.KindExchange, c.job, part, so...); err != nil {
			ch.mu.Unlock()
			return nil, fmt.Errorf("confidential: sealer for frame %s: %w", hdr, err)
		}
	}
	if want := ch.sealer.Next() + 1; hdr.Seq != want {
		ch.mu.Unlock()
		return nil, fmt.Errorf("confidential: frame %s is out of order: the channel's next frame is #%d", hdr, want)
	}
	return ch, nil
}

// Seal seals plaintext as the next frame of hdr's channel and appends the
// sealed frame to dst, growing it at most once. hdr.Seq must be the channel's
// next sequence number (the runtime counts from 1). dst must not overlap
// plaintext.
func (c *ExchangeCodec) Seal(hdr runtime.FrameHeader, dst, plaintext []byte) ([]byte, error) {
	ch, err := c.sealer(hdr)
	if err != nil {
		return nil, err
	}
	defer ch.mu.Unlock()
	n := seal.HeaderSizeFor(c.job) + len(plaintext) + seal.Overhead
	if c.cfg.padding > 0 {
		n += c.cfg.padding + 4
	}
	return ch.sealer.Seal(slices.Grow(dst, n), plaintext, 0, 0)
}

// SealOffset returns the room SealInPlace needs before a frame's plaintext:
// the seal header of the codec's job and, unless the codec writes plaintext
// frames (WithPlaintext), the nonce.
func (c *ExchangeCodec) SealOffset() int {
	n := seal.HeaderSizeFor(c.job)
	if !c.cfg.plaintext {
		n += seal.NonceSize
	}
	return n
}

// SealInPlace is Seal for a plaintext that lies at buf[SealOffset():]: it
// seals it where it lies (seal.Sealer.SealInPlace) and returns the frame, the
// same as Seal's, in buf (or in a copy, if buf's capacity was short).
func (c *ExchangeCodec) SealInPlace(hdr runtime.FrameHeader, buf []byte) ([]byte, error) {
	ch, err := c.sealer(hdr)
	if err != nil {
		return nil, err
	}
	defer ch.mu.Unlock()
	if off := ch.sealer.InPlaceOffset(); off != c.SealOffset() {
		return nil, fmt.Errorf("confidential: frame %s: sealer offset %d differs from the codec's %d", hdr, off, c.SealOffset())
	}
	return ch.sealer.SealInPlace(buf, 0, 0)
}

// Open opens a frame received on hdr's channel and appends its plaintext to
// dst. A frame that is not the next authentic frame of exactly that channel is
// refused with a *seal.Rejection, counted and reported. dst must not overlap
// sealed.
func (c *ExchangeCodec) Open(hdr runtime.FrameHeader, dst, sealed []byte) ([]byte, error) {
	return c.open(hdr, dst, sealed, false)
}

// OpenInPlace is Open that decrypts the frame in sealed's own buffer and
// returns the plaintext as a subslice of it (seal.Opener.OpenInPlace). It
// accepts and refuses exactly the frames Open does, but overwrites sealed,
// also when it refuses the frame: the caller must own sealed.
func (c *ExchangeCodec) OpenInPlace(hdr runtime.FrameHeader, sealed []byte) ([]byte, error) {
	return c.open(hdr, nil, sealed, true)
}

func (c *ExchangeCodec) open(hdr runtime.FrameHeader, dst, sealed []byte, inPlace bool) ([]byte, error) {
	ch, part, err := c.channel(hdr)
	if err != nil {
		return nil, err
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.opener == nil {
		var oo []seal.OpenerOption
		if c.cfg.plaintext {
			oo = append(oo, seal.AcceptPlaintext())
		}
		if ch.opener, err = seal.NewOpener(c.keys, seal.KindExchange, []string{c.job}, oo...); err != nil {
			return nil, fmt.Errorf("confidential: opener for frame %s: %w", hdr, err)
		}
	}
	// A frame of another channel of the same job would open under the same
	// key: refuse it before it touches this channel's sequence. The header
	// is read in place (version, kind, flags, scope length, scope,
	// partition), so the check does not allocate.
	if len(sealed) >= 4 && seal.Kind(sealed[1]) == seal.KindExchange {
		n := int(sealed[3])
		if len(sealed) >= 4+n+4 && string(sealed[4:4+n]) == c.job {
			if p := binary.BigEndian.Uint32(sealed[4+n:]); p != part {
				err := &seal.Rejection{Reason: seal.ReasonForeign, Kind: seal.KindExchange, Scope: c.job, Partition: p,
					Detail: fmt.Sprintf("the frame belongs to exchange channel partition %#x, not to channel %s (partition %#x)", p, hdr, part)}
				c.cfg.reject(c.job, err)
				return nil, err
			}
		}
	}
	var (
		h   seal.Header
		out []byte
	)
	if inPlace {
		h, out, err = ch.opener.OpenInPlace(sealed)
	} else {
		h, out, err = ch.opener.Open(dst, sealed)
	}
	if err != nil {
		c.cfg.reject(c.job, err)
		return nil, fmt.Errorf("confidential: frame %s: %w", hdr, err)
	}
	if h.Seq+1 != hdr.Seq {
		// The opener checked continuity; the runtime's count disagreeing
		// means frames were skipped below the codec.
		err := &seal.Rejection{Reason: seal.ReasonGap, Kind: h.Kind, Scope: h.Scope, Partition: h.Partition, Epoch: h.Epoch, Seq: h.Seq, Expected: hdr.Seq - 1,
			Detail: "the sealed sequence number disagrees with the exchange's frame count"}
		c.cfg.reject(c.job, err)
		return nil, err
	}
	return out, nil
}

// errNoKeys is wrapped when a reader has no keyring and is not in plaintext mode.
var errNoKeys = errors.New("no keyring given")
