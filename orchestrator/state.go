package orchestrator

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/sealflow/sealflow/engine/jobspec"
	"github.com/sealflow/sealflow/engine/record"

	"github.com/sealflow/sealflow/attest"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/policy"
	"github.com/sealflow/sealflow/seal"
)

// Genesis is the orchestrator's founding configuration. Its digest is bound into
// the orchestrator's attestation evidence, so a client that verifies the
// evidence knows who the operator is and which workers will be admitted: there
// is no first-writer-wins bootstrap.
type Genesis struct {
	// Name names the deployment.
	Name string `json:"name"`
	// Operator is the infrastructure operator's identity: the only party whose
	// node claims (tier, region, site) are accepted.
	Operator *party.Identity `json:"operator"`
	// Workers are the reference values worker evidence must meet (accepted
	// measurements, minimum TCB, debug, whether sim is allowed).
	Workers attest.ReferenceValues `json:"workers"`
	// NodeTTL is how long an admitted node identity lasts before it must
	// re-attest. Zero means one hour.
	NodeTTL Duration `json:"node_ttl,omitempty"`
}

// Digest returns the hex SHA-256 of the genesis configuration's JSON encoding.
func (g *Genesis) Digest() string {
	b, _ := json.Marshal(g)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func (g *Genesis) nodeTTL() time.Duration {
	if g.NodeTTL == 0 {
		return time.Hour
	}
	return time.Duration(g.NodeTTL)
}

// Duration is a time.Duration that encodes in JSON as a Go duration string.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// State is everything the orchestrator knows. It is plain data, serialized as
// JSON and persisted sealed; it holds data keys in clear, so it never leaves the
// TEE unsealed.
type State struct {
	Genesis  Genesis                      `json:"genesis"`
	Parties  map[party.ID]*party.Identity `json:"parties"`
	Streams  map[string]*Stream           `json:"streams"`
	Services map[string]*Service          `json:"services"`
	// Versions holds every submitted version of every service, by digest:
	// a job runs the version it was deployed with while a newer one waits
	// for its owners' approvals.
	Versions map[string]*Service `json:"versions,omitempty"`
	Nodes    map[party.ID]*Node  `json:"nodes"`
	Jobs     map[string]*Job     `json:"jobs"`
	// Checkpoints holds each job's last complete checkpoint and the ones
	// pending (see checkpoint.go), by job id.
	Checkpoints map[string]*JobCheckpoints `json:"checkpoints,omitempty"`
	// CodeKeys holds, by service id, the code key of the service's current
	// version, still wrapped to the orchestrator (code.go).
	CodeKeys map[string]*seal.Wrapped `json:"code_keys,omitempty"`
	// Savepoints holds the retained states of jobs, by name (savepoint.go).
	Savepoints map[string]*Savepoint `json:"savepoints,omitempty"`
	// Applied counts the statements applied, so a restored state can be
	// compared with the log.
	Applied uint64 `json:"applied"`
	// Recent holds the statements seen and not yet expired (issuer/nonce →
	// expiry), so that a restarted orchestrator still refuses their replay.
	Recent map[string]time.Time `json:"recent,omitempty"`
	// LastSeen is the time of the last statement seen.
	LastSeen time.Time `json:"last_seen"`
}

// Field is a typed field of a stream's record schema.
type Field struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// Stream is a data owner's registered stream.
type Stream struct {
	Name       string          `json:"name"`
	Owner      party.ID        `json:"owner"`
	Schema     []Field         `json:"schema"`
	Partitions int             `json:"partitions"`
	Site       string          `json:"site,omitempty"`
	Policy     json.RawMessage `json:"policy"`
	// PolicyDigest identifies the current policy version.
	PolicyDigest string `json:"policy_digest"`
	// Keys are the stream's data-key epochs, in clear inside the TEE.
	Keys map[uint32][]byte `json:"keys"`
	// Epoch is the current (highest) key epoch.
	Epoch uint32 `json:"epoch"`
	// Approved holds the service digests the owner approved explicitly.
	Approved map[string]bool `json:"approved"`
	// Revoked holds the service ids the owner revoked.
	Revoked map[string]bool `json:"revoked"`
}

// Manifest is what a service provider submits: the service, its JobSpec digest,
// what it reads and writes and who receives its outputs.
type Manifest struct {
	ID              string   `json:"id"`
	Version         int64    `json:"version"`
	SecurityVersion int64    `json:"security_version"`
	JobDigest       string   `json:"job_digest"`
	CodeDigests     []string `json:"code_digests,omitempty"`
	// Inputs are the names of the streams the service reads.
	Inputs []string `json:"inputs"`
	// Outputs are the names of the derived streams it writes.
	Outputs []string `json:"outputs"`
	// Recipients are the ids of the parties that should receive the outputs.
	Recipients []party.ID `json:"recipients"`
	// Tasks are the parallel tasks of the job and their placement constraints.
	Tasks []TaskSlot `json:"tasks"`
	// Spec is the JobSpec itself (JSON); its digest must be JobDigest.
	Spec json.RawMessage `json:"spec,omitempty"`
	// Stages, when set, split the service into JobSpecs by name, each run by
	// the tasks whose Stage names it and joined by intermediate streams sealed
	// with the job's exchange key (for example edge pre-aggregation feeding a
	// regional aggregation). The manifest digest owners approve covers them.
	Stages map[string]json.RawMessage `json:"stages,omitempty"`
}

// SinkSchema returns the schema of the records a sink of the manifest's specs
// writes to stream.
func (m *Manifest) SinkSchema(stream string) (*record.Schema, error) {
	specs := []json.RawMessage{m.Spec}
	for _, s := range m.Stages {
		specs = append(specs, s)
	}
	for _, raw := range specs {
		if len(raw) == 0 {
			continue
		}
		spec, err := jobspec.Parse(raw)
		if err != nil {
			return nil, err
		}
		res, err := spec.Resolve()
		if err != nil {
			return nil, err
		}
		for _, n := range res.Spec.Nodes {
			if n.Kind == jobspec.KindSink && n.Params.Stream == stream {
				return res.Nodes[n.ID].Out, nil
			}
		}
	}
	return nil, fmt.Errorf("no JobSpec of service %s writes stream %q", m.ID, stream)
}

// StageSpec returns the JobSpec a task runs: its stage's, or Spec.
func (m *Manifest) StageSpec(t *TaskSlot) json.RawMessage {
	if t.Stage != "" {
		return m.Stages[t.Stage]
	}
	return m.Spec
}

// Service is a submitted service.
type Service struct {
	Manifest Manifest `json:"manifest"`
	Provider party.ID `json:"provider"`
	// Digest is the hex SHA-256 of the manifest: what owners approve.
	Digest    string    `json:"digest"`
	Submitted time.Time `json:"submitted"`
}

// Node is an admitted worker node.
type Node struct {
	Identity   *party.Identity `json:"identity"`
	Claims     attest.Claims   `json:"claims"`
	Location   policy.Location `json:"location"`
	Slots      int             `json:"slots"`
	AdmittedAt time.Time       `json:"admitted_at"`
	Expires    time.Time       `json:"expires"`
	Draining   bool            `json:"draining,omitempty"`
	// Lost is when the node was declared lost (Machine.NodeLost); a lost
	// node is not admitted until it re-attests.
	Lost time.Time `json:"lost,omitzero"`
}

// Job is a deployed service: its tasks, where they run and its own keys.
type Job struct {
	ID      string `json:"id"`
	Service string `json:"service"`
	Digest  string `json:"digest"`
	// Tasks maps each task id to the node it runs on; the node is empty
	// while the task is unplaced (see Unplaced).
	Tasks map[string]party.ID `json:"tasks"`
	// Unplaced holds, by task id, why a task of a lost node could not be
	// placed on another node; it is placed when a suitable node is admitted.
	Unplaced map[string]string `json:"unplaced,omitempty"`
	// Keys are the job's own keys by purpose ("exchange", "checkpoint",
	// "output:<stream>"), in clear inside the TEE.
	Keys  map[string][]byte `json:"keys"`
	Epoch uint32            `json:"epoch"`
	// ExchangeEpoch is the epoch of the job's exchange key that its stages
	// seal intermediate streams with; it advances when a task moves
	// (Keys["exchange"] is epoch 0, Keys["exchange/<e>"] epoch e).
	ExchangeEpoch uint32 `json:"exchange_epoch,omitempty"`
	// Previous is what the job ran before its last upgrade (job.rollback
	// returns to it).
	Previous *Previous `json:"previous,omitempty"`
	// Scale overrides the parallelism of operators, by task then JobSpec
	// node (job.scale).
	Scale map[string]map[string]int `json:"scale,omitempty"`
	// Generations counts, by task, the rescalings of the task: an ack of an
	// older generation's run is refused.
	Generations map[string]uint64 `json:"generations,omitempty"`
	// Adaptive holds, by task then JobSpec node, the operators whose
	// parallelism follows the available slots within the provider's bounds
	// (job.scale with adaptive bounds; see adaptive.go).
	Adaptive map[string]map[string]*Adaptive `json:"adaptive,omitempty"`
	// Relieved holds, by task then node, when the task was moved off that
	// node as overloaded (RelieveTask): rebalancePreferred does not move it
	// back there before ReliefHold has passed, and placing it again (node
	// lost or drained, an upgrade or rollback, which carries the holds)
	// chooses that node only when no other qualifies.
	Relieved map[string]map[party.ID]time.Time `json:"relieved,omitempty"`
	Deployed time.Time                         `json:"deployed"`
	// Recipients holds, per recipient id, whether it received the output key.
	Recipients map[party.ID]bool `json:"recipients,omitempty"`
}

func newState(g Genesis) *State {
	return &State{
		Genesis:  g,
		Parties:  map[party.ID]*party.Identity{},
		Streams:  map[string]*Stream{},
		Services: map[string]*Service{},
		Nodes:    map[party.ID]*Node{},
		Jobs:     map[string]*Job{},
	}
}
