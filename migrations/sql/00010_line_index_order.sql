-- +goose Up
-- The line's reads walk each waiting user's jobs in order off the line
-- index (river_job_fal_line: queue, user, id, of the pending jobs). Planned
-- while the statistics say no job is pending (taken when the line was
-- empty; it fills and empties within seconds) and the line index, bloated
-- by the jobs that left it, holds few entries for its pages, River's
-- fetching index (state, queue, ...) and a sort looked cheaper, and a read
-- of the line went through every pending job once per waiting user: up to
-- 3 s a call of fal_line_waiting under versus-seed, and 2.8 s of the
-- dispatcher's own walk (dispatch.candidatesSQL), both burning the CPU the
-- rest needed. The functions now ask for each user's jobs in id order and
-- run with sorts off, so only the line index can answer in that order
-- (the dispatcher's walk and the admission's probe do the same,
-- plans.Queue), and with JIT off: the cost that keeps sorts out also stays on the one sort left
-- (the users' order), and a statement that costly is JIT-compiled (280 ms a
-- call of fal_line_waiting on a tiny line).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION fal_line_waiting(p_queue text, p_cap int)
RETURNS TABLE (user_id text, head bigint, waiting int, inflight int)
LANGUAGE sql STABLE SET enable_sort = off SET jit = off AS $$
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
           (SELECT id FROM river_job WHERE state = 'pending' AND kind = 'ai' AND queue = p_queue AND args ->> 'user_id' = u.uid
             ORDER BY id LIMIT 1),
           (SELECT count(*) FROM (SELECT 1 FROM river_job
                                   WHERE state = 'pending' AND kind = 'ai' AND queue = p_queue AND args ->> 'user_id' = u.uid
                                   ORDER BY id LIMIT p_cap) x)::int,
           (SELECT count(*) FROM fal_requests WHERE finished_at IS NULL AND user_id = u.uid::uuid)::int
      FROM users u WHERE u.uid IS NOT NULL
     ORDER BY u.uid
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION fal_line_place(p_job_id bigint, p_cap int, p_ahead int,
                               p_users text[], p_heads bigint[], p_waiting int[], p_inflight int[]) RETURNS int
LANGUAGE plpgsql STABLE SET enable_sort = off SET jit = off AS $$
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
         ORDER BY id LIMIT p_cap) x;
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

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION fal_line_waiting(p_queue text, p_cap int)
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
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION fal_line_place(p_job_id bigint, p_cap int, p_ahead int,
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
