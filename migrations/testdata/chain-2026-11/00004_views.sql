-- +goose Up
-- ai_jobs: one row per AI job, in the API's words. The API reads jobs through
-- this view too, so what a DBA sees is what the frontend sees.
CREATE VIEW ai_jobs AS
SELECT
    j.id::text                                   AS id,
    j.id                                         AS river_job_id,
    h.user_id                                    AS user_id,
    j.args ->> 'operation'                       AS operation,
    j.queue                                      AS queue,
    CASE j.state
        WHEN 'running'   THEN 'running'
        WHEN 'completed' THEN 'succeeded'
        WHEN 'discarded' THEN 'failed'
        WHEN 'cancelled' THEN 'cancelled'
        ELSE 'queued'
    END                                          AS state,
    j.state::text                                AS river_state,
    j.attempt                                    AS attempt,
    j.max_attempts                               AS max_attempts,
    h.amount                                     AS credits,
    h.state                                      AS credit_state,
    j.metadata -> 'output' -> 'fal' ->> 'request_id' AS fal_request_id,
    (j.metadata -> 'output' -> 'fal' ->> 'key')::int AS fal_key,
    j.args ->> 'batch_id'                        AS batch_id,
    j.created_at                                 AS created_at,
    j.scheduled_at                               AS scheduled_at,
    j.attempted_at                               AS started_at,
    j.finalized_at                               AS finished_at,
    j.finalized_at - j.created_at                AS total_time,
    j.errors[array_length(j.errors, 1)] ->> 'error' AS last_error,
    j.metadata -> 'output' -> 'result'           AS result,
    j.priority                                   AS river_priority
FROM river_job j
JOIN credit_holds h ON h.job_id = j.id
WHERE j.kind = 'ai';

COMMENT ON VIEW ai_jobs IS 'One row per AI job: API id and state, River state, credits and their state, fal request, timings, last error.';

-- credit_balances: one row per account.
CREATE VIEW credit_balances AS
SELECT
    user_id,
    balance,
    reserved,
    balance - reserved AS available,
    updated_at
FROM credit_accounts;

COMMENT ON VIEW credit_balances IS 'Credits per user: balance, reserved by open holds, available = balance - reserved.';

-- +goose Down
DROP VIEW IF EXISTS credit_balances;
DROP VIEW IF EXISTS ai_jobs;
