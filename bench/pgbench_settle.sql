-- The rest of one job's life after pgbench_submit.sql, which leaves the
-- job's id in :job_id: River's fetch marks it running and its completion
-- marks it completed, whose river_job_settle_credits trigger charges the
-- hold (credit_settle), each its own transaction as River commits them. The
-- bare SQL shape of a job, without River's batching or the worker's fal
-- bookkeeping. bench/versus.go appends it to pgbench_submit.sql;
-- pgbench_submit.sh does with SETTLE=1.
UPDATE river_job SET state = 'running', attempt = attempt + 1, attempted_at = now(),
       attempted_by = array_append(attempted_by, 'pgbench')
 WHERE id = :job_id;
UPDATE river_job SET state = 'completed', finalized_at = now()
 WHERE id = :job_id;
