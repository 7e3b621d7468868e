-- +goose Up
-- The ledger: credit accounts, holds (one per run of an AI job) and an
-- append-only journal. Credits are reserved by inserting an AI job into
-- river_job (and again by an admin retrying it) and settled by the job
-- reaching its final state, all by triggers here, so money moves in the same transaction as the job whatever
-- moves it (the API, a worker, River UI, River's rescuer or cleaner).
--
-- An account keeps only what can still be spent (available). Reserving
-- takes the cost from available into an open hold; charging only marks the
-- hold charged, refunding gives the cost back to available. So the account
-- row is written once on the way to a charge, and a user's completions never
-- wait behind that user's submissions for the row lock. The balance is
-- available plus the open holds (the credit_balances view).

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
CREATE TABLE credit_accounts (
    user_id        uuid PRIMARY KEY,
    available      bigint NOT NULL DEFAULT 0 CONSTRAINT credit_accounts_available_nonnegative CHECK (available >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    daily_cap      bigint CONSTRAINT credit_accounts_daily_cap_check CHECK (daily_cap >= 0),
    monthly_cap    bigint CONSTRAINT credit_accounts_monthly_cap_check CHECK (monthly_cap >= 0),
    spent_day      bigint NOT NULL DEFAULT 0,
    spent_day_of   date,
    spent_month    bigint NOT NULL DEFAULT 0,
    spent_month_of date
);
COMMENT ON TABLE credit_accounts IS 'One row per user: the credits available to spend. balance = available + open holds (credit_balances).';

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

-- spend_in is a counter's spend in period: the counter's amount when it
-- counts that period, else 0 (it counts an earlier one: period is new).
-- +goose StatementBegin
CREATE FUNCTION spend_in(amount bigint, counted date, period date) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN counted = period THEN amount ELSE 0 END
$$;
-- +goose StatementEnd

-- Holds: one per run of an AI job (job_id is river_job.id; a job runs again
-- only when an admin retries it: river_job_reserve_rerun), reserved until
-- the run ends, then charged or refunded exactly once. Never deleted: a
-- settled hold is the job's receipt after River's cleaner removes the job.
CREATE TABLE credit_holds (
    job_id     bigint NOT NULL,
    run        int NOT NULL DEFAULT 1 CHECK (run >= 1),
    user_id    uuid NOT NULL REFERENCES credit_accounts (user_id),
    amount     bigint NOT NULL CHECK (amount > 0),
    state      text NOT NULL DEFAULT 'reserved' CHECK (state IN ('reserved', 'charged', 'refunded')),
    created_at timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz,
    PRIMARY KEY (job_id, run),
    CONSTRAINT credit_holds_settled_at CHECK ((state = 'reserved') = (settled_at IS NULL))
);
CREATE UNIQUE INDEX credit_holds_one_open ON credit_holds (job_id) WHERE state = 'reserved';
CREATE INDEX credit_holds_user_id_job_id ON credit_holds (user_id, job_id DESC);
-- A user's open holds (the pending cap, credit_balances), read with
-- "settled_at IS NULL" (credit_holds_settled_at: the same rows as
-- "state = 'reserved'"), so that no other index serves that read and no
-- other read (a settle's, by job) uses this one: with both open-hold
-- indexes on the state, the planner, on the trailing statistics of a
-- growing table, counted a user's open holds by filtering all users'
-- (credit_holds_one_open; about 2,000 buffers a submission in the
-- versus-seed bench).
CREATE INDEX credit_holds_open_user_id ON credit_holds (user_id) WHERE settled_at IS NULL;
COMMENT ON TABLE credit_holds IS 'Credits held for one run of an AI job: reserved, then charged (succeeded) or refunded, once.';

-- Journal: append-only, one row per grant, reserve, charge and refund.
CREATE TABLE credit_entries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('grant', 'reserve', 'charge', 'refund')),
    amount          bigint NOT NULL CHECK (amount > 0),
    job_id          bigint,
    run             int,
    reason          text,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_entries_job CHECK ((kind = 'grant') = (job_id IS NULL) AND (job_id IS NULL) = (run IS NULL))
);
CREATE INDEX credit_entries_user_id_id ON credit_entries (user_id, id DESC);
CREATE UNIQUE INDEX credit_entries_grant_key ON credit_entries (idempotency_key)
    WHERE kind = 'grant' AND idempotency_key IS NOT NULL;
COMMENT ON TABLE credit_entries IS 'Append-only journal of credits: grant, reserve, charge, refund.';

-- ai_job_outcome is the one rule from a River job to how it ended, for the
-- API, the views, the settlement, the metrics and the checks: NULL while the
-- job can still run; 'succeeded' (completed: charge); 'failed' (discarded,
-- or cancelled by its worker because fal refused it for good: the worker
-- ends such jobs with River's JobCancel and its error code); 'cancelled'
-- (cancelled by a person: the API, River UI; or for its deadline, below).
-- Every ending but 'succeeded' refunds.
--
-- A job whose deadline to start (start_by, ai_job_deadlines) passed before
-- fal accepted any request of it ends cancelled (deadline_exceeded),
-- whoever ends it: the line (a job still waiting), the worker (a job given
-- its slot in the last moment), or fal itself (X-Fal-Request-Timeout: the
-- worker ends the job with River's JobCancel and that code). It is the
-- client's own deadline, like a cancel, so it reads 'cancelled', not
-- 'failed'.
-- +goose StatementBegin
CREATE FUNCTION ai_job_outcome(s river_job_state, errors jsonb[]) RETURNS text
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

-- +goose StatementBegin
CREATE FUNCTION ledger_refuse() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % refused: %', TG_OP, TG_TABLE_NAME, TG_ARGV[0]
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER credit_entries_append_only BEFORE UPDATE OR DELETE ON credit_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse('the journal is append-only');
CREATE TRIGGER credit_entries_no_truncate BEFORE TRUNCATE ON credit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse('the ledger keeps its history');
CREATE TRIGGER credit_holds_no_truncate BEFORE TRUNCATE ON credit_holds
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse('the ledger keeps its history');
CREATE TRIGGER credit_accounts_no_truncate BEFORE TRUNCATE ON credit_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse('the ledger keeps its history');
CREATE TRIGGER credit_holds_no_delete BEFORE DELETE ON credit_holds
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse('holds are receipts');
-- Holds are written by inserting their AI job (river_job_reserve_credits)
-- or retrying it (river_job_reserve_rerun), never by hand.
CREATE TRIGGER credit_holds_only_by_reserve BEFORE INSERT ON credit_holds
    FOR EACH ROW WHEN (pg_trigger_depth() = 0)
    EXECUTE FUNCTION ledger_refuse('holds are written by inserting their AI job');

-- A settled hold never changes again; an open one changes only its state.
-- +goose StatementBegin
CREATE FUNCTION credit_holds_settle_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state <> 'reserved' THEN
        RAISE EXCEPTION 'credit hold of job % run % is already %', OLD.job_id, OLD.run, OLD.state
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (NEW.job_id, NEW.run, NEW.user_id, NEW.amount) IS DISTINCT FROM (OLD.job_id, OLD.run, OLD.user_id, OLD.amount) THEN
        RAISE EXCEPTION 'credit hold of job % is immutable except for its state', OLD.job_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER credit_holds_settle_once BEFORE UPDATE ON credit_holds
    FOR EACH ROW EXECUTE FUNCTION credit_holds_settle_once();

-- credit_settle settles the open hold of a job: charge (p_charge) or
-- refund. It returns the new hold state, or NULL when the job has no open
-- hold (already settled, or none), which makes every caller exactly-once.
-- A refund also gives the hold's amount back to the spend of its day and
-- month when the account still counts those.
-- +goose StatementBegin
CREATE FUNCTION credit_settle(p_job_id bigint, p_charge boolean) RETURNS text
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
CREATE FUNCTION river_job_reserve_credits() RETURNS trigger
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
    -- Several users' jobs in one insert (submissions committed together,
    -- jobs.Service.SubmitJobs): their accounts are locked in user order
    -- first, so two such inserts never wait for each other's rows in
    -- opposite orders.
    IF (SELECT min(args ->> 'user_id') <> max(args ->> 'user_id') FROM new_jobs WHERE kind = 'ai') THEN
        PERFORM 1 FROM credit_accounts
         WHERE user_id IN (SELECT (args ->> 'user_id')::uuid FROM new_jobs WHERE kind = 'ai')
         ORDER BY user_id
           FOR NO KEY UPDATE;
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
CREATE TRIGGER river_job_reserve_credits AFTER INSERT ON river_job
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT
    EXECUTE FUNCTION river_job_reserve_credits();

-- A job reaching its final state settles its run's hold the way
-- ai_job_outcome says; a job deleted while its hold is open (River UI, the
-- cleaner) is refunded; TRUNCATE, which fires no row trigger, refunds every
-- open hold.
-- +goose StatementBegin
CREATE FUNCTION river_job_settle_credits() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM credit_settle(OLD.id, false);
        RETURN OLD;
    END IF;
    PERFORM credit_settle(NEW.id, ai_job_outcome(NEW.state, NEW.errors) = 'succeeded');
    RETURN NEW;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER river_job_settle_credits AFTER UPDATE OF state ON river_job
    FOR EACH ROW
    WHEN (NEW.kind = 'ai' AND NEW.state IN ('completed', 'discarded', 'cancelled'))
    EXECUTE FUNCTION river_job_settle_credits();
CREATE TRIGGER river_job_refund_deleted AFTER DELETE ON river_job
    FOR EACH ROW
    WHEN (OLD.kind = 'ai')
    EXECUTE FUNCTION river_job_settle_credits();

-- +goose StatementBegin
CREATE FUNCTION river_job_refund_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    open_job bigint;
BEGIN
    FOR open_job IN SELECT job_id FROM credit_holds WHERE state = 'reserved' ORDER BY job_id LOOP
        PERFORM credit_settle(open_job, false);
    END LOOP;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER river_job_refund_truncated AFTER TRUNCATE ON river_job
    FOR EACH STATEMENT
    EXECUTE FUNCTION river_job_refund_truncated();

-- An admin putting a finished AI job back in the queue (River UI's Retry,
-- River's JobRetry) starts a new run of it, paid by a new hold taken in the
-- same statement: run = the latest run + 1, the same user and amount, from
-- the user's available credits. So the job can reach fal again only with an
-- open hold, and each run is settled once, when the job ends again. Refused,
-- changing nothing: a succeeded job (SQLSTATE AQ409: a new job is the way to
-- another result), and a retry the user cannot pay for (AQ402 with detail
-- {"needed": N, "available": M}, as a submission). A job whose latest hold
-- is still open goes back without a new one. The new run's hold counts in
-- the user's spend like a submission's, but a cap never refuses an admin's
-- retry (caps bound what users submit).
-- +goose StatementBegin
CREATE FUNCTION river_job_reserve_rerun() RETURNS trigger
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
CREATE TRIGGER river_job_reserve_rerun BEFORE UPDATE OF state ON river_job
    FOR EACH ROW
    WHEN (NEW.kind = 'ai'
          AND OLD.state IN ('completed', 'discarded', 'cancelled')
          AND NEW.state NOT IN ('completed', 'discarded', 'cancelled'))
    EXECUTE FUNCTION river_job_reserve_rerun();

-- credit_balances: one row per account, in the API's words.
CREATE VIEW credit_balances AS
SELECT a.user_id,
       a.available + COALESCE(h.reserved, 0) AS balance,
       COALESCE(h.reserved, 0)               AS reserved,
       a.available                           AS available,
       COALESCE(h.open_holds, 0)             AS open_holds
  FROM credit_accounts a
  LEFT JOIN LATERAL (
      SELECT sum(amount)::bigint AS reserved, count(*) AS open_holds
        FROM credit_holds WHERE user_id = a.user_id AND settled_at IS NULL
  ) h ON true;
COMMENT ON VIEW credit_balances IS 'Credits per user: balance = available + reserved; reserved = the open holds.';

-- +goose Down
DROP VIEW IF EXISTS credit_balances;
DROP TRIGGER IF EXISTS river_job_reserve_rerun ON river_job;
DROP FUNCTION IF EXISTS river_job_reserve_rerun();
DROP TRIGGER IF EXISTS river_job_refund_truncated ON river_job;
DROP FUNCTION IF EXISTS river_job_refund_truncated();
DROP TRIGGER IF EXISTS river_job_refund_deleted ON river_job;
DROP TRIGGER IF EXISTS river_job_settle_credits ON river_job;
DROP FUNCTION IF EXISTS river_job_settle_credits();
DROP TRIGGER IF EXISTS river_job_reserve_credits ON river_job;
DROP FUNCTION IF EXISTS river_job_reserve_credits();
DROP FUNCTION IF EXISTS credit_settle(bigint, boolean);
DROP TABLE IF EXISTS credit_entries;
DROP TABLE IF EXISTS credit_holds;
DROP FUNCTION IF EXISTS spend_in(bigint, date, date);
DROP TABLE IF EXISTS spend_cap_defaults;
DROP TABLE IF EXISTS credit_accounts;
DROP FUNCTION IF EXISTS credit_holds_settle_once();
DROP FUNCTION IF EXISTS ledger_refuse();
DROP FUNCTION IF EXISTS ai_job_outcome(river_job_state, jsonb[]);
