// Package confidential puts sealed frames on every byte the infrastructure
// carries: the records an owner's gateway publishes (ingest), the frames
// exchanged between the tasks of a job, and the records of derived (output)
// streams. It builds on package seal (AES-256-GCM frames with the header as
// associated data, key epochs in a Keyring) and on NATS JetStream.
//
//   - ExchangeCodec is a runtime.FrameCodec that seals exchange frames with
//     the job's exchange key (seal.KindExchange), one sealed sequence per
//     exchange channel, so a frame replayed, reordered, dropped, moved to
//     another channel or sealed with a key the job never received is refused.
//   - Publisher seals batches of records as seal.KindIngest frames into the
//     JetStream stream SEALFLOW_INGEST_<stream> (the gateway role);
//     IngestSource reads them back as a runtime.Source.
//   - OutputSink seals result batches as seal.KindOutput frames into
//     SEALFLOW_OUT_<stream>; ReadOutput lets a recipient holding the output
//     key read a finished output stream.
//   - ScanForPlaintext reads every message of every stream on a server (KV
//     buckets and object stores included) and reports those containing given
//     byte strings: the check that the infrastructure sees no plaintext.
//
// # Frame bodies
//
// The body of an ingest or output frame is a record batch
// (record.AppendBatch). The last frame of a partition (seal.FlagLast) starts
// with the number of partitions of the stream as a uvarint, then a batch, so
// a reader learns from an authenticated source how many partitions must end.
//
// Frames a reader rejects are counted by reason (seal.RejectionCounter) and
// reported to an optional callback, which a worker forwards to the
// orchestrator as frame.rejected statements. A rejected frame is never
// emitted. A gap in a partition's sequence, or a stream that ends without
// every partition's last frame, fails the read: records are missing.
package confidential
