package dispatch_test

import (
	"context"
	"testing"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// TestCompleteJobs pins the one River statement a group of finished jobs
// is completed with (completeJobs, River's driver layer: River has no
// public many-job JobCompleteTx): the group's jobs complete and are
// charged together, each slot freed with its result, and a job River no
// longer runs refuses the whole group, leaving every slot open and every
// other job running (the group is then committed again one job at a time).
func TestCompleteJobs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	uid := grant(t, b.Pool, 10)
	var ids []int64
	for range 4 {
		ids = append(ids, submit(t, b, uid))
	}
	// The line gave each a slot and fal accepted its request; River runs
	// them.
	slots := make([]int64, len(ids))
	list := make([]*river.Job[jobs.Args], len(ids))
	for i, id := range ids {
		require.NoError(t, b.Pool.QueryRow(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model, request_id, state, submitted_at)
SELECT id, 1, (args ->> 'user_id')::uuid, queue, args ->> 'operation', 1, args ->> 'model', 'req-' || id, 'in_flight', now()
  FROM river_job WHERE id = $1
RETURNING id`, id).Scan(&slots[i]))
		row, err := b.River.JobGet(ctx, id)
		require.NoError(t, err)
		list[i] = &river.Job[jobs.Args]{JobRow: row}
	}
	_, err := b.Pool.Exec(ctx, `UPDATE river_job SET state = 'running', attempt = 1, attempted_at = now() WHERE id = ANY($1)`, ids)
	require.NoError(t, err)
	output := []byte(`{"images":[{"url":"https://fal.media/out.png"}]}`)
	open := func() int {
		return count(t, b.Pool, `SELECT count(*) FROM fal_requests WHERE id = ANY($1) AND finished_at IS NULL`, slots)
	}

	// The first job was handed back while fal finished it (the heartbeat
	// took its process for dead).
	_, err = b.Pool.Exec(ctx, `UPDATE river_job SET state = 'available' WHERE id = $1`, ids[0])
	require.NoError(t, err)
	err = dispatch.CompleteGroup(ctx, b.Pool, b.River, list, slots, output)
	require.ErrorIs(t, err, dispatch.ErrNotRunning)
	require.Equal(t, len(ids), open(), "a refused group frees no slot")
	for _, id := range ids[1:] {
		require.Equal(t, "running", riverState(t, b.Pool, id))
		require.Equal(t, ledger.HoldReserved, holdState(t, b.Pool, id))
	}

	require.NoError(t, dispatch.CompleteGroup(ctx, b.Pool, b.River, list[1:], slots[1:], output))
	for _, id := range ids[1:] {
		require.Equal(t, string(rivertype.JobStateCompleted), riverState(t, b.Pool, id))
		require.Equal(t, ledger.HoldCharged, holdState(t, b.Pool, id))
	}
	require.Equal(t, 1, open(), "the handed-back job's slot stays open, with the request its next attempt resumes")
	require.Equal(t, 3, count(t, b.Pool, `SELECT count(*) FROM fal_requests WHERE id = ANY($1) AND state = 'completed' AND result = $2::jsonb`, slots[1:], string(output)))
	require.Equal(t, ledger.HoldReserved, holdState(t, b.Pool, ids[0]))
	requireInvariants(t, b.Pool)

	// A job that is gone (deleted in River UI: refunded) refuses its group
	// as well.
	_, err = b.Pool.Exec(ctx, `DELETE FROM river_job WHERE id = $1`, ids[0])
	require.NoError(t, err)
	require.Equal(t, ledger.HoldRefunded, holdState(t, b.Pool, ids[0]))
	require.ErrorIs(t, dispatch.CompleteGroup(ctx, b.Pool, b.River, list[:1], slots[:1], output), rivertype.ErrNotFound)
	requireInvariants(t, b.Pool)
}
