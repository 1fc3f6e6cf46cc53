-- name: ListBaseModels :many
SELECT * FROM base_models ORDER BY position;

-- name: GetBaseModel :one
SELECT * FROM base_models WHERE id = $1;

-- name: ListHardware :many
SELECT * FROM hardware ORDER BY position;

-- name: GetHardware :one
SELECT * FROM hardware WHERE id = $1;

-- name: ListOrganizationPoolJobs :many
-- The organization's own jobs waiting for (queued) and holding (running) a
-- slot of each pool; other organizations' jobs are theirs to know. Leases
-- carry their job's organization since 0005, so no join to jobs is needed.
SELECT hardware_id,
    count(*) FILTER (WHERE granted_at IS NULL) AS queued,
    count(*) FILTER (WHERE granted_at IS NOT NULL) AS running
FROM gpu_leases
WHERE organization_id = $1
GROUP BY hardware_id;
