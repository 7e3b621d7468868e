// Package pgtx begins the transactions of the busiest paths, submissions
// and job completions: on generic plans once the tables they read have
// grown (Generic).
package pgtx

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// beginGeneric begins a transaction that runs each prepared statement on
// its generic plan, in the one round trip of the BEGIN (a simple query of
// two statements); SET LOCAL ends with the transaction.
const beginGeneric = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan"

// Table is a table a transaction reads and the size, in pages, from which
// its generic plans read it by index.
type Table struct {
	Name  string
	Pages int64
}

// HotTables are the tables of the submission and completion transactions'
// statements that Postgres plans again at every call, with the size from
// which their generic plans are index reads: river_job has to be larger
// than the others because a group's ids (ten, as a generic plan assumes)
// are read off it with a join that a scan and hash join win below about a
// hundred pages.
var HotTables = []Table{{"river_job", 256}, {"credit_holds", 32}, {"fal_requests", 32}}

// recheck is how often a process that has not switched to generic plans
// measures the tables again.
var recheck = 2 * time.Second

// Generic begins transactions whose prepared statements run on their
// generic plan (plan_cache_mode = force_generic_plan, for that transaction
// only) once every table of Tables has its size; before, on the plans
// Postgres chooses.
//
// Postgres plans a prepared statement again at each execution (a custom
// plan) for as long as its generic plan looks costlier than the custom
// ones. For a statement over arrays of ids it always does: the generic
// plan assumes longer arrays than a group's. In the versus-seed bench that
// was River's JobSetStateIfRunningMany (under JobCompleteTx) and the
// admission statement: planned at 7,943 of 8,897 and 3,989 of 3,976 calls,
// 0.9 and 1.7 ms a plan, and planning was 18.5% of Postgres's CPU.
//
// A generic plan is made once per connection and kept until its tables'
// statistics change, and the planner sizes a table by its pages when it
// plans: made while river_job is a few pages (a new database's), River's
// plan is a sequential scan and hash join, and stays one as the table
// grows (6.5-7.5 ms of Postgres per job in the bench). Made on grown
// tables, it is the index read it is at any larger size. Tables do not
// shrink in pages but by VACUUM FULL or TRUNCATE; a process switches once
// and stays.
type Generic struct {
	Pool   *pgxpool.Pool
	Tables []Table

	on      atomic.Bool
	mu      sync.Mutex
	checked time.Time
}

// Begin begins a transaction, on generic plans once the tables have grown.
func (g *Generic) Begin(ctx context.Context) (pgx.Tx, error) {
	if g.grown(ctx) {
		return g.Pool.BeginTx(ctx, pgx.TxOptions{BeginQuery: beginGeneric})
	}
	return g.Pool.Begin(ctx)
}

// On reports whether g has switched to generic plans.
func (g *Generic) On() bool { return g.on.Load() }

// grown reports whether every table has its size, measuring them at most
// every recheck (one caller at a time; the others go by the last answer).
// A measure that fails (a table missing, the database away) leaves the
// plans as Postgres chooses them until the next.
func (g *Generic) grown(ctx context.Context) bool {
	if g.on.Load() {
		return true
	}
	if !g.mu.TryLock() {
		return false
	}
	defer g.mu.Unlock()
	if time.Since(g.checked) < recheck {
		return false
	}
	g.checked = time.Now()
	names := make([]string, len(g.Tables))
	pages := make([]int64, len(g.Tables))
	for i, t := range g.Tables {
		names[i], pages[i] = t.Name, t.Pages
	}
	var grown bool
	err := g.Pool.QueryRow(ctx, `
SELECT bool_and(pg_relation_size(t.name::regclass) >= t.pages * current_setting('block_size')::bigint)
  FROM unnest($1::text[], $2::bigint[]) AS t(name, pages)`, names, pages).Scan(&grown)
	if err == nil && grown {
		g.on.Store(true)
	}
	return g.on.Load()
}
