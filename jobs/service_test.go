package jobs_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

func TestSubmit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ReservesAndInserts", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 3)
		ids, err := b.Svc.Submit(ctx, uid, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
		require.NoError(t, err)
		require.Len(t, ids, 1)
		requireBalance(t, b.Pool, uid, ledger.Balance{Balance: 3, Reserved: 1, Available: 2})
		j, err := b.Svc.Get(ctx, uid, jobs.FormatID(ids[0]), false)
		require.NoError(t, err)
		require.Equal(t, jobs.StateQueued, j.State)
		require.Equal(t, ledger.HoldReserved, j.Credits.State)
		require.NotNil(t, j.QueuePosition)
		require.Equal(t, 0, *j.QueuePosition)
		requireInvariants(t, b.Pool)
	})

	t.Run("RolledBackTransactionLeavesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 3)
		tx, err := b.Pool.Begin(ctx)
		require.NoError(t, err)
		sub, err := b.Svc.SubmitTx(ctx, tx, uid, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
		require.NoError(t, err)
		// Inside the transaction both exist...
		require.Equal(t, 1, count(t, tx, `SELECT count(*) FROM credit_holds WHERE job_id = $1`, sub.IDs[0]))
		require.NoError(t, tx.Rollback(ctx))
		// ...and after the rollback neither does.
		require.Zero(t, count(t, b.Pool, `SELECT count(*) FROM river_job`))
		require.Zero(t, count(t, b.Pool, `SELECT count(*) FROM credit_holds`))
		require.Equal(t, 1, count(t, b.Pool, `SELECT count(*) FROM credit_entries`)) // the grant
		requireBalance(t, b.Pool, uid, ledger.Balance{Balance: 3, Available: 3})
		requireInvariants(t, b.Pool)
	})

	t.Run("InsufficientCreditsWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 1)
		_, err := b.Svc.Submit(ctx, uid, []jobs.Item{{Operation: "video", Params: json.RawMessage(`{"prompt":"spin","image_url":"https://x.test/a.png"}`)}}, jobs.SubmitOpts{})
		var insufficient *ledger.InsufficientError
		require.ErrorAs(t, err, &insufficient)
		require.Equal(t, int64(10), insufficient.Needed)
		require.Equal(t, int64(1), insufficient.Available)
		require.Zero(t, count(t, b.Pool, `SELECT count(*) FROM river_job`))
		require.Zero(t, count(t, b.Pool, `SELECT count(*) FROM credit_holds`))
		requireInvariants(t, b.Pool)
	})

	t.Run("EveryAIJobInsertReserves", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		// A River insert that bypasses the service still reserves: refused
		// for a user without credits, a hold for one with them.
		insert := func(uid string) error {
			tx, err := b.Pool.Begin(ctx)
			require.NoError(t, err)
			defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
			if _, err := b.River.InsertTx(ctx, tx, jobs.Args{UserID: uid, Operation: "generate", Model: "fal-ai/flux/dev", Params: json.RawMessage(`{}`), Cost: 1}, nil); err != nil {
				return err
			}
			return tx.Commit(ctx)
		}
		insufficient, ok := ledger.AsInsufficient(insert("00000000-0000-4000-8000-000000000009"))
		require.True(t, ok)
		require.Equal(t, ledger.InsufficientError{Needed: 1, Available: 0}, *insufficient)
		require.Zero(t, count(t, b.Pool, `SELECT count(*) FROM river_job`))
		uid := grant(t, b.Pool, 1)
		require.NoError(t, insert(uid))
		require.Equal(t, 1, count(t, b.Pool, `SELECT count(*) FROM credit_holds WHERE user_id = $1 AND state = 'reserved'`, uid))
		requireInvariants(t, b.Pool)
	})

	t.Run("ValidationListsEveryError", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 10)
		_, err := b.Svc.Submit(ctx, uid, []jobs.Item{{Operation: "edit", Params: json.RawMessage(`{"image_urls":["http://insecure.test/a.png"],"num_images":9}`), Priority: "asap"}}, jobs.SubmitOpts{})
		var je *jobs.Error
		require.ErrorAs(t, err, &je)
		require.Equal(t, jobs.EINVALID, je.Code)
		var locs []string
		for _, f := range je.Fields {
			locs = append(locs, f.Location)
		}
		require.ElementsMatch(t, []string{"body.params.image_urls[0]", "body.params.num_images", "body.params.prompt", "body.priority"}, locs)
		require.Zero(t, count(t, b.Pool, `SELECT count(*) FROM river_job`))
	})
}

func TestPriority(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	video := func(priority string) jobs.Item {
		return jobs.Item{Operation: "video", Params: json.RawMessage(`{"prompt":"spin","image_url":"https://x.test/a.png"}`), Priority: priority}
	}
	queueOf := func(t *testing.T, b *testBundle, id int64) string {
		t.Helper()
		var q string
		require.NoError(t, b.Pool.QueryRow(ctx, `SELECT queue FROM river_job WHERE id = $1`, id).Scan(&q))
		return q
	}
	refused := func(t *testing.T, err error, loc string) {
		t.Helper()
		var je *jobs.Error
		require.ErrorAs(t, err, &je)
		require.Equal(t, jobs.EINVALID, je.Code)
		require.Len(t, je.Fields, 1, je.Fields)
		require.Equal(t, loc, je.Fields[0].Location)
		require.Contains(t, je.Fields[0].Message, "only admins may raise")
	}

	t.Run("UsersKeepOrLower", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 100)
		for _, tc := range []struct {
			item jobs.Item
			want string
		}{
			{generate("a"), jobs.QueueUrgent},
			{jobs.Item{Operation: "generate", Params: json.RawMessage(`{"prompt":"a"}`), Priority: jobs.QueueUrgent}, jobs.QueueUrgent},
			{jobs.Item{Operation: "generate", Params: json.RawMessage(`{"prompt":"a"}`), Priority: jobs.QueueNormal}, jobs.QueueNormal},
			{jobs.Item{Operation: "generate", Params: json.RawMessage(`{"prompt":"a"}`), Priority: jobs.QueueBackground}, jobs.QueueBackground},
			{video(""), jobs.QueueNormal},
			{video(jobs.QueueBackground), jobs.QueueBackground},
		} {
			ids, err := b.Svc.Submit(ctx, uid, []jobs.Item{tc.item}, jobs.SubmitOpts{})
			require.NoError(t, err)
			require.Equal(t, tc.want, queueOf(t, b, ids[0]), tc.item)
		}
	})

	t.Run("OnlyAdminsRaise", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 100)
		_, err := b.Svc.Submit(ctx, uid, []jobs.Item{video(jobs.QueueUrgent)}, jobs.SubmitOpts{})
		refused(t, err, "body.priority")
		require.Zero(t, count(t, b.Pool, `SELECT count(*) FROM river_job`))

		ids, err := b.Svc.Submit(ctx, uid, []jobs.Item{video(jobs.QueueUrgent)}, jobs.SubmitOpts{MayRaise: true})
		require.NoError(t, err)
		require.Equal(t, jobs.QueueUrgent, queueOf(t, b, ids[0]))
		requireInvariants(t, b.Pool)
	})

	t.Run("BatchesDefaultToNormal", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 100)
		batch := func(opts jobs.SubmitOpts, items ...jobs.Item) ([]int64, error) {
			tx, err := b.Pool.Begin(ctx)
			require.NoError(t, err)
			defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
			_, sub, err := b.Svc.SubmitBatchTx(ctx, tx, uid, items, opts)
			if err != nil {
				return nil, err
			}
			require.NoError(t, tx.Commit(ctx))
			return sub.IDs, nil
		}
		ids, err := batch(jobs.SubmitOpts{}, generate("a"), video(""))
		require.NoError(t, err)
		require.Equal(t, []string{jobs.QueueNormal, jobs.QueueNormal}, []string{queueOf(t, b, ids[0]), queueOf(t, b, ids[1])})

		ids, err = batch(jobs.SubmitOpts{Priority: jobs.QueueBackground}, generate("a"), video(""))
		require.NoError(t, err)
		require.Equal(t, []string{jobs.QueueBackground, jobs.QueueBackground}, []string{queueOf(t, b, ids[0]), queueOf(t, b, ids[1])})

		// urgent is above the batch default of both: one error, at the
		// field the caller set.
		_, err = batch(jobs.SubmitOpts{Priority: jobs.QueueUrgent}, generate("a"), video(""))
		refused(t, err, "body.priority")

		ids, err = batch(jobs.SubmitOpts{Priority: jobs.QueueUrgent, MayRaise: true}, generate("a"), video(""))
		require.NoError(t, err)
		require.Equal(t, []string{jobs.QueueUrgent, jobs.QueueUrgent}, []string{queueOf(t, b, ids[0]), queueOf(t, b, ids[1])})
		requireInvariants(t, b.Pool)
	})

	t.Run("BatchKeepsALessUrgentDefault", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		ops := jobs.DefaultCatalog().All()
		for i := range ops {
			if ops[i].Name == "video" {
				ops[i].Priority = jobs.QueueBackground
			}
		}
		c, err := jobs.NewCatalog(ops)
		require.NoError(t, err)
		svc := jobs.NewService(jobs.Config{Pool: b.Pool, River: b.River, Catalog: c})
		uid := grant(t, b.Pool, 100)
		tx, err := b.Pool.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
		_, sub, err := svc.SubmitBatchTx(ctx, tx, uid, []jobs.Item{video("")}, jobs.SubmitOpts{})
		require.NoError(t, err)
		require.Equal(t, jobs.QueueBackground, sub.Jobs[0].Priority)
		_, _, err = svc.SubmitBatchTx(ctx, tx, uid, []jobs.Item{video("")}, jobs.SubmitOpts{Priority: jobs.QueueNormal})
		refused(t, err, "body.priority")
	})
}
