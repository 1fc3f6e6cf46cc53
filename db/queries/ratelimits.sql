-- name: TakeRateLimit :one
-- Takes @cost seconds' worth of tokens from key's bucket, after giving back
-- @refund seconds' worth (tokens an earlier take got but did not spend). The
-- take fits if tat, once refunded, lies at most @slack (the bucket's size
-- less @cost) ahead of now; one that does not takes nothing. ahead is how far
-- tat lies ahead of now afterwards, from which the caller reckons its wait.
INSERT INTO rate_limits AS r (key, tat, granted)
VALUES (@key, now() + make_interval(secs => @cost::float8), true)
ON CONFLICT (key) DO UPDATE SET
    granted = r.tat - make_interval(secs => @refund::float8) <= now() + make_interval(secs => @slack::float8),
    tat = CASE
        WHEN r.tat - make_interval(secs => @refund::float8) <= now() + make_interval(secs => @slack::float8)
        THEN greatest(r.tat - make_interval(secs => @refund::float8), now()) + make_interval(secs => @cost::float8)
        ELSE r.tat - make_interval(secs => @refund::float8)
    END
RETURNING granted, extract(epoch FROM tat - now())::float8 AS ahead;

-- name: RateLimitAhead :one
-- How far key's tat lies ahead of now, in seconds; no row is a full bucket.
SELECT extract(epoch FROM tat - now())::float8 AS ahead FROM rate_limits WHERE key = @key;

-- name: DeleteFullRateLimits :exec
-- Forgets the buckets that have filled up again: no row means as much.
DELETE FROM rate_limits WHERE tat < now();
