-- Reading a job's log on from a line (the `after` cursor, and following a
-- job's log live) goes by line ID.
CREATE INDEX job_logs_job_id ON job_logs (job_id, id);
