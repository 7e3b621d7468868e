package ledger

import (
	"context"
	"fmt"
)

// CheckInvariants checks SPEC section 7 across the ledger and River: the
// ledger's own rules (Check: every hold, that is every run, has one reserve
// entry and settles at most once, with an entry matching its state), and
// between holds and jobs:
//   - every AI job has a hold, of its user for its cost, and every hold an AI
//     job while it is open (a settled hold outlives its job when River's
//     cleaner deletes the row: it is the job's receipt);
//   - a job's runs are numbered 1, 2, ... without a gap (an admin's retry
//     adds the next one);
//   - at most one hold of a job is open, and only its latest run's;
//   - the latest run's hold is open exactly while the job can still run
//     (so a job that can still reach fal holds credits for it), and once
//     the job is final it is settled the way ai_job_outcome says (succeeded
//     -> charged, anything else -> refunded);
//   - only the latest run can be charged: a succeeded job never runs again.
//
// It returns one line per violation; a correct system returns none. Tests
// call it after every concurrent and fault scenario.
func CheckInvariants(ctx context.Context, q Querier) ([]string, error) {
	vs, err := Check(ctx, q)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, v := range vs {
		out = append(out, v.String())
	}
	rows, err := q.Query(ctx, `
WITH latest AS (
    SELECT DISTINCT ON (job_id) * FROM credit_holds ORDER BY job_id, run DESC
), runs AS (
    SELECT job_id, count(*) AS n, max(run) AS last, count(*) FILTER (WHERE state = 'reserved') AS open
      FROM credit_holds GROUP BY job_id
)
SELECT format('job %s (%s) has no credit hold', j.id, j.state)
  FROM river_job j LEFT JOIN latest h ON h.job_id = j.id
 WHERE j.kind = 'ai' AND h.job_id IS NULL
UNION ALL
SELECT format('open hold of job %s run %s has no job', h.job_id, h.run)
  FROM credit_holds h LEFT JOIN river_job j ON j.id = h.job_id
 WHERE h.state = 'reserved' AND j.id IS NULL
UNION ALL
SELECT format('hold of job %s belongs to a %s job', h.job_id, j.kind)
  FROM latest h JOIN river_job j ON j.id = h.job_id
 WHERE j.kind <> 'ai'
UNION ALL
SELECT format('job %s has runs %s but %s holds: runs are numbered 1, 2, ...', r.job_id, r.last, r.n)
  FROM runs r
 WHERE r.n <> r.last
UNION ALL
SELECT format('job %s has %s open holds', r.job_id, r.open)
  FROM runs r
 WHERE r.open > 1
UNION ALL
SELECT format('open hold of job %s run %s is not its latest run', h.job_id, h.run)
  FROM credit_holds h JOIN latest l ON l.job_id = h.job_id
 WHERE h.state = 'reserved' AND h.run <> l.run
UNION ALL
SELECT format('hold of job %s run %s is charged but the job ran again (run %s)', h.job_id, h.run, l.run)
  FROM credit_holds h JOIN latest l ON l.job_id = h.job_id
 WHERE h.state = 'charged' AND h.run <> l.run
UNION ALL
SELECT format('hold of job %s run %s is %s credits of user %s but the job is %s credits of user %s',
              j.id, h.run, h.amount, h.user_id, j.args ->> 'cost', j.args ->> 'user_id')
  FROM river_job j JOIN credit_holds h ON h.job_id = j.id
 WHERE j.kind = 'ai'
   AND (h.user_id::text IS DISTINCT FROM lower(j.args ->> 'user_id')
        OR h.amount::text IS DISTINCT FROM j.args ->> 'cost')
UNION ALL
SELECT format('job %s is %s (%s) but its run %s hold is %s', j.id, j.state,
              COALESCE(ai_job_outcome(j.state, j.errors), 'not final'), h.run, h.state)
  FROM river_job j JOIN latest h ON h.job_id = j.id
 WHERE j.kind = 'ai'
   AND h.state IS DISTINCT FROM CASE ai_job_outcome(j.state, j.errors)
                                    WHEN 'succeeded' THEN 'charged'
                                    WHEN 'failed' THEN 'refunded'
                                    WHEN 'cancelled' THEN 'refunded'
                                    ELSE 'reserved' END`)
	if err != nil {
		return nil, fmt.Errorf("invariants: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}
