-- +goose Up
-- Outbound webhooks to the studio's backend: the endpoints an admin
-- registered, and an outbox of deliveries written by the database in the
-- transaction that ends a job, so no ending is lost (the row commits with
-- the job's final state) and none is invented (a rolled-back ending writes
-- nothing). Each server process that works jobs delivers the due rows
-- (package webhooks), signed the Standard Webhooks way.

-- webhook_endpoints: where to send which events, and the signing secret
-- (whsec_ + base64 of 32 random bytes). The API shows the secret once, in
-- the answer that created the endpoint; the webhook_deliveries view leaves
-- it out.
CREATE TABLE webhook_endpoints (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    url        text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    events     text[] NOT NULL CHECK (cardinality(events) >= 1
                   AND events <@ ARRAY['job.succeeded', 'job.failed', 'job.cancelled', 'batch.completed']),
    secret     text NOT NULL CHECK (secret LIKE 'whsec\_%'),
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE webhook_endpoints IS 'Outbound webhook endpoints: URL, subscribed events, signing secret (never shown again after creation).';

-- webhook_outbox: one row per event and endpoint subscribed to it. event_id
-- is the webhook-id header, the same for every endpoint of one event and
-- on every retry, so receivers can drop duplicates. A row is 'pending'
-- until the endpoint answers 2xx ('delivered') or retry_until passes
-- ('failed'); next_attempt_at is when it is due (while an attempt is in
-- flight, when that attempt's lease ends). payload is the body, built from
-- the job (or batch) as the API shows it at the first attempt and sent byte
-- for byte on every retry and replay.
CREATE TABLE webhook_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        text NOT NULL,
    event           text NOT NULL CHECK (event IN ('job.succeeded', 'job.failed', 'job.cancelled', 'batch.completed')),
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL,
    job_id          bigint,
    run             int,
    batch_id        uuid,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    retry_until     timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    last_attempt_at timestamptz,
    last_status     int,
    last_error      text,
    payload         text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    CONSTRAINT webhook_outbox_subject CHECK (CASE WHEN event = 'batch.completed'
                                                  THEN job_id IS NULL AND run IS NULL AND batch_id IS NOT NULL
                                                  ELSE job_id IS NOT NULL AND run IS NOT NULL END),
    CONSTRAINT webhook_outbox_delivered CHECK ((state = 'delivered') = (delivered_at IS NOT NULL)),
    UNIQUE (event_id, endpoint_id)
);
-- One event per run of a job per endpoint (a job ends once per run); also
-- the lookup of a job's earlier pending events (ordering).
CREATE UNIQUE INDEX webhook_outbox_job_run ON webhook_outbox (endpoint_id, job_id, run) WHERE job_id IS NOT NULL;
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_outbox_pending_batch ON webhook_outbox (endpoint_id, batch_id) WHERE state = 'pending' AND batch_id IS NOT NULL;
CREATE INDEX webhook_outbox_finished ON webhook_outbox (created_at) WHERE state <> 'pending';
COMMENT ON TABLE webhook_outbox IS 'Outbound webhook deliveries, one per event and endpoint, written with the job''s ending; read webhook_deliveries instead.';

-- webhook_batch_endings: a job of a batch ended (or was deleted unfinished)
-- while an endpoint wants batch.completed. The delivery loop takes these
-- rows out one batch at a time, under the batch row's lock, and writes the
-- batch.completed deliveries when every job of the batch has ended. Deciding
-- it here, in the trigger, would need that lock in the transaction that
-- ends the job: concurrent endings of one batch would wait on each other,
-- and statements ending jobs of several batches could deadlock.
CREATE TABLE webhook_batch_endings (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id   uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_batch_endings_batch_id ON webhook_batch_endings (batch_id);
COMMENT ON TABLE webhook_batch_endings IS 'Batch jobs that ended while batch.completed is subscribed; emptied by the webhook delivery loop.';

-- An AI job reaching its final state writes one delivery per endpoint
-- subscribed to its ending (ai_job_outcome: job.succeeded, job.failed,
-- job.cancelled), all with one event id, and a batch ending when the job
-- belongs to a batch and batch.completed is subscribed. With no endpoint
-- registered it costs one EXISTS on an empty table.
-- +goose StatementBegin
CREATE FUNCTION river_job_webhook_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ev       text;
    ev_id    text;
    job_run  int;
    batch    uuid;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        batch := NULLIF(OLD.args ->> 'batch_id', '')::uuid;
    ELSE
        batch := NULLIF(NEW.args ->> 'batch_id', '')::uuid;
        ev := 'job.' || ai_job_outcome(NEW.state, NEW.errors);
        IF EXISTS (SELECT 1 FROM webhook_endpoints WHERE ev = ANY (events)) THEN
            ev_id := 'evt_' || replace(gen_random_uuid()::text, '-', '');
            SELECT max(run) INTO job_run FROM credit_holds WHERE job_id = NEW.id;
            INSERT INTO webhook_outbox (event_id, event, endpoint_id, user_id, job_id, run, batch_id)
            SELECT ev_id, ev, e.id, (NEW.args ->> 'user_id')::uuid, NEW.id, COALESCE(job_run, 1), batch
              FROM webhook_endpoints e
             WHERE ev = ANY (e.events)
            ON CONFLICT DO NOTHING;
        END IF;
    END IF;
    IF batch IS NOT NULL AND EXISTS (SELECT 1 FROM webhook_endpoints WHERE 'batch.completed' = ANY (events)) THEN
        INSERT INTO webhook_batch_endings (batch_id) VALUES (batch);
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER river_job_webhook_outbox AFTER UPDATE OF state ON river_job
    FOR EACH ROW
    WHEN (NEW.kind = 'ai' AND NEW.state IN ('completed', 'discarded', 'cancelled') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION river_job_webhook_outbox();
-- A batch job deleted before it ended (River UI) ends its batch's wait too:
-- the batch reads as done without it (jobs.Service.CountBatch).
CREATE TRIGGER river_job_webhook_deleted AFTER DELETE ON river_job
    FOR EACH ROW
    WHEN (OLD.kind = 'ai' AND OLD.state NOT IN ('completed', 'discarded', 'cancelled') AND OLD.args ? 'batch_id')
    EXECUTE FUNCTION river_job_webhook_outbox();

-- webhook_deliveries: one row per delivery, in the admin API's words, with
-- the endpoint's URL and never its secret.
CREATE VIEW webhook_deliveries AS
SELECT o.id,
       o.event_id,
       o.event,
       o.endpoint_id,
       e.url                                                     AS endpoint_url,
       o.user_id,
       o.job_id::text                                            AS job_id,
       o.run,
       o.batch_id,
       o.state,
       o.attempts,
       o.created_at,
       o.last_attempt_at,
       CASE WHEN o.state = 'pending' THEN o.next_attempt_at END AS next_attempt_at,
       o.retry_until,
       o.last_status,
       o.last_error,
       o.delivered_at,
       o.delivered_at - o.created_at                             AS delivery_time
  FROM webhook_outbox o
  JOIN webhook_endpoints e ON e.id = o.endpoint_id;
COMMENT ON VIEW webhook_deliveries IS 'Outbound webhook deliveries: event, endpoint URL, job or batch, state (pending, delivered, failed), attempts, last status and error, timings.';

-- +goose Down
DROP VIEW IF EXISTS webhook_deliveries;
DROP TRIGGER IF EXISTS river_job_webhook_deleted ON river_job;
DROP TRIGGER IF EXISTS river_job_webhook_outbox ON river_job;
DROP FUNCTION IF EXISTS river_job_webhook_outbox();
DROP TABLE IF EXISTS webhook_batch_endings;
DROP TABLE IF EXISTS webhook_outbox;
DROP TABLE IF EXISTS webhook_endpoints;
