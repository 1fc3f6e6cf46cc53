-- name: ListBaseModels :many
SELECT * FROM base_models ORDER BY position;

-- name: GetBaseModel :one
SELECT * FROM base_models WHERE id = $1;

-- name: ListHardware :many
SELECT * FROM hardware ORDER BY position;

-- name: GetHardware :one
SELECT * FROM hardware WHERE id = $1;
