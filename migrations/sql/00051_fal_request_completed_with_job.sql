-- +goose Up
-- The fal request whose result completes an AI job is finished in the same
-- transaction as the job (River's completer marking it completed), instead
-- of by a statement and a commit of its own from the worker. The worker
-- completes a job only after fal answered COMPLETED and the result was
-- fetched, and the job's output names that request
-- (metadata.output.fal.request_id), so the row is 'completed' exactly when
-- the job is. Its in-flight slot is held until then: through the result
-- fetch and River's completion batch, a few milliseconds more than fal needs
-- it. Every other ending of a request (lost, cancelled, a result fal refuses)
-- is still recorded by the worker, the API's cancel or the sweeper.
-- +goose StatementBegin
CREATE FUNCTION river_job_finish_fal_request() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE fal_requests SET state = 'completed', finished_at = now()
     WHERE request_id = NEW.metadata #>> '{output,fal,request_id}'
       AND finished_at IS NULL;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER river_job_finish_fal_request AFTER UPDATE OF state ON river_job
    FOR EACH ROW
    WHEN (NEW.kind = 'ai' AND NEW.state = 'completed' AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION river_job_finish_fal_request();

-- +goose Down
DROP TRIGGER IF EXISTS river_job_finish_fal_request ON river_job;
DROP FUNCTION IF EXISTS river_job_finish_fal_request();
