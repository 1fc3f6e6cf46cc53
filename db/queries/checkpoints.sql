-- name: RecordJobCheckpoint :exec
-- A retried epoch saves the same step again; its newest copy wins.
INSERT INTO job_checkpoints (id, job_id, step, epoch, training_loss, validation_loss, trained_tokens, bytes, blob_key)
VALUES (@id, @job_id, @step, @epoch, @training_loss, @validation_loss, @trained_tokens, @bytes, @blob_key)
ON CONFLICT (job_id, step) DO UPDATE SET
    epoch = EXCLUDED.epoch,
    training_loss = EXCLUDED.training_loss,
    validation_loss = EXCLUDED.validation_loss,
    trained_tokens = EXCLUDED.trained_tokens,
    bytes = EXCLUDED.bytes,
    blob_key = EXCLUDED.blob_key;

-- name: ListJobCheckpoints :many
-- Older than the checkpoint @after (when set), newest first, with the
-- trainer's own figures (DPO's rewards, say) at each checkpoint's step.
SELECT sqlc.embed(c), m.metrics, m.validation_metrics
FROM job_checkpoints c
LEFT JOIN job_metrics m ON m.job_id = c.job_id AND m.step = c.step
WHERE c.job_id = @job_id
  AND (sqlc.narg(after)::text IS NULL
       OR c.step < (SELECT a.step FROM job_checkpoints a WHERE a.job_id = @job_id AND a.id = sqlc.narg(after)))
ORDER BY c.step DESC
LIMIT @lim;

-- name: GetJobCheckpoint :one
SELECT * FROM job_checkpoints WHERE job_id = @job_id AND id = @id;

-- name: DeleteJobCheckpointsFrom :many
-- The checkpoints a restart abandons (after the one it resumes from), or
-- the ones past the newest few the job keeps, except its best (the lowest
-- validation loss up to @after_step); their blobs go with them.
DELETE FROM job_checkpoints c
WHERE c.job_id = @job_id
  AND (c.step > @after_step
       OR (c.step NOT IN (SELECT k.step FROM job_checkpoints k WHERE k.job_id = @job_id ORDER BY k.step DESC LIMIT @keep)
           AND c.step IS DISTINCT FROM (
               SELECT b.step FROM job_checkpoints b
               WHERE b.job_id = @job_id AND b.validation_loss IS NOT NULL AND b.step <= @after_step
               ORDER BY b.validation_loss, b.step LIMIT 1)))
RETURNING c.blob_key;

-- name: BestJobCheckpoint :one
-- The job's checkpoint with the lowest validation loss, the earliest of equals.
SELECT * FROM job_checkpoints
WHERE job_id = @job_id AND validation_loss IS NOT NULL
ORDER BY validation_loss, step
LIMIT 1;

-- name: GetJobCheckpointAtStep :one
SELECT * FROM job_checkpoints WHERE job_id = @job_id AND step = @step;
