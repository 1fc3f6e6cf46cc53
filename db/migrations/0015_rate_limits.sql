-- The API's rate limits, shared by its replicas: a GCRA bucket per key,
-- "key:" and an API key's ID or "addr:" and a client address. tat (the
-- theoretical arrival time) is when the bucket is full again, on the
-- database's clock; a row whose tat has passed is a full bucket, and so is
-- no row. granted is whether the row's last take fitted, for RETURNING,
-- which sees only the new row.
-- UNLOGGED: a crash merely refills the buckets, and their many small
-- writes cost no WAL. Every take rewrites its row, and no index covers tat,
-- so the spare room on each page lets the updates stay HOT.
CREATE UNLOGGED TABLE rate_limits (
    key     text PRIMARY KEY,
    tat     timestamptz NOT NULL,
    granted boolean NOT NULL
) WITH (fillfactor = 50);
