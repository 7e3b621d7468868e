-- One submit as jobs.Service.Submit runs it, for pgbench (-M prepared):
-- River's job insert (InsertManyTx runs JobInsertFastMany, here for one
-- job), which reserves the job's cost in the same statement (the
-- river_job_reserve_credits trigger, migrations/sql/00003_ledger.sql). Variables (-D):
-- users=N spreads the clients over N users, client c submitting as
-- 00000000-0000-4000-8000-<c mod N, 12 digits> (who need credits), and
-- client_init=0 (it picks the user once per client). Used by
-- BenchmarkSubmitTx (jobs) and bench/pgbench_submit.sh. River's zero-time
-- literal '0001-01-01 00:00:00 +0000' is written with make_timestamptz, as
-- pgbench would read its ':00' as a variable. The job's id is left in
-- :job_id for pgbench_settle.sql.
\if :client_init = 0
SELECT format('00000000-0000-4000-8000-%s', lpad((:client_id::int % :users::int)::text, 12, '0')) AS user_id \gset
\set client_init 1
\endif
\set cost 1
BEGIN;
WITH raw_job_data AS (
    SELECT
        unnest(ARRAY[0]::bigint[]) AS id,
        unnest(ARRAY[jsonb_build_object('user_id', :user_id::text, 'operation', 'generate', 'model', 'fal-ai/flux/dev', 'params', '{"prompt":"a gold ring on marble"}'::jsonb, 'cost', :cost::bigint)]::jsonb[]) AS args,
        unnest(ARRAY[now()]::timestamptz[]) AS created_at,
        unnest(ARRAY['ai']::text[]) AS kind,
        unnest(ARRAY[5]::smallint[]) AS max_attempts,
        unnest(ARRAY['{}']::jsonb[]) AS metadata,
        unnest(ARRAY[1]::smallint[]) AS priority,
        unnest(ARRAY['urgent']::text[]) AS queue,
        unnest(ARRAY[now()]::timestamptz[]) AS scheduled_at,
        unnest(ARRAY['available']::text[]) AS state,
        unnest(ARRAY['']::text[]) AS tags,
        unnest(ARRAY['']::bytea[]) AS unique_key,
        unnest(ARRAY[0]::integer[]) AS unique_states
)
INSERT INTO river_job(
    id, args, created_at, kind, max_attempts, metadata, priority, queue, scheduled_at, state, tags, unique_key, unique_states
) SELECT
    coalesce(nullif(id, 0), nextval('river_job_id_seq'::regclass)),
    args,
    coalesce(nullif(created_at, make_timestamptz(1, 1, 1, 0, 0, 0, 'UTC')), now()) AS created_at,
    kind,
    max_attempts,
    coalesce(metadata, '{}'::jsonb) AS metadata,
    priority,
    queue,
    coalesce(nullif(scheduled_at, make_timestamptz(1, 1, 1, 0, 0, 0, 'UTC')), now()) AS scheduled_at,
    state::river_job_state,
    string_to_array(tags, ',')::varchar(255)[],
    nullif(unique_key, '')::bytea,
    nullif(unique_states::integer, 0)::bit(8)
FROM raw_job_data
ON CONFLICT (unique_key)
    WHERE unique_key IS NOT NULL
        AND unique_states IS NOT NULL
        AND river_job_state_in_bitmask(unique_states, state)
    DO UPDATE SET kind = river_job.kind
RETURNING river_job.id AS job_id, (xmax != 0) AS unique_skipped_as_duplicate \gset
COMMIT;
