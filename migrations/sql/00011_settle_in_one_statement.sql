-- +goose Up
-- A job's settlement was four PL/pgSQL functions and five statements, one
-- after the other, for every job that ends: credit_settle updated the hold,
-- which first locked the hold's row for the BEFORE trigger
-- credit_holds_settle_once (a tuple lock with a WAL record of its own,
-- taken for every update of a hold, to run a check that passes), then ran
-- the AFTER trigger credit_holds_record_outcome (a read of the job and the
-- metrics outcome row, two statements more), and credit_settle went on to
-- refund the account, if so, and write the journal entry. Now credit_settle
-- does it all in one statement, the outcome row included: credit_settle is
-- the one writer of a hold's state (every path that ends a job, deletes it
-- or reconciles it calls it), so it counts every settlement once, as the
-- trigger did. credit_holds_settle_once still refuses any other change of
-- a hold, after the update and only when the update is one it refuses
-- (its WHEN), so a settlement neither locks the row first nor calls it.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION credit_settle(p_job_id bigint, p_charge boolean) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
BEGIN
    WITH h AS (
        UPDATE credit_holds
           SET state = CASE WHEN p_charge THEN 'charged' ELSE 'refunded' END,
               settled_at = now()
         WHERE job_id = p_job_id AND state = 'reserved'
        RETURNING *
    ), refund AS (
        UPDATE credit_accounts a
           SET available   = a.available + h.amount,
               spent_day   = a.spent_day - spend_in(h.amount, a.spent_day_of, (h.created_at AT TIME ZONE 'UTC')::date),
               spent_month = a.spent_month - spend_in(h.amount, a.spent_month_of, date_trunc('month', h.created_at AT TIME ZONE 'UTC')::date)
          FROM h
         WHERE NOT p_charge AND a.user_id = h.user_id
    ), entry AS (
        INSERT INTO credit_entries (user_id, kind, amount, job_id, run)
        SELECT h.user_id, CASE WHEN p_charge THEN 'charge' ELSE 'refund' END, h.amount, h.job_id, h.run
          FROM h
    ), outcome AS (
        -- The job has its final state already (ai_job_outcome), or it is
        -- gone (deleted while open: counted as cancelled, with operation
        -- and queue 'unknown').
        INSERT INTO metrics_job_outcomes (operation, queue, outcome, credits, charged, seconds)
        SELECT COALESCE(j.args ->> 'operation', 'unknown'),
               COALESCE(j.queue, 'unknown'),
               CASE WHEN p_charge THEN 'succeeded'
                    ELSE COALESCE(ai_job_outcome(j.state, j.errors), 'cancelled') END,
               h.amount,
               p_charge,
               extract(epoch FROM clock_timestamp() - j.created_at)
          FROM h LEFT JOIN river_job j ON j.id = h.job_id
    )
    SELECT h.state INTO v_state FROM h;
    RETURN v_state;
END;
$$;
-- +goose StatementEnd
DROP TRIGGER credit_holds_record_outcome ON credit_holds;
DROP FUNCTION credit_holds_record_outcome();
DROP TRIGGER credit_holds_settle_once ON credit_holds;
CREATE TRIGGER credit_holds_settle_once AFTER UPDATE ON credit_holds
    FOR EACH ROW
    WHEN (OLD.state <> 'reserved'
          OR (NEW.job_id, NEW.run, NEW.user_id, NEW.amount) IS DISTINCT FROM (OLD.job_id, OLD.run, OLD.user_id, OLD.amount))
    EXECUTE FUNCTION credit_holds_settle_once();

-- +goose Down
DROP TRIGGER credit_holds_settle_once ON credit_holds;
CREATE TRIGGER credit_holds_settle_once BEFORE UPDATE ON credit_holds
    FOR EACH ROW EXECUTE FUNCTION credit_holds_settle_once();
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
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION credit_settle(p_job_id bigint, p_charge boolean) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    h credit_holds;
BEGIN
    UPDATE credit_holds
       SET state = CASE WHEN p_charge THEN 'charged' ELSE 'refunded' END,
           settled_at = now()
     WHERE job_id = p_job_id AND state = 'reserved'
    RETURNING * INTO h;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF NOT p_charge THEN
        UPDATE credit_accounts
           SET available   = available + h.amount,
               spent_day   = spent_day - spend_in(h.amount, spent_day_of, (h.created_at AT TIME ZONE 'UTC')::date),
               spent_month = spent_month - spend_in(h.amount, spent_month_of, date_trunc('month', h.created_at AT TIME ZONE 'UTC')::date)
         WHERE user_id = h.user_id;
    END IF;
    INSERT INTO credit_entries (user_id, kind, amount, job_id, run)
    VALUES (h.user_id, CASE WHEN p_charge THEN 'charge' ELSE 'refund' END, h.amount, h.job_id, h.run);
    RETURN h.state;
END;
$$;
-- +goose StatementEnd
