package db

import (
	"context"
	"fmt"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
)

// APIKey is a stored API key: the hash of its secret, never the secret,
// and what it grants.
type APIKey struct {
	ID             string
	Hash           []byte
	OrganizationID string
	UserID         string
	Scopes         []string
}

// CreateAPIKey stores k.
func (c Conn) CreateAPIKey(ctx context.Context, k APIKey) error {
	err := c.q.CreateAPIKey(ctx, c.db, dbsqlc.CreateAPIKeyParams{
		ID: k.ID, KeyHash: k.Hash, OrganizationID: k.OrganizationID, UserID: k.UserID, Scopes: k.Scopes,
	})
	if err != nil {
		return fmt.Errorf("store API key: %w", err)
	}
	return nil
}

// APIKey reads the unrevoked key whose secret hashes to hash; ErrNotFound
// when there is none.
func (c Conn) APIKey(ctx context.Context, hash []byte) (APIKey, error) {
	r, err := c.q.GetAPIKeyByHash(ctx, c.db, hash)
	if err != nil {
		return APIKey{}, fmt.Errorf("look up API key: %w", NotFound(err))
	}
	return APIKey{ID: r.ID, Hash: r.KeyHash, OrganizationID: r.OrganizationID, UserID: r.UserID, Scopes: r.Scopes}, nil
}

// IdempotencyKey is what a job request's Idempotency-Key recorded: the
// request it came with and the job that request created.
type IdempotencyKey struct {
	RequestHash []byte
	JobID       string
}

// IdempotencyKey reads the organization's idempotency key; ErrNotFound
// when it has none of that name from the last 24 hours.
func (c Conn) IdempotencyKey(ctx context.Context, org, key string) (IdempotencyKey, error) {
	r, err := c.q.GetIdempotencyKey(ctx, c.db, dbsqlc.GetIdempotencyKeyParams{OrganizationID: org, Key: key})
	if err != nil {
		return IdempotencyKey{}, fmt.Errorf("read idempotency key: %w", NotFound(err))
	}
	return IdempotencyKey{RequestHash: r.RequestHash, JobID: r.JobID}, nil
}
