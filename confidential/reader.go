package confidential

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/seal"
)

// frameReader opens the sealed frames of some partitions of one stream, in
// the order JetStream delivers them, and decodes their batches.
type frameReader struct {
	pl     place
	id     string
	schema *record.Schema
	cfg    *config
	opener *seal.Opener
	// mine are the partitions this reader reads; nil reads every partition.
	mine map[uint32]bool
	// total is the partition count the last frames carry (0 before one is seen).
	total int
	dec   record.Decoder
	batch record.Batch
}

func newFrameReader(pl place, id string, schema *record.Schema, keys *seal.Keyring, cfg *config, mine map[uint32]bool) (*frameReader, error) {
	if err := CheckStreamID(id); err != nil {
		return nil, err
	}
	if schema == nil {
		return nil, fmt.Errorf("confidential: reading %s stream %q: no schema", pl.kind, id)
	}
	if keys == nil && !cfg.plaintext {
		return nil, fmt.Errorf("confidential: reading %s stream %q: %w", pl.kind, id, errNoKeys)
	}
	var oo []seal.OpenerOption
	if cfg.plaintext {
		oo = append(oo, seal.AcceptPlaintext())
	}
	op, err := seal.NewOpener(keys, pl.kind, []string{id}, oo...)
	if err != nil {
		return nil, err
	}
	return &frameReader{pl: pl, id: id, schema: schema, cfg: cfg, opener: op, mine: mine}, nil
}

// subjectPartition returns the partition a subject names, if it is one of
// the stream's subjects.
func (r *frameReader) subjectPartition(subject string) (uint32, bool) {
	rest, ok := strings.CutPrefix(subject, r.pl.subjectPrefix+"."+r.id+".")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(rest, 10, 32)
	return uint32(n), err == nil
}

// handle opens one frame. It returns the decoded batch (nil when the frame
// was rejected and skipped) and the frame's header, or an error that ends the
// read: a gap in a partition (frames are missing), or an authentic frame
// whose contents do not decode.
func (r *frameReader) handle(subject string, frame []byte) (*record.Batch, seal.Header, error) {
	sp, ok := r.subjectPartition(subject)
	h, perr := seal.ParseHeader(frame)
	if perr == nil && (!ok || h.Partition != sp || (r.mine != nil && !r.mine[h.Partition])) {
		err := &seal.Rejection{Reason: seal.ReasonForeign, Kind: h.Kind, Scope: h.Scope, Partition: h.Partition, Epoch: h.Epoch, Seq: h.Seq,
			Detail: fmt.Sprintf("the frame arrived on subject %q, which is not its partition's subject in this read", subject)}
		r.cfg.reject(r.id, err)
		return nil, seal.Header{}, nil
	}
	h, body, err := r.opener.Open(nil, frame)
	if err != nil {
		r.cfg.reject(r.id, err)
		if seal.ReasonOf(err) == seal.ReasonGap {
			return nil, seal.Header{}, fmt.Errorf("confidential: %s stream %q: frames are missing: %w", r.pl.kind, r.id, err)
		}
		return nil, seal.Header{}, nil
	}
	last := h.Flags&seal.FlagLast != 0
	n, err := decodeBody(body, last, r.schema, &r.dec, &r.batch)
	if err != nil {
		return nil, h, fmt.Errorf("confidential: %s stream %q partition %d frame %d is authentic but its contents do not decode with the schema: %w",
			r.pl.kind, r.id, h.Partition, h.Seq, err)
	}
	if last {
		if r.total != 0 && n != r.total {
			return nil, h, fmt.Errorf("confidential: %s stream %q: partition %d's last frame says the stream has %d partitions, another said %d",
				r.pl.kind, r.id, h.Partition, n, r.total)
		}
		r.total = n
		if int64(h.Partition) >= int64(n) {
			return nil, h, fmt.Errorf("confidential: %s stream %q: partition %d ended, but its last frame says the stream has %d partitions",
				r.pl.kind, r.id, h.Partition, n)
		}
	}
	return &r.batch, h, nil
}

// expected returns the partitions that must end: mine, or every partition
// the last frames announce.
func (r *frameReader) expected() []uint32 {
	var ps []uint32
	if r.mine != nil {
		for p := range r.mine {
			ps = append(ps, p)
		}
		return ps
	}
	for p := range r.total {
		ps = append(ps, uint32(p))
	}
	return ps
}

// done reports whether every expected partition delivered its last frame.
func (r *frameReader) done() bool {
	if r.mine == nil && r.total == 0 {
		return false
	}
	for _, p := range r.expected() {
		if !r.opener.Ended(r.id, p) {
			return false
		}
	}
	return true
}

// truncated returns the error for a stream that ended early.
func (r *frameReader) truncated(why string) error {
	var err error
	if r.mine == nil && r.total == 0 {
		err = &seal.Rejection{Reason: seal.ReasonTruncated, Kind: r.pl.kind, Scope: r.id, Detail: "no last-of-stream frame arrived, so not even the partition count is known"}
	} else {
		err = r.opener.CheckEnd(r.id, r.expected()...)
	}
	r.cfg.reject(r.id, err)
	return fmt.Errorf("confidential: %s stream %q is truncated (%s): %w", r.pl.kind, r.id, why, err)
}
