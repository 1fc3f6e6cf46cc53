-- name: HeartbeatGPUWorker :exec
INSERT INTO gpu_workers (id, hardware_id, slots, last_seen_at)
VALUES ($1, $2, $3, now())
ON CONFLICT (id) DO UPDATE SET hardware_id = EXCLUDED.hardware_id, slots = EXCLUDED.slots, last_seen_at = now();

-- name: DeleteGPUWorker :exec
DELETE FROM gpu_workers WHERE id = $1;

-- name: LockGPUPool :exec
-- Serializes lease grants of one pool until the transaction ends. An
-- advisory lock, not a row lock on hardware: that would also block the
-- foreign-key checks of job inserts and worker heartbeats.
SELECT pg_advisory_xact_lock(hashtext('gpu-pool:' || @hardware_id::text));

-- name: RequestGPULease :one
-- Joins the pool's queue (idempotent: a retried request keeps its place).
INSERT INTO gpu_leases (job_id, hardware_id, requested_at)
VALUES ($1, $2, $3)
ON CONFLICT (job_id) DO UPDATE SET job_id = EXCLUDED.job_id
RETURNING *;

-- name: GPUPoolUsage :one
-- Live capacity is the slots of workers seen within the liveness window.
SELECT
    (SELECT coalesce(sum(slots), 0)::bigint FROM gpu_workers w
      WHERE w.hardware_id = @hardware_id AND w.last_seen_at > now() - make_interval(secs => @live_seconds::float8)) AS capacity,
    (SELECT count(*) FROM gpu_leases l WHERE l.hardware_id = @hardware_id AND l.granted_at IS NOT NULL) AS granted,
    (SELECT count(*) FROM gpu_leases l WHERE l.hardware_id = @hardware_id AND l.granted_at IS NULL) AS waiting;

-- name: NextGPUWaiter :one
SELECT job_id FROM gpu_leases
WHERE hardware_id = $1 AND granted_at IS NULL
ORDER BY requested_at, job_id
LIMIT 1;

-- name: GrantGPULease :exec
UPDATE gpu_leases SET granted_at = now() WHERE job_id = $1;

-- name: ReleaseGPULease :exec
DELETE FROM gpu_leases WHERE job_id = $1;

-- name: ListGPUPoolUsage :many
SELECT h.id,
    (SELECT coalesce(sum(slots), 0)::bigint FROM gpu_workers w
      WHERE w.hardware_id = h.id AND w.last_seen_at > now() - make_interval(secs => @live_seconds::float8)) AS capacity,
    (SELECT count(*) FROM gpu_leases l WHERE l.hardware_id = h.id AND l.granted_at IS NOT NULL) AS granted,
    (SELECT count(*) FROM gpu_leases l WHERE l.hardware_id = h.id AND l.granted_at IS NULL) AS waiting
FROM hardware h ORDER BY h.position;

-- name: GPUQueuePosition :one
SELECT count(*) FROM gpu_leases
WHERE hardware_id = @hardware_id AND granted_at IS NULL
  AND (requested_at, job_id) < (@requested_at::timestamptz, @job_id::text);
