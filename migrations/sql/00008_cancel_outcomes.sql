-- +goose NO TRANSACTION
-- +goose Up
-- The sweeper (FAL_SWEEP_INTERVAL, dispatch.Requests.resolveCancels) reads
-- the requests cancelled while fal ran them whose outcome fal has not told
-- yet. Without an index that was a sequential scan of fal_requests (13,140
-- rows read for none found, 112 ms, after one versus-seed run; a table
-- keeps days of requests). These rows are few and short-lived, so the
-- index is too. Built concurrently: fal_requests takes writes throughout.
-- A build that was interrupted leaves an invalid index and this migration
-- unapplied; the drop first makes running it again build it afresh.
DROP INDEX CONCURRENTLY IF EXISTS fal_requests_cancel_unresolved;
CREATE INDEX CONCURRENTLY fal_requests_cancel_unresolved ON fal_requests (id)
    WHERE state = 'cancelled' AND cancel_outcome IS NULL AND request_id IS NOT NULL;

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS fal_requests_cancel_unresolved;
