package dispatch

import (
	"context"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pgtest"
)

type announceArgs struct{}

func (announceArgs) Kind() string { return "announce_test" }

type announceWorker struct {
	river.WorkerDefaults[announceArgs]
	worked chan time.Time
}

func (w *announceWorker) Work(context.Context, *river.Job[announceArgs]) error {
	w.worked <- time.Now()
	return nil
}

// TestAnnouncer pins the River behaviour the announcer relies on: a job made
// available outside River's insert (JobRetryTx of a pending job) is fetched
// at once when announced on River's insert channel, long before the queue's
// poll. If a River upgrade changes the channel or its payload, this fails.
func TestAnnouncer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	const poll = 20 * time.Second
	w := &announceWorker{worked: make(chan time.Time, 4)}
	workers := river.NewWorkers()
	river.AddWorker(workers, w)
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Workers: workers,
		Queues:  map[string]river.QueueConfig{"announced": {MaxWorkers: 1, FetchCooldown: time.Millisecond, FetchPollInterval: poll}},
	})
	require.NoError(t, err)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	require.NoError(t, client.Start(runCtx))
	defer func() {
		stopCtx, stop := context.WithTimeout(ctx, 10*time.Second)
		defer stop()
		require.NoError(t, client.Stop(stopCtx))
	}()
	// Let the producer's first fetch and its listener settle.
	time.Sleep(500 * time.Millisecond)

	available := func() {
		t.Helper()
		res, err := client.Insert(ctx, announceArgs{}, &river.InsertOpts{Queue: "announced", Pending: true})
		require.NoError(t, err)
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		_, err = client.JobRetryTx(ctx, tx, res.Job.ID)
		require.NoError(t, err)
		require.NoError(t, tx.Commit(ctx))
	}

	// Unannounced, the job waits for the poll.
	available()
	select {
	case <-w.worked:
		t.Fatal("a job made available by JobRetryTx was fetched without an announcement: the announcer may no longer be needed")
	case <-time.After(time.Second):
	}
	// Announced, it is fetched at once.
	begin := time.Now()
	newAnnouncer(pool).announce([]string{"announced"})
	select {
	case at := <-w.worked:
		require.Less(t, at.Sub(begin), 2*time.Second)
	case <-time.After(poll / 2):
		t.Fatal("an announced job was not fetched before the queue's poll: River's insert channel or payload changed")
	}
}
