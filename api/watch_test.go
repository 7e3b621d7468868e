package api_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/api"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

func TestWatcher(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	setupWatcher := func(t *testing.T) (*testBundle, *api.Watcher) {
		t.Helper()
		b := setup(t)
		w := api.NewWatcher(b.pool.Config().ConnConfig, nil)
		// Only notifications wake here, so the wake-ups can be counted;
		// ChangeCommittedWhileRecordingWakes tests the re-check.
		api.SetWatcherRecheck(w)
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { w.Run(runCtx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		require.Eventually(t, w.Connected, 10*time.Second, 5*time.Millisecond)
		return b, w
	}
	woken := func(t *testing.T, sub *api.Subscription) {
		t.Helper()
		select {
		case <-sub.C:
		case <-time.After(10 * time.Second):
			t.Fatal("subscriber not woken")
		}
	}

	t.Run("WakesOnVisibleChangesOnly", func(t *testing.T) {
		t.Parallel()
		b, w := setupWatcher(t)
		uid := grant(t, b.pool, 5)
		ids, err := b.svc.Submit(ctx, uid, []jobs.Item{generate("a"), generate("b")}, jobs.SubmitOpts{})
		require.NoError(t, err)
		sub := w.Subscribe(ids[0])
		defer sub.Close()
		other := w.Subscribe(ids[1])
		defer other.Close()
		require.Equal(t, 2, w.Subscribers())

		// River moving the job (pending -> available -> running) and the
		// line giving it a slot show the studio nothing: no notification.
		_, err = b.pool.Exec(ctx, `UPDATE river_job SET state = 'available' WHERE id = $1`, ids[0])
		require.NoError(t, err)
		_, err = b.pool.Exec(ctx, `UPDATE river_job SET state = 'running', attempt = 1, attempted_at = now() WHERE id = $1`, ids[0])
		require.NoError(t, err)
		_, err = b.pool.Exec(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model)
VALUES ($1, 1, $2, 'urgent', 'generate', 1, 'fal-ai/flux/dev')`, ids[0], uid)
		require.NoError(t, err)
		// fal accepting its request makes it running.
		_, err = b.pool.Exec(ctx, `UPDATE fal_requests SET request_id = 'r-1', state = 'in_flight', submitted_at = now() WHERE job_id = $1`, ids[0])
		require.NoError(t, err)
		woken(t, sub)
		require.True(t, sub.Notified())
		require.False(t, sub.Notified(), "Notified clears")
		// Notifications arrive in commit order, so the first update's
		// would have arrived before this one.
		require.Equal(t, int64(1), w.Notifications())
		select {
		case <-other.C:
			t.Fatal("the other job's subscriber was woken")
		default:
		}
		requireInvariants(t, b.pool)
	})

	// A change made before the job was recorded as watched but committed
	// after the subscriber's first read sends no notification (the
	// trigger found nobody watching): the watcher's re-check wakes the
	// subscriber. Without it the change would wait for the next one.
	t.Run("ChangeCommittedWhileRecordingWakes", func(t *testing.T) {
		t.Parallel()
		for _, recheck := range []bool{false, true} {
			b, w := setupWatcher(t)
			if recheck {
				api.SetWatcherRecheck(w, 200*time.Millisecond)
			} else {
				api.SetWatcherRecheck(w)
			}
			uid := grant(t, b.pool, 5)
			ids, err := b.svc.Submit(ctx, uid, []jobs.Item{generate("a")}, jobs.SubmitOpts{})
			require.NoError(t, err)
			_, err = b.pool.Exec(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model)
VALUES ($1, 1, $2, 'urgent', 'generate', 1, 'fal-ai/flux/dev')`, ids[0], uid)
			require.NoError(t, err)
			tx, err := b.pool.Begin(ctx)
			require.NoError(t, err)
			_, err = tx.Exec(ctx, `UPDATE fal_requests SET request_id = 'r-1', state = 'in_flight', submitted_at = now() WHERE job_id = $1`, ids[0])
			require.NoError(t, err)
			sub := w.Subscribe(ids[0])
			// The subscriber's first read would come here, before the commit.
			require.NoError(t, tx.Commit(ctx))
			select {
			case <-sub.C:
				require.True(t, recheck, "woken without a re-check: the race did not happen")
				require.False(t, sub.Notified(), "a re-check is not a notification")
			case <-time.After(3 * time.Second):
				require.False(t, recheck, "a change committed while the job was recorded did not wake the subscriber")
			}
			require.Zero(t, w.Notifications(), "no notification: the trigger saw nobody watching")
			sub.Close()
			requireInvariants(t, b.pool)
		}
	})

	t.Run("ReconnectsAndWakesEveryone", func(t *testing.T) {
		t.Parallel()
		b, w := setupWatcher(t)
		sub := w.Subscribe(424242)
		defer sub.Close()
		select {
		case <-sub.C:
			t.Fatal("woken before anything happened")
		default:
		}
		var pid int
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1`,
			api.WatcherApplicationName).Scan(&pid))
		_, err := b.pool.Exec(ctx, `SELECT pg_terminate_backend($1)`, pid)
		require.NoError(t, err)
		// Whatever happened while it was away, subscribers re-read.
		woken(t, sub)
		require.Eventually(t, func() bool {
			var n int
			err := b.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 AND pid <> $2`,
				api.WatcherApplicationName, pid).Scan(&n)
			return err == nil && n == 1 && w.Connected()
		}, 10*time.Second, 10*time.Millisecond)
	})

	t.Run("OneSubscriptionForManyJobs", func(t *testing.T) {
		t.Parallel()
		b, w := setupWatcher(t)
		uid := grant(t, b.pool, 5)
		ids, err := b.svc.Submit(ctx, uid, []jobs.Item{generate("a"), generate("b"), generate("c")}, jobs.SubmitOpts{})
		require.NoError(t, err)
		sub := w.Subscribe(ids[:2]...)
		defer sub.Close()
		require.Equal(t, 1, w.Subscribers())
		// The job it does not watch ends: nothing, not even a notification,
		// since nobody watches it.
		_, err = b.svc.Cancel(ctx, uid, jobs.FormatID(ids[2]))
		require.NoError(t, err)
		// Either of its jobs wakes it.
		_, err = b.svc.Cancel(ctx, uid, jobs.FormatID(ids[1]))
		require.NoError(t, err)
		woken(t, sub)
		require.Eventually(t, func() bool { return w.Notifications() == 1 }, 10*time.Second, 5*time.Millisecond)
		select {
		case <-sub.C:
			t.Fatal("woken twice for one change")
		default:
		}
		_, err = b.svc.Cancel(ctx, uid, jobs.FormatID(ids[0]))
		require.NoError(t, err)
		woken(t, sub)
		sub.Close()
		require.Zero(t, w.Subscribers())
		requireInvariants(t, b.pool)
	})

	t.Run("CloseUnsubscribes", func(t *testing.T) {
		t.Parallel()
		_, w := setupWatcher(t)
		a, b := w.Subscribe(1), w.Subscribe(1)
		require.Equal(t, 2, w.Subscribers())
		a.Close()
		b.Close()
		b.Close()
		require.Zero(t, w.Subscribers())
	})
}

// BenchmarkWatcherWake is the time from the commit of a change the studio
// sees (fal's stage of a job's request, moved back and forth) to its
// subscriber being woken through LISTEN/NOTIFY.
func BenchmarkWatcherWake(b *testing.B) {
	tb := setup(b)
	pool, svc := tb.pool, tb.svc
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := api.NewWatcher(pool.Config().ConnConfig, nil)
	go w.Run(ctx)
	for !w.Connected() {
		runtime.Gosched()
	}
	uid := uuid.NewString()
	tx, err := pool.Begin(ctx)
	require.NoError(b, err)
	_, _, err = ledger.Grant(ctx, tx, uid, 1<<40, "bench", "")
	require.NoError(b, err)
	require.NoError(b, tx.Commit(ctx))
	ids, err := svc.Submit(ctx, uid, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
	require.NoError(b, err)
	_, err = pool.Exec(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model, request_id, state, submitted_at, stage)
VALUES ($1, 1, $2, 'urgent', 'generate', 1, 'fal-ai/flux/dev', 'r-1', 'in_flight', now(), 'in_queue')`, ids[0], uid)
	require.NoError(b, err)
	sub := w.Subscribe(ids[0])
	defer sub.Close()
	stages := []string{"in_progress", "in_queue"}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := pool.Exec(ctx, `UPDATE fal_requests SET stage = $2 WHERE job_id = $1`, ids[0], stages[i%2]); err != nil {
			b.Fatal(err)
		}
		select {
		case <-sub.C:
		case <-time.After(10 * time.Second):
			b.Fatal("not woken")
		}
	}
}
