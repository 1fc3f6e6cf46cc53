-- name: RecordJobEvent :execrows
-- A retried write carries the same id and records nothing new.
INSERT INTO job_events (id, job_id, level, type, message, data)
VALUES (@id, @job_id, @level, @type, @message, @data)
ON CONFLICT (id) DO NOTHING;

-- name: ListJobEventsNewestFirst :many
-- Older than the event @after (when set), newest first, as OpenAI lists them.
SELECT e.* FROM job_events e
WHERE e.job_id = @job_id
  AND (sqlc.narg(after)::text IS NULL
       OR e.seq < (SELECT a.seq FROM job_events a WHERE a.job_id = @job_id AND a.id = sqlc.narg(after)))
ORDER BY e.seq DESC
LIMIT @lim;

-- name: ListJobEventsOldestFirst :many
-- Newer than the event @after (when set), oldest first, for reading along.
SELECT e.* FROM job_events e
WHERE e.job_id = @job_id
  AND (sqlc.narg(after)::text IS NULL
       OR e.seq > (SELECT a.seq FROM job_events a WHERE a.job_id = @job_id AND a.id = sqlc.narg(after)))
ORDER BY e.seq
LIMIT @lim;

-- name: JobEventExists :one
SELECT EXISTS (SELECT 1 FROM job_events WHERE job_id = @job_id AND id = @id);
