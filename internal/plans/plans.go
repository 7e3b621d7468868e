// Package plans tells the busiest statements when to run on their generic
// plan: once the tables they read have grown (Grown); and runs the reads of
// the line for fal slots in the line index's order, whatever the
// statistics say (Queue).
//
// Postgres plans a prepared statement again at each execution (a custom
// plan) for as long as its generic plan looks costlier than the custom
// ones, and over arrays of ids it always does: the generic plan assumes
// longer arrays than a group's. In the versus-seed bench two statements
// were planned at nearly every call, River's JobSetStateIfRunningMany
// (under JobCompleteTx, 7,943 plans in 8,897 calls, 0.9 ms a plan) and the
// submission's admission statement (3,989 in 3,976, 1.7 ms), and planning
// was 18.5% of Postgres's CPU. Only those two (and the triggers River's
// fires, whose statements ran on generic plans already) run on
// ForceGeneric: it is set (SET LOCAL) just before them, in the same round
// trip, and Restore follows the admission statement (a caller's
// transaction may go on, jobs.SubmitTx; River's completions are the last
// statements of theirs), so the others keep the plans Postgres chooses.
//
// A generic plan is kept until its tables' statistics change, and the
// planner sizes a table by its pages when it plans: made while river_job
// is a few pages (a new database's), River's plan is a sequential scan and
// hash join. Made on grown tables, it is the index read it is at any larger
// size. Postgres makes a statement's generic plan early even when it does
// not use it (at the sixth execution, to compare its cost with the custom
// plans') and keeps it: so the switch first ANALYZEs the tables, which
// gives the planner their statistics and makes every session plan its
// statements on them again.
package plans

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ForceGeneric makes the rest of the transaction run each prepared
// statement on its generic plan; it ends with the transaction, or with
// Restore.
const ForceGeneric = "SET LOCAL plan_cache_mode = force_generic_plan"

// Restore gives the rest of the transaction back the plans Postgres
// chooses (the session's plan_cache_mode), after a statement run on
// ForceGeneric that is not the transaction's last.
const Restore = "SET LOCAL plan_cache_mode TO DEFAULT"

// avoidSorts makes the rest of a transaction's statements read rows in an
// index's order rather than sort them, until allowSorts; Queue puts a
// statement between the two (InIndexOrder for a whole transaction). The line's reads walk each waiting user's
// jobs in order off the line index (river_job_fal_line: queue, user, id,
// of the pending jobs). Planned while the statistics say no job is pending
// (taken when the line was empty; it fills and empties within seconds)
// and the line index, bloated by the jobs that left it, holds few entries
// for its pages, River's fetching index (state, queue, ...) and a sort
// look cheaper, and a read goes through every pending job once per user:
// under versus-seed, 2.8 s calls of the dispatcher's walk, and admission
// statements of 14.5 ms (median) reading 4.3 million buffers in a round.
// Asked in id order with sorts off, only the line index answers. JIT goes
// off with sorts: the cost that keeps sorts out stays on any sort a
// statement cannot avoid, and a statement that costly is JIT-compiled
// (280 ms a call). The SQL functions that read the line carry the same
// two settings (migration 00010).
var (
	avoidSorts = []string{"SET LOCAL enable_sort = off", "SET LOCAL jit = off"}
	allowSorts = []string{"SET LOCAL enable_sort TO DEFAULT", "SET LOCAL jit TO DEFAULT"}
)

// InIndexOrder runs the rest of tx's statements as Queue runs one (for
// tests that plan such a statement as it runs).
func InIndexOrder(ctx context.Context, tx pgx.Tx) error {
	b := &pgx.Batch{}
	for _, s := range avoidSorts {
		b.Queue(s)
	}
	return tx.SendBatch(ctx, b).Close()
}

// Queue queues sql with args on b between avoidSorts and allowSorts (in a
// transaction); read the results with Avoided first.
func Queue(b *pgx.Batch, sql string, args ...any) {
	for _, s := range avoidSorts {
		b.Queue(s)
	}
	b.Queue(sql, args...)
	for _, s := range allowSorts {
		b.Queue(s)
	}
}

// Avoided reads the results of avoidSorts, queued by Queue, from br, whose
// next result is then the statement's; Close reads allowSorts'.
func Avoided(br pgx.BatchResults) error {
	for range avoidSorts {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	return nil
}

// Table is a table the statements read and the size, in pages, from which
// their generic plans read it by index.
type Table struct {
	Name  string
	Pages int64
}

// HotTables are the tables of the two statements, with the size from
// which their generic plans are index reads: river_job has to be larger
// than the others because a group's ids (ten, as a generic plan assumes)
// are read off it with a join that a scan and hash join win below about a
// hundred pages.
var HotTables = []Table{{"river_job", 256}, {"credit_holds", 32}, {"fal_requests", 32}}

// recheck is how often a process that has not switched to generic plans
// measures the tables again.
var recheck = 2 * time.Second

// Grown reports when every table of Tables has its size, after which the
// statements run on generic plans. Tables do not shrink in pages but by
// VACUUM FULL or TRUNCATE: a process switches once and stays. A process
// whose role may not ANALYZE the tables (it owns them, or is a superuser)
// never switches.
type Grown struct {
	Pool   *pgxpool.Pool
	Tables []Table

	on      atomic.Bool
	mu      sync.Mutex
	checked time.Time
}

// Switched returns a Grown that has switched: statements run on their
// generic plans from the first call (for tests of the statements' callers).
func Switched() *Grown {
	g := &Grown{}
	g.on.Store(true)
	return g
}

// NewGrown returns the Grown of pool's HotTables.
func NewGrown(pool *pgxpool.Pool) *Grown {
	return &Grown{Pool: pool, Tables: HotTables}
}

// Generic reports whether the statements should run on their generic
// plans. It never waits on the database: its callers hold a transaction
// (and the account rows it locked), and a check on another of the pool's
// connections could wait for one that such a transaction holds. Until the
// switch, a call at most every recheck starts a check in the background
// (check).
func (g *Grown) Generic() bool {
	if g.on.Load() {
		return true
	}
	if !g.mu.TryLock() {
		return false
	}
	if time.Since(g.checked) < recheck {
		g.mu.Unlock()
		return false
	}
	g.checked = time.Now()
	go func() {
		defer g.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
		defer cancel()
		_, _ = g.check(ctx) // not yet, or not now: a later call checks again
	}()
	return false
}

// checkTimeout bounds a check, its ANALYZE included.
const checkTimeout = time.Minute

// check measures the tables and, when every one has its size, ANALYZEs
// them and switches; it reports whether g has switched, and what the
// database refused (a table that is not there).
func (g *Grown) check(ctx context.Context) (bool, error) {
	names := make([]string, len(g.Tables))
	pages := make([]int64, len(g.Tables))
	idents := make([]string, len(g.Tables))
	for i, t := range g.Tables {
		names[i], pages[i] = t.Name, t.Pages
		idents[i] = pgx.Identifier{t.Name}.Sanitize()
	}
	var grown bool
	err := g.Pool.QueryRow(ctx, `
SELECT bool_and(pg_relation_size(c.oid) >= t.pages * current_setting('block_size')::bigint
                AND (pg_has_role(c.relowner, 'USAGE') OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)))
  FROM unnest($1::text[], $2::bigint[]) AS t(name, pages)
  JOIN pg_class c ON c.oid = t.name::regclass`, names, pages).Scan(&grown)
	if err != nil || !grown {
		return false, err
	}
	if _, err := g.Pool.Exec(ctx, "ANALYZE "+strings.Join(idents, ", ")); err != nil {
		return false, err
	}
	g.on.Store(true)
	return true, nil
}
