-- Why a job failed, what it has cost, and when it may stop early.

-- error_code and error_class go with error: a stable code for programs and
-- the failure's class (data, config, oom, hang, worker_lost, capacity,
-- budget, internal), which decides its retry and what the user is told.
-- Failures recorded before classes existed are internal until rerun.
-- gpu_seconds and cost: the GPU time of the job's released leases and its
-- price in USD, each lease at its pool's price (a restart may change the
-- pool); a lease still held adds its own time from granted_at.
-- max_cost: the budget in USD, NULL for none; the job stops at it after a
-- checkpoint, failed with class budget.
-- early_stopping_*: stop once validation loss has not improved by
-- min_delta for patience evaluations; NULL patience is off.
ALTER TABLE jobs
    ADD COLUMN error_code text,
    ADD COLUMN error_class text,
    ADD COLUMN gpu_seconds double precision NOT NULL DEFAULT 0,
    ADD COLUMN cost double precision NOT NULL DEFAULT 0,
    ADD COLUMN max_cost double precision CHECK (max_cost > 0),
    ADD COLUMN early_stopping_patience integer CHECK (early_stopping_patience > 0),
    ADD COLUMN early_stopping_min_delta double precision NOT NULL DEFAULT 0;
UPDATE jobs SET error_code = 'unclassified', error_class = 'internal' WHERE error IS NOT NULL;
CREATE INDEX jobs_org_error_class ON jobs (organization_id, error_class, created_at DESC) WHERE error_class IS NOT NULL;
