-- Sorting jobs by status follows their lifecycle, not the alphabet:
-- queued, running, stopped, failed, completed, deployed. job_status_rank
-- gives a status its place. It is IMMUTABLE (and not STRICT, so the
-- planner inlines it) for the indexes that serve both directions, ties
-- newest first; changing the order means rebuilding them.
CREATE FUNCTION job_status_rank(status text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
        SELECT CASE status
            WHEN 'queued' THEN 0
            WHEN 'running' THEN 1
            WHEN 'stopped' THEN 2
            WHEN 'failed' THEN 3
            WHEN 'completed' THEN 4
            WHEN 'deployed' THEN 5
        END
    $$;
CREATE INDEX jobs_org_status_rank ON jobs (organization_id, job_status_rank(status), created_at DESC, id DESC);
CREATE INDEX jobs_org_status_rank_desc ON jobs (organization_id, job_status_rank(status) DESC, created_at DESC, id DESC);
-- It served status descending by name.
DROP INDEX jobs_org_status_desc;
