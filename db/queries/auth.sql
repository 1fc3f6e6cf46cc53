-- name: CreateAPIKey :exec
INSERT INTO api_keys (id, key_hash, organization_id, user_id, scopes)
VALUES ($1, $2, $3, $4, $5);

-- name: GetAPIKeyByHash :one
SELECT * FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL;
