-- Indexes for the job list (see docs/benchmarks.md, "Listing at scale").
--
-- startedAt and finishedAt descending put jobs without the time last,
-- which a (… DESC) index (nulls first) cannot walk, and status descending
-- breaks ties newest first, the direction jobs_org_status runs backwards.
CREATE INDEX jobs_org_started_nulls_last ON jobs (organization_id, started_at DESC NULLS LAST);
CREATE INDEX jobs_org_finished_nulls_last ON jobs (organization_id, finished_at DESC NULLS LAST);
CREATE INDEX jobs_org_status_desc ON jobs (organization_id, status DESC, created_at DESC, id DESC);

-- Search and metadata filters read only the caller's organization's
-- entries: one GIN index over all organizations made a small one's search
-- gather every organization's matches first (btree_gin indexes the text
-- column; it is a trusted extension, like pg_trgm).
CREATE EXTENSION IF NOT EXISTS btree_gin;
CREATE INDEX jobs_org_name_trgm ON jobs USING gin (organization_id, name gin_trgm_ops);
CREATE INDEX jobs_org_description_trgm ON jobs USING gin (organization_id, description gin_trgm_ops);
CREATE INDEX jobs_org_metadata ON jobs USING gin (organization_id, metadata jsonb_path_ops);
DROP INDEX jobs_name_trgm;
DROP INDEX jobs_description_trgm;
DROP INDEX jobs_metadata;
