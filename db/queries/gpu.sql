-- name: HeartbeatGPUWorker :exec
INSERT INTO gpu_workers (id, hardware_id, slots, trainer, last_seen_at)
VALUES ($1, $2, $3, $4, now())
ON CONFLICT (id) DO UPDATE SET hardware_id = EXCLUDED.hardware_id, slots = EXCLUDED.slots, trainer = EXCLUDED.trainer, last_seen_at = now();

-- name: LivePoolTrainers :many
-- The trainers the pool's live workers advertise, each once.
SELECT DISTINCT trainer FROM gpu_workers
WHERE hardware_id = @hardware_id AND last_seen_at > now() - make_interval(secs => @live_seconds::float8)
ORDER BY trainer;

-- name: DeleteGPUWorker :exec
DELETE FROM gpu_workers WHERE id = $1;

-- name: LockGPUPool :exec
-- Serializes lease grants of one pool until the transaction ends. An
-- advisory lock, not a row lock on hardware: that would also block the
-- foreign-key checks of job inserts and worker heartbeats.
SELECT pg_advisory_xact_lock(hashtext('gpu-pool:' || @hardware_id::text));

-- name: RequestGPULease :one
-- Joins the pool's queue (idempotent: a retried request keeps its place).
-- A lease left on another pool (a release that failed before a restart
-- moved the job) moves to this one, at the back of its queue, and frees
-- the old pool's slot; that pool's next dispatch hands it on.
INSERT INTO gpu_leases (job_id, hardware_id, organization_id, requested_at)
VALUES (@job_id, @hardware_id, @organization_id, @requested_at)
ON CONFLICT (job_id) DO UPDATE SET
    hardware_id = EXCLUDED.hardware_id,
    requested_at = CASE WHEN gpu_leases.hardware_id = EXCLUDED.hardware_id
                        THEN gpu_leases.requested_at ELSE EXCLUDED.requested_at END,
    granted_at = CASE WHEN gpu_leases.hardware_id = EXCLUDED.hardware_id THEN gpu_leases.granted_at END,
    notified_at = CASE WHEN gpu_leases.hardware_id = EXCLUDED.hardware_id THEN gpu_leases.notified_at END
RETURNING *;

-- name: GPUPoolUsage :one
-- Live capacity is the slots of workers seen within the liveness window.
SELECT
    (SELECT coalesce(sum(slots), 0)::bigint FROM gpu_workers w
      WHERE w.hardware_id = @hardware_id AND w.last_seen_at > now() - make_interval(secs => @live_seconds::float8)) AS capacity,
    (SELECT count(*) FROM gpu_leases l WHERE l.hardware_id = @hardware_id AND l.granted_at IS NOT NULL) AS granted,
    (SELECT count(*) FROM gpu_leases l WHERE l.hardware_id = @hardware_id AND l.granted_at IS NULL) AS waiting;

-- name: NextFairGPUWaiter :one
-- The next job to get a slot: each organization's oldest waiter competes.
-- The organization holding the fewest slots of the pool wins, then the one
-- served least recently; organizations never served come first, those
-- with the fewest waiting jobs before others, so an organization new to a
-- long queue gets one of the next turns; then the oldest request. One
-- organization's thousand jobs therefore never starve another's one job.
WITH heads AS (
    SELECT DISTINCT ON (organization_id) job_id, organization_id, requested_at
    FROM gpu_leases
    WHERE hardware_id = @hardware_id AND granted_at IS NULL
    ORDER BY organization_id, requested_at, job_id
), counts AS (
    SELECT organization_id,
        count(*) FILTER (WHERE granted_at IS NOT NULL) AS held,
        count(*) FILTER (WHERE granted_at IS NULL) AS waiting
    FROM gpu_leases
    WHERE hardware_id = @hardware_id
    GROUP BY organization_id
)
SELECT h.job_id FROM heads h
JOIN counts c ON c.organization_id = h.organization_id
LEFT JOIN gpu_pool_turns t ON t.hardware_id = @hardware_id AND t.organization_id = h.organization_id
ORDER BY c.held, t.last_granted_at NULLS FIRST,
    CASE WHEN t.last_granted_at IS NULL THEN c.waiting END,
    h.requested_at, h.job_id
LIMIT 1;

-- name: GrantGPULease :one
UPDATE gpu_leases SET granted_at = now() WHERE job_id = $1
RETURNING *;

-- name: RecordGPUTurn :exec
INSERT INTO gpu_pool_turns (hardware_id, organization_id, last_granted_at)
VALUES ($1, $2, clock_timestamp())
ON CONFLICT (hardware_id, organization_id) DO UPDATE SET last_granted_at = EXCLUDED.last_granted_at;

-- name: UnnotifiedGPUGrants :many
-- Grants whose workflow has not been told yet.
SELECT job_id, requested_at FROM gpu_leases
WHERE hardware_id = $1 AND granted_at IS NOT NULL AND notified_at IS NULL
ORDER BY granted_at, job_id;

-- name: MarkGPUGrantNotified :exec
UPDATE gpu_leases SET notified_at = now() WHERE job_id = $1 AND requested_at = $2;

-- name: ReleaseGPULease :many
-- Returns the freed lease's pool (no row when there was none), and adds a
-- granted lease's GPU time to its job's, so every path that frees a slot
-- (stop, failure, budget, hang, deletion) also accounts for it.
WITH freed AS (
    DELETE FROM gpu_leases WHERE job_id = $1
    RETURNING job_id, hardware_id, granted_at
), spent AS (
    UPDATE jobs j SET
        gpu_seconds = j.gpu_seconds + extract(epoch FROM clock_timestamp() - f.granted_at),
        cost = j.cost + extract(epoch FROM clock_timestamp() - f.granted_at) * h.cost_per_hour / 3600
    FROM freed f JOIN hardware h ON h.id = f.hardware_id
    WHERE j.id = f.job_id AND f.granted_at IS NOT NULL
)
SELECT hardware_id FROM freed;

-- name: ListGPUPoolUsage :many
SELECT h.id,
    (SELECT coalesce(sum(slots), 0)::bigint FROM gpu_workers w
      WHERE w.hardware_id = h.id AND w.last_seen_at > now() - make_interval(secs => @live_seconds::float8)) AS capacity,
    (SELECT count(*) FROM gpu_leases l WHERE l.hardware_id = h.id AND l.granted_at IS NOT NULL) AS granted,
    (SELECT count(*) FROM gpu_leases l WHERE l.hardware_id = h.id AND l.granted_at IS NULL) AS waiting
FROM hardware h ORDER BY h.position;

-- name: GetGPULease :one
SELECT * FROM gpu_leases WHERE job_id = $1;

-- name: GetJobQueuePlace :one
-- A job's place in its pool's queue, as its owner sees it: granted, or how
-- many of the same organization's jobs wait ahead of it.
SELECT (l.granted_at IS NOT NULL)::bool AS granted,
    (SELECT count(*) FROM gpu_leases a
      WHERE a.hardware_id = l.hardware_id AND a.organization_id = l.organization_id AND a.granted_at IS NULL
        AND (a.requested_at, a.job_id) < (l.requested_at, l.job_id)) AS ahead
FROM gpu_leases l
WHERE l.job_id = @job_id AND l.organization_id = @organization_id;
