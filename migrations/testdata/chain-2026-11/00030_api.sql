-- +goose Up
-- The API's own state: idempotency records, the per-user submit rate limit,
-- batches, and the notification that wakes long polls and event streams.

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

-- The per-user pending cap counts a user's open holds (a hold is open
-- exactly while its job is queued or running).
CREATE INDEX credit_holds_open_user_id ON credit_holds (user_id) WHERE state = 'reserved';

-- ai_job_state maps a River state to the API's job state (as ai_jobs does).
-- +goose StatementBegin
CREATE FUNCTION ai_job_state(s river_job_state) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE s
        WHEN 'running'   THEN 'running'
        WHEN 'completed' THEN 'succeeded'
        WHEN 'discarded' THEN 'failed'
        WHEN 'cancelled' THEN 'cancelled'
        ELSE 'queued'
    END
$$;
-- +goose StatementEnd

-- Every change of an AI job's API state sends the job id on the channel
-- aiqueue_job_state at commit. Each API process holds one LISTEN connection
-- and wakes the long polls and event streams waiting on that job.
-- +goose StatementBegin
CREATE FUNCTION river_job_notify_state() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF ai_job_state(OLD.state) IS DISTINCT FROM ai_job_state(NEW.state) THEN
        PERFORM pg_notify('aiqueue_job_state', NEW.id::text);
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER river_job_notify_state AFTER UPDATE OF state ON river_job
    FOR EACH ROW
    WHEN (NEW.kind = 'ai' AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION river_job_notify_state();

-- +goose Down
DROP TRIGGER IF EXISTS river_job_notify_state ON river_job;
DROP FUNCTION IF EXISTS river_job_notify_state();
DROP FUNCTION IF EXISTS ai_job_state(river_job_state);
DROP INDEX IF EXISTS credit_holds_open_user_id;
DROP TABLE IF EXISTS batches;
DROP TABLE IF EXISTS submit_rate_limits;
DROP TABLE IF EXISTS idempotency_keys;
