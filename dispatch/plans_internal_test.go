package dispatch

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/internal/plans"
	"github.com/aiqueue/aiqueue/jobs"
)

// The tests here count the rows a statement of the package reads, on the
// plan a server would run it on. The candidates statement's is the one a
// server keeps (explainGrown): a prepared statement's generic plan, made
// at its sixth call while the tables were still small, is used until
// something invalidates it, however the tables grow.

// TestCandidatesReadDeadlinesOnce: the line's candidates statement, after
// 100 users queued 500 jobs and 3,020 deadlines wait, reads
// ai_job_deadlines once per call, not once per candidate. It had joined
// the deadlines as an anti join over a sequential scan of the table: 300
// scans of ~500 rows, 87 of its 104 ms.
func TestCandidatesReadDeadlinesOnce(t *testing.T) {
	tx := planTx(t)
	plan := explainGrown(t, tx, `candidates(text, int)`, candidatesSQL, `candidates('urgent', 3)`)
	var deadlineScans float64
	plan.walk(func(n planNode) {
		if n.Relation == "ai_job_deadlines" {
			deadlineScans += n.Loops
		}
	})
	require.Equal(t, 300.0, plan.Rows, "3 jobs of each of 100 users")
	require.LessOrEqual(t, deadlineScans, 2.0, "ai_job_deadlines scanned once per branch at most:\n%s", plan.json)
}

// TestSweepReadsOnlyUnresolvedCancels: the sweeper's read of the requests
// cancelled while fal ran them, among 3,000 finished requests, reads the
// one it wants and not the others (a sequential scan of fal_requests
// without fal_requests_cancel_unresolved: 13,140 rows for none after a
// versus-seed run).
func TestSweepReadsOnlyUnresolvedCancels(t *testing.T) {
	ctx := context.Background()
	tx := planTx(t)
	_, err := tx.Exec(ctx, `
INSERT INTO fal_requests (job_id, run, attempt, user_id, queue, operation, key_index, model, state, request_id, finished_at)
SELECT i, 1, 1, '00000000-0000-4000-8000-000000000001', 'urgent', 'generate', 1, 'm',
       CASE WHEN i = 1500 THEN 'cancelled' ELSE 'completed' END, 'req-' || i, now() - interval '1 minute'
  FROM generate_series(1, 3000) i;
ANALYZE fal_requests`)
	require.NoError(t, err)
	var out []byte
	require.NoError(t, tx.QueryRow(ctx, `EXPLAIN (ANALYZE, FORMAT JSON) `+unresolvedCancelsSQL).Scan(&out))
	plan := parsePlan(t, out)
	var read float64
	plan.walk(func(n planNode) {
		if n.Relation == "fal_requests" {
			read += n.read()
		}
	})
	require.Equal(t, 1.0, plan.Rows)
	require.Equal(t, 1.0, read, "fal_requests rows read:\n%s", out)
}

// planTx is a transaction (rolled back at the end of the test) with 100
// users and credits for their jobs.
func planTx(t *testing.T) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := pgtest.NewDB(t).Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	_, err = tx.Exec(ctx, `
SET LOCAL plan_cache_mode = force_generic_plan;
INSERT INTO credit_accounts (user_id, available)
SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 1000 FROM generate_series(1, 100) i`)
	require.NoError(t, err)
	return tx
}

// explainGrown prepares sql as name (its parameter types included) and
// runs call while the tables are small (100 users with a job each, their
// deadlines and 20 more, analyzed as autovacuum does early on), which
// makes its generic plan; then the users queue 400 more jobs, 2,500 more
// deadlines wait, and it returns EXPLAIN ANALYZE of call on the kept plan.
func explainGrown(t *testing.T, tx pgx.Tx, name, sql, call string) planNode {
	t.Helper()
	ctx := context.Background()
	grow := func(from, to, more int) {
		_, err := tx.Exec(ctx, `
INSERT INTO river_job (kind, args, max_attempts, queue, state, priority)
SELECT 'ai', jsonb_build_object('user_id', '00000000-0000-4000-8000-' || lpad((i % 100 + 1)::text, 12, '0'), 'cost', 1),
       3, 'urgent', 'pending', 1
  FROM generate_series($1::int, $2::int) i
RETURNING id`, from, to)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `
INSERT INTO ai_job_deadlines (job_id, start_by)
SELECT id, now() + interval '1 hour' FROM river_job WHERE id NOT IN (SELECT job_id FROM ai_job_deadlines)`)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `
INSERT INTO ai_job_deadlines (job_id, start_by)
SELECT 1000000 + $1::int * 10 + i, now() + interval '1 hour' FROM generate_series(1, $2::int) i`, from, more)
		require.NoError(t, err)
	}
	grow(1, 100, 20)
	_, err := tx.Exec(ctx, `ANALYZE river_job, ai_job_deadlines`)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `PREPARE `+name+` AS `+sql)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `EXPLAIN EXECUTE `+call) // the generic plan, on the small tables
	require.NoError(t, err)
	grow(101, 500, 2500)
	var out []byte
	require.NoError(t, tx.QueryRow(ctx, `EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE `+call).Scan(&out))
	return parsePlan(t, out)
}

// parsePlan reads EXPLAIN (ANALYZE, FORMAT JSON)'s output.
func parsePlan(t *testing.T, out []byte) planNode {
	t.Helper()
	var plan []struct {
		Plan planNode `json:"Plan"`
	}
	require.NoError(t, json.Unmarshal(out, &plan))
	require.Len(t, plan, 1)
	plan[0].Plan.json = string(out)
	return plan[0].Plan
}

// planNode is a node of EXPLAIN (ANALYZE, FORMAT JSON).
type planNode struct {
	Type     string     `json:"Node Type"`
	Relation string     `json:"Relation Name"`
	Loops    float64    `json:"Actual Loops"`
	Rows     float64    `json:"Actual Rows"`
	Removed  float64    `json:"Rows Removed by Filter"`
	Plans    []planNode `json:"Plans"`
	json     string
}

// read is how many rows the node read in all its loops: those it returned
// and those its filter removed.
func (n planNode) read() float64 { return (n.Rows + n.Removed) * n.Loops }

func (n planNode) walk(f func(planNode)) {
	f(n)
	for _, c := range n.Plans {
		c.walk(f)
	}
}

// TestCandidatesKeepToTheLineIndex: the line's candidates statement reads
// each waiting user's jobs off the line index (river_job_fal_line), whatever
// the statistics say. Under versus-seed a call took up to 2.8 s: planned
// while the statistics said no job was pending and the line index, bloated
// by the jobs that had left it, held few entries for its pages, River's
// fetching index looked cheaper, and each of the 201 steps of the walk
// read all 4,758 pending jobs off it and sorted them.
func TestCandidatesKeepToTheLineIndex(t *testing.T) {
	ctx := context.Background()
	tx := staleLine(t)
	_, err := tx.Exec(ctx, `SET LOCAL plan_cache_mode TO DEFAULT`) // a custom plan, as the slow call's
	require.NoError(t, err)
	b := &pgx.Batch{}
	plans.Queue(b, `EXPLAIN (ANALYZE, FORMAT JSON) `+candidatesSQL, jobs.QueueUrgent, 3)
	br := tx.SendBatch(ctx, b)
	require.NoError(t, plans.Avoided(br))
	var out []byte
	require.NoError(t, br.QueryRow().Scan(&out))
	require.NoError(t, br.Close())
	plan := parsePlan(t, out)
	var read float64
	plan.walk(func(n planNode) {
		if n.Relation == "river_job" {
			read += n.read()
		}
	})
	require.Equal(t, 300.0, plan.Rows, "3 jobs of each of 100 users")
	require.Less(t, read, 1000.0, "river_job rows read for 300 candidates of 100 users:\n%s", out)
	require.NotContains(t, string(out), `"JIT"`, "compiled: the cost that keeps sorts out made it look costly")
}

// TestLineFunctionsKeepToTheLineIndex: the reading of a queue's line that
// the API shares among the jobs it places (fal_line_waiting, up to 3 s a
// call under versus-seed) and a job's place against it (fal_line_place)
// read the waiting users' jobs off the line index on the statistics of
// TestCandidatesKeepToTheLineIndex, not every pending job per user.
func TestLineFunctionsKeepToTheLineIndex(t *testing.T) {
	ctx := context.Background()
	tx := staleLine(t)
	fetched := func() int64 {
		var n int64
		require.NoError(t, tx.QueryRow(ctx, `
SELECT COALESCE(idx_tup_fetch, 0) + COALESCE(seq_tup_read, 0) FROM pg_stat_xact_user_tables WHERE relname = 'river_job'`).Scan(&n))
		return n
	}
	before := fetched()
	var users, waiting, place int
	require.NoError(t, tx.QueryRow(ctx, `
WITH r AS (SELECT array_agg(user_id) u, array_agg(head) h, array_agg(waiting) w, array_agg(inflight) i, sum(waiting) n
             FROM fal_line_waiting('urgent', 5000))
SELECT cardinality(r.u), r.n, fal_line_place((SELECT max(id) FROM river_job), 5000, 0, r.u, r.h, r.w, r.i) FROM r`).Scan(&users, &waiting, &place))
	require.Equal(t, 100, users)
	require.Equal(t, 3000, waiting)
	require.Equal(t, 2999, place, "the last of 3,000 jobs of 100 users, who all have 30")
	// The walk reads each user's first job, the count its 30, and the
	// place the user's 29 ahead: about 3,500 rows, not 100 times 3,000.
	require.Less(t, fetched()-before, int64(5000), "river_job rows read by index or scan")
	// With sorts off, the one sort left (the users' order) keeps its
	// penalty, and a statement that costly is JIT-compiled: 280 ms a call.
	var config []string
	require.NoError(t, tx.QueryRow(ctx, `
SELECT array_agg(c ORDER BY p.proname, c) FROM pg_proc p, unnest(p.proconfig) c
 WHERE p.proname IN ('fal_line_waiting', 'fal_line_place')`).Scan(&config))
	require.Equal(t, []string{"enable_sort=off", "jit=off", "enable_sort=off", "jit=off"}, config)
}

// staleLine is a transaction (planTx) whose line holds 3,000 jobs of 100
// users on statistics that say it is empty, after 2,000 went through it
// (pgtest.StaleLine).
func staleLine(t *testing.T) pgx.Tx {
	t.Helper()
	tx := planTx(t)
	pgtest.StaleLine(t, tx, 100, 2000, 3000)
	return tx
}
