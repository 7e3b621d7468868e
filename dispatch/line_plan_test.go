package dispatch

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pgtest"
)

// TestCandidatesReadDeadlinesOnce runs the line's candidates statement on
// a plan made while the tables were empty, as a server's prepared
// statement keeps it (a generic plan made at the sixth call), after 100
// users queued 500 jobs and 3,000 deadlines wait: ai_job_deadlines is read
// once per call, not once per candidate. Under versus-seed the statement
// had joined the deadlines as an anti join over a sequential scan of the
// table, planned when it was empty: 300 scans of ~500 rows, 87 of its
// 104 ms (auto_explain).
func TestCandidatesReadDeadlinesOnce(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // nothing is kept

	_, err = tx.Exec(ctx, `SET LOCAL plan_cache_mode = force_generic_plan`)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `PREPARE candidates(text, int) AS `+candidatesSQL)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `EXECUTE candidates('urgent', 3)`) // plans on the empty tables
	require.NoError(t, err)

	_, err = tx.Exec(ctx, `
INSERT INTO credit_accounts (user_id, available)
SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 1000 FROM generate_series(1, 100) i;
INSERT INTO river_job (kind, args, max_attempts, queue, state, priority)
SELECT 'ai', jsonb_build_object('user_id', '00000000-0000-4000-8000-' || lpad((i % 100 + 1)::text, 12, '0'), 'cost', 1),
       3, 'urgent', 'pending', 1
  FROM generate_series(1, 500) i;
INSERT INTO ai_job_deadlines (job_id, start_by)
SELECT id, now() + interval '1 hour' FROM river_job;
INSERT INTO ai_job_deadlines (job_id, start_by)
SELECT 1000000 + i, now() + interval '1 hour' FROM generate_series(1, 2500) i`)
	require.NoError(t, err)

	var out []byte
	require.NoError(t, tx.QueryRow(ctx, `EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE candidates('urgent', 3)`).Scan(&out))
	var plan []struct {
		Plan planNode `json:"Plan"`
	}
	require.NoError(t, json.Unmarshal(out, &plan))
	require.Len(t, plan, 1)
	var deadlineScans float64
	plan[0].Plan.walk(func(n planNode) {
		if n.Relation == "ai_job_deadlines" {
			deadlineScans += n.Loops
		}
	})
	require.Equal(t, 300.0, plan[0].Plan.Rows, "3 jobs of each of 100 users")
	require.LessOrEqual(t, deadlineScans, 2.0, "ai_job_deadlines scanned once per branch at most:\n%s", out)
}

// planNode is a node of EXPLAIN (ANALYZE, FORMAT JSON).
type planNode struct {
	Relation string     `json:"Relation Name"`
	Loops    float64    `json:"Actual Loops"`
	Rows     float64    `json:"Actual Rows"`
	Plans    []planNode `json:"Plans"`
}

func (n planNode) walk(f func(planNode)) {
	f(n)
	for _, c := range n.Plans {
		c.walk(f)
	}
}
