package client

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/sealflow/sealflow/orchestrator"
	"github.com/sealflow/sealflow/orchestrator/api"
	"github.com/sealflow/sealflow/party"
	"github.com/sealflow/sealflow/seal"
)

// RegisterParty registers kf's public identity (owners, providers and
// recipients register themselves).
func (c *Client) RegisterParty(ctx context.Context, kf *party.KeyFile) error {
	_, err := c.Submit(ctx, kf, orchestrator.TypePartyRegister, orchestrator.RegisterParty{Identity: orchestrator.Identity{Identity: kf.Identity()}})
	return err
}

// UploadStreamKey wraps a stream's data key of an epoch to the pinned
// orchestrator's HPKE key and uploads it. The key never travels in clear.
func (c *Client) UploadStreamKey(ctx context.Context, kf *party.KeyFile, stream string, epoch uint32, key []byte) error {
	pub, err := c.Trust.Identity.HPKEPublicKey()
	if err != nil {
		return err
	}
	w, err := seal.Wrap(pub, orchestrator.StreamKeyInfo(stream, epoch, c.Trust.Identity.ID()).Bytes(), key)
	if err != nil {
		return err
	}
	_, err = c.Submit(ctx, kf, orchestrator.TypeStreamKey, orchestrator.StreamKey{Stream: stream, Epoch: epoch, Wrapped: w})
	return err
}

// RegisterStream registers a stream with its policy, generates its first
// data key (epoch 1), uploads it wrapped, and returns the key for sealing.
func (c *Client) RegisterStream(ctx context.Context, kf *party.KeyFile, rs orchestrator.RegisterStream) ([]byte, error) {
	if _, err := c.Submit(ctx, kf, orchestrator.TypeStreamRegister, rs); err != nil {
		return nil, fmt.Errorf("registering stream %s: %w", rs.Name, err)
	}
	key := make([]byte, seal.KeySize)
	rand.Read(key)
	if err := c.UploadStreamKey(ctx, kf, rs.Name, 1, key); err != nil {
		return nil, fmt.Errorf("uploading the key of stream %s: %w", rs.Name, err)
	}
	return key, nil
}

// RequestOutputKey asks for the key of a job's output stream as a recipient
// and unwraps it; it is released only if every contributing owner's policy
// accepts the recipient.
func (c *Client) RequestOutputKey(ctx context.Context, kf *party.KeyFile, job, output string) ([]byte, error) {
	resp, err := c.Submit(ctx, kf, orchestrator.TypeOutputRequest, orchestrator.OutputRequest{Job: job, Output: output})
	if err != nil {
		return nil, err
	}
	var r orchestrator.Release
	if err := remarshal(resp.Result, &r); err != nil {
		return nil, fmt.Errorf("the orchestrator's release: %w", err)
	}
	return kf.Unwrap(orchestrator.WrapInfoFor(r.Purpose, r.Scope, r.Epoch, kf.ID()).Bytes(), r.Wrapped)
}

// JobService returns the deployed job's service, with the manifest the job
// was deployed with (matched by digest).
func (c *Client) JobService(ctx context.Context, job string) (*orchestrator.Service, *api.JobView, error) {
	var jobs []api.JobView
	if err := c.Get(ctx, "/v1/jobs", &jobs); err != nil {
		return nil, nil, fmt.Errorf("fetching jobs: %w", err)
	}
	for i := range jobs {
		if jobs[i].ID != job {
			continue
		}
		var services []*orchestrator.Service
		if err := c.Get(ctx, "/v1/services", &services); err != nil {
			return nil, nil, fmt.Errorf("fetching services: %w", err)
		}
		for _, s := range services {
			if s.Manifest.ID == jobs[i].Service && s.Digest == jobs[i].Digest {
				return s, &jobs[i], nil
			}
		}
		return nil, nil, fmt.Errorf("job %s runs service %s digest %s, which the orchestrator no longer lists", job, jobs[i].Service, jobs[i].Digest)
	}
	return nil, nil, fmt.Errorf("job %q is not deployed", job)
}
