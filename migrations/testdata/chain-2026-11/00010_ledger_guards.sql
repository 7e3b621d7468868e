-- +goose Up
-- Guards that close the ledger's remaining gaps (00003 left them open):
--   * a hold cannot be committed without its AI job (00003 only checks the
--     other way round), so a reservation never exists without its job;
--   * a finished AI job whose hold is settled cannot be put back in the queue
--     (River UI "retry"): running it again would be unpaid work, and its
--     settled hold can never change again;
--   * TRUNCATE of river_job fires no row trigger, so it refunds the open holds
--     itself, like a DELETE of every row;
--   * holds and accounts refuse TRUNCATE, like the journal.

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

-- +goose StatementBegin
CREATE FUNCTION river_job_refuse_rerun() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    held text;
BEGIN
    SELECT state INTO held FROM credit_holds WHERE job_id = NEW.id;
    IF held IS NOT NULL AND held <> 'reserved' THEN
        RAISE EXCEPTION 'AI job % is % and its credits are %: it cannot run again; submit a new job', NEW.id, OLD.state, held
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER river_job_refuse_rerun BEFORE UPDATE OF state ON river_job
    FOR EACH ROW
    WHEN (NEW.kind = 'ai'
          AND OLD.state IN ('completed', 'discarded', 'cancelled')
          AND NEW.state NOT IN ('completed', 'discarded', 'cancelled'))
    EXECUTE FUNCTION river_job_refuse_rerun();

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

-- +goose StatementBegin
CREATE FUNCTION ledger_refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% cannot be truncated: the ledger keeps its history', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER credit_holds_no_truncate BEFORE TRUNCATE ON credit_holds
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_truncate();
CREATE TRIGGER credit_accounts_no_truncate BEFORE TRUNCATE ON credit_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_truncate();

-- +goose Down
DROP TRIGGER IF EXISTS credit_accounts_no_truncate ON credit_accounts;
DROP TRIGGER IF EXISTS credit_holds_no_truncate ON credit_holds;
DROP FUNCTION IF EXISTS ledger_refuse_truncate();
DROP TRIGGER IF EXISTS river_job_refund_truncated ON river_job;
DROP FUNCTION IF EXISTS river_job_refund_truncated();
DROP TRIGGER IF EXISTS river_job_refuse_rerun ON river_job;
DROP FUNCTION IF EXISTS river_job_refuse_rerun();
DROP TRIGGER IF EXISTS credit_holds_require_job ON credit_holds;
DROP FUNCTION IF EXISTS credit_holds_require_job();
