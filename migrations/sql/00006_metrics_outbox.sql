-- +goose Up
-- metrics_job_outcomes: one row per settled credit hold, that is per AI job
-- that ended (succeeded, failed, cancelled, or deleted while open), written in
-- the same transaction as the settlement whoever ends the job: the worker,
-- an API or River UI cancel, the rescuer, a delete. The /metrics collector of
-- every server process takes rows out (DELETE ... RETURNING, SKIP LOCKED)
-- when it is scraped and adds them to its counters, so each ending is counted
-- by exactly one process and the sum over processes is exact. Rows nobody
-- took within an hour (no process is scraped) are pruned.
CREATE TABLE metrics_job_outcomes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operation  text NOT NULL,
    queue      text NOT NULL,
    outcome    text NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'cancelled')),
    credits    bigint NOT NULL,
    charged    boolean NOT NULL,
    seconds    double precision,
    created_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE metrics_job_outcomes IS 'Outbox of ended AI jobs for the /metrics counters; emptied by the server processes when scraped. Not a history: query ai_jobs and credit_entries instead.';

-- The trigger is on credit_holds, whose state leaves 'reserved' exactly once
-- per run (credit_holds_settle_once), so every settlement path is counted
-- once. The job row is read in the same transaction: it has its final state
-- already (ai_job_outcome), or it is gone (deleted while open: counted as
-- cancelled, with operation and queue 'unknown').
-- +goose StatementBegin
CREATE FUNCTION credit_holds_record_outcome() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    j river_job;
BEGIN
    SELECT * INTO j FROM river_job WHERE id = NEW.job_id;
    INSERT INTO metrics_job_outcomes (operation, queue, outcome, credits, charged, seconds)
    VALUES (
        COALESCE(j.args ->> 'operation', 'unknown'),
        COALESCE(j.queue, 'unknown'),
        CASE WHEN NEW.state = 'charged' THEN 'succeeded'
             ELSE COALESCE(ai_job_outcome(j.state, j.errors), 'cancelled') END,
        NEW.amount,
        NEW.state = 'charged',
        extract(epoch FROM clock_timestamp() - j.created_at));
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER credit_holds_record_outcome AFTER UPDATE OF state ON credit_holds
    FOR EACH ROW
    WHEN (OLD.state = 'reserved' AND NEW.state <> 'reserved')
    EXECUTE FUNCTION credit_holds_record_outcome();

-- +goose Down
DROP TRIGGER IF EXISTS credit_holds_record_outcome ON credit_holds;
DROP FUNCTION IF EXISTS credit_holds_record_outcome();
DROP TABLE IF EXISTS metrics_job_outcomes;
