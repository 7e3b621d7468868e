package migrations_test

import (
	"context"
	"os"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/migrations"
)

func TestMain(m *testing.M) {
	pgtest.Migrate = migrations.Up
	pgtest.Main(m)
}

func TestMigrations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("DownToZeroAndUpAgain", func(t *testing.T) {
		t.Parallel()
		pool := pgtest.NewDB(t)
		require.NoError(t, migrations.Check(ctx, pool))

		list, err := migrations.List(ctx, pool)
		require.NoError(t, err)
		require.NotEmpty(t, list)
		for _, s := range list {
			require.True(t, s.Applied, "migration %d applied", s.Version)
		}

		for range list {
			require.NoError(t, migrations.Down(ctx, pool))
		}
		require.ErrorIs(t, migrations.Check(ctx, pool), migrations.ErrPending)
		var n int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename IN ('river_job', 'credit_holds', 'credit_accounts', 'credit_entries')`).Scan(&n))
		require.Zero(t, n, "every table is gone after migrating all the way down")

		require.NoError(t, migrations.Up(ctx, pool))
		require.NoError(t, migrations.Check(ctx, pool))
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename IN ('river_job', 'credit_holds', 'credit_accounts', 'credit_entries')`).Scan(&n))
		require.Equal(t, 4, n)
	})

	t.Run("UpIsIdempotent", func(t *testing.T) {
		t.Parallel()
		pool := pgtest.NewDB(t)
		require.NoError(t, migrations.Up(ctx, pool))
		require.NoError(t, migrations.Check(ctx, pool))
	})
}

// schemaObjectsSQL lists the project's schema objects in public (River's
// included), each as its kind and name, and its definition: columns with
// their types (tables' and views'), indexes, views, functions with their
// arguments, triggers and constraints. Function bodies and view queries
// are left out: they change on purpose with every fix, and their tests say
// whether they are right.
const schemaObjectsSQL = `
SELECT 'table ' || c.relname, ''
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
UNION ALL
SELECT 'view ' || c.relname, ''
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm')
UNION ALL
SELECT CASE WHEN c.relkind IN ('v', 'm') THEN 'view column ' ELSE 'column ' END || c.relname || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm') AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index ' || c.relname, pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public'
UNION ALL
SELECT 'constraint ' || t.relname || '.' || con.conname, pg_get_constraintdef(con.oid)
  FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
 WHERE n.nspname = 'public'
UNION ALL
SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', pg_get_function_result(p.oid)
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'public'
UNION ALL
SELECT 'trigger ' || t.relname || '.' || tg.tgname, pg_get_triggerdef(tg.oid)
  FROM pg_trigger tg JOIN pg_class t ON t.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = t.relnamespace
 WHERE n.nspname = 'public' AND NOT tg.tgisinternal`

// schemaObjects maps each schema object of the database to its definition.
func schemaObjects(t *testing.T, pool *pgxpool.Pool) map[string]string {
	t.Helper()
	rows, err := pool.Query(context.Background(), schemaObjectsSQL)
	require.NoError(t, err)
	out := map[string]string{}
	for rows.Next() {
		var name, def string
		require.NoError(t, rows.Scan(&name, &def))
		out[name] = def
	}
	require.NoError(t, rows.Err())
	return out
}

// TestSquashedSchema checks that the squashed migrations build the schema the
// migration chain they replaced built (saved in testdata/chain-2026-11, on
// River's migrations 1-2 as migrations.go applies them), but for what
// changed on purpose, listed below with why. A migration that drops, adds or
// redefines anything else fails it: put it in the lists, saying why.
func TestSquashedSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	// What the squash (and the work since) dropped from the old chain.
	dropped := []string{
		// An account keeps only what can be spent (available); balance and
		// reserved come from the open holds (credit_balances), so a charge
		// does not write the account row; open_holds is counted from the
		// holds (credit_balances.open_holds), and updated_at went with them.
		"column credit_accounts.balance",
		"column credit_accounts.reserved",
		"column credit_accounts.open_holds",
		"column credit_accounts.updated_at",
		"constraint credit_accounts.credit_accounts_balance_check",
		"constraint credit_accounts.credit_accounts_reserved_check",
		"constraint credit_accounts.credit_accounts_open_holds_check",
		"view column credit_balances.updated_at",
		// One open hold per job is now a unique index (credit_holds_one_open).
		"index credit_holds_open",
		// fal slots are counted per key against fal_keys.capacity by the line
		// under its lock, no longer numbered per key.
		"column fal_requests.slot",
		"constraint fal_requests.fal_requests_slot_check",
		"index fal_requests_open_slot",
		// The state rule is one function, ai_job_outcome.
		"function ai_job_state(s river_job_state)",
		// Watchers are woken by a job's end (river_job_notify_final) and by
		// fal's progress (fal_requests_notify), not by every River state.
		"function river_job_notify_state()",
		"trigger river_job.river_job_notify_state",
		// The ledger's refusals are one function taking the reason.
		"function credit_entries_append_only()",
		"function ledger_refuse_truncate()",
		"function credit_holds_only_by_reserve()",
		// A retry of a failed or cancelled job reserves a new run
		// (river_job_reserve_rerun) instead of being refused.
		"function river_job_refuse_rerun()",
		"trigger river_job.river_job_refuse_rerun",
		// River's GIN indexes over args and metadata: nothing reads through
		// them, and every job's four row versions wrote to them (00009).
		"index river_job_args_index",
		"index river_job_metadata_index",
	}
	// What it added.
	added := []string{
		"column credit_accounts.available",
		// Holds per run of a job: a retry is a new run with a new hold.
		"column credit_holds.run",
		"constraint credit_holds.credit_holds_run_check",
		"column credit_entries.run",
		"index credit_holds_one_open",
		"function river_job_reserve_rerun()",
		"trigger river_job.river_job_reserve_rerun",
		// ...and takes along the fal requests it still holds.
		"function river_job_rerun_requests()",
		"trigger river_job.river_job_rerun_requests",
		// Holds are receipts: deleting one is refused by its own trigger.
		"trigger credit_holds.credit_holds_no_delete",
		"function ledger_refuse()",
		// The one rule from a River job to how it ended.
		"function ai_job_outcome(s river_job_state, errors jsonb[])",
		// The capacity line: keys with their capacity and health, parked
		// jobs, each waiting user's oldest job, the queue position.
		"table fal_keys",
		"column fal_keys.key_index",
		"column fal_keys.capacity",
		"column fal_keys.unusable_until",
		"column fal_keys.unusable_reason",
		"column fal_keys.updated_at",
		"constraint fal_keys.fal_keys_pkey",
		"constraint fal_keys.fal_keys_key_index_check",
		"constraint fal_keys.fal_keys_capacity_check",
		"constraint fal_keys.fal_keys_unusable_reason_check",
		"index fal_keys_pkey",
		"table fal_parked",
		"column fal_parked.job_id",
		"column fal_parked.queue",
		"column fal_parked.user_id",
		"column fal_parked.parked_at",
		"constraint fal_parked.fal_parked_pkey",
		"index fal_parked_pkey",
		"index fal_parked_line",
		"index river_job_fal_line",
		"function fal_line_position(p_job_id bigint, p_cap integer)",
		// The position in two parts (00004_fal.sql): a queue's reading
		// shared by a process and one job's place against it.
		"function fal_line_ahead(p_queue text, p_cap integer)",
		"function fal_line_waiting(p_queue text, p_cap integer)",
		"function fal_line_place(p_job_id bigint, p_cap integer, p_ahead integer, p_users text[], p_heads bigint[], p_waiting integer[], p_inflight integer[])",
		"view column fal_key_in_flight.capacity",
		"view column fal_key_in_flight.unusable",
		"view column fal_key_in_flight.unusable_until",
		// A fal request's run, owner, queue and operation (the line's
		// fairness, ETA), fal's URLs, progress, billing and cancel outcome.
		"column fal_requests.run",
		"column fal_requests.user_id",
		"column fal_requests.queue",
		"column fal_requests.operation",
		"column fal_requests.status_url",
		"column fal_requests.response_url",
		"column fal_requests.cancel_url",
		"column fal_requests.stage",
		"constraint fal_requests.fal_requests_stage_check",
		"column fal_requests.fal_queue_position",
		"column fal_requests.logs",
		"column fal_requests.billable_units",
		"column fal_requests.cancel_outcome",
		"column fal_requests.completed_at",
		"index fal_requests_open_key",
		"index fal_requests_open_user",
		"index fal_requests_recent",
		// The sweeper's requests cancelled with fal's outcome unknown.
		"index fal_requests_cancel_unresolved",
		// fal's output is kept with the request that produced it (the job's
		// result, ai_jobs.result); a user's requests newest first.
		"column fal_requests.result",
		"index fal_requests_user_id",
		// fal webhooks taken in, for replay protection.
		"table fal_webhooks_seen",
		"column fal_webhooks_seen.signature",
		"column fal_webhooks_seen.request_id",
		"column fal_webhooks_seen.expires_at",
		"constraint fal_webhooks_seen.fal_webhooks_seen_pkey",
		"index fal_webhooks_seen_pkey",
		// Worker processes' heartbeats: a dead process's jobs are handed
		// back in seconds.
		"table worker_heartbeats",
		"column worker_heartbeats.client_id",
		"column worker_heartbeats.host",
		"column worker_heartbeats.pid",
		"column worker_heartbeats.beat_at",
		"constraint worker_heartbeats.worker_heartbeats_pkey",
		"index worker_heartbeats_pkey",
		// How long each ended job took, for the metrics.
		"column metrics_job_outcomes.seconds",
		// Waking watchers on a job's end and on fal's progress.
		"function river_job_notify_final()",
		"trigger river_job.river_job_notify_final",
		"function ai_job_notify()",
		"trigger fal_requests.fal_requests_notify",
		// Only watched jobs are notified about: the jobs someone waits on.
		"function ai_job_notify_watchers(p_job_id bigint)",
		"table job_watchers",
		"column job_watchers.job_id",
		"column job_watchers.watcher",
		"column job_watchers.since",
		"constraint job_watchers.job_watchers_pkey",
		"index job_watchers_pkey",
		// ai_jobs shows the run, River's latest attempt and fal's progress;
		// credit_balances the number of open holds.
		"view column ai_jobs.run",
		"view column ai_jobs.attempted_at",
		"view column ai_jobs.fal_stage",
		"view column ai_jobs.fal_queue_position",
		"view column ai_jobs.fal_logs",
		"view column credit_balances.open_holds",
		// Outbound webhooks (00007_webhooks.sql): endpoints with their
		// signing secret, the outbox of deliveries the ending of a job
		// writes, batch endings for batch.completed, and the DBA's view.
		"table webhook_endpoints",
		"column webhook_endpoints.id",
		"column webhook_endpoints.url",
		"column webhook_endpoints.events",
		"column webhook_endpoints.secret",
		"column webhook_endpoints.created_at",
		"constraint webhook_endpoints.webhook_endpoints_pkey",
		"constraint webhook_endpoints.webhook_endpoints_url_check",
		"constraint webhook_endpoints.webhook_endpoints_events_check",
		"constraint webhook_endpoints.webhook_endpoints_secret_check",
		"index webhook_endpoints_pkey",
		"table webhook_outbox",
		"column webhook_outbox.id",
		"column webhook_outbox.event_id",
		"column webhook_outbox.event",
		"column webhook_outbox.endpoint_id",
		"column webhook_outbox.user_id",
		"column webhook_outbox.job_id",
		"column webhook_outbox.run",
		"column webhook_outbox.batch_id",
		"column webhook_outbox.state",
		"column webhook_outbox.attempts",
		"column webhook_outbox.next_attempt_at",
		"column webhook_outbox.retry_until",
		"column webhook_outbox.last_attempt_at",
		"column webhook_outbox.last_status",
		"column webhook_outbox.last_error",
		"column webhook_outbox.payload",
		"column webhook_outbox.created_at",
		"column webhook_outbox.delivered_at",
		"constraint webhook_outbox.webhook_outbox_pkey",
		"constraint webhook_outbox.webhook_outbox_event_check",
		"constraint webhook_outbox.webhook_outbox_state_check",
		"constraint webhook_outbox.webhook_outbox_subject",
		"constraint webhook_outbox.webhook_outbox_delivered",
		"constraint webhook_outbox.webhook_outbox_endpoint_id_fkey",
		"constraint webhook_outbox.webhook_outbox_event_id_endpoint_id_key",
		"index webhook_outbox_pkey",
		"index webhook_outbox_event_id_endpoint_id_key",
		"index webhook_outbox_job_run",
		"index webhook_outbox_due",
		"index webhook_outbox_pending_batch",
		"index webhook_outbox_finished",
		"table webhook_batch_endings",
		"column webhook_batch_endings.id",
		"column webhook_batch_endings.batch_id",
		"column webhook_batch_endings.created_at",
		"constraint webhook_batch_endings.webhook_batch_endings_pkey",
		"index webhook_batch_endings_pkey",
		"index webhook_batch_endings_batch_id",
		"function river_job_webhook_outbox()",
		"trigger river_job.river_job_webhook_outbox",
		"trigger river_job.river_job_webhook_deleted",
		"view webhook_deliveries",
		"view column webhook_deliveries.id",
		"view column webhook_deliveries.event_id",
		"view column webhook_deliveries.event",
		"view column webhook_deliveries.endpoint_id",
		"view column webhook_deliveries.endpoint_url",
		"view column webhook_deliveries.user_id",
		"view column webhook_deliveries.job_id",
		"view column webhook_deliveries.run",
		"view column webhook_deliveries.batch_id",
		"view column webhook_deliveries.state",
		"view column webhook_deliveries.attempts",
		"view column webhook_deliveries.created_at",
		"view column webhook_deliveries.last_attempt_at",
		"view column webhook_deliveries.next_attempt_at",
		"view column webhook_deliveries.retry_until",
		"view column webhook_deliveries.last_status",
		"view column webhook_deliveries.last_error",
		"view column webhook_deliveries.delivered_at",
		"view column webhook_deliveries.delivery_time",
		// Deadlines to start (00004_fal.sql): the ones the line still
		// watches, written by the insert, dropped by an admin's retry;
		// ai_jobs shows a job's deadline (00005_api.sql).
		"table ai_job_deadlines",
		"column ai_job_deadlines.job_id",
		"column ai_job_deadlines.start_by",
		"column ai_job_deadlines.missed_at",
		"constraint ai_job_deadlines.ai_job_deadlines_pkey",
		"index ai_job_deadlines_pkey",
		"index ai_job_deadlines_waiting",
		"function river_job_deadlines()",
		"trigger river_job.river_job_deadlines",
		"function river_job_rerun_deadline()",
		"trigger river_job.river_job_rerun_deadline",
		"view column ai_jobs.start_by",
		// Spend caps (00003_ledger.sql): a user's caps and spend counters
		// on the account row the reservation updates anyway, the defaults,
		// and the one rule reading a counter in a period.
		"column credit_accounts.daily_cap",
		"column credit_accounts.monthly_cap",
		"column credit_accounts.spent_day",
		"column credit_accounts.spent_day_of",
		"column credit_accounts.spent_month",
		"column credit_accounts.spent_month_of",
		"constraint credit_accounts.credit_accounts_daily_cap_check",
		"constraint credit_accounts.credit_accounts_monthly_cap_check",
		"table spend_cap_defaults",
		"column spend_cap_defaults.only_row",
		"column spend_cap_defaults.daily",
		"column spend_cap_defaults.monthly",
		"column spend_cap_defaults.updated_at",
		"constraint spend_cap_defaults.spend_cap_defaults_pkey",
		"constraint spend_cap_defaults.spend_cap_defaults_only_row_check",
		"constraint spend_cap_defaults.spend_cap_defaults_daily_check",
		"constraint spend_cap_defaults.spend_cap_defaults_monthly_check",
		"index spend_cap_defaults_pkey",
		"function spend_in(amount bigint, counted date, period date)",
	}
	// What kept its name and changed its definition.
	redefined := []string{
		// The hold of a job's run, not of the job.
		"constraint credit_holds.credit_holds_pkey",
		"index credit_holds_pkey",
		"constraint credit_entries.credit_entries_job",
		// The ledger's refusals name their reason (ledger_refuse); a hold's
		// delete is refused by credit_holds_no_delete.
		"trigger credit_accounts.credit_accounts_no_truncate",
		"trigger credit_entries.credit_entries_append_only",
		"trigger credit_entries.credit_entries_no_truncate",
		"trigger credit_holds.credit_holds_no_truncate",
		"trigger credit_holds.credit_holds_only_by_reserve",
		"trigger credit_holds.credit_holds_settle_once",
		// fal dropped a completed request's result: 'expired'.
		"constraint fal_requests.fal_requests_state_check",
		// A user's open holds by settled_at IS NULL, the only index that
		// read can use (00003_ledger.sql says why).
		"index credit_holds_open_user_id",
		// Newest request of a job first.
		"index fal_requests_job_id",
		// Attempts count fal submissions too (integer, not River's smallint).
		"view column ai_jobs.attempt",
		// available >= 0, now that the account keeps available itself.
		"constraint credit_accounts.credit_accounts_available_nonnegative",
	}

	current := pgtest.NewDB(t)
	old := pgtest.NewDB(t)
	_, err := old.Exec(ctx, `DROP SCHEMA public CASCADE; CREATE SCHEMA public`)
	require.NoError(t, err)
	require.NoError(t, migrations.UpFS(ctx, old, os.DirFS("testdata/chain-2026-11")))
	was, is := schemaObjects(t, old), schemaObjects(t, current)
	require.Contains(t, was, "table river_job", "the old chain is applied on River's schema")

	var gotDropped, gotAdded, gotRedefined []string
	for name, def := range was {
		now, ok := is[name]
		switch {
		case !ok:
			gotDropped = append(gotDropped, name)
		case now != def:
			gotRedefined = append(gotRedefined, name)
		}
	}
	for name := range is {
		if _, ok := was[name]; !ok {
			gotAdded = append(gotAdded, name)
		}
	}
	for _, l := range [][]string{dropped, added, redefined, gotDropped, gotAdded, gotRedefined} {
		slices.Sort(l)
	}
	// One comparison, so a failure shows every difference at once.
	type changes struct{ Dropped, Added, Redefined []string }
	require.Equal(t, changes{dropped, added, redefined}, changes{gotDropped, gotAdded, gotRedefined},
		"the schema differs from the old chain's otherwise than listed: list what changed on purpose, with why")
}
