package jobs_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
)

// TestQueuePosition: a queued job's place in the line is the fair share the
// line gives (users take turns, the one with fewer requests in flight
// first, more urgent queues before), as Get and Place read it against the
// process's reading of the line and as fal_line_position reads it in SQL.
func TestQueuePosition(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	submit := func(uid string, n int, priority string) []string {
		t.Helper()
		items := make([]jobs.Item, n)
		for i := range items {
			items[i] = generate("ring")
		}
		ids, err := b.Svc.Submit(ctx, uid, items, jobs.SubmitOpts{Priority: priority, MayRaise: true})
		require.NoError(t, err)
		out := make([]string, n)
		for i, id := range ids {
			out[i] = jobs.FormatID(id)
		}
		return out
	}
	a, bb, c, d := grant(t, b.Pool, 10), grant(t, b.Pool, 10), grant(t, b.Pool, 10), grant(t, b.Pool, 10)
	aJobs := submit(a, 3, jobs.QueueUrgent)
	bJobs := submit(bb, 2, jobs.QueueUrgent)
	cJobs := submit(c, 1, jobs.QueueUrgent)
	dJobs := submit(d, 1, jobs.QueueNormal)

	position := func(uid, id string) int {
		t.Helper()
		j, err := b.Svc.Get(ctx, uid, id, false)
		require.NoError(t, err)
		require.Equal(t, jobs.StateQueued, j.State)
		require.NotNil(t, j.QueuePosition)
		placed := &jobs.Job{ID: id, Priority: j.Priority}
		require.NoError(t, b.Svc.Place(ctx, placed))
		require.Equal(t, j.QueuePosition, placed.QueuePosition, "Place and Get agree")
		n, _ := jobs.JobID(id)
		require.Equal(t, *j.QueuePosition, count(t, b.Pool, `SELECT fal_line_position($1, 1000)`, n), "fal_line_position agrees")
		return *j.QueuePosition
	}
	// Turns: A1 B1 C1 A2 B2 A3, then normal's D1.
	require.Equal(t, 0, position(a, aJobs[0]))
	require.Equal(t, 3, position(a, aJobs[1]))
	require.Equal(t, 5, position(a, aJobs[2]))
	require.Equal(t, 1, position(bb, bJobs[0]))
	require.Equal(t, 4, position(bb, bJobs[1]))
	require.Equal(t, 2, position(c, cJobs[0]))
	require.Equal(t, 6, position(d, dJobs[0]), "every urgent job first")

	// A request of A's in flight: B and C take their first turn before A.
	// Turns: B1 C1 A1 B2 A2 A3.
	_, err := b.Pool.Exec(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model)
VALUES (0, 1, $1, 'urgent', 'generate', 1, 'fal-ai/flux/dev')`, a)
	require.NoError(t, err)
	time.Sleep(300 * time.Millisecond) // the process's reading of the line is older than its 250 ms now
	require.Equal(t, 2, position(a, aJobs[0]))
	require.Equal(t, 0, position(bb, bJobs[0]))
	require.Equal(t, 3, position(bb, bJobs[1]))
	require.Equal(t, 1, position(c, cJobs[0]))

	// A submission of one job reads its own user's part of its place in
	// its transaction: placing it after the commit needs no read of its own
	// and agrees with Get. E has nothing in flight: after B1 and C1 (older,
	// nothing in flight either), before A (one in flight).
	e := grant(t, b.Pool, 10)
	tx, err := b.Pool.Begin(ctx)
	require.NoError(t, err)
	sub, err := b.Svc.SubmitTx(ctx, tx, e, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	require.True(t, jobs.Probed(sub.Jobs[0]), "the submission read its probe")
	require.NoError(t, b.Svc.Place(ctx, sub.Jobs[0]))
	require.NotNil(t, sub.Jobs[0].QueuePosition)
	require.Equal(t, 2, *sub.Jobs[0].QueuePosition)
	require.Equal(t, 2, position(e, sub.Jobs[0].ID))
	requireInvariants(t, b.Pool)
}
