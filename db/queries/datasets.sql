-- name: CreateDataset :one
INSERT INTO datasets (id, organization_id, filename, bytes, sha256, blob_key, created_by, examples, tokens, max_tokens, label_problem, format)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING *;

-- name: DatasetStatsByBlobKey :one
-- A job's validation asks by the file it was given: the object's key.
SELECT examples, tokens, max_tokens, label_problem, format FROM datasets WHERE blob_key = $1;

-- name: DatasetBlobKeysIn :many
-- Which of @keys are datasets' objects: the rest are orphans to sweep.
SELECT blob_key FROM datasets WHERE blob_key = ANY(@keys::text[]);

-- name: GetDataset :one
SELECT * FROM datasets WHERE organization_id = $1 AND id = $2;

-- name: ListDatasets :many
SELECT * FROM datasets
WHERE organization_id = $1
ORDER BY created_at DESC, id DESC
LIMIT $2 OFFSET $3;

-- name: CountDatasets :one
SELECT count(*) FROM datasets WHERE organization_id = $1;

-- name: LockDatasetQuota :exec
-- Serializes the quota check and insert of one organization's datasets
-- until the transaction ends, so parallel uploads cannot overshoot it.
SELECT pg_advisory_xact_lock(hashtext('dataset-quota:' || @organization_id::text));

-- name: DatasetUsage :one
SELECT count(*) AS datasets, coalesce(sum(bytes), 0)::bigint AS bytes
FROM datasets WHERE organization_id = $1;

-- name: LockDataset :one
-- Holds the dataset until the transaction ends: a job being created with it
-- waits (the jobs_dataset_exists trigger), so none starts using it unseen.
SELECT * FROM datasets WHERE organization_id = $1 AND id = $2 FOR UPDATE;

-- name: ListJobsReadingDataset :many
-- The organization's jobs in @statuses (those that may still read their
-- datasets) that use the dataset. total counts them all; at most @lim are
-- listed.
SELECT id, status, count(*) OVER () AS total FROM jobs
WHERE organization_id = @organization_id
  AND (training_dataset_id = @dataset_id OR validation_dataset_id = @dataset_id)
  AND status::text = ANY(@statuses::text[])
ORDER BY created_at, id
LIMIT @lim;

-- name: DeleteDataset :execrows
DELETE FROM datasets WHERE organization_id = $1 AND id = $2;

-- name: ListDatasetsNewestFirst :many
-- A page of the organization's datasets older than the dataset @after
-- (when set), newest first: a cursor that holds while datasets come and go.
SELECT d.* FROM datasets d
WHERE d.organization_id = @organization_id
  AND (sqlc.narg(after)::text IS NULL
       OR (d.created_at, d.id) < (SELECT a.created_at, a.id FROM datasets a WHERE a.organization_id = @organization_id AND a.id = sqlc.narg(after)))
ORDER BY d.created_at DESC, d.id DESC
LIMIT @lim;

-- name: ListDatasetsOldestFirst :many
SELECT d.* FROM datasets d
WHERE d.organization_id = @organization_id
  AND (sqlc.narg(after)::text IS NULL
       OR (d.created_at, d.id) > (SELECT a.created_at, a.id FROM datasets a WHERE a.organization_id = @organization_id AND a.id = sqlc.narg(after)))
ORDER BY d.created_at, d.id
LIMIT @lim;
