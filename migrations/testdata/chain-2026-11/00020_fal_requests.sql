-- +goose Up
-- fal_requests: one row per fal request a worker submits (or tries to), the
-- durable record the per-key in-flight cap (FAL_KEY_MAX_IN_FLIGHT) is
-- derived from, the same for every server process.
--
-- A worker claims a row ('submitting', no request_id) under the advisory
-- lock that serializes key selection, before the HTTP submit; once fal
-- accepts, the same transaction that stores the request id in the job's
-- output (river_job.metadata.output.fal) sets request_id and 'in_flight'. A
-- row counts against its key while finished_at IS NULL: from the claim until
-- fal reports the request COMPLETED ('completed') or it is cancelled
-- ('cancelled'). The other final states: 'failed' (fal refused the submit or
-- gave no answer), 'lost' (fal answered 404 for a request it had accepted),
-- 'abandoned' (a claim whose request id was never stored: the process died
-- between claim and store; fal may or may not have accepted the submit).
CREATE TABLE fal_requests (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       bigint NOT NULL,
    attempt      int NOT NULL,
    key_index    int NOT NULL CHECK (key_index >= 1),
    model        text NOT NULL,
    request_id   text UNIQUE,
    state        text NOT NULL DEFAULT 'submitting'
                 CHECK (state IN ('submitting', 'in_flight', 'completed', 'cancelled', 'failed', 'lost', 'abandoned')),
    error        text,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    submitted_at timestamptz,
    finished_at  timestamptz,
    CONSTRAINT fal_requests_open CHECK ((state IN ('submitting', 'in_flight')) = (finished_at IS NULL)),
    CONSTRAINT fal_requests_request_id CHECK ((request_id IS NULL) = (state IN ('submitting', 'failed', 'abandoned')))
);
-- No foreign key to river_job: River's cleaner deletes finished jobs, and a
-- request fal still runs for a deleted job must stay visible until the
-- sweeper cancels it.
CREATE INDEX fal_requests_open_key ON fal_requests (key_index) WHERE finished_at IS NULL;
CREATE INDEX fal_requests_job_id ON fal_requests (job_id);
CREATE INDEX fal_requests_finished_at ON fal_requests (finished_at) WHERE finished_at IS NOT NULL;

COMMENT ON TABLE fal_requests IS 'One row per fal request: key index, request id, state. Open rows (finished_at IS NULL) are the in-flight requests per key.';

-- fal_key_in_flight: the in-flight count per key index, as the workers see it.
CREATE VIEW fal_key_in_flight AS
SELECT key_index, 'key-' || key_index AS key, count(*) AS in_flight,
       count(*) FILTER (WHERE state = 'submitting') AS submitting,
       min(claimed_at) AS oldest_claimed_at
  FROM fal_requests
 WHERE finished_at IS NULL
 GROUP BY key_index;

COMMENT ON VIEW fal_key_in_flight IS 'fal requests in progress per key index (FAL_KEY_MAX_IN_FLIGHT caps in_flight).';

-- +goose Down
DROP VIEW IF EXISTS fal_key_in_flight;
DROP TABLE IF EXISTS fal_requests;
