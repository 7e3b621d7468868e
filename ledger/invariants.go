package ledger

import (
	"context"
	"fmt"
)

// CheckInvariants checks SPEC section 7 across the ledger and River: the
// ledger's own rules, every AI job has exactly one hold (of its user, for its
// cost) and every open hold a live, unfinished job, and a finished job's hold
// is settled the way its final state says (completed -> charged; discarded,
// cancelled -> refunded). A settled hold outlives its job when River's
// cleaner deletes the row: it is the job's receipt.
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
SELECT format('job %s (%s) has no credit hold', j.id, j.state)
  FROM river_job j LEFT JOIN credit_holds h ON h.job_id = j.id
 WHERE j.kind = 'ai' AND h.job_id IS NULL
UNION ALL
SELECT format('open hold of job %s has no job', h.job_id)
  FROM credit_holds h LEFT JOIN river_job j ON j.id = h.job_id
 WHERE h.state = 'reserved' AND j.id IS NULL
UNION ALL
SELECT format('hold of job %s belongs to a %s job', h.job_id, j.kind)
  FROM credit_holds h JOIN river_job j ON j.id = h.job_id
 WHERE j.kind <> 'ai'
UNION ALL
SELECT format('hold of job %s is %s credits of user %s but the job is %s credits of user %s',
              j.id, h.amount, h.user_id, j.args ->> 'cost', j.args ->> 'user_id')
  FROM river_job j JOIN credit_holds h ON h.job_id = j.id
 WHERE j.kind = 'ai'
   AND (h.user_id::text IS DISTINCT FROM lower(j.args ->> 'user_id')
        OR h.amount::text IS DISTINCT FROM j.args ->> 'cost')
UNION ALL
SELECT format('job %s is %s but its hold is %s', j.id, j.state, h.state)
  FROM river_job j JOIN credit_holds h ON h.job_id = j.id
 WHERE j.kind = 'ai' AND (
       (j.state = 'completed' AND h.state <> 'charged')
    OR (j.state IN ('discarded', 'cancelled') AND h.state <> 'refunded')
    OR (j.state NOT IN ('completed', 'discarded', 'cancelled') AND h.state <> 'reserved'))`)
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
