// Package checkpoint stores sealed snapshots of task state in a JetStream
// Object Store and checks their integrity when they are read back.
//
// The store is untrusted (see the design's threat model): whoever runs NATS can
// delete an object, change its bytes, put an older checkpoint's object back
// under a newer name, or copy another task's or job's object over it. Each
// snapshot is therefore sealed with the job's checkpoint key (AES-256-GCM, in
// chunks, so a 100 MB snapshot streams through a bounded buffer) under a header
// that names exactly which snapshot it is: job, version, task, key-group range
// and checkpoint id. Put returns the SHA-256 digest of the sealed object; the
// orchestrator records it when the task acknowledges the checkpoint. Get takes
// that recorded digest and refuses, each with its own rule:
//
//   - RuleMissing: the object is not in the store;
//   - RuleDigest: the object is not the one whose digest was recorded
//     (substituted, modified or stale);
//   - RuleForeign: the object was sealed for another job, version, task,
//     key-group range, checkpoint or key;
//   - RuleTampered: the object does not open (its header or body was changed,
//     or it was cut short).
//
// Get returns a snapshot only after every chunk has opened and the digest has
// matched; it never returns part of one. A Manifest lists the snapshots and the
// source positions of one complete checkpoint, with a canonical binary encoding
// and a digest.
//
// PutIncremental writes a snapshot incrementally: only the content-defined
// chunks that a base snapshot (the restored one, or the last accepted one)
// does not hold go into a new sealed pack, and a sealed index lists every
// chunk's pack (by the digest of its sealed object), place and SHA-256. The
// recorded digest is the index's, so GetSnapshot refuses a missing,
// substituted, stale or foreign pack by the same rules, and never returns
// part of a snapshot. Release and Prune delete only what no kept snapshot
// references.
package checkpoint

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"

	"github.com/sealflow/sealflow/engine/state"
)

// The rules a checkpoint refusal names.
const (
	RuleMissing  = "checkpoint.missing"
	RuleDigest   = "checkpoint.digest"
	RuleForeign  = "checkpoint.foreign"
	RuleTampered = "checkpoint.tampered"
	// RuleKey refuses a snapshot sealed with a key epoch the keyring does
	// not hold.
	RuleKey = "checkpoint.key"
)

// Refusal is the error of a snapshot that Get refuses: it names the rule, the
// snapshot and what was wrong.
type Refusal struct {
	// Rule is one of the Rule constants.
	Rule string
	// ID is the snapshot that was asked for.
	ID SnapshotID
	// Reason says what was wrong.
	Reason string
	// Err is the underlying error, if any.
	Err error
}

// Error implements error.
func (r *Refusal) Error() string {
	s := fmt.Sprintf("refused by rule %s: snapshot %s: %s", r.Rule, r.ID, r.Reason)
	if r.Err != nil {
		s += ": " + r.Err.Error()
	}
	return s
}

// RefusedBy returns the name of the rule that refused.
func (r *Refusal) RefusedBy() string { return r.Rule }

// Unwrap returns the underlying error.
func (r *Refusal) Unwrap() error { return r.Err }

// RuleOf returns the rule of a checkpoint refusal in err's chain, or "".
func RuleOf(err error) string {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Rule
	}
	return ""
}

func refuse(rule string, id SnapshotID, err error, format string, args ...any) error {
	return &Refusal{Rule: rule, ID: id, Reason: fmt.Sprintf(format, args...), Err: err}
}

// SnapshotID names one task's snapshot in one checkpoint of a job.
type SnapshotID struct {
	// Job is the job id.
	Job string `json:"job"`
	// Version is the version of the service the job runs.
	Version int64 `json:"version"`
	// Task is the task id.
	Task string `json:"task"`
	// KeyGroups is the range of key groups the snapshot holds.
	KeyGroups state.Range `json:"key_groups"`
	// Checkpoint is the checkpoint id, increasing per job.
	Checkpoint uint64 `json:"checkpoint"`
	// Writer, when set, is the node that wrote the snapshot. It is part of
	// the object name: two runs of a task (a moved task's destination and
	// the source not yet stopped) may take a checkpoint of the same id, and
	// neither may overwrite, or delete, the other's snapshot.
	Writer string `json:"writer,omitempty"`
}

// Validate checks that the id can name a stored snapshot.
func (id SnapshotID) Validate() error {
	if err := validName("job", id.Job); err != nil {
		return err
	}
	if err := validName("task", id.Task); err != nil {
		return err
	}
	if err := id.KeyGroups.Validate(state.MaxMaxParallelism); err != nil {
		return fmt.Errorf("checkpoint: snapshot of task %q: %w", short(id.Task), err)
	}
	if id.Writer != "" {
		if err := validName("writer", id.Writer); err != nil {
			return err
		}
	}
	return nil
}

// Object returns the object name of the snapshot:
// "<job>/<checkpoint>/<task>/<from>-<to>[/<writer>]", with job, task and
// writer path-escaped so that ids containing "/" cannot collide.
func (id SnapshotID) Object() string {
	name := url.PathEscape(id.Job) + "/" + strconv.FormatUint(id.Checkpoint, 10) + "/" + url.PathEscape(id.Task) + "/" +
		strconv.Itoa(id.KeyGroups.From) + "-" + strconv.Itoa(id.KeyGroups.To)
	if id.Writer != "" {
		name += "/" + url.PathEscape(id.Writer)
	}
	return name
}

// String describes the snapshot for messages.
func (id SnapshotID) String() string {
	return fmt.Sprintf("%s v%d checkpoint %d task %s key groups %v", id.Job, id.Version, id.Checkpoint, id.Task, id.KeyGroups)
}

// Digest is the SHA-256 of a sealed snapshot object (or of a manifest's
// canonical encoding).
type Digest [32]byte

// String returns the digest in hex.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// IsZero reports whether d is all zero (no digest).
func (d Digest) IsZero() bool { return d == Digest{} }

// MarshalText implements encoding.TextMarshaler (hex).
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Digest) UnmarshalText(b []byte) error {
	v, err := ParseDigest(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// ParseDigest parses a digest written by Digest.String.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(d) {
		return d, fmt.Errorf("checkpoint: digest %q is not %d hex-encoded bytes", short(s), len(d))
	}
	copy(d[:], b)
	return d, nil
}

// KeyScope returns the keyring scope of a job's checkpoint key, as the worker
// installs it: "<job>/checkpoint".
func KeyScope(job string) string { return job + "/checkpoint" }
