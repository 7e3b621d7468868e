-- +goose Up
-- Reservation moves into the job insert itself. An AFTER INSERT statement
-- trigger on river_job reserves the cost of every AI job the statement
-- inserted (args.user_id, args.cost), all or nothing per user: it moves the
-- total from the account's available credits to reserved and writes one hold
-- and one reserve journal entry per job, or fails the whole statement with
-- SQLSTATE AQ402 (detail: {"needed": N, "available": M}) when the account
-- cannot cover it. So every AI job has its hold from the statement that
-- created it: the deferred "job without hold" check of 00003 has nothing
-- left to catch, and a submission is one statement (River's InsertManyTx)
-- instead of an insert, a reservation and a check at commit.
--
-- credit_accounts.open_holds counts the account's reserved holds (kept by
-- this trigger and credit_settle), so a user's pending-job cap reads one row
-- instead of counting holds; the row lock the reservation takes serializes a
-- user's submissions, which keeps that cap exact.
--
-- Holds are written only by this trigger: a hold inserted by hand (outside
-- any trigger) is refused at once, which replaces the deferred "hold without
-- job" check of 00010.

ALTER TABLE credit_accounts ADD COLUMN open_holds bigint NOT NULL DEFAULT 0 CHECK (open_holds >= 0);
UPDATE credit_accounts a
   SET open_holds = h.n
  FROM (SELECT user_id, count(*) AS n FROM credit_holds WHERE state = 'reserved' GROUP BY user_id) h
 WHERE h.user_id = a.user_id;

-- +goose StatementBegin
CREATE FUNCTION river_job_reserve_credits() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    short record;
    available bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM new_jobs
                WHERE kind = 'ai' AND (args->>'user_id' IS NULL OR COALESCE((args->>'cost')::bigint, 0) <= 0)) THEN
        RAISE EXCEPTION 'an AI job needs args.user_id and a positive args.cost'
            USING ERRCODE = 'check_violation';
    END IF;
    -- The service inserts one user's jobs per statement; several users are
    -- fine too (the statement fails when any of them cannot pay).
    WITH jobs AS (
        SELECT id, (args->>'user_id')::uuid AS user_id, (args->>'cost')::bigint AS amount
          FROM new_jobs
         WHERE kind = 'ai'
    ), per_user AS (
        SELECT user_id, sum(amount) AS total, count(*) AS n
          FROM jobs GROUP BY user_id
    ), acct AS (
        UPDATE credit_accounts a
           SET reserved = a.reserved + p.total, open_holds = a.open_holds + p.n, updated_at = now()
          FROM per_user p
         WHERE a.user_id = p.user_id AND a.balance - a.reserved >= p.total
        RETURNING a.user_id
    ), h AS (
        INSERT INTO credit_holds (job_id, user_id, amount)
        SELECT j.id, j.user_id, j.amount FROM jobs j JOIN acct USING (user_id)
        RETURNING job_id, user_id, amount
    ), e AS (
        INSERT INTO credit_entries (user_id, kind, amount, job_id)
        SELECT user_id, 'reserve', amount, job_id FROM h
    )
    SELECT p.user_id, p.total
      INTO short
      FROM per_user p
     WHERE p.user_id NOT IN (SELECT user_id FROM acct)
     ORDER BY p.user_id
     LIMIT 1;
    IF FOUND THEN
        -- A statement of its own, so it reads the account as it is now, not
        -- as the statement above found it before waiting for its row lock.
        available := COALESCE((SELECT balance - reserved FROM credit_accounts WHERE user_id = short.user_id), 0);
        RAISE EXCEPTION 'not enough credits: needed %, available %', short.total, available
            USING ERRCODE = 'AQ402',
                  DETAIL = json_build_object('needed', short.total, 'available', available)::text;
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER river_job_reserve_credits AFTER INSERT ON river_job
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT
    EXECUTE FUNCTION river_job_reserve_credits();

DROP TRIGGER river_job_require_hold ON river_job;
DROP FUNCTION river_job_require_hold();
DROP TRIGGER credit_holds_require_job ON credit_holds;
DROP FUNCTION credit_holds_require_job();

-- +goose StatementBegin
CREATE FUNCTION credit_holds_only_by_reserve() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'credit holds are written by inserting their AI job (hold of job % refused)', NEW.job_id
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER credit_holds_only_by_reserve BEFORE INSERT ON credit_holds
    FOR EACH ROW
    WHEN (pg_trigger_depth() = 0)
    EXECUTE FUNCTION credit_holds_only_by_reserve();

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
    UPDATE credit_accounts
       SET balance = balance - CASE WHEN p_charge THEN h.amount ELSE 0 END,
           reserved = reserved - h.amount,
           open_holds = open_holds - 1,
           updated_at = now()
     WHERE user_id = h.user_id;
    INSERT INTO credit_entries (user_id, kind, amount, job_id)
    VALUES (h.user_id, CASE WHEN p_charge THEN 'charge' ELSE 'refund' END, h.amount, p_job_id);
    RETURN h.state;
END;
$$;
-- +goose StatementEnd

-- +goose Down
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
    UPDATE credit_accounts
       SET balance = balance - CASE WHEN p_charge THEN h.amount ELSE 0 END,
           reserved = reserved - h.amount,
           updated_at = now()
     WHERE user_id = h.user_id;
    INSERT INTO credit_entries (user_id, kind, amount, job_id)
    VALUES (h.user_id, CASE WHEN p_charge THEN 'charge' ELSE 'refund' END, h.amount, p_job_id);
    RETURN h.state;
END;
$$;
-- +goose StatementEnd
DROP TRIGGER credit_holds_only_by_reserve ON credit_holds;
DROP FUNCTION credit_holds_only_by_reserve();
DROP TRIGGER river_job_reserve_credits ON river_job;
DROP FUNCTION river_job_reserve_credits();
ALTER TABLE credit_accounts DROP COLUMN open_holds;
-- +goose StatementBegin
CREATE FUNCTION river_job_require_hold() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM credit_holds WHERE job_id = NEW.id) THEN
        RAISE EXCEPTION 'AI job % was inserted without a credit hold', NEW.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE CONSTRAINT TRIGGER river_job_require_hold AFTER INSERT ON river_job
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (NEW.kind = 'ai')
    EXECUTE FUNCTION river_job_require_hold();
-- +goose StatementBegin
CREATE FUNCTION credit_holds_require_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM river_job WHERE id = NEW.job_id AND kind = 'ai') THEN
        RAISE EXCEPTION 'credit hold of job % has no AI job', NEW.job_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE CONSTRAINT TRIGGER credit_holds_require_job AFTER INSERT ON credit_holds
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    EXECUTE FUNCTION credit_holds_require_job();
