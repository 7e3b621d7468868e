-- +goose Up
-- fal capacity, shared by every server process: the keys and their slots,
-- every request made with them, the line of jobs waiting for a slot, and
-- the jobs' deadlines to start (a job that cannot start in time is
-- cancelled and refunded).

-- fal_keys: one row per configured key (named by index, never by secret):
-- how many requests it may hold at once (FAL_KEY_MAX_IN_FLIGHT, written by
-- each process at start), and until when it is unusable after fal answered
-- 429 (cooling down) or 401/403 (revoked).
CREATE TABLE fal_keys (
    key_index       int PRIMARY KEY CHECK (key_index >= 1),
    capacity        int NOT NULL CHECK (capacity >= 0),
    unusable_until  timestamptz,
    unusable_reason text CHECK (unusable_reason IN ('rate_limited', 'revoked')),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE fal_keys IS 'fal keys by index: slots (capacity) and health (unusable_until after a 429 or 401/403).';

-- fal_requests: one row per slot a job holds, from the moment the line
-- gives it the slot (state 'submitting', no request id) through fal's
-- answer (request id and the URLs fal returned: 'in_flight') until fal
-- finishes it ('completed') or it ends otherwise ('cancelled', 'failed':
-- fal refused or the submit failed; 'lost': fal forgot a request it had
-- accepted; 'expired': fal dropped a completed request's result;
-- 'abandoned': a claim whose process died between submit and storing fal's
-- answer). A row holds its slot while finished_at IS NULL. stage,
-- fal_queue_position and logs are fal's progress, for the API; result is
-- fal's output of a completed request, the job's result.
CREATE TABLE fal_requests (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id             bigint NOT NULL,
    run                int NOT NULL DEFAULT 1,
    attempt            int NOT NULL,
    user_id            uuid NOT NULL,
    queue              text NOT NULL,
    operation          text NOT NULL,
    key_index          int NOT NULL CHECK (key_index >= 1),
    model              text NOT NULL,
    request_id         text UNIQUE,
    status_url         text,
    response_url       text,
    cancel_url         text,
    state              text NOT NULL DEFAULT 'submitting'
                       CHECK (state IN ('submitting', 'in_flight', 'completed', 'cancelled', 'failed', 'lost', 'expired', 'abandoned')),
    stage              text CHECK (stage IN ('in_queue', 'in_progress', 'finishing')),
    fal_queue_position int,
    logs               jsonb,
    billable_units     numeric,
    result             jsonb,
    cancel_outcome     text,
    error              text,
    claimed_at         timestamptz NOT NULL DEFAULT now(),
    submitted_at       timestamptz,
    completed_at       timestamptz,
    finished_at        timestamptz,
    CONSTRAINT fal_requests_open CHECK ((state IN ('submitting', 'in_flight')) = (finished_at IS NULL)),
    CONSTRAINT fal_requests_request_id CHECK ((request_id IS NULL) = (state IN ('submitting', 'failed', 'abandoned')))
);
-- No foreign key to river_job: River's cleaner deletes finished jobs, and a
-- request fal still runs for a deleted job must stay visible until the
-- sweeper cancels it.
CREATE INDEX fal_requests_job_id ON fal_requests (job_id, id DESC);
CREATE INDEX fal_requests_open_key ON fal_requests (key_index) WHERE finished_at IS NULL;
CREATE INDEX fal_requests_open_user ON fal_requests (user_id) WHERE finished_at IS NULL;
CREATE INDEX fal_requests_user_id ON fal_requests (user_id, id DESC);
CREATE INDEX fal_requests_finished_at ON fal_requests (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX fal_requests_recent ON fal_requests (operation, completed_at DESC) WHERE state = 'completed';
COMMENT ON TABLE fal_requests IS 'One row per fal slot a job holds: key index, fal request id and URLs, progress, state. Open rows (finished_at IS NULL) hold the slots.';

-- The line: an AI job waits for a fal slot in River's state 'pending'
-- (inserted so, made available by the dispatcher once it holds a slot), or
-- parked in fal_parked after losing its slot (its River state is
-- 'scheduled' then). The dispatcher serves the line by queue priority, then
-- the user with the fewest requests in flight, then the user served least
-- recently, then the oldest job; this
-- index gives each waiting user's oldest job per queue without reading the
-- backlog.
CREATE INDEX river_job_fal_line ON river_job (queue, (args ->> 'user_id'), id) WHERE state = 'pending' AND kind = 'ai';

CREATE TABLE fal_parked (
    job_id    bigint PRIMARY KEY,
    queue     text NOT NULL,
    user_id   text NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fal_parked_line ON fal_parked (queue, user_id, job_id);
COMMENT ON TABLE fal_parked IS 'AI jobs back in the line for a fal slot after losing theirs (key cooling down, submit failed); the dispatcher wakes them.';

-- A job's place in the line for fal slots, in two parts, so a process can
-- share the costly one among the jobs it places: fal_line_ahead and
-- fal_line_waiting read a queue's line (the jobs of more urgent queues, and
-- every user waiting in the queue: one bounded index range per user, never
-- the backlog behind them), and fal_line_place places one job against such
-- a reading. The API keeps each queue's reading for a quarter of a second
-- (jobs.Service), so a submit's answer and a read of a queued job cost a
-- few index probes, not a walk over every waiting user (that walk was half
-- of Postgres's time per job under load). fal_line_position does both,
-- for a DBA: the rule is fal_line_place's alone.

-- fal_line_ahead: the jobs of queues more urgent than p_queue waiting for a
-- slot (at most p_cap pending, and the parked ones): all of them get one
-- first.
-- +goose StatementBegin
CREATE FUNCTION fal_line_ahead(p_queue text, p_cap int) RETURNS int
LANGUAGE plpgsql STABLE AS $$
DECLARE
    higher text[];
BEGIN
    higher := (ARRAY['urgent', 'normal', 'background'])[1:array_position(ARRAY['urgent', 'normal', 'background'], p_queue) - 1];
    IF cardinality(higher) = 0 THEN
        RETURN 0;
    END IF;
    RETURN (SELECT count(*) FROM (
                SELECT 1 FROM river_job WHERE state = 'pending' AND kind = 'ai' AND queue = ANY(higher) LIMIT p_cap) x)
         + (SELECT count(*) FROM fal_parked WHERE queue = ANY(higher));
END;
$$;
-- +goose StatementEnd

-- fal_line_waiting: every user with jobs pending in queue p_queue, by user
-- id: the oldest of them (head), how many (at most p_cap) and the user's
-- fal requests in flight.
-- +goose StatementBegin
CREATE FUNCTION fal_line_waiting(p_queue text, p_cap int)
RETURNS TABLE (user_id text, head bigint, waiting int, inflight int)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE users AS (
        (SELECT args ->> 'user_id' AS uid FROM river_job
          WHERE state = 'pending' AND kind = 'ai' AND queue = p_queue ORDER BY args ->> 'user_id' LIMIT 1)
        UNION ALL
        SELECT (SELECT args ->> 'user_id' FROM river_job
                 WHERE state = 'pending' AND kind = 'ai' AND queue = p_queue AND args ->> 'user_id' > u.uid
                 ORDER BY args ->> 'user_id' LIMIT 1)
          FROM users u WHERE u.uid IS NOT NULL
    )
    SELECT u.uid,
           (SELECT min(id) FROM river_job WHERE state = 'pending' AND kind = 'ai' AND queue = p_queue AND args ->> 'user_id' = u.uid),
           (SELECT count(*) FROM (SELECT 1 FROM river_job
                                   WHERE state = 'pending' AND kind = 'ai' AND queue = p_queue AND args ->> 'user_id' = u.uid
                                   LIMIT p_cap) x)::int,
           (SELECT count(*) FROM fal_requests WHERE finished_at IS NULL AND user_id = u.uid::uuid)::int
      FROM users u WHERE u.uid IS NOT NULL
     ORDER BY u.uid
$$;
-- +goose StatementEnd

-- fal_line_place estimates how many jobs will get a fal slot before job
-- p_job_id (0 once it holds one, NULL when it is not waiting), at most
-- p_cap, from a reading of its queue's line (fal_line_ahead: p_ahead;
-- fal_line_waiting: the other arrays, by user): every job waiting in a more
-- urgent queue, this user's older jobs, and from each other user waiting in
-- the queue the turns the line gives it first (one per turn of this user,
-- plus one per request in flight fewer, plus one when its oldest job is
-- older than this one). Reads this job and this user only.
-- +goose StatementBegin
CREATE FUNCTION fal_line_place(p_job_id bigint, p_cap int, p_ahead int,
                               p_users text[], p_heads bigint[], p_waiting int[], p_inflight int[]) RETURNS int
LANGUAGE plpgsql STABLE AS $$
DECLARE
    j        record;
    mine     int;
    inflight int;
    ahead    int := p_ahead;
    turns    int;
BEGIN
    SELECT id, queue, state, args ->> 'user_id' AS uid INTO j FROM river_job WHERE id = p_job_id AND kind = 'ai';
    IF NOT FOUND OR j.state IN ('completed', 'discarded', 'cancelled') THEN
        RETURN NULL;
    END IF;
    IF j.state <> 'pending' AND NOT EXISTS (SELECT 1 FROM fal_parked WHERE job_id = p_job_id) THEN
        RETURN 0;
    END IF;
    SELECT count(*) INTO mine FROM (
        SELECT 1 FROM river_job
         WHERE state = 'pending' AND kind = 'ai' AND queue = j.queue AND args ->> 'user_id' = j.uid AND id < j.id
         LIMIT p_cap) x;
    SELECT count(*) INTO inflight FROM fal_requests WHERE finished_at IS NULL AND user_id = j.uid::uuid;
    FOR i IN 1 .. coalesce(cardinality(p_users), 0) LOOP
        EXIT WHEN ahead + mine >= p_cap;
        CONTINUE WHEN p_users[i] = j.uid;
        turns := mine + inflight - p_inflight[i] + CASE WHEN p_heads[i] < j.id THEN 1 ELSE 0 END;
        IF turns > 0 THEN
            ahead := ahead + least(p_waiting[i], turns);
        END IF;
    END LOOP;
    RETURN least(ahead + mine, p_cap);
END;
$$;
-- +goose StatementEnd

-- fal_line_position: fal_line_place against a reading of the job's queue
-- made now.
-- +goose StatementBegin
CREATE FUNCTION fal_line_position(p_job_id bigint, p_cap int) RETURNS int
LANGUAGE plpgsql STABLE AS $$
DECLARE
    q text;
    w record;
BEGIN
    SELECT queue INTO q FROM river_job WHERE id = p_job_id AND kind = 'ai';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(user_id ORDER BY user_id) AS users, array_agg(head ORDER BY user_id) AS heads,
           array_agg(waiting ORDER BY user_id) AS waiting, array_agg(inflight ORDER BY user_id) AS inflight
      INTO w FROM fal_line_waiting(q, p_cap);
    RETURN fal_line_place(p_job_id, p_cap, fal_line_ahead(q, p_cap), w.users, w.heads, w.waiting, w.inflight);
END;
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

-- fal_webhooks_seen: the signatures of fal webhooks taken in, until their
-- timestamp leaves fal's tolerance (5 minutes): a replayed delivery is
-- refused. Pruned by the hourly prune job.
CREATE TABLE fal_webhooks_seen (
    signature  text PRIMARY KEY,
    request_id text NOT NULL,
    expires_at timestamptz NOT NULL
);
COMMENT ON TABLE fal_webhooks_seen IS 'Signatures of fal webhooks already taken in (replay protection), kept until they expire.';

-- worker_heartbeats: one row per worker process (River's client id), beaten
-- every two seconds, with its host and pid; the running jobs of a process
-- that stopped beating are handed back in seconds (dispatch/heartbeat.go),
-- long before River's own rescuer would.
CREATE TABLE worker_heartbeats (
    client_id text PRIMARY KEY,
    host      text NOT NULL,
    pid       int NOT NULL,
    beat_at   timestamptz NOT NULL
);
COMMENT ON TABLE worker_heartbeats IS 'Worker processes and their last beat; a process silent for 8 s (or gone from its host) is taken for dead and its running jobs handed back.';

-- A job an admin puts back in the queue gets a new run
-- (river_job_reserve_rerun, in the ledger) and takes along the requests it
-- still holds at fal: one its end left open (the sweeper had not cancelled
-- it yet) is followed by the new run, which pays fal nothing more, and
-- shows as that run's (ai_jobs).
-- +goose StatementBegin
CREATE FUNCTION river_job_rerun_requests() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE fal_requests
       SET run = (SELECT max(run) FROM credit_holds WHERE job_id = NEW.id)
     WHERE job_id = NEW.id AND finished_at IS NULL;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER river_job_rerun_requests AFTER UPDATE OF state ON river_job
    FOR EACH ROW
    WHEN (NEW.kind = 'ai'
          AND OLD.state IN ('completed', 'discarded', 'cancelled')
          AND NEW.state NOT IN ('completed', 'discarded', 'cancelled'))
    EXECUTE FUNCTION river_job_rerun_requests();

-- fal_key_in_flight: slots in use per key, as the dispatcher sees them.
CREATE VIEW fal_key_in_flight AS
SELECT k.key_index, 'key-' || k.key_index AS key, k.capacity,
       count(f.id) AS in_flight,
       count(f.id) FILTER (WHERE f.state = 'submitting') AS submitting,
       min(f.claimed_at) AS oldest_claimed_at,
       CASE WHEN k.unusable_until > now() THEN k.unusable_reason END AS unusable,
       k.unusable_until
  FROM fal_keys k
  LEFT JOIN fal_requests f ON f.key_index = k.key_index AND f.finished_at IS NULL
 GROUP BY k.key_index;
COMMENT ON VIEW fal_key_in_flight IS 'fal slots per key: capacity, requests in flight, health.';

-- +goose Down
DROP VIEW IF EXISTS fal_key_in_flight;
DROP TRIGGER IF EXISTS river_job_rerun_requests ON river_job;
DROP FUNCTION IF EXISTS river_job_rerun_requests();
DROP TRIGGER IF EXISTS river_job_rerun_deadline ON river_job;
DROP FUNCTION IF EXISTS river_job_rerun_deadline();
DROP TRIGGER IF EXISTS river_job_deadlines ON river_job;
DROP FUNCTION IF EXISTS river_job_deadlines();
DROP TABLE IF EXISTS ai_job_deadlines;
DROP FUNCTION IF EXISTS fal_line_position(bigint, int);
DROP FUNCTION IF EXISTS fal_line_place(bigint, int, int, text[], bigint[], int[], int[]);
DROP FUNCTION IF EXISTS fal_line_waiting(text, int);
DROP FUNCTION IF EXISTS fal_line_ahead(text, int);
DROP TABLE IF EXISTS worker_heartbeats;
DROP TABLE IF EXISTS fal_webhooks_seen;
DROP TABLE IF EXISTS fal_parked;
DROP INDEX IF EXISTS river_job_fal_line;
DROP TABLE IF EXISTS fal_requests;
DROP TABLE IF EXISTS fal_keys;
