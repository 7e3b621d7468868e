package pgtest

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
)

// StaleLine fills the line for fal slots of tx's database with pending
// jobs of users 1..users (in turn, in urgent; their accounts made when
// missing) on statistics that say the line is empty, as a busy server's
// are: left jobs went through the line and left it (their entries stay in
// the line index, river_job_fal_line, until a vacuum), river_job was
// analyzed with none pending, a vacuum found the line index nearly empty
// for its pages, and then pending jobs joined the line. Plans made on
// such statistics read the line off River's fetching index instead of
// the line index (package plans).
func StaleLine(t testing.TB, tx pgx.Tx, users, left, pending int) {
	t.Helper()
	jobs := func(n int) string {
		return fmt.Sprintf(`
INSERT INTO river_job (kind, args, max_attempts, queue, state, priority)
SELECT 'ai', jsonb_build_object('user_id', '00000000-0000-4000-8000-' || lpad((i %% %d + 1)::text, 12, '0'), 'cost', 1),
       3, 'urgent', 'pending', 1
  FROM generate_series(1, %d) i;`, users, n)
	}
	_, err := tx.Exec(context.Background(), fmt.Sprintf(`
INSERT INTO credit_accounts (user_id, available)
SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 1000000 FROM generate_series(1, %d) i
ON CONFLICT (user_id) DO NOTHING;`, users)+jobs(left)+`
UPDATE river_job SET state = 'available' WHERE state = 'pending';
ANALYZE river_job;
UPDATE pg_class SET reltuples = 10 WHERE relname = 'river_job_fal_line';`+jobs(pending))
	if err != nil {
		t.Fatalf("pgtest.StaleLine: %v", err)
	}
}
