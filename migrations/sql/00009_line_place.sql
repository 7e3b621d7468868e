-- +goose Up
-- A job's place in the line for fal slots, in two parts, so a process can
-- share the costly one among the jobs it places: fal_line_ahead and
-- fal_line_waiting read a queue's line (the jobs of more urgent queues, and
-- every user waiting in the queue: one bounded index range per user, never
-- the backlog behind them), and fal_line_place places one job against such
-- a reading. The API keeps each queue's reading for a quarter of a second
-- (jobs.Service), so a submit's answer and a read of a queued job cost a
-- few index probes, not a walk over every waiting user (that walk was half
-- of Postgres's time per job under load). fal_line_position does both, as
-- before: the rule is fal_line_place's alone.

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
CREATE OR REPLACE FUNCTION fal_line_position(p_job_id bigint, p_cap int) RETURNS int
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

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION fal_line_position(p_job_id bigint, p_cap int) RETURNS int
LANGUAGE plpgsql STABLE AS $$
DECLARE
    j         record;
    higher    text[];
    mine      int;
    inflight  int;
    ahead     int;
    v         record;
    turns     int;
BEGIN
    SELECT id, queue, state, args ->> 'user_id' AS uid INTO j FROM river_job WHERE id = p_job_id AND kind = 'ai';
    IF NOT FOUND OR j.state IN ('completed', 'discarded', 'cancelled') THEN
        RETURN NULL;
    END IF;
    IF j.state <> 'pending' AND NOT EXISTS (SELECT 1 FROM fal_parked WHERE job_id = p_job_id) THEN
        RETURN 0;
    END IF;
    higher := (ARRAY['urgent', 'normal', 'background'])[1:array_position(ARRAY['urgent', 'normal', 'background'], j.queue) - 1];
    SELECT count(*) INTO ahead FROM (
        SELECT 1 FROM river_job WHERE state = 'pending' AND kind = 'ai' AND queue = ANY(higher) LIMIT p_cap) x;
    ahead := ahead + (SELECT count(*) FROM fal_parked WHERE queue = ANY(higher));
    SELECT count(*) INTO mine FROM river_job
     WHERE state = 'pending' AND kind = 'ai' AND queue = j.queue AND args ->> 'user_id' = j.uid AND id < j.id;
    SELECT count(*) INTO inflight FROM fal_requests WHERE finished_at IS NULL AND user_id = j.uid::uuid;
    FOR v IN
        WITH RECURSIVE users AS (
            (SELECT args ->> 'user_id' AS uid FROM river_job
              WHERE state = 'pending' AND kind = 'ai' AND queue = j.queue ORDER BY args ->> 'user_id' LIMIT 1)
            UNION ALL
            SELECT (SELECT args ->> 'user_id' FROM river_job
                     WHERE state = 'pending' AND kind = 'ai' AND queue = j.queue AND args ->> 'user_id' > u.uid
                     ORDER BY args ->> 'user_id' LIMIT 1)
              FROM users u WHERE u.uid IS NOT NULL
        )
        SELECT u.uid,
               (SELECT min(id) FROM river_job WHERE state = 'pending' AND kind = 'ai' AND queue = j.queue AND args ->> 'user_id' = u.uid) AS head,
               (SELECT count(*) FROM fal_requests WHERE finished_at IS NULL AND user_id = u.uid::uuid) AS inflight
          FROM users u WHERE u.uid IS NOT NULL AND u.uid <> j.uid
    LOOP
        EXIT WHEN ahead + mine >= p_cap;
        turns := mine + inflight - v.inflight::int + CASE WHEN v.head < j.id THEN 1 ELSE 0 END;
        IF turns > 0 THEN
            ahead := ahead + (SELECT count(*) FROM (
                SELECT 1 FROM river_job WHERE state = 'pending' AND kind = 'ai' AND queue = j.queue AND args ->> 'user_id' = v.uid
                 LIMIT turns) x);
        END IF;
    END LOOP;
    RETURN least(ahead + mine, p_cap);
END;
$$;
-- +goose StatementEnd
DROP FUNCTION IF EXISTS fal_line_place(bigint, int, int, text[], bigint[], int[], int[]);
DROP FUNCTION IF EXISTS fal_line_waiting(text, int);
DROP FUNCTION IF EXISTS fal_line_ahead(text, int);
