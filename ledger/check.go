package ledger

import (
	"context"
	"fmt"
)

// Violation is one broken ledger invariant.
type Violation struct {
	UserID string
	Rule   string
	Detail string
}

func (v Violation) String() string {
	return fmt.Sprintf("user %s: %s (%s)", v.UserID, v.Rule, v.Detail)
}

// Check verifies the ledger's own invariants (SPEC section 7) for every
// account and returns each violation it finds; a correct system returns
// none:
//   - available >= 0;
//   - granted - charged = balance, where balance is what the account has
//     available plus its open holds (credits are neither made nor lost);
//   - every hold has exactly one reserve entry, a settled hold exactly one
//     charge or refund entry matching its state, an open hold none;
//   - every journal entry about a job belongs to that job's hold;
//   - the spend counters of an account (spent_day for the UTC day
//     spent_day_of, spent_month for the month starting spent_month_of; 0
//     when none is counted yet) equal its holds created in that period
//     and not refunded: what the caps are checked against.
//
// It reads each table once (no per-row subqueries), so it stays linear in
// the size of the ledger.
func Check(ctx context.Context, q Querier) ([]Violation, error) {
	rows, err := q.Query(ctx, `
WITH j AS (
    SELECT user_id,
           COALESCE(sum(amount) FILTER (WHERE kind = 'grant'), 0)  AS granted,
           COALESCE(sum(amount) FILTER (WHERE kind = 'charge'), 0) AS charged
      FROM credit_entries GROUP BY user_id
), h AS (
    SELECT user_id, COALESCE(sum(amount) FILTER (WHERE state = 'reserved'), 0) AS open
      FROM credit_holds GROUP BY user_id
), a AS (
    SELECT c.user_id, c.available, c.available + COALESCE(h.open, 0) AS balance
      FROM credit_accounts c LEFT JOIN h USING (user_id)
), per_job AS (
    SELECT job_id, run, user_id,
           count(*) FILTER (WHERE kind = 'reserve') AS reserves,
           count(*) FILTER (WHERE kind = 'charge')  AS charges,
           count(*) FILTER (WHERE kind = 'refund')  AS refunds
      FROM credit_entries WHERE job_id IS NOT NULL GROUP BY job_id, run, user_id
), per_day AS (
    SELECT user_id, (created_at AT TIME ZONE 'UTC')::date AS day, sum(amount) AS amount
      FROM credit_holds WHERE state <> 'refunded' GROUP BY 1, 2
), per_month AS (
    SELECT user_id, date_trunc('month', day)::date AS month, sum(amount) AS amount
      FROM per_day GROUP BY 1, 2
)
SELECT a.user_id::text, 'available >= 0', format('available %s', a.available)
  FROM a WHERE a.available < 0
UNION ALL
SELECT a.user_id::text, 'granted - charged = balance',
       format('granted %s charged %s balance %s', COALESCE(j.granted, 0), COALESCE(j.charged, 0), a.balance)
  FROM a LEFT JOIN j USING (user_id)
 WHERE COALESCE(j.granted, 0) - COALESCE(j.charged, 0) <> a.balance

UNION ALL
SELECT ho.user_id::text, 'one reserve entry per hold',
       format('job %s run %s has %s reserve entries', ho.job_id, ho.run, COALESCE(e.reserves, 0))
  FROM credit_holds ho LEFT JOIN per_job e ON e.job_id = ho.job_id AND e.run = ho.run AND e.user_id = ho.user_id
 WHERE COALESCE(e.reserves, 0) <> 1
UNION ALL
SELECT ho.user_id::text, 'settlement entries match the hold',
       format('job %s run %s hold %s has %s charge and %s refund entries', ho.job_id, ho.run, ho.state,
              COALESCE(e.charges, 0), COALESCE(e.refunds, 0))
  FROM credit_holds ho LEFT JOIN per_job e ON e.job_id = ho.job_id AND e.run = ho.run AND e.user_id = ho.user_id
 WHERE COALESCE(e.charges, 0) <> CASE WHEN ho.state = 'charged' THEN 1 ELSE 0 END
    OR COALESCE(e.refunds, 0) <> CASE WHEN ho.state = 'refunded' THEN 1 ELSE 0 END
UNION ALL
SELECT e.user_id::text, 'journal entries belong to a hold',
       format('job %s run %s has %s entries but no hold of this user', e.job_id, e.run, e.reserves + e.charges + e.refunds)
  FROM per_job e LEFT JOIN credit_holds ho ON ho.job_id = e.job_id AND ho.run = e.run AND ho.user_id = e.user_id
 WHERE ho.job_id IS NULL
UNION ALL
SELECT c.user_id::text, 'spend counters match the holds',
       format('day %s: counted %s, holds %s; month %s: counted %s, holds %s', c.spent_day_of, c.spent_day,
              COALESCE(d.amount, 0), c.spent_month_of, c.spent_month, COALESCE(m.amount, 0))
  FROM credit_accounts c
  LEFT JOIN per_day d ON d.user_id = c.user_id AND d.day = c.spent_day_of
  LEFT JOIN per_month m ON m.user_id = c.user_id AND m.month = c.spent_month_of
 WHERE c.spent_day <> COALESCE(d.amount, 0) OR c.spent_month <> COALESCE(m.amount, 0)`)
	if err != nil {
		return nil, fmt.Errorf("ledger check: %w", err)
	}
	defer rows.Close()
	var out []Violation
	for rows.Next() {
		var v Violation
		if err := rows.Scan(&v.UserID, &v.Rule, &v.Detail); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
