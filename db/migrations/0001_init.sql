-- Schema of tuneforge's read model and catalog. Migrations are applied in
-- file-name order by `tuneforge migrate`; each runs once, in a transaction.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE api_keys (
    id              text PRIMARY KEY,
    key_hash        bytea NOT NULL UNIQUE,
    organization_id text NOT NULL,
    user_id         text NOT NULL,
    scopes          text[] NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);

CREATE TABLE hardware (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    gpu_memory    text NOT NULL,
    gpu_memory_gb integer NOT NULL,
    gpu_count     integer NOT NULL,
    cost_per_hour double precision NOT NULL,
    -- Training throughput relative to one A100 40GB; used by the cost model.
    speed_factor  double precision NOT NULL,
    position      integer NOT NULL
);

CREATE TABLE base_models (
    id                  text PRIMARY KEY,
    name                text NOT NULL,
    provider            text NOT NULL,
    parameter_count     text NOT NULL,
    parameters_billions double precision NOT NULL,
    supported_tasks     text[] NOT NULL,
    max_sequence_length integer NOT NULL,
    -- Total GPU memory a LoRA fine-tune of this model needs.
    min_gpu_memory_gb   integer NOT NULL,
    default_hardware_id text NOT NULL REFERENCES hardware (id),
    position            integer NOT NULL
);

INSERT INTO hardware (id, name, gpu_memory, gpu_memory_gb, gpu_count, cost_per_hour, speed_factor, position) VALUES
    ('gpu-a100-40gb',    'NVIDIA A100 40GB',    '40GB', 40, 1, 3.50,  1.0, 1),
    ('gpu-a100-80gb',    'NVIDIA A100 80GB',    '80GB', 80, 1, 5.00,  1.3, 2),
    ('gpu-a100-80gb-x4', 'NVIDIA A100 80GB x4', '80GB', 80, 4, 18.00, 4.6, 3);

INSERT INTO base_models (id, name, provider, parameter_count, parameters_billions, supported_tasks, max_sequence_length, min_gpu_memory_gb, default_hardware_id, position) VALUES
    ('llama-3.1-8b',    'LLaMA 3.1 8B',    'meta',      '8B',  8,  '{text-generation,classification}',               8192,  24,  'gpu-a100-40gb',    1),
    ('llama-3.1-70b',   'LLaMA 3.1 70B',   'meta',      '70B', 70, '{text-generation,classification,summarization}', 8192,  160, 'gpu-a100-80gb-x4', 2),
    ('mistral-7b-v0.3', 'Mistral 7B v0.3', 'mistralai', '7B',  7,  '{text-generation,classification}',               32768, 24,  'gpu-a100-40gb',    3);

CREATE TABLE datasets (
    id              text PRIMARY KEY,
    organization_id text NOT NULL,
    filename        text NOT NULL,
    bytes           bigint NOT NULL,
    sha256          text NOT NULL,
    blob_key        text NOT NULL,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX datasets_org_created ON datasets (organization_id, created_at DESC, id DESC);

CREATE TABLE jobs (
    id                    text PRIMARY KEY,
    organization_id       text NOT NULL,
    owner                 text NOT NULL,
    name                  text NOT NULL,
    description           text NOT NULL DEFAULT '',
    base_model            text NOT NULL REFERENCES base_models (id),
    hardware_id           text NOT NULL REFERENCES hardware (id),
    status                text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'stopped', 'deployed')),
    training_dataset      text NOT NULL,
    training_dataset_id   text NOT NULL REFERENCES datasets (id),
    training_file         text NOT NULL,
    validation_file       text,
    validation_dataset_id text REFERENCES datasets (id),
    epochs                integer NOT NULL,
    learning_rate         double precision NOT NULL,
    batch_size            integer NOT NULL,
    warmup_steps          integer NOT NULL,
    suffix                text NOT NULL,
    result_model          text,
    trained_tokens        bigint NOT NULL DEFAULT 0,
    error                 text,
    training_loss         double precision,
    validation_loss       double precision,
    epoch                 integer,
    started_at            timestamptz,
    finished_at           timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_org_created ON jobs (organization_id, created_at DESC, id DESC);
CREATE INDEX jobs_org_status ON jobs (organization_id, status, created_at DESC);
CREATE INDEX jobs_org_base_model ON jobs (organization_id, base_model, created_at DESC);
CREATE INDEX jobs_org_updated ON jobs (organization_id, updated_at DESC);
CREATE INDEX jobs_org_started ON jobs (organization_id, started_at DESC);
CREATE INDEX jobs_org_finished ON jobs (organization_id, finished_at DESC);
CREATE INDEX jobs_org_name ON jobs (organization_id, name);
CREATE INDEX jobs_name_trgm ON jobs USING gin (name gin_trgm_ops);
CREATE INDEX jobs_description_trgm ON jobs USING gin (description gin_trgm_ops);

CREATE TABLE idempotency_keys (
    organization_id text NOT NULL,
    key             text NOT NULL,
    request_hash    bytea NOT NULL,
    job_id          text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, key)
);

CREATE TABLE job_logs (
    id      bigserial PRIMARY KEY,
    job_id  text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    ts      timestamptz NOT NULL DEFAULT clock_timestamp(),
    level   text NOT NULL,
    message text NOT NULL
);
CREATE INDEX job_logs_job ON job_logs (job_id, ts, id);

-- One row per training step recorded; the key makes a retried step
-- overwrite, never duplicate.
CREATE TABLE job_metrics (
    job_id          text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step            integer NOT NULL,
    epoch           integer NOT NULL,
    training_loss   double precision NOT NULL,
    validation_loss double precision,
    learning_rate   double precision NOT NULL,
    tokens          bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, step)
);

-- Training workers advertise their slots here; a row not refreshed for a
-- while belongs to a dead worker and no longer counts.
CREATE TABLE gpu_workers (
    id           text PRIMARY KEY,
    hardware_id  text NOT NULL REFERENCES hardware (id),
    slots        integer NOT NULL CHECK (slots > 0),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gpu_workers_hardware ON gpu_workers (hardware_id, last_seen_at);

-- A job asks for a slot by inserting a row (granted_at NULL) and holds it
-- once granted_at is set; rows are granted in requested_at order.
CREATE TABLE gpu_leases (
    job_id       text PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    hardware_id  text NOT NULL REFERENCES hardware (id),
    requested_at timestamptz NOT NULL,
    granted_at   timestamptz
);
CREATE INDEX gpu_leases_queue ON gpu_leases (hardware_id, requested_at, job_id) WHERE granted_at IS NULL;

CREATE TABLE deployed_models (
    name            text NOT NULL,
    organization_id text NOT NULL,
    job_id          text NOT NULL UNIQUE REFERENCES jobs (id) ON DELETE CASCADE,
    base_model      text NOT NULL,
    blob_key        text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, name)
);
