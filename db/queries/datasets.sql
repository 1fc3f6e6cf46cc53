-- name: CreateDataset :one
INSERT INTO datasets (id, organization_id, filename, bytes, sha256, blob_key, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING *;

-- name: GetDataset :one
SELECT * FROM datasets WHERE organization_id = $1 AND id = $2;

-- name: ListDatasets :many
SELECT * FROM datasets
WHERE organization_id = $1
ORDER BY created_at DESC, id DESC
LIMIT $2 OFFSET $3;

-- name: CountDatasets :one
SELECT count(*) FROM datasets WHERE organization_id = $1;
