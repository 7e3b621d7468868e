-- +goose NO TRANSACTION
-- +goose Up
-- River creates two GIN indexes on river_job, over every key and value of a
-- job's args (an AI job's input: prompt, image URLs, options) and metadata.
-- Nothing here reads through them: River's job list and River UI filter
-- by id, kind, queue, priority, state and tags (btree indexes), and the
-- line reads args ->> 'user_id' through its own index. Yet every job
-- writes a row version of river_job four times (insert, made available,
-- fetched, completed), none of them a HOT update, and each adds entries
-- for all of args' keys and values to both GIN indexes, whose pending
-- list is then merged into the tree by whichever statement fills it.
-- River's reindexer is told not to rebuild them (dispatch.NewClient).
-- Dropped concurrently: river_job takes writes throughout.
DROP INDEX CONCURRENTLY IF EXISTS river_job_args_index;
DROP INDEX CONCURRENTLY IF EXISTS river_job_metadata_index;

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS river_job_args_index;
CREATE INDEX CONCURRENTLY river_job_args_index ON river_job USING GIN (args);
DROP INDEX CONCURRENTLY IF EXISTS river_job_metadata_index;
CREATE INDEX CONCURRENTLY river_job_metadata_index ON river_job USING GIN (metadata);
