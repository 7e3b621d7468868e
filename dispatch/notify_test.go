package dispatch_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
)

func TestInsertNotifications(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	// listen opens a connection listening to River's insert topic.
	listen := func(t *testing.T, b *testBundle) *pgx.Conn {
		t.Helper()
		conn, err := pgx.Connect(ctx, b.pool.Config().ConnString())
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close(context.Background()) })
		var schema string
		require.NoError(t, conn.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema))
		_, err = conn.Exec(ctx, `LISTEN "`+schema+`.river_insert"`)
		require.NoError(t, err)
		return conn
	}
	type received struct {
		payload string
		at      time.Time
	}
	// receive reads notifications as they arrive, until the test ends.
	receive := func(t *testing.T, conn *pgx.Conn) <-chan received {
		t.Helper()
		rctx, cancel := context.WithCancel(ctx)
		out := make(chan received, 100)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				n, err := conn.WaitForNotification(rctx)
				if err != nil {
					return
				}
				out <- received{n.Payload, time.Now()}
			}
		}()
		t.Cleanup(func() { cancel(); <-done })
		return out
	}
	// next waits up to d for the next notification; ok is false when none
	// came.
	next := func(ch <-chan received, d time.Duration) (received, bool) {
		select {
		case r := <-ch:
			return r, true
		case <-time.After(d):
			return received{}, false
		}
	}

	t.Run("EveryCommitIsAnnouncedAfterItAtMostOncePerCooldown", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		notes := receive(t, listen(t, b))
		uid := grant(t, b.pool, 10)
		// background's fetch cooldown is River's default, 100ms: three
		// quick submissions get one notification right after the first
		// commit and one after the cooldown, which comes after the last.
		item := generate("ring")
		item.Priority = jobs.QueueBackground
		start := time.Now()
		var lastCommit time.Time
		for range 3 {
			_, err := b.svc.Submit(ctx, uid, []jobs.Item{item}, jobs.SubmitOpts{})
			require.NoError(t, err)
			lastCommit = time.Now()
		}
		var got int
		var lastSeen time.Time
		for {
			r, ok := next(notes, time.Second)
			if !ok {
				break
			}
			require.JSONEq(t, `{"queue": "background"}`, r.payload)
			got++
			lastSeen = r.at
		}
		require.GreaterOrEqual(t, got, 1)
		require.True(t, lastSeen.After(lastCommit), "no notification after the last commit")
		// At most one per cooldown (plus the leading one) over the time the
		// submissions took, and River's own for the client's first insert.
		require.LessOrEqual(t, got, 3+int(lastCommit.Sub(start)/(100*time.Millisecond)))
		requireInvariants(t, b.pool)
	})

	t.Run("RolledBackSubmissionIsNotAnnounced", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		notes := receive(t, listen(t, b))
		uid := grant(t, b.pool, 1)
		_, err := b.svc.Submit(ctx, uid, []jobs.Item{{Operation: "video", Params: []byte(`{"prompt":"orbit","image_url":"https://x.test/a.png"}`)}}, jobs.SubmitOpts{})
		require.Error(t, err)
		_, ok := next(notes, 300*time.Millisecond)
		require.False(t, ok)
	})
}
