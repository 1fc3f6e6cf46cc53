-- What a job went through, what it can resume from, and the caller's own
-- labels: shown by the seed API and by the OpenAI-shaped /v1 view alike.

-- metadata: up to 16 string pairs the caller attaches, filterable in lists.
-- seed: makes a training run repeatable; chosen at random when not given.
-- cancelled: a stopped job that was cancelled rather than paused; it does
-- not resume from its checkpoints.
-- auto_deploy: deploy as soon as training completes (jobs created through
-- /v1, whose clients expect a usable model when the job succeeds).
-- validated_at: the current run's datasets passed validation; a queued job
-- without it is still validating its files.
ALTER TABLE jobs
    ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN seed integer NOT NULL DEFAULT 0,
    ADD COLUMN cancelled boolean NOT NULL DEFAULT false,
    ADD COLUMN auto_deploy boolean NOT NULL DEFAULT false,
    ADD COLUMN validated_at timestamptz;
CREATE INDEX jobs_metadata ON jobs USING gin (metadata jsonb_path_ops);
-- Jobs from before validation was recorded: those that got as far as the
-- GPU queue, or further, had validated their files.
UPDATE jobs SET validated_at = updated_at
WHERE started_at IS NOT NULL OR id IN (SELECT job_id FROM gpu_leases);

-- A job's notable moments, each with its cause. id is chosen by the writer
-- from what the event is, so a retried write records it once; seq orders.
CREATE TABLE job_events (
    seq        bigserial PRIMARY KEY,
    id         text NOT NULL UNIQUE,
    job_id     text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    level      text NOT NULL CHECK (level IN ('info', 'warn', 'error')),
    type       text NOT NULL,
    message    text NOT NULL,
    data       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX job_events_job ON job_events (job_id, seq);

-- The checkpoints a job keeps at the end of its epochs (the latest few), to
-- list and to restart from.
CREATE TABLE job_checkpoints (
    id              text PRIMARY KEY,
    job_id          text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step            integer NOT NULL,
    epoch           integer NOT NULL,
    training_loss   double precision,
    validation_loss double precision,
    trained_tokens  bigint NOT NULL,
    bytes           bigint NOT NULL,
    blob_key        text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (job_id, step)
);
