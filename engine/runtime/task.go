package runtime

import (
	"context"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/operator"
	"github.com/sealflow/sealflow/engine/record"
	"github.com/sealflow/sealflow/engine/state"
	"github.com/sealflow/sealflow/exchange"
)

// nodeStats are one subtask's counters for one node.
type nodeStats struct {
	in, out int64
	side    map[string]int64
}

// subtask runs one parallel instance of a task.
type subtask struct {
	p     *plan
	t     *task
	idx   int
	o     *Options
	ops   []operator.Operator
	outs  []operator.Emitter // outs[i] receives what ops[i] emits
	chain []*chainEmitter    // chain[i] feeds ops[i+1]
	tail  *tailEmitter
	stats []nodeStats
	err   error // first error raised inside an emitter
	rctx  context.Context

	frames, bytes int64
	live          *liveStats // set when an Observer watches the run (metrics.go)

	// Checkpointing (nil coord when the run takes no checkpoints).
	coord       *coordinator
	lastBarrier uint64            // the last checkpoint this subtask took part in
	srcSnap     SourceSnapshotter // registered by the source, for source subtasks
	srcPos      []byte            // the restored source position
	done        bool              // finished (or restored as finished)
	// Alignment of a barrier over several input channels.
	aligning  uint64
	blocked   []bool
	ended     []bool
	held      []exchange.Event
	heldBytes int
}

func newSubtask(ctx context.Context, p *plan, t *task, idx int, o *Options) (*subtask, error) {
	st := &subtask{p: p, t: t, idx: idx, o: o, stats: make([]nodeStats, len(t.nodes))}
	for i, info := range t.nodes {
		n := info.Node
		split := Split{Node: n.ID, Stream: n.Params.Stream, Subtask: idx, Parallelism: t.parallelism, Schema: info.Out}
		var op operator.Operator
		var err error
		switch {
		case n.Kind == jobspec.KindUDF:
			op, err = buildUDF(ctx, info, o)
		case n.Kind == jobspec.KindSink && o.Checkpoint != nil && o.CommitSinks[n.Params.Stream] != nil:
			op = &txSinkOp{commit: o.CommitSinks[n.Params.Stream], split: split, schema: info.In[0]}
		default:
			weight := -1
			if i == 0 && len(t.in) == 1 {
				weight = t.in[0].weightField()
			}
			op, err = buildOperator(info, p.spec, idx, t.parallelism, o.Sinks[n.Params.Stream], split, weight)
		}
		if err != nil {
			return nil, fmt.Errorf("node %q (%s): %w", n.ID, n.Kind, err)
		}
		st.ops = append(st.ops, op)
		st.stats[i].side = map[string]int64{}
	}
	for i := range t.nodes {
		if i+1 < len(t.nodes) {
			ce := &chainEmitter{st: st, node: i, next: st.ops[i+1]}
			st.chain = append(st.chain, ce)
			st.outs = append(st.outs, ce)
		}
	}
	st.tail = &tailEmitter{st: st, node: len(t.nodes) - 1}
	st.outs = append(st.outs, st.tail)
	// Wire each chain emitter to the emitter of the op it feeds.
	for i, ce := range st.chain {
		ce.nextOut = st.outs[i+1]
	}
	return st, nil
}

func (st *subtask) fail(err error) {
	if st.err == nil {
		st.err = err
	}
}

func (st *subtask) side(node int, name string, rec record.Record) {
	st.stats[node].side[name]++
	if st.o.Side != nil {
		st.o.Side(st.t.nodes[node].Node.ID, name, rec)
	}
}

// run executes the subtask to the end of its input.
func (st *subtask) run(ctx context.Context) (err error) {
	st.rctx = ctx
	defer st.closeOps()
	defer func() {
		if err != nil {
			st.tail.abort()
		}
	}()
	if err := st.tail.open(ctx); err != nil {
		return err
	}
	head := st.t.nodes[0].Node
	wasDone := st.done
	switch {
	case head.Kind == jobspec.KindSource && wasDone:
		// Restored after the source had read all its input.
	case head.Kind == jobspec.KindSource:
		err = st.runSource(ctx)
	default:
		err = st.runInputs(ctx)
	}
	if err != nil {
		return err
	}
	if !wasDone {
		if err := st.finishOps(); err != nil {
			return err
		}
	}
	if err := st.tail.close(ctx); err != nil {
		return err
	}
	if st.coord != nil {
		st.done = true
		st.coord.finish(ctx, st)
	}
	return nil
}

// finishOps runs every operator's Finish, in chain order, once the final
// watermark has passed.
func (st *subtask) finishOps() error {
	defer st.publish()
	for i, op := range st.ops {
		if err := op.Finish(st.outs[i]); err != nil {
			return fmt.Errorf("node %q: finish: %w", st.t.nodes[i].Node.ID, err)
		}
		if i < len(st.chain) {
			st.chain[i].flush()
		}
		if st.err != nil {
			return st.err
		}
	}
	return nil
}

func (st *subtask) process(input int, b *record.Batch) error {
	st.stats[0].in += int64(b.Len())
	if err := st.ops[0].ProcessBatch(input, b, st.outs[0]); err != nil {
		return fmt.Errorf("node %q: %w", st.t.nodes[0].Node.ID, err)
	}
	st.publish()
	return st.err
}

func (st *subtask) watermark(input int, wm int64) error {
	st.watermarkReceived(input, wm)
	defer st.publish()
	if err := st.ops[0].ProcessWatermark(input, wm, st.outs[0]); err != nil {
		return fmt.Errorf("node %q: watermark: %w", st.t.nodes[0].Node.ID, err)
	}
	return st.err
}

func (st *subtask) runSource(ctx context.Context) error {
	info := st.t.nodes[0]
	n := info.Node
	split := Split{Node: n.ID, Stream: n.Params.Stream, Subtask: st.idx, Parallelism: st.t.parallelism, Schema: info.Out}
	split.Malformed = func(err error) {
		st.stats[0].side[operator.DefaultErrorSide]++
		st.o.Logger.Debug("malformed source record", "node", n.ID, "subtask", st.idx, "err", err)
	}
	if st.coord != nil {
		split.Restored = st.srcPos
		split.SetSnapshotter = func(f SourceSnapshotter) { st.srcSnap = f }
	}
	ticker, _ := st.ops[0].(operator.Ticker)
	lastTick := time.Now()
	st.tail.coalesce = st.o.WatermarkInterval > 0
	st.tail.sentWM = math.MinInt64
	tick := func() error {
		now := time.Now()
		st.tail.flushWatermark(now)
		if ticker == nil {
			return st.err
		}
		if now.Sub(lastTick) >= st.o.TickInterval {
			lastTick = now
			if err := ticker.Tick(now.UnixMilli(), st.outs[0]); err != nil {
				return err
			}
		}
		return st.err
	}
	emit := func(b *record.Batch) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := st.process(0, b); err != nil {
			return err
		}
		if st.coord != nil {
			if id := st.coord.requested.Load(); id > st.lastBarrier {
				st.checkpoint(ctx, id)
			}
		}
		return tick()
	}
	if err := st.o.Sources[n.Params.Stream](ctx, split, emit); err != nil {
		return fmt.Errorf("source %q (stream %q): %w", n.ID, n.Params.Stream, err)
	}
	return st.watermark(0, operator.FinalWatermark)
}

// inChannel is one exchange channel into this subtask.
type inChannel struct {
	e    *edge
	from int
	seq  uint64
}

func (st *subtask) runInputs(ctx context.Context) error {
	var (
		rs    []exchange.Receiver
		chans []inChannel
	)
	combiners := make([]*operator.WatermarkCombiner, len(st.t.in))
	for i, e := range st.t.in {
		combiners[i] = operator.NewWatermarkCombiner(e.from.parallelism)
		for from := range e.from.parallelism {
			r, err := st.o.Transport.Receiver(ctx, exchange.ChannelID{Job: st.o.JobID, Edge: e.id, From: from, To: st.idx})
			if err != nil {
				for _, r := range rs {
					_ = r.Close()
				}
				return err
			}
			rs = append(rs, r)
			chans = append(chans, inChannel{e: e, from: from})
		}
	}
	m := exchange.Merge(ctx, rs)
	defer m.Close()
	var (
		dec   record.Decoder
		batch record.Batch
		// opened holds the plaintext of the frame being decoded: the
		// codec appends into it, and it is reused for the next frame once
		// this one is processed (Decode copies what the batch keeps).
		opened []byte
		// queue holds events taken back after an alignment, processed
		// before the next ones from m.
		queue []exchange.Event
	)
	st.blocked, st.ended = make([]bool, len(chans)), make([]bool, len(chans))
	// Frames the transport hands over in buffers of their own are opened
	// in those buffers, not copied into opened.
	inPlace, _ := st.o.Codec.(InPlaceCodec)
	if fo, ok := st.o.Transport.(FrameOwner); !ok || !fo.ReceiverOwnsFrames() {
		inPlace = nil
	}
	for {
		var ev exchange.Event
		if len(queue) > 0 {
			ev, queue = queue[0], queue[1:]
		} else {
			var err error
			ev, err = m.Next(ctx)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
		}
		if st.blocked[ev.Input] {
			// This channel already delivered the barrier being aligned:
			// hold its frames back until the other channels deliver it.
			if !ev.EOS {
				ev.Frame = append([]byte(nil), ev.Frame...)
				st.heldBytes += len(ev.Frame)
			}
			st.held = append(st.held, ev)
			if st.heldBytes > st.alignmentLimit() {
				queue = st.abandon(ctx, queue, fmt.Errorf("task %s subtask %d held back %d bytes while aligning checkpoint %d, more than the alignment limit of %d", st.t.name(), st.idx, st.heldBytes, st.aligning, st.alignmentLimit()))
			}
			continue
		}
		ch := &chans[ev.Input]
		wm := int64(0)
		if ev.EOS {
			wm = operator.FinalWatermark
			st.ended[ev.Input] = true
		} else {
			ch.seq++
			hdr := FrameHeader{Job: st.o.JobID, Edge: ch.e.id, From: ch.from, To: st.idx, Seq: ch.seq}
			var plain []byte
			var err error
			if inPlace != nil {
				plain, err = inPlace.OpenInPlace(hdr, ev.Frame)
			} else {
				plain, err = st.o.Codec.Open(hdr, opened[:0], ev.Frame)
			}
			if err != nil {
				return fmt.Errorf("opening frame %s: %w", hdr, err)
			}
			if !sameArray(plain, ev.Frame) {
				opened = plain
			}
			kind, v, err := decodeFrame(plain, ch.e.schema, &dec, &batch)
			if err != nil {
				return fmt.Errorf("frame %s: %w", hdr, err)
			}
			switch kind {
			case frameBatch:
				if err := st.process(ch.e.input, &batch); err != nil {
					return err
				}
				continue
			case frameBarrier:
				if st.coord == nil {
					return fmt.Errorf("frame %s: a checkpoint barrier in a run without checkpoints", hdr)
				}
				queue = st.onBarrier(ctx, ev.Input, uint64(v), queue)
				if st.err != nil {
					return st.err
				}
				continue
			}
			wm = v
		}
		if w, ok := combiners[ch.e.input].Update(ch.from, wm); ok {
			if err := st.watermark(ch.e.input, w); err != nil {
				return err
			}
		}
		if ev.EOS && st.aligning != 0 && st.aligned() {
			queue = st.completeAlignment(ctx, queue)
			if st.err != nil {
				return st.err
			}
		}
	}
}

func (st *subtask) alignmentLimit() int {
	if l := st.o.Checkpoint.AlignmentLimit; l > 0 {
		return l
	}
	return defaultAlignmentLimit
}

// onBarrier handles the barrier of checkpoint id arriving on input channel c.
func (st *subtask) onBarrier(ctx context.Context, c int, id uint64, queue []exchange.Event) []exchange.Event {
	if id <= st.lastBarrier {
		return queue // a checkpoint this subtask gave up aligning
	}
	if st.aligning != 0 && id > st.aligning {
		queue = st.abandon(ctx, queue, fmt.Errorf("task %s subtask %d: barrier of checkpoint %d arrived before checkpoint %d was aligned", st.t.name(), st.idx, id, st.aligning))
	}
	if st.aligning == 0 {
		st.aligning = id
	}
	st.blocked[c] = true
	if st.aligned() {
		queue = st.completeAlignment(ctx, queue)
	}
	return queue
}

// aligned reports whether every input channel has delivered the barrier
// being aligned or ended.
func (st *subtask) aligned() bool {
	for i := range st.blocked {
		if !st.blocked[i] && !st.ended[i] {
			return false
		}
	}
	return true
}

// completeAlignment takes the subtask's part of the aligned checkpoint,
// forwards the barrier and returns the held frames to be processed first.
func (st *subtask) completeAlignment(ctx context.Context, queue []exchange.Event) []exchange.Event {
	st.checkpoint(ctx, st.aligning)
	return st.release(queue)
}

// abandon gives up aligning the current checkpoint: it is declined, the
// barrier goes on downstream so no one waits for it, and the held frames are
// processed.
func (st *subtask) abandon(ctx context.Context, queue []exchange.Event, why error) []exchange.Event {
	id := st.aligning
	st.lastBarrier = id
	st.coord.contribute(ctx, st, id, nil, why)
	st.tail.sendBarrier(id)
	return st.release(queue)
}

func (st *subtask) release(queue []exchange.Event) []exchange.Event {
	st.aligning = 0
	clear(st.blocked)
	q := append(st.held, queue...)
	st.held, st.heldBytes = nil, 0
	return q
}

// checkpoint takes the subtask's part of checkpoint id and sends the barrier
// downstream, after every record that precedes it.
func (st *subtask) checkpoint(ctx context.Context, id uint64) {
	st.lastBarrier = id
	part, err := st.snapshot(id)
	st.coord.contribute(ctx, st, id, part, err)
	st.tail.sendBarrier(id)
}

// batchBuf accumulates copies of emitted records into a batch.
type batchBuf struct {
	batch record.Batch
	slab  []record.Value
}

func (b *batchBuf) add(r *record.Record) {
	start := len(b.slab)
	b.slab = append(b.slab, r.Values...)
	b.batch.Records = append(b.batch.Records, record.Record{Time: r.Time, Values: b.slab[start:len(b.slab):len(b.slab)]})
}

// addWeighted appends a copy of r with weight as one more value.
func (b *batchBuf) addWeighted(r *record.Record, weight int64) {
	start := len(b.slab)
	b.slab = append(b.slab, r.Values...)
	b.slab = append(b.slab, record.Int(weight))
	b.batch.Records = append(b.batch.Records, record.Record{Time: r.Time, Values: b.slab[start:len(b.slab):len(b.slab)]})
}

func (b *batchBuf) reset() {
	b.batch.Records = b.batch.Records[:0]
	b.slab = b.slab[:0]
}

// chainEmitter batches what ops[node] emits and feeds it to ops[node+1].
type chainEmitter struct {
	st      *subtask
	node    int
	next    operator.Operator
	nextOut operator.Emitter
	buf     batchBuf
}

func (c *chainEmitter) Emit(r record.Record) {
	c.buf.add(&r)
	if len(c.buf.batch.Records) >= c.st.o.BatchSize {
		c.flush()
	}
}

func (c *chainEmitter) flush() {
	n := len(c.buf.batch.Records)
	if n == 0 {
		return
	}
	c.st.stats[c.node].out += int64(n)
	c.st.stats[c.node+1].in += int64(n)
	if err := c.next.ProcessBatch(0, &c.buf.batch, c.nextOut); err != nil {
		c.st.fail(fmt.Errorf("node %q: %w", c.st.t.nodes[c.node+1].Node.ID, err))
	}
	c.buf.reset()
}

func (c *chainEmitter) EmitSide(name string, r record.Record) { c.st.side(c.node, name, r) }

func (c *chainEmitter) EmitWatermark(wm int64) {
	c.flush()
	c.st.watermarkPassed(c.node, wm)
	if err := c.next.ProcessWatermark(0, wm, c.nextOut); err != nil {
		c.st.fail(fmt.Errorf("node %q: watermark: %w", c.st.t.nodes[c.node+1].Node.ID, err))
	}
}

// outEdge is the producing side of one exchange edge in one subtask.
type outEdge struct {
	plain  []byte // plaintext frame buffer (nil when handed to a consumer)
	sealed []byte // sealed frame buffer, when the transport copies frames
	hint   int    // length of the last plaintext frame: capacity for the next buffer
	e      *edge
	fan    *exchange.Fanout
	bufs   []batchBuf
	seqs   []uint64
	rr     int // rebalance target
	// pre drops records certainly below their window's maximum before
	// they are routed (nil: none; see newPrefilter); preKey is the key it
	// groups by, the window's (on a keyed exchange, e.key).
	pre    *operator.MaxPrefilter
	preKey operator.KeyFunc
	// comb combines records by key and pane before they are routed (nil:
	// none; see combineWindowing); every record on the edge then carries a
	// weight.
	comb *operator.CountCombiner
}

// tailEmitter routes what the chain's last op emits to the task's out edges.
type tailEmitter struct {
	st    *subtask
	node  int
	edges []*outEdge
	reuse bool   // the transport copies frames, so frame buffers are reused
	wm    []byte // plaintext watermark frame buffer
	// inPlace seals batch frames where they are encoded, after off bytes of
	// room (when the codec is an InPlaceCodec).
	inPlace InPlaceCodec
	off     int
	// Source tasks coalesce watermarks (see Options.WatermarkInterval).
	coalesce  bool
	lastWM    time.Time // when a watermark was last sent
	pendingWM int64     // the latest watermark not yet sent
	hasWM     bool
	sentWM    int64 // the last watermark sent by coalescing (MinInt64: none)
	// rec holds the record being emitted: Emit hands the key functions and
	// pre-filters a pointer to it, and a pointer to Emit's parameter would
	// move the parameter to the heap, an allocation per record.
	rec record.Record
}

func (t *tailEmitter) open(ctx context.Context) error {
	if c, ok := t.st.o.Transport.(interface{ CopiesFrames() bool }); ok {
		t.reuse = c.CopiesFrames()
	}
	if c, ok := t.st.o.Codec.(InPlaceCodec); ok {
		t.inPlace, t.off = c, c.SealOffset()
	}
	for _, e := range t.st.t.out {
		pre, preKey, err := newPrefilter(e, t.st.o)
		if err != nil {
			return fmt.Errorf("edge %d pre-filter: %w", e.id, err)
		}
		fan, err := exchange.OpenFanout(ctx, t.st.o.Transport, t.st.o.JobID, e.id, t.st.idx, e.to.parallelism)
		if err != nil {
			return err
		}
		var comb *operator.CountCombiner
		if e.combine != nil {
			if comb, err = operator.NewCountCombiner(operator.CountCombinerConfig{Windowing: *e.combine}); err != nil {
				return fmt.Errorf("edge %d combiner: %w", e.id, err)
			}
		}
		t.edges = append(t.edges, &outEdge{e: e, fan: fan, bufs: make([]batchBuf, e.to.parallelism), seqs: make([]uint64, e.to.parallelism), rr: t.st.idx % e.to.parallelism, pre: pre, preKey: preKey, comb: comb})
	}
	return nil
}

// flushCombined sends the records the out edges' combiners hold, before a
// watermark or a barrier: a combined record must reach the window before a
// watermark that could make it late, and in the epoch of the records it
// stands for.
func (t *tailEmitter) flushCombined() {
	for _, oe := range t.edges {
		if oe.comb == nil || oe.comb.Len() == 0 {
			continue
		}
		oe.comb.Flush(func(key uint64, r *record.Record, weight int64) {
			t.route(oe, t.subtaskOf(oe, key), r, weight)
		})
	}
}

// notSent returns the number of records the out edges' pre-filters dropped
// and the number their combiners did not send because another record
// carried them.
func (t *tailEmitter) notSent() (prefiltered, combined int64) {
	for _, oe := range t.edges {
		if oe.pre != nil {
			prefiltered += oe.pre.Dropped()
		}
		if oe.comb != nil {
			combined += oe.comb.Combined()
		}
	}
	return prefiltered, combined
}

// subtaskOf returns the consumer subtask of oe, a keyed edge, that owns key.
func (t *tailEmitter) subtaskOf(oe *outEdge, key uint64) int {
	maxP := t.st.p.spec.MaxParallelism
	return state.SubtaskFor(state.KeyGroup(key, maxP), oe.e.to.parallelism, maxP)
}

func (t *tailEmitter) Emit(r record.Record) {
	t.st.stats[t.node].out++
	t.rec = r
	rp := &t.rec
	for _, oe := range t.edges {
		var to int
		switch oe.e.part {
		case forward:
			if oe.pre != nil && !oe.pre.Keep(oe.preKey(rp), rp) {
				continue
			}
			to = t.st.idx
		case hashed:
			key := oe.e.key(rp)
			if oe.pre != nil && !oe.pre.Keep(key, rp) {
				continue
			}
			if oe.comb != nil {
				if oe.comb.Add(key, rp) {
					continue
				}
				t.route(oe, t.subtaskOf(oe, key), rp, 1)
				continue
			}
			to = t.subtaskOf(oe, key)
		case rebalance:
			to = oe.rr
		}
		b := &oe.bufs[to]
		b.add(rp)
		if len(b.batch.Records) >= t.st.o.BatchSize {
			t.flushTarget(oe, to)
			if oe.e.part == rebalance {
				oe.rr = (oe.rr + 1) % len(oe.bufs)
			}
		}
	}
	t.rec.Values = nil // do not keep the producer's batch alive
}

// route batches r, with weight appended, for consumer subtask to of a
// combined edge.
func (t *tailEmitter) route(oe *outEdge, to int, r *record.Record, weight int64) {
	b := &oe.bufs[to]
	b.addWeighted(r, weight)
	if len(b.batch.Records) >= t.st.o.BatchSize {
		t.flushTarget(oe, to)
	}
}

func (t *tailEmitter) EmitSide(name string, r record.Record) { t.st.side(t.node, name, r) }

func (t *tailEmitter) EmitWatermark(wm int64) {
	t.st.watermarkPassed(t.node, wm)
	for _, oe := range t.edges {
		if oe.pre != nil {
			oe.pre.Advance(wm)
		}
	}
	if len(t.edges) == 0 {
		return
	}
	if t.coalesce && wm != operator.FinalWatermark && wm != operator.IdleWatermark {
		// A later watermark supersedes this one, and records emitted
		// meanwhile stay batched; flushWatermark sends it in time.
		t.pendingWM, t.hasWM = wm, true
		// The difference is taken in uint64: it overflows int64 when no
		// watermark was sent yet (sentWM is MinInt64).
		if span := t.st.o.WatermarkSpan; span > 0 && wm > t.sentWM && uint64(wm-t.sentWM) >= uint64(span) {
			t.sendPending(time.Now())
			return
		}
		t.flushWatermark(time.Now())
		return
	}
	t.hasWM = false
	t.sendWatermark(wm)
}

// flushWatermark sends the pending watermark if WatermarkInterval has passed
// since the last one. Source tasks call it after every batch.
func (t *tailEmitter) flushWatermark(now time.Time) {
	if !t.hasWM || now.Sub(t.lastWM) < t.st.o.WatermarkInterval {
		return
	}
	t.sendPending(now)
}

// sendPending sends the pending coalesced watermark.
func (t *tailEmitter) sendPending(now time.Time) {
	t.lastWM, t.hasWM, t.sentWM = now, false, t.pendingWM
	t.sendWatermark(t.pendingWM)
}

func (t *tailEmitter) sendWatermark(wm int64) {
	t.flushCombined()
	for _, oe := range t.edges {
		if oe.comb != nil {
			oe.comb.Advance(wm)
		}
	}
	for _, oe := range t.edges {
		for to := range oe.bufs {
			t.flushTarget(oe, to)
			if t.wm == nil {
				t.wm = make([]byte, 0, 9)
			}
			t.wm = appendWatermarkFrame(t.wm[:0], wm)
			t.send(oe, to, t.wm, &t.wm)
		}
	}
}

// sendBarrier sends the barrier of checkpoint id to every consumer, after
// the records batched for it.
func (t *tailEmitter) sendBarrier(id uint64) {
	t.flushCombined()
	for _, oe := range t.edges {
		for to := range oe.bufs {
			t.flushTarget(oe, to)
			if t.wm == nil {
				t.wm = make([]byte, 0, 9)
			}
			t.wm = appendBarrierFrame(t.wm[:0], id)
			t.send(oe, to, t.wm, &t.wm)
		}
	}
}

func (t *tailEmitter) flushTarget(oe *outEdge, to int) {
	b := &oe.bufs[to]
	if len(b.batch.Records) == 0 || t.st.err != nil {
		return
	}
	if oe.plain == nil {
		oe.plain = make([]byte, t.off, max(oe.hint+oe.hint/8, t.off+64*len(b.batch.Records)))
	}
	// With an InPlaceCodec the frame is encoded after the room the codec
	// seals it in (whatever those bytes hold is overwritten).
	frame, err := appendBatchFrame(oe.plain[:t.off], oe.e.schema, &b.batch)
	b.reset()
	oe.plain, oe.hint = frame, len(frame)
	if err != nil {
		t.st.fail(fmt.Errorf("node %q: encoding a batch for edge %d: %w", t.st.t.nodes[t.node].Node.ID, oe.e.id, err))
		return
	}
	if t.inPlace != nil {
		t.sendInPlace(oe, to, frame)
		return
	}
	t.send(oe, to, frame, &oe.plain)
}

// sendInPlace seals the batch frame buf[t.off:], which lives in oe.plain, in
// place and sends it to consumer subtask to. Over a transport that copies
// frames the buffer (grown, if sealing grew it) is kept for the next frame;
// otherwise it is handed to the consumer.
func (t *tailEmitter) sendInPlace(oe *outEdge, to int, buf []byte) {
	if t.st.err != nil {
		return
	}
	oe.seqs[to]++
	hdr := FrameHeader{Job: t.st.o.JobID, Edge: oe.e.id, From: t.st.idx, To: to, Seq: oe.seqs[to]}
	sealed, err := t.inPlace.SealInPlace(hdr, buf)
	if err != nil {
		t.st.fail(fmt.Errorf("sealing frame %s: %w", hdr, err))
		return
	}
	if t.reuse {
		oe.plain = sealed[:0]
	} else {
		oe.plain = nil
	}
	t.transmit(oe, to, sealed)
}

// ctx is the context emitters block on: the run's.
func (st *subtask) ctx() context.Context { return st.rctx }

// send seals plain, which lives in the buffer *plainBuf, and sends it to
// consumer subtask to. Over a transport that copies frames, the sealed frame
// is appended to the edge's reused buffer; otherwise the frame is handed to
// the consumer, so the buffer it lives in (a fresh one from the codec, or
// *plainBuf when the codec returns plain itself) is given up.
func (t *tailEmitter) send(oe *outEdge, to int, plain []byte, plainBuf *[]byte) {
	if t.st.err != nil {
		return
	}
	oe.seqs[to]++
	hdr := FrameHeader{Job: t.st.o.JobID, Edge: oe.e.id, From: t.st.idx, To: to, Seq: oe.seqs[to]}
	var dst []byte
	if t.reuse {
		dst = oe.sealed[:0]
	}
	sealed, err := t.st.o.Codec.Seal(hdr, dst, plain)
	if err != nil {
		t.st.fail(fmt.Errorf("sealing frame %s: %w", hdr, err))
		return
	}
	switch inPlain := sameArray(sealed, plain); {
	case t.reuse && !inPlain:
		oe.sealed = sealed[:0]
	case !t.reuse && inPlain:
		*plainBuf = nil
	}
	t.transmit(oe, to, sealed)
}

// transmit sends the sealed frame to consumer subtask to and counts it.
func (t *tailEmitter) transmit(oe *outEdge, to int, sealed []byte) {
	t.st.sendBegins() // backpressure: time blocked on credits (metrics.go)
	err := oe.fan.Send(t.st.ctx(), to, sealed)
	t.st.sendEnded()
	if err != nil {
		t.st.fail(err)
		return
	}
	t.st.frames++
	t.st.bytes += int64(len(sealed))
}

// abort releases the out edges without end-of-stream, after a failure.
func (t *tailEmitter) abort() {
	for _, oe := range t.edges {
		oe.fan.Abort()
	}
}

func (t *tailEmitter) close(ctx context.Context) error {
	for _, oe := range t.edges {
		for to := range oe.bufs {
			t.flushTarget(oe, to)
		}
	}
	if t.st.err != nil {
		return t.st.err
	}
	for _, oe := range t.edges {
		if err := oe.fan.Close(ctx); err != nil {
			return err
		}
	}
	return nil
}
