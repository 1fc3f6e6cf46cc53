-- Fair GPU queues. A waiting job holds no worker slot: its workflow waits for
-- a grant signal. Grants go organization by organization (fewest granted
-- first, then the one served least recently), in request order within one.
ALTER TABLE gpu_leases ADD COLUMN organization_id text;
UPDATE gpu_leases l SET organization_id = j.organization_id FROM jobs j WHERE j.id = l.job_id;
ALTER TABLE gpu_leases ALTER COLUMN organization_id SET NOT NULL;
-- notified_at: the grant reached the job's workflow; until then dispatchers
-- (re)send it, so a crash between grant and signal loses nothing.
ALTER TABLE gpu_leases ADD COLUMN notified_at timestamptz;

DROP INDEX gpu_leases_queue;
CREATE INDEX gpu_leases_queue ON gpu_leases (hardware_id, organization_id, requested_at, job_id) WHERE granted_at IS NULL;
CREATE INDEX gpu_leases_unnotified ON gpu_leases (hardware_id) WHERE granted_at IS NOT NULL AND notified_at IS NULL;

-- When each organization last got a slot of each pool: the round-robin turn.
CREATE TABLE gpu_pool_turns (
    hardware_id     text NOT NULL REFERENCES hardware (id),
    organization_id text NOT NULL,
    last_granted_at timestamptz NOT NULL,
    PRIMARY KEY (hardware_id, organization_id)
);
