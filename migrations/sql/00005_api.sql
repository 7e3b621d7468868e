-- +goose Up
-- The API's own state: idempotency records, the per-user submit rate limit,
-- batches, the notification that wakes long polls and event streams, and
-- the ai_jobs view the API reads jobs through.

-- idempotency_keys: the first successful response to a request carrying an
-- Idempotency-Key, per user, committed in the same transaction as the jobs
-- (or grant) it created. A retry with the same key and the same request
-- (request_hash) gets this response again; kept 24 hours, then pruned by a
-- periodic job.
CREATE TABLE idempotency_keys (
    user_id      uuid NOT NULL,
    key          text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash bytea NOT NULL,
    status       int NOT NULL CHECK (status BETWEEN 200 AND 299),
    location     text,
    body         bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
COMMENT ON TABLE idempotency_keys IS 'First response to each Idempotency-Key per user; replayed for 24 hours.';

-- submit_rate_limits: GCRA state per user. tat is the theoretical arrival
-- time; a submission is allowed while max(tat, now) + T <= now + burst * T,
-- with T = 60 s / RATE_LIMIT_PER_MINUTE. One upsert checks and updates it.
CREATE TABLE submit_rate_limits (
    user_id    uuid PRIMARY KEY,
    tat        timestamptz NOT NULL,
    checked_at timestamptz NOT NULL,
    allowed    boolean NOT NULL
);
COMMENT ON TABLE submit_rate_limits IS 'GCRA submit rate limit per user (RATE_LIMIT_PER_MINUTE, RATE_LIMIT_BURST).';

-- batches: the jobs of one POST /v1/batches, inserted in the same
-- transaction as the jobs.
CREATE TABLE batches (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL,
    job_ids    bigint[] NOT NULL CHECK (cardinality(job_ids) BETWEEN 1 AND 100),
    priority   text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batches_user_id_created_at ON batches (user_id, created_at DESC);
COMMENT ON TABLE batches IS 'Batches of AI jobs: id, owner, the river_job ids in item order.';

-- job_watchers: the jobs someone follows (a long poll, an event stream),
-- one row per job and API process (watcher). Written by each process's
-- watcher (api/watch.go) when its first subscriber of a job comes and its
-- last one goes; rows of a process that died are pruned after a day.
CREATE TABLE job_watchers (
    job_id  bigint NOT NULL,
    watcher text NOT NULL,
    since   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, watcher)
);
COMMENT ON TABLE job_watchers IS 'AI jobs followed by a long poll or event stream, per API process: only their changes are notified.';

-- Every change the studio can see of a watched AI job sends its id on the
-- channel aiqueue_job_state at commit: the job ending (River's state) here,
-- fal accepting its request and fal's progress below. Each API process
-- holds one LISTEN connection and wakes the long polls and event streams of
-- that job. A job nobody watches notifies nobody: a notifying commit holds
-- Postgres's notify lock through its WAL flush, and would make every
-- commit wait for the others.
-- +goose StatementBegin
CREATE FUNCTION ai_job_notify_watchers(p_job_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM job_watchers WHERE job_id = p_job_id) THEN
        PERFORM pg_notify('aiqueue_job_state', p_job_id::text);
    END IF;
END;
$$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE FUNCTION ai_job_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ai_job_notify_watchers(NEW.job_id);
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE FUNCTION river_job_notify_final() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ai_job_notify_watchers(NEW.id);
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER river_job_notify_final AFTER UPDATE OF state ON river_job
    FOR EACH ROW
    WHEN (NEW.kind = 'ai' AND NEW.state IN ('completed', 'discarded', 'cancelled') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION river_job_notify_final();
CREATE TRIGGER fal_requests_notify AFTER UPDATE ON fal_requests
    FOR EACH ROW
    WHEN ((OLD.request_id, OLD.stage, OLD.fal_queue_position, OLD.logs) IS DISTINCT FROM
          (NEW.request_id, NEW.stage, NEW.fal_queue_position, NEW.logs))
    EXECUTE FUNCTION ai_job_notify();

-- ai_jobs: one row per AI job, in the API's words. The API reads jobs
-- through this view too, so what a DBA sees is what the frontend sees.
-- state is 'queued' until fal accepts a request of the job's run and
-- 'running' from then until the job ends (ai_job_outcome), whatever River
-- does between polls, so it never goes backwards. attempt counts fal
-- submissions too (River's own attempt drops while a long job snoozes).
-- last_error names the missed deadline of a job the line cancelled for it
-- (ai_job_deadlines.missed_at); start_by is the deadline the job was
-- submitted with.
CREATE VIEW ai_jobs AS
SELECT
    j.id::text                                       AS id,
    j.id                                             AS river_job_id,
    h.user_id                                        AS user_id,
    j.args ->> 'operation'                           AS operation,
    j.queue                                          AS queue,
    COALESCE(ai_job_outcome(j.state, j.errors),
             CASE WHEN s.started_at IS NOT NULL THEN 'running' ELSE 'queued' END) AS state,
    j.state::text                                    AS river_state,
    GREATEST(j.attempt, s.submits)                   AS attempt,
    j.max_attempts                                   AS max_attempts,
    h.run                                            AS run,
    h.amount                                         AS credits,
    h.state                                          AS credit_state,
    f.request_id                                     AS fal_request_id,
    f.key_index                                      AS fal_key,
    f.stage                                          AS fal_stage,
    f.fal_queue_position                             AS fal_queue_position,
    f.logs                                           AS fal_logs,
    j.args ->> 'batch_id'                            AS batch_id,
    j.created_at                                     AS created_at,
    j.scheduled_at                                   AS scheduled_at,
    j.attempted_at                                   AS attempted_at,
    s.started_at                                     AS started_at,
    j.finalized_at                                   AS finished_at,
    j.finalized_at - j.created_at                    AS total_time,
    CASE WHEN d.missed_at IS NOT NULL
         THEN 'deadline_exceeded: the job could not start before its deadline, '
              || to_char(d.start_by AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
         ELSE regexp_replace(j.errors[array_length(j.errors, 1)] ->> 'error', '^JobCancelError: ', '')
    END                                              AS last_error,
    f.result                                         AS result,
    j.priority                                       AS river_priority,
    (j.args ->> 'start_by')::timestamptz             AS start_by
FROM river_job j
JOIN LATERAL (
    SELECT * FROM credit_holds ch WHERE ch.job_id = j.id ORDER BY ch.run DESC LIMIT 1
) h ON true
LEFT JOIN LATERAL (
    SELECT min(fr.submitted_at) AS started_at, count(fr.submitted_at)::int AS submits
      FROM fal_requests fr WHERE fr.job_id = j.id AND fr.run = h.run
) s ON true
LEFT JOIN LATERAL (
    SELECT * FROM fal_requests fr
     WHERE fr.job_id = j.id AND fr.run = h.run AND fr.request_id IS NOT NULL
     ORDER BY fr.id DESC LIMIT 1
) f ON true
LEFT JOIN ai_job_deadlines d ON d.job_id = j.id
WHERE j.kind = 'ai';
COMMENT ON VIEW ai_jobs IS 'One row per AI job: API id and state, River state, credits and their state, fal request and progress, timings, last error.';

-- +goose Down
DROP VIEW IF EXISTS ai_jobs;
DROP TRIGGER IF EXISTS fal_requests_notify ON fal_requests;
DROP TRIGGER IF EXISTS river_job_notify_final ON river_job;
DROP FUNCTION IF EXISTS river_job_notify_final();
DROP FUNCTION IF EXISTS ai_job_notify();
DROP FUNCTION IF EXISTS ai_job_notify_watchers(bigint);
DROP TABLE IF EXISTS job_watchers;
DROP TABLE IF EXISTS batches;
DROP TABLE IF EXISTS submit_rate_limits;
DROP TABLE IF EXISTS idempotency_keys;
