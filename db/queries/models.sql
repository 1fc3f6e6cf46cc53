-- name: CreateDeployedModel :exec
INSERT INTO deployed_models (name, organization_id, job_id, base_model, blob_key, card, adapter)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (job_id) DO UPDATE SET name = EXCLUDED.name, blob_key = EXCLUDED.blob_key, card = EXCLUDED.card, adapter = EXCLUDED.adapter;

-- name: ListDeployedModels :many
SELECT * FROM deployed_models WHERE organization_id = $1 ORDER BY created_at DESC, name;

-- name: GetDeployedModel :one
SELECT * FROM deployed_models WHERE organization_id = $1 AND name = $2;

-- name: FindModelNameOwner :one
-- Another job of the organization that already deployed this model name.
SELECT * FROM deployed_models WHERE organization_id = $1 AND name = $2 AND job_id <> $3;

-- name: GetJobAdapter :one
-- The adapter the job's deployed model is served as, if any.
SELECT adapter FROM deployed_models WHERE job_id = $1;
