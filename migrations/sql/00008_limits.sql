-- +goose Up
-- Limits a user or a click sets on spending: a deadline to start (start_by)
-- after which a job still waiting for fal is cancelled and refunded, and
-- per-user daily and monthly spend caps enforced by the reservation itself.

-- A job whose deadline passed before fal accepted any request of it ends
-- cancelled (deadline_exceeded), whoever ends it: the line (a job still
-- waiting), the worker (a job given its slot in the last moment), or fal
-- itself (X-Fal-Request-Timeout: the worker ends the job with River's
-- JobCancel and that code). It is the client's own deadline, like a cancel,
-- so it reads 'cancelled', not 'failed'; every ending but 'succeeded' still
-- refunds.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION ai_job_outcome(s river_job_state, errors jsonb[]) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE s
        WHEN 'completed' THEN 'succeeded'
        WHEN 'discarded' THEN 'failed'
        WHEN 'cancelled' THEN
            CASE WHEN errors[array_upper(errors, 1)] ->> 'error' ~ '^JobCancelError: [a-z_]+: '
                      AND errors[array_upper(errors, 1)] ->> 'error' !~ '^JobCancelError: (cancelled|deadline_exceeded): '
                 THEN 'failed' ELSE 'cancelled' END
    END
$$;
-- +goose StatementEnd

-- ai_job_deadlines: the deadlines still to watch, one row per AI job
-- submitted with a start_by (args.start_by, written by the insert itself:
-- river_job_deadlines), until fal accepts a request of the job (the worker
-- deletes the row in the statement that stores fal's request id: the job
-- has started, and fal's own X-Fal-Request-Timeout covered the rest) or the
-- line finds the job ended otherwise. The line (dispatch/line.go) reads the
-- waiting rows by start_by: the next deadline to wake for, and the ones
-- passed. missed_at is set when the line cancels the job for its deadline:
-- the reason the job shows (ai_jobs.last_error); such rows go with their
-- job (the hourly prune). A job's deadline is its first run's: an admin's
-- retry drops it (river_job_rerun_deadline).
CREATE TABLE ai_job_deadlines (
    job_id    bigint PRIMARY KEY,
    start_by  timestamptz NOT NULL,
    missed_at timestamptz
);
CREATE INDEX ai_job_deadlines_waiting ON ai_job_deadlines (start_by) WHERE missed_at IS NULL;
COMMENT ON TABLE ai_job_deadlines IS 'Deadlines to start (start_by) of AI jobs fal has not accepted yet; missed_at: the line cancelled the job for it.';

-- +goose StatementBegin
CREATE FUNCTION river_job_deadlines() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ai_job_deadlines (job_id, start_by)
    SELECT id, (args ->> 'start_by')::timestamptz
      FROM new_jobs
     WHERE kind = 'ai' AND args ->> 'start_by' IS NOT NULL;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER river_job_deadlines AFTER INSERT ON river_job
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT
    EXECUTE FUNCTION river_job_deadlines();

-- +goose StatementBegin
CREATE FUNCTION river_job_rerun_deadline() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM ai_job_deadlines WHERE job_id = NEW.id;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER river_job_rerun_deadline AFTER UPDATE OF state ON river_job
    FOR EACH ROW
    WHEN (NEW.kind = 'ai'
          AND OLD.state IN ('completed', 'discarded', 'cancelled')
          AND NEW.state NOT IN ('completed', 'discarded', 'cancelled'))
    EXECUTE FUNCTION river_job_rerun_deadline();

-- ai_jobs as in 00005_api.sql, and: last_error names the missed deadline of
-- a job the line cancelled for it; start_by is the deadline the job was
-- submitted with.
CREATE OR REPLACE VIEW ai_jobs AS
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

-- Spend caps. A user's spend in a period is the credits reserved in it
-- (submissions and admins' retries) that were not refunded: a charge keeps
-- it, a refund gives it back when the hold was counted in the period still
-- counted. Periods are UTC: a day from 00:00, a month from the 1st. The
-- account row keeps the counters (spent_day for the day spent_day_of,
-- spent_month for the month starting spent_month_of), so the reservation's
-- own update of the row checks and moves them: the row lock that
-- serializes a user's submissions makes the cap exact, with no other lock.
-- daily_cap and monthly_cap are the user's caps (NULL: the default in
-- spend_cap_defaults, from SPEND_CAP_DAILY and SPEND_CAP_MONTHLY; 0: no
-- spending at all).
ALTER TABLE credit_accounts
    ADD COLUMN daily_cap      bigint CONSTRAINT credit_accounts_daily_cap_check CHECK (daily_cap >= 0),
    ADD COLUMN monthly_cap    bigint CONSTRAINT credit_accounts_monthly_cap_check CHECK (monthly_cap >= 0),
    ADD COLUMN spent_day      bigint NOT NULL DEFAULT 0,
    ADD COLUMN spent_day_of   date,
    ADD COLUMN spent_month    bigint NOT NULL DEFAULT 0,
    ADD COLUMN spent_month_of date;

-- The caps of users without their own: one row, written by each API
-- process at start from its environment (the last to start decides); no
-- row, or NULL, is no cap.
CREATE TABLE spend_cap_defaults (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    daily      bigint CHECK (daily >= 0),
    monthly    bigint CHECK (monthly >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE spend_cap_defaults IS 'Default daily and monthly spend caps (SPEND_CAP_DAILY, SPEND_CAP_MONTHLY); NULL: no cap.';

-- The holds reserved before this migration count in today's and this
-- month's spend.
UPDATE credit_accounts a
   SET spent_day = COALESCE((SELECT sum(h.amount) FROM credit_holds h
                              WHERE h.user_id = a.user_id AND h.state <> 'refunded'
                                AND (h.created_at AT TIME ZONE 'UTC')::date = (now() AT TIME ZONE 'UTC')::date), 0),
       spent_day_of = (now() AT TIME ZONE 'UTC')::date,
       spent_month = COALESCE((SELECT sum(h.amount) FROM credit_holds h
                                WHERE h.user_id = a.user_id AND h.state <> 'refunded'
                                  AND date_trunc('month', h.created_at AT TIME ZONE 'UTC') = date_trunc('month', now() AT TIME ZONE 'UTC')), 0),
       spent_month_of = date_trunc('month', now() AT TIME ZONE 'UTC')::date;

-- spend_in is a counter's spend in period: the counter's amount when it
-- counts that period, else 0 (it counts an earlier one: period is new).
-- +goose StatementBegin
CREATE FUNCTION spend_in(amount bigint, counted date, period date) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN counted = period THEN amount ELSE 0 END
$$;
-- +goose StatementEnd

-- Inserting AI jobs reserves their cost (args.user_id, args.cost), all or
-- nothing per user: the statement takes each user's total from available,
-- adds it to the user's spend of today and of this month, and writes one
-- hold (run 1) and one reserve entry per job; or it fails, writing nothing,
-- when an account cannot cover it (SQLSTATE AQ402, detail {"needed": N,
-- "available": M}) or it would take the user's spend past a cap (SQLSTATE
-- AQCAP, detail {"period": "day"|"month", "cap", "spent", "needed",
-- "resets_at"}; the month's when both are passed, and a cap before the
-- credits: more credits would not help). So every AI job has its hold from
-- the statement that created it. A statement whose transaction started
-- before the period the account already counts (a submission that started
-- before midnight UTC and reached the row after one that started after it)
-- is counted in its own, closed period: it passes the cap and leaves the
-- counters alone.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION river_job_reserve_credits() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    short   record;
    acc     record;
    v_day   date := (now() AT TIME ZONE 'UTC')::date;
    v_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    def_day   bigint;
    def_month bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM new_jobs
                WHERE kind = 'ai' AND (args ->> 'user_id' IS NULL OR COALESCE((args ->> 'cost')::bigint, 0) <= 0)) THEN
        RAISE EXCEPTION 'an AI job needs args.user_id and a positive args.cost'
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT daily, monthly INTO def_day, def_month FROM spend_cap_defaults;
    WITH jobs AS (
        SELECT id, (args ->> 'user_id')::uuid AS user_id, (args ->> 'cost')::bigint AS amount
          FROM new_jobs
         WHERE kind = 'ai'
    ), per_user AS (
        SELECT user_id, sum(amount) AS total FROM jobs GROUP BY user_id
    ), acct AS (
        UPDATE credit_accounts a
           SET available      = a.available - p.total,
               spent_day      = CASE WHEN a.spent_day_of > v_day THEN a.spent_day
                                     ELSE spend_in(a.spent_day, a.spent_day_of, v_day) + p.total END,
               spent_day_of   = GREATEST(a.spent_day_of, v_day),
               spent_month    = CASE WHEN a.spent_month_of > v_month THEN a.spent_month
                                     ELSE spend_in(a.spent_month, a.spent_month_of, v_month) + p.total END,
               spent_month_of = GREATEST(a.spent_month_of, v_month)
          FROM per_user p
         WHERE a.user_id = p.user_id AND a.available >= p.total
           AND (COALESCE(a.daily_cap, def_day) IS NULL OR a.spent_day_of > v_day
                OR spend_in(a.spent_day, a.spent_day_of, v_day) + p.total <= COALESCE(a.daily_cap, def_day))
           AND (COALESCE(a.monthly_cap, def_month) IS NULL OR a.spent_month_of > v_month
                OR spend_in(a.spent_month, a.spent_month_of, v_month) + p.total <= COALESCE(a.monthly_cap, def_month))
        RETURNING a.user_id
    ), h AS (
        INSERT INTO credit_holds (job_id, user_id, amount)
        SELECT j.id, j.user_id, j.amount FROM jobs j JOIN acct USING (user_id)
        RETURNING job_id, run, user_id, amount
    ), e AS (
        INSERT INTO credit_entries (user_id, kind, amount, job_id, run)
        SELECT user_id, 'reserve', amount, job_id, run FROM h
    )
    SELECT p.user_id, p.total
      INTO short
      FROM per_user p
     WHERE p.user_id NOT IN (SELECT user_id FROM acct)
     ORDER BY p.user_id
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- A statement of its own, so it reads the account as it is now, not as
    -- the statement above found it before waiting for its row lock.
    SELECT COALESCE(a.available, 0) AS available,
           COALESCE(a.daily_cap, def_day) AS day_cap,
           a.spent_day_of IS NULL OR a.spent_day_of <= v_day AS day_open,
           COALESCE(spend_in(a.spent_day, a.spent_day_of, v_day), 0) AS day_spent,
           COALESCE(a.monthly_cap, def_month) AS month_cap,
           a.spent_month_of IS NULL OR a.spent_month_of <= v_month AS month_open,
           COALESCE(spend_in(a.spent_month, a.spent_month_of, v_month), 0) AS month_spent
      INTO acc
      FROM (SELECT 1) one LEFT JOIN credit_accounts a ON a.user_id = short.user_id;
    IF acc.month_cap IS NOT NULL AND acc.month_open IS NOT FALSE AND acc.month_spent + short.total > acc.month_cap THEN
        RAISE EXCEPTION 'monthly spend cap reached: cap %, spent %, needed %', acc.month_cap, acc.month_spent, short.total
            USING ERRCODE = 'AQCAP',
                  DETAIL = json_build_object('period', 'month', 'cap', acc.month_cap, 'spent', acc.month_spent,
                                             'needed', short.total,
                                             'resets_at', (v_month + interval '1 month') AT TIME ZONE 'UTC')::text;
    END IF;
    IF acc.day_cap IS NOT NULL AND acc.day_open IS NOT FALSE AND acc.day_spent + short.total > acc.day_cap THEN
        RAISE EXCEPTION 'daily spend cap reached: cap %, spent %, needed %', acc.day_cap, acc.day_spent, short.total
            USING ERRCODE = 'AQCAP',
                  DETAIL = json_build_object('period', 'day', 'cap', acc.day_cap, 'spent', acc.day_spent,
                                             'needed', short.total,
                                             'resets_at', (v_day + 1)::timestamp AT TIME ZONE 'UTC')::text;
    END IF;
    RAISE EXCEPTION 'not enough credits: needed %, available %', short.total, acc.available
        USING ERRCODE = 'AQ402',
              DETAIL = json_build_object('needed', short.total, 'available', acc.available)::text;
END;
$$;
-- +goose StatementEnd

-- credit_settle as in 00003_ledger.sql; a refund also gives the hold's
-- amount back to the spend of its day and month when the account still
-- counts those.
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

-- river_job_reserve_rerun as in 00003_ledger.sql; the new run's hold counts
-- in the user's spend like a submission's, but a cap never refuses an
-- admin's retry (caps bound what users submit).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION river_job_reserve_rerun() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    h       credit_holds;
    have    bigint;
    v_day   date := (now() AT TIME ZONE 'UTC')::date;
    v_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
BEGIN
    SELECT * INTO h FROM credit_holds WHERE job_id = NEW.id ORDER BY run DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'AI job % has no credit hold: it cannot run again; submit a new job', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF h.state = 'charged' OR ai_job_outcome(OLD.state, OLD.errors) = 'succeeded' THEN
        RAISE EXCEPTION 'a succeeded job cannot run again; submit a new job'
            USING ERRCODE = 'AQ409',
                  DETAIL = format('job %s run %s is %s', NEW.id, h.run, h.state);
    END IF;
    IF h.state = 'reserved' THEN
        RETURN NEW;
    END IF;
    UPDATE credit_accounts a
       SET available      = a.available - h.amount,
           spent_day      = CASE WHEN a.spent_day_of > v_day THEN a.spent_day
                                 ELSE spend_in(a.spent_day, a.spent_day_of, v_day) + h.amount END,
           spent_day_of   = GREATEST(a.spent_day_of, v_day),
           spent_month    = CASE WHEN a.spent_month_of > v_month THEN a.spent_month
                                 ELSE spend_in(a.spent_month, a.spent_month_of, v_month) + h.amount END,
           spent_month_of = GREATEST(a.spent_month_of, v_month)
     WHERE a.user_id = h.user_id AND a.available >= h.amount;
    IF NOT FOUND THEN
        have := COALESCE((SELECT available FROM credit_accounts WHERE user_id = h.user_id), 0);
        RAISE EXCEPTION 'not enough credits to retry: needed %, available %', h.amount, have
            USING ERRCODE = 'AQ402',
                  DETAIL = json_build_object('needed', h.amount, 'available', have)::text,
                  HINT = format('job %s of user %s', NEW.id, h.user_id);
    END IF;
    INSERT INTO credit_holds (job_id, run, user_id, amount) VALUES (NEW.id, h.run + 1, h.user_id, h.amount);
    INSERT INTO credit_entries (user_id, kind, amount, job_id, run) VALUES (h.user_id, 'reserve', h.amount, NEW.id, h.run + 1);
    -- River keeps a job's errors across a retry, and ai_job_outcome reads a
    -- last error wrapped in JobCancelError as the worker failing the job: so
    -- a new run a person cancels before it records an error of its own
    -- would read as failed. The earlier runs' errors keep their text
    -- without River's wrapper.
    IF NEW.errors IS NOT NULL THEN
        NEW.errors := ARRAY(
            SELECT CASE WHEN e ->> 'error' LIKE 'JobCancelError: %'
                        THEN jsonb_set(e, '{error}', to_jsonb(substr(e ->> 'error', length('JobCancelError: ') + 1)))
                        ELSE e END
              FROM unnest(NEW.errors) WITH ORDINALITY AS u (e, i)
             ORDER BY i);
    END IF;
    RETURN NEW;
END;
$$;
-- +goose StatementEnd

-- +goose Down
-- The functions and the view go back to their definitions of 00003_ledger.sql
-- and 00005_api.sql.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION river_job_reserve_rerun() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    h    credit_holds;
    have bigint;
BEGIN
    SELECT * INTO h FROM credit_holds WHERE job_id = NEW.id ORDER BY run DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'AI job % has no credit hold: it cannot run again; submit a new job', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF h.state = 'charged' OR ai_job_outcome(OLD.state, OLD.errors) = 'succeeded' THEN
        RAISE EXCEPTION 'a succeeded job cannot run again; submit a new job'
            USING ERRCODE = 'AQ409',
                  DETAIL = format('job %s run %s is %s', NEW.id, h.run, h.state);
    END IF;
    IF h.state = 'reserved' THEN
        RETURN NEW;
    END IF;
    UPDATE credit_accounts SET available = available - h.amount
     WHERE user_id = h.user_id AND available >= h.amount;
    IF NOT FOUND THEN
        have := COALESCE((SELECT available FROM credit_accounts WHERE user_id = h.user_id), 0);
        RAISE EXCEPTION 'not enough credits to retry: needed %, available %', h.amount, have
            USING ERRCODE = 'AQ402',
                  DETAIL = json_build_object('needed', h.amount, 'available', have)::text,
                  HINT = format('job %s of user %s', NEW.id, h.user_id);
    END IF;
    INSERT INTO credit_holds (job_id, run, user_id, amount) VALUES (NEW.id, h.run + 1, h.user_id, h.amount);
    INSERT INTO credit_entries (user_id, kind, amount, job_id, run) VALUES (h.user_id, 'reserve', h.amount, NEW.id, h.run + 1);
    IF NEW.errors IS NOT NULL THEN
        NEW.errors := ARRAY(
            SELECT CASE WHEN e ->> 'error' LIKE 'JobCancelError: %'
                        THEN jsonb_set(e, '{error}', to_jsonb(substr(e ->> 'error', length('JobCancelError: ') + 1)))
                        ELSE e END
              FROM unnest(NEW.errors) WITH ORDINALITY AS u (e, i)
             ORDER BY i);
    END IF;
    RETURN NEW;
END;
$$;
-- +goose StatementEnd
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
        UPDATE credit_accounts SET available = available + h.amount WHERE user_id = h.user_id;
    END IF;
    INSERT INTO credit_entries (user_id, kind, amount, job_id, run)
    VALUES (h.user_id, CASE WHEN p_charge THEN 'charge' ELSE 'refund' END, h.amount, h.job_id, h.run);
    RETURN h.state;
END;
$$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION river_job_reserve_credits() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    short record;
    have  bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM new_jobs
                WHERE kind = 'ai' AND (args ->> 'user_id' IS NULL OR COALESCE((args ->> 'cost')::bigint, 0) <= 0)) THEN
        RAISE EXCEPTION 'an AI job needs args.user_id and a positive args.cost'
            USING ERRCODE = 'check_violation';
    END IF;
    WITH jobs AS (
        SELECT id, (args ->> 'user_id')::uuid AS user_id, (args ->> 'cost')::bigint AS amount
          FROM new_jobs
         WHERE kind = 'ai'
    ), per_user AS (
        SELECT user_id, sum(amount) AS total FROM jobs GROUP BY user_id
    ), acct AS (
        UPDATE credit_accounts a
           SET available = a.available - p.total
          FROM per_user p
         WHERE a.user_id = p.user_id AND a.available >= p.total
        RETURNING a.user_id
    ), h AS (
        INSERT INTO credit_holds (job_id, user_id, amount)
        SELECT j.id, j.user_id, j.amount FROM jobs j JOIN acct USING (user_id)
        RETURNING job_id, run, user_id, amount
    ), e AS (
        INSERT INTO credit_entries (user_id, kind, amount, job_id, run)
        SELECT user_id, 'reserve', amount, job_id, run FROM h
    )
    SELECT p.user_id, p.total
      INTO short
      FROM per_user p
     WHERE p.user_id NOT IN (SELECT user_id FROM acct)
     ORDER BY p.user_id
     LIMIT 1;
    IF FOUND THEN
        have := COALESCE((SELECT available FROM credit_accounts WHERE user_id = short.user_id), 0);
        RAISE EXCEPTION 'not enough credits: needed %, available %', short.total, have
            USING ERRCODE = 'AQ402',
                  DETAIL = json_build_object('needed', short.total, 'available', have)::text;
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
DROP FUNCTION IF EXISTS spend_in(bigint, date, date);
DROP TABLE IF EXISTS spend_cap_defaults;
ALTER TABLE credit_accounts
    DROP COLUMN IF EXISTS daily_cap,
    DROP COLUMN IF EXISTS monthly_cap,
    DROP COLUMN IF EXISTS spent_day,
    DROP COLUMN IF EXISTS spent_day_of,
    DROP COLUMN IF EXISTS spent_month,
    DROP COLUMN IF EXISTS spent_month_of;
DROP VIEW IF EXISTS ai_jobs;
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
    regexp_replace(j.errors[array_length(j.errors, 1)] ->> 'error', '^JobCancelError: ', '') AS last_error,
    f.result                                         AS result,
    j.priority                                       AS river_priority
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
WHERE j.kind = 'ai';
COMMENT ON VIEW ai_jobs IS 'One row per AI job: API id and state, River state, credits and their state, fal request and progress, timings, last error.';
DROP TRIGGER IF EXISTS river_job_rerun_deadline ON river_job;
DROP FUNCTION IF EXISTS river_job_rerun_deadline();
DROP TRIGGER IF EXISTS river_job_deadlines ON river_job;
DROP FUNCTION IF EXISTS river_job_deadlines();
DROP TABLE IF EXISTS ai_job_deadlines;
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION ai_job_outcome(s river_job_state, errors jsonb[]) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE s
        WHEN 'completed' THEN 'succeeded'
        WHEN 'discarded' THEN 'failed'
        WHEN 'cancelled' THEN
            CASE WHEN errors[array_upper(errors, 1)] ->> 'error' ~ '^JobCancelError: [a-z_]+: '
                      AND errors[array_upper(errors, 1)] ->> 'error' !~ '^JobCancelError: cancelled: '
                 THEN 'failed' ELSE 'cancelled' END
    END
$$;
-- +goose StatementEnd
