-- name: CreateJob :one
INSERT INTO jobs (
    id, organization_id, owner, name, description, base_model, hardware_id, status,
    training_dataset, training_dataset_id, training_file, validation_file, validation_dataset_id,
    epochs, learning_rate, batch_size, warmup_steps, suffix, metadata, seed, auto_deploy, created_at, updated_at,
    max_cost, early_stopping_patience, early_stopping_min_delta,
    method, dpo_beta, qlora, init_from, lora_rank
) VALUES (
    @id, @organization_id, @owner, @name, @description, @base_model, @hardware_id, @status,
    @training_dataset, @training_dataset_id, @training_file, @validation_file, @validation_dataset_id,
    @epochs, @learning_rate, @batch_size, @warmup_steps, @suffix, @metadata, @seed, @auto_deploy, @created_at, @created_at,
    sqlc.narg(max_cost), sqlc.narg(early_stopping_patience), @early_stopping_min_delta,
    @method, sqlc.narg(dpo_beta), @qlora, sqlc.narg(init_from), @lora_rank
)
-- A creator that finds the row written (or being written) by another
-- waits for that one's transaction and then writes nothing.
ON CONFLICT (id) DO NOTHING
RETURNING *;

-- name: GetJob :one
SELECT * FROM jobs WHERE organization_id = $1 AND id = $2;

-- name: GetJobByID :one
-- For workers, which act on a job their workflow already owns.
SELECT * FROM jobs WHERE id = $1;

-- name: DeleteJob :execrows
DELETE FROM jobs WHERE organization_id = $1 AND id = $2;

-- name: ListJobs :many
-- The sort key is one of a fixed set checked by the caller; each CASE arm is
-- NULL unless chosen, so only the chosen column orders the rows. Plans are
-- custom (db.Open), so the chosen arm folds into an index scan. @after, a
-- keyset cursor, is for the createdAt sorts only: the page starts after
-- that job, in (created_at, id) order, through jobs_org_created.
SELECT j.* FROM jobs j
WHERE j.organization_id = @organization_id
  AND (sqlc.narg(status)::text IS NULL OR status = sqlc.narg(status))
  AND (sqlc.narg(base_model)::text IS NULL OR base_model = sqlc.narg(base_model))
  AND (sqlc.narg(error_class)::text IS NULL OR error_class = sqlc.narg(error_class))
  AND (sqlc.narg(search)::text IS NULL
       OR name ILIKE '%' || sqlc.narg(search) || '%'
       OR description ILIKE '%' || sqlc.narg(search) || '%')
  AND (sqlc.narg(metadata)::jsonb IS NULL OR metadata @> sqlc.narg(metadata))
  AND (sqlc.narg(after)::text IS NULL
       OR (@sort::text = 'createdAt:desc' AND (j.created_at, j.id) <
           (SELECT a.created_at, a.id FROM jobs a WHERE a.organization_id = @organization_id AND a.id = sqlc.narg(after)))
       OR (@sort::text = 'createdAt:asc' AND (j.created_at, j.id) >
           (SELECT a.created_at, a.id FROM jobs a WHERE a.organization_id = @organization_id AND a.id = sqlc.narg(after))))
ORDER BY
    CASE WHEN @sort::text = 'createdAt:asc' THEN created_at END ASC,
    CASE WHEN @sort::text = 'createdAt:asc' THEN id END ASC,
    CASE WHEN @sort::text = 'createdAt:desc' THEN created_at END DESC,
    CASE WHEN @sort::text = 'updatedAt:asc' THEN updated_at END ASC,
    CASE WHEN @sort::text = 'updatedAt:desc' THEN updated_at END DESC,
    CASE WHEN @sort::text = 'startedAt:asc' THEN started_at END ASC NULLS LAST,
    CASE WHEN @sort::text = 'startedAt:desc' THEN started_at END DESC NULLS LAST,
    CASE WHEN @sort::text = 'finishedAt:asc' THEN finished_at END ASC NULLS LAST,
    CASE WHEN @sort::text = 'finishedAt:desc' THEN finished_at END DESC NULLS LAST,
    CASE WHEN @sort::text = 'name:asc' THEN name END ASC,
    CASE WHEN @sort::text = 'name:desc' THEN name END DESC,
    CASE WHEN @sort::text = 'status:asc' THEN job_status_rank(status) END ASC,
    CASE WHEN @sort::text = 'status:desc' THEN job_status_rank(status) END DESC,
    created_at DESC,
    id DESC
LIMIT @lim OFFSET @off;

-- name: CountJobs :one
-- How many jobs match, counting no further than @most: an exact count of a
-- big organization reads all its rows.
SELECT count(*) FROM (
    SELECT 1 FROM jobs
    WHERE organization_id = @organization_id
      AND (sqlc.narg(status)::text IS NULL OR status = sqlc.narg(status))
      AND (sqlc.narg(base_model)::text IS NULL OR base_model = sqlc.narg(base_model))
      AND (sqlc.narg(error_class)::text IS NULL OR error_class = sqlc.narg(error_class))
      AND (sqlc.narg(search)::text IS NULL
           OR name ILIKE '%' || sqlc.narg(search) || '%'
           OR description ILIKE '%' || sqlc.narg(search) || '%')
      AND (sqlc.narg(metadata)::jsonb IS NULL OR metadata @> sqlc.narg(metadata))
    LIMIT @most
) AS matching;

-- name: JobStats :many
SELECT status, count(*) AS n FROM jobs WHERE organization_id = $1 GROUP BY status;

-- name: MeasuredThroughput :one
-- Tokens per GPU-second of the organization's finished jobs of a model on
-- a pool: what estimates go by once the organization has trained there.
SELECT count(*) AS jobs,
    coalesce(sum(trained_tokens), 0)::float8 AS tokens,
    coalesce(sum(gpu_seconds), 0)::float8 AS seconds
FROM jobs
WHERE organization_id = @organization_id AND base_model = @base_model AND hardware_id = @hardware_id
  AND status IN ('completed', 'deployed') AND gpu_seconds > 0 AND trained_tokens > 0;

-- name: OrganizationSpend :one
-- What the organization's jobs have cost in USD, held slots included.
SELECT (
    coalesce((SELECT sum(j.cost) FROM jobs j WHERE j.organization_id = @organization_id), 0) +
    coalesce((SELECT sum(extract(epoch FROM clock_timestamp() - l.granted_at) * h.cost_per_hour / 3600)
              FROM gpu_leases l JOIN hardware h ON h.id = l.hardware_id
              WHERE l.organization_id = @organization_id AND l.granted_at IS NOT NULL), 0)
)::float8 AS spend;

-- name: GetIdempotencyKey :one
SELECT * FROM idempotency_keys
WHERE organization_id = $1 AND key = $2 AND created_at > now() - interval '24 hours';

-- name: DeleteStaleIdempotencyKey :exec
DELETE FROM idempotency_keys
WHERE organization_id = $1 AND key = $2 AND created_at <= now() - interval '24 hours';

-- name: CreateIdempotencyKey :exec
INSERT INTO idempotency_keys (organization_id, key, request_hash, job_id)
VALUES ($1, $2, $3, $4);

-- name: SetJobStatus :execrows
-- Records a workflow transition. started_at is set once, when training first
-- starts; finished_at is set when a run finishes and cleared when the job is
-- active again. The caller says which, from the status's own rules. A job
-- queued again (restarted) validates its files anew and is no longer
-- cancelled; a cancel marks the stopped job cancelled.
UPDATE jobs SET
    status      = @status,
    cancelled   = CASE WHEN @requeues::bool THEN false WHEN @cancels::bool THEN true ELSE cancelled END,
    validated_at = CASE WHEN @requeues::bool THEN NULL ELSE validated_at END,
    error       = sqlc.narg(error),
    error_code  = sqlc.narg(error_code),
    error_class = sqlc.narg(error_class),
    started_at  = CASE WHEN @starts::bool THEN coalesce(started_at, @at) ELSE started_at END,
    finished_at = CASE WHEN @finishes::bool THEN @at
                       WHEN @reactivates::bool THEN NULL
                       ELSE finished_at END,
    updated_at  = @at
WHERE id = @id;

-- name: SetJobProgress :execrows
UPDATE jobs SET
    epoch           = @epoch,
    trained_tokens  = @trained_tokens,
    training_loss   = @training_loss,
    validation_loss = sqlc.narg(validation_loss),
    updated_at      = now()
WHERE id = @id;

-- name: SetJobDeployed :execrows
-- A deploy that succeeds clears the failure of an earlier attempt.
UPDATE jobs SET status = @status, result_model = @result_model, error = NULL, error_code = NULL, error_class = NULL, updated_at = now()
WHERE id = @id;

-- name: AmendJob :exec
-- What a restart changes: NULL keeps the job's.
UPDATE jobs SET
    batch_size  = coalesce(sqlc.narg(batch_size), batch_size),
    hardware_id = coalesce(sqlc.narg(hardware_id), hardware_id),
    max_cost    = coalesce(sqlc.narg(max_cost), max_cost)
WHERE id = @id;

-- name: SetJobError :execrows
-- A failure that leaves the job's status as it was (a failed deploy).
UPDATE jobs SET error = @error, error_code = @error_code, error_class = @error_class, updated_at = now() WHERE id = @id;

-- name: LockOrganizationJobs :exec
-- Serializes job creation within one organization until the transaction
-- ends, so its cap on active jobs holds under concurrent requests.
SELECT pg_advisory_xact_lock(hashtext('org-jobs:' || @organization_id::text));

-- name: CountActiveJobs :one
SELECT count(*) FROM jobs WHERE organization_id = @organization_id AND status::text = ANY(@statuses::text[]);

-- name: MarkJobValidated :exec
UPDATE jobs SET validated_at = now() WHERE id = $1;

-- name: DeleteJobMetricsAfter :exec
-- The metric points of steps a restart from an earlier checkpoint trains again.
DELETE FROM job_metrics WHERE job_id = $1 AND step > $2;

-- name: ListJobsStartingFrom :many
-- The organization's jobs in @statuses (those that may still train) that
-- start from the adapter of job @init_from. total counts them all; at most
-- @lim are listed.
SELECT id, status, count(*) OVER () AS total FROM jobs
WHERE organization_id = @organization_id
  AND init_from = @init_from
  AND status::text = ANY(@statuses::text[])
ORDER BY created_at, id
LIMIT @lim;

-- name: GetJobDetail :one
-- A job with what its detail view shows beside its row, in one round
-- trip: the GPU time and price so far of the slot it holds (holding false
-- when none), and its best checkpoint, the lowest validation loss and the
-- earliest of equals (best_id '' when none has one).
SELECT sqlc.embed(j),
    (l.granted_at IS NOT NULL)::bool AS holding,
    coalesce(extract(epoch FROM clock_timestamp() - l.granted_at), 0)::float8 AS held_seconds,
    coalesce(extract(epoch FROM clock_timestamp() - l.granted_at) * h.cost_per_hour / 3600, 0)::float8 AS held_cost,
    coalesce(b.id, '')::text AS best_id,
    coalesce(b.step, 0)::int AS best_step,
    coalesce(b.epoch, 0)::int AS best_epoch,
    coalesce(b.validation_loss, 0)::float8 AS best_validation_loss
FROM jobs j
LEFT JOIN gpu_leases l ON l.job_id = j.id AND l.granted_at IS NOT NULL
LEFT JOIN hardware h ON h.id = l.hardware_id
LEFT JOIN LATERAL (
    SELECT c.id, c.step, c.epoch, c.validation_loss FROM job_checkpoints c
    WHERE c.job_id = j.id AND c.validation_loss IS NOT NULL
    ORDER BY c.validation_loss, c.step
    LIMIT 1
) b ON true
WHERE j.organization_id = @organization_id AND j.id = @id;
