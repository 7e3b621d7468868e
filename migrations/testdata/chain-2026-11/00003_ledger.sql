-- +goose Up
-- Credit accounts: one row per user. available = balance - reserved, and the
-- CHECKs make a negative available balance impossible.
CREATE TABLE credit_accounts (
    user_id    uuid PRIMARY KEY,
    balance    bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    reserved   bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_accounts_available_nonnegative CHECK (reserved <= balance)
);

-- Holds: one per AI job (job_id is river_job.id), reserved until the job
-- reaches a final state, then charged or refunded exactly once.
CREATE TABLE credit_holds (
    job_id     bigint PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES credit_accounts (user_id),
    amount     bigint NOT NULL CHECK (amount > 0),
    state      text NOT NULL DEFAULT 'reserved' CHECK (state IN ('reserved', 'charged', 'refunded')),
    created_at timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz,
    CONSTRAINT credit_holds_settled_at CHECK ((state = 'reserved') = (settled_at IS NULL))
);
CREATE INDEX credit_holds_user_id_job_id ON credit_holds (user_id, job_id DESC);
CREATE INDEX credit_holds_open ON credit_holds (job_id) WHERE state = 'reserved';

-- Journal: append-only, one row per grant, reserve, charge and refund.
CREATE TABLE credit_entries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('grant', 'reserve', 'charge', 'refund')),
    amount          bigint NOT NULL CHECK (amount > 0),
    job_id          bigint,
    reason          text,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_entries_job CHECK ((kind = 'grant') = (job_id IS NULL))
);
CREATE INDEX credit_entries_user_id_id ON credit_entries (user_id, id DESC);
CREATE UNIQUE INDEX credit_entries_grant_key ON credit_entries (idempotency_key)
    WHERE kind = 'grant' AND idempotency_key IS NOT NULL;

-- +goose StatementBegin
CREATE FUNCTION credit_entries_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'credit_entries is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER credit_entries_append_only BEFORE UPDATE OR DELETE ON credit_entries
    FOR EACH ROW EXECUTE FUNCTION credit_entries_append_only();
CREATE TRIGGER credit_entries_no_truncate BEFORE TRUNCATE ON credit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION credit_entries_append_only();

-- A settled hold never changes again, and holds are never deleted.
-- +goose StatementBegin
CREATE FUNCTION credit_holds_settle_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'credit hold % cannot be deleted', OLD.job_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.state <> 'reserved' THEN
        RAISE EXCEPTION 'credit hold % is already %', OLD.job_id, OLD.state
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.job_id <> OLD.job_id OR NEW.user_id <> OLD.user_id OR NEW.amount <> OLD.amount THEN
        RAISE EXCEPTION 'credit hold % is immutable except for its state', OLD.job_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER credit_holds_settle_once BEFORE UPDATE OR DELETE ON credit_holds
    FOR EACH ROW EXECUTE FUNCTION credit_holds_settle_once();

-- credit_settle settles the open hold of a job: charge (p_charge) or refund.
-- It returns the new hold state, or NULL when there was no open hold (already
-- settled, or no hold at all), which makes every caller exactly-once.
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

-- Settlement is tied to river_job itself, so it commits atomically with the
-- job reaching its final state whoever moves it there: the worker, an API or
-- River UI cancel, the rescuer discarding a stuck job, or a delete (River UI,
-- the job cleaner) of a job whose hold is still open.
-- +goose StatementBegin
CREATE FUNCTION river_job_settle_credits() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM credit_settle(OLD.id, false);
        RETURN OLD;
    END IF;
    PERFORM credit_settle(NEW.id, NEW.state = 'completed');
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

-- Every AI job carries a hold from the moment it exists: checked at commit.
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

-- +goose Down
DROP TRIGGER IF EXISTS river_job_require_hold ON river_job;
DROP TRIGGER IF EXISTS river_job_refund_deleted ON river_job;
DROP TRIGGER IF EXISTS river_job_settle_credits ON river_job;
DROP FUNCTION IF EXISTS river_job_require_hold();
DROP FUNCTION IF EXISTS river_job_settle_credits();
DROP FUNCTION IF EXISTS credit_settle(bigint, boolean);
DROP TABLE IF EXISTS credit_entries;
DROP TABLE IF EXISTS credit_holds;
DROP TABLE IF EXISTS credit_accounts;
DROP FUNCTION IF EXISTS credit_holds_settle_once();
DROP FUNCTION IF EXISTS credit_entries_append_only();
