-- Indexes for the job list's sorts that 0001's could not serve in order:
-- startedAt and finishedAt descending put jobs without the time last,
-- which a (… DESC) index (nulls first) cannot walk, and status descending
-- breaks ties newest first, the direction jobs_org_status runs backwards.
CREATE INDEX jobs_org_started_nulls_last ON jobs (organization_id, started_at DESC NULLS LAST);
CREATE INDEX jobs_org_finished_nulls_last ON jobs (organization_id, finished_at DESC NULLS LAST);
CREATE INDEX jobs_org_status_desc ON jobs (organization_id, status DESC, created_at DESC, id DESC);
