package ledger

import (
	"context"
	"fmt"
)

// CheckInvariants checks SPEC section 7 across the ledger and River: the
// ledger's own rules (Check); every AI job has a hold, of its user for its
// cost; only the job's latest run may be open, and it is open exactly while
// the job can still run; a finished job's hold is settled the way
// ai_job_outcome says (succeeded -> charged, anything else -> refunded); an
// open hold has a job. A settled hold outlives its job when River's cleaner
// deletes the row: it is the job's receipt.
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
SELECT format('open hold of job %s run %s is not its latest run', h.job_id, h.run)
  FROM credit_holds h JOIN latest l ON l.job_id = h.job_id
 WHERE h.state = 'reserved' AND h.run <> l.run
UNION ALL
SELECT format('hold of job %s run %s is %s credits of user %s but the job is %s credits of user %s',
              j.id, h.run, h.amount, h.user_id, j.args ->> 'cost', j.args ->> 'user_id')
  FROM river_job j JOIN credit_holds h ON h.job_id = j.id
 WHERE j.kind = 'ai'
   AND (h.user_id::text IS DISTINCT FROM lower(j.args ->> 'user_id')
        OR h.amount::text IS DISTINCT FROM j.args ->> 'cost')
UNION ALL
SELECT format('job %s is %s (%s) but its hold is %s', j.id, j.state, COALESCE(ai_job_outcome(j.state, j.errors), 'not final'), h.state)
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
