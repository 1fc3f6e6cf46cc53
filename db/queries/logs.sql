-- name: AppendJobLog :exec
INSERT INTO job_logs (job_id, level, message) VALUES ($1, $2, $3);

-- name: AppendJobLogs :copyfrom
-- A batch of lines, in order (COPY keeps it; ts is each row's clock time).
INSERT INTO job_logs (job_id, level, message) VALUES ($1, $2, $3);

-- name: ListJobLogs :many
-- The newest @lim lines after @since, returned oldest first.
SELECT * FROM (
    SELECT * FROM job_logs
    WHERE job_id = @job_id AND (sqlc.narg(since)::timestamptz IS NULL OR ts > sqlc.narg(since))
    ORDER BY ts DESC, id DESC
    LIMIT @lim
) newest
ORDER BY ts, id;

-- name: RecordMetric :exec
INSERT INTO job_metrics (job_id, step, epoch, training_loss, validation_loss, learning_rate, tokens, metrics, validation_metrics)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (job_id, step) DO UPDATE SET
    epoch = EXCLUDED.epoch,
    training_loss = EXCLUDED.training_loss,
    validation_loss = EXCLUDED.validation_loss,
    learning_rate = EXCLUDED.learning_rate,
    tokens = EXCLUDED.tokens,
    metrics = EXCLUDED.metrics,
    validation_metrics = EXCLUDED.validation_metrics;

-- name: ListJobMetrics :many
SELECT * FROM job_metrics WHERE job_id = $1 ORDER BY step;

-- name: ListJobLogsAfter :many
-- Up to @lim lines past the line @after, oldest first.
SELECT * FROM job_logs
WHERE job_id = @job_id AND id > @after
ORDER BY id
LIMIT @lim;
