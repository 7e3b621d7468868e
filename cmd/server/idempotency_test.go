package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/api"
	"github.com/aiqueue/aiqueue/ledger"
	"github.com/aiqueue/aiqueue/maintenance"
)

func TestIdempotency(t *testing.T) {
	t.Parallel()
	// A generous rate limit: these tests are about keys, not tokens.
	m := MustRunMain(t, map[string]string{"ROLE": "api", "RATE_LIMIT_PER_MINUTE": "10000", "RATE_LIMIT_BURST": "1000"})
	ctx := context.Background()
	reserved := func(t *testing.T, uid string) int64 {
		t.Helper()
		b, err := ledger.Get(ctx, m.Pool(), uid)
		require.NoError(t, err)
		return b.Reserved
	}

	t.Run("ReplaysFirstResponse", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 5)
		key := map[string]string{"Idempotency-Key": uuid.NewString()}
		first := c.post("/v1/jobs", generateJob("ring"), key)
		require.Equal(t, http.StatusAccepted, first.Status)
		require.Empty(t, first.Header.Get("Idempotent-Replayed"))
		// The same body encoded differently is the same request.
		again := c.send(http.MethodPost, "/v1/jobs", strings.NewReader(`{ "params": {"prompt": "ring"},  "operation": "generate" }`), key)
		require.Equal(t, http.StatusAccepted, again.Status)
		require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"))
		require.Equal(t, first.Header.Get("Location"), again.Header.Get("Location"))
		// The stored response, but for the place in line, which is read
		// anew for a replay too (the other subtests' users join the line
		// meanwhile).
		firstBody, againBody := withoutPosition(t, first.Body), withoutPosition(t, again.Body)
		require.Equal(t, firstBody, againBody)
		require.Equal(t, 1, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
		require.Equal(t, int64(1), reserved(t, uid))
		requireInvariants(t, m)
	})

	t.Run("ParallelRequestsWithOneKeyCreateOneJob", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 50)
		key := map[string]string{"Idempotency-Key": uuid.NewString()}
		replies := parallel(t, 20, func(int) (reply, error) { return c.postE("/v1/jobs", generateJob("ring"), key) })
		var ids []string
		for _, r := range replies {
			switch r.Status {
			case http.StatusAccepted:
				ids = append(ids, r.job(t).ID)
			case http.StatusConflict:
				r.retryAfter(t)
			default:
				t.Fatalf("unexpected %d: %s", r.Status, r.Body)
			}
		}
		t.Logf("20 requests with one key: %d accepted (1 new + replays), %d in flight (409)", len(ids), len(replies)-len(ids))
		require.NotEmpty(t, ids)
		for _, id := range ids {
			require.Equal(t, ids[0], id)
		}
		require.Equal(t, 1, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
		require.Equal(t, 1, count(t, m, `SELECT count(*) FROM river_job WHERE args->>'user_id' = $1`, uid))
		require.Equal(t, int64(1), reserved(t, uid))
		// After the dust settles every retry gets the one job.
		r := c.post("/v1/jobs", generateJob("ring"), key)
		require.Equal(t, http.StatusAccepted, r.Status)
		require.Equal(t, ids[0], r.job(t).ID)
		requireInvariants(t, m)
	})

	t.Run("ParallelConflictingBodiesCreateOneJob", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 50)
		key := map[string]string{"Idempotency-Key": uuid.NewString()}
		bodies := []map[string]any{generateJob("ring"), generateJob("necklace")}
		replies := parallel(t, 20, func(i int) (reply, error) { return c.postE("/v1/jobs", bodies[i%2], key) })
		accepted := map[string]bool{}
		for _, r := range replies {
			switch r.Status {
			case http.StatusAccepted:
				accepted[r.job(t).ID] = true
			case http.StatusConflict, http.StatusUnprocessableEntity:
				r.problem(t)
			default:
				t.Fatalf("unexpected %d: %s", r.Status, r.Body)
			}
		}
		require.Len(t, accepted, 1)
		require.Equal(t, 1, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
		require.Equal(t, int64(1), reserved(t, uid))
		requireInvariants(t, m)
	})

	t.Run("KeysArePerUser", func(t *testing.T) {
		t.Parallel()
		a, uidA := newUser(t, m, 5)
		b, uidB := newUser(t, m, 5)
		key := map[string]string{"Idempotency-Key": "shared-" + uuid.NewString()}
		ja := a.post("/v1/jobs", generateJob("ring"), key)
		jb := b.post("/v1/jobs", generateJob("ring"), key)
		require.Equal(t, http.StatusAccepted, ja.Status)
		require.Equal(t, http.StatusAccepted, jb.Status)
		require.NotEqual(t, ja.job(t).ID, jb.job(t).ID)
		require.Equal(t, int64(1), reserved(t, uidA))
		require.Equal(t, int64(1), reserved(t, uidB))
		requireInvariants(t, m)
	})

	t.Run("FailedRequestIsNotStored", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 0)
		key := map[string]string{"Idempotency-Key": uuid.NewString()}
		require.Equal(t, http.StatusPaymentRequired, c.post("/v1/jobs", generateJob("ring"), key).Status)
		grantCredits(t, m, uid, 1)
		r := c.post("/v1/jobs", generateJob("ring"), key)
		require.Equal(t, http.StatusAccepted, r.Status)
		require.Empty(t, r.Header.Get("Idempotent-Replayed"))
		requireInvariants(t, m)
	})

	t.Run("Batches", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 50)
		key := map[string]string{"Idempotency-Key": uuid.NewString()}
		body := map[string]any{"items": []any{generateJob("a"), generateJob("b"), generateJob("c")}}
		replies := parallel(t, 10, func(int) (reply, error) { return c.postE("/v1/batches", body, key) })
		batchIDs := map[string]bool{}
		for _, r := range replies {
			switch r.Status {
			case http.StatusAccepted:
				var b struct{ ID string }
				require.NoError(t, json.Unmarshal(r.Body, &b))
				batchIDs[b.ID] = true
			case http.StatusConflict:
			default:
				t.Fatalf("unexpected %d: %s", r.Status, r.Body)
			}
		}
		require.Len(t, batchIDs, 1)
		require.Equal(t, 3, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
		require.Equal(t, 1, count(t, m, `SELECT count(*) FROM batches WHERE user_id = $1`, uid))
		requireInvariants(t, m)
	})

	t.Run("Grants", func(t *testing.T) {
		t.Parallel()
		c, _ := newUser(t, m, 0)
		tok, err := api.MintToken([]byte(testSecret), uuid.NewString(), true, time.Hour, "authenticated")
		require.NoError(t, err)
		admin := c.withToken(tok)
		target := uuid.NewString()
		key := map[string]string{"Idempotency-Key": uuid.NewString()}
		body := map[string]any{"user_id": target, "amount": 7, "reason": "promo"}
		replies := parallel(t, 10, func(int) (reply, error) { return admin.postE("/v1/admin/credits/grants", body, key) })
		var created []reply
		for _, r := range replies {
			switch r.Status {
			case http.StatusCreated:
				created = append(created, r)
			case http.StatusConflict:
			default:
				t.Fatalf("unexpected %d: %s", r.Status, r.Body)
			}
		}
		require.NotEmpty(t, created)
		for _, r := range created {
			require.JSONEq(t, string(created[0].Body), string(r.Body))
		}
		b, err := ledger.Get(ctx, m.Pool(), target)
		require.NoError(t, err)
		require.Equal(t, int64(7), b.Balance)
		r := admin.post("/v1/admin/credits/grants", map[string]any{"user_id": target, "amount": 8, "reason": "promo"}, key)
		require.Equal(t, http.StatusUnprocessableEntity, r.Status)
		requireInvariants(t, m)
	})

	t.Run("ExpiredKeysAreNotReplayedAndArePruned", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 5)
		key := uuid.NewString()
		first := c.post("/v1/jobs", generateJob("ring"), map[string]string{"Idempotency-Key": key})
		require.Equal(t, http.StatusAccepted, first.Status)
		_, err := m.Pool().Exec(ctx, `UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE user_id = $1`, uid)
		require.NoError(t, err)
		// Past 24 hours the key starts afresh, even with another body.
		second := c.post("/v1/jobs", generateJob("necklace"), map[string]string{"Idempotency-Key": key})
		require.Equal(t, http.StatusAccepted, second.Status)
		require.NotEqual(t, first.job(t).ID, second.job(t).ID)

		old := uuid.NewString()
		require.Equal(t, http.StatusAccepted, c.post("/v1/jobs", generateJob("ring"), map[string]string{"Idempotency-Key": old}).Status)
		_, err = m.Pool().Exec(ctx, `UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE user_id = $1 AND key = $2`, uid, old)
		require.NoError(t, err)
		keys, _, err := maintenance.Prune(ctx, m.Pool(), api.IdempotencyKeyTTL)
		require.NoError(t, err)
		require.GreaterOrEqual(t, keys, int64(1))
		require.Zero(t, count(t, m, `SELECT count(*) FROM idempotency_keys WHERE user_id = $1 AND key = $2`, uid, old))
		require.Equal(t, 1, count(t, m, `SELECT count(*) FROM idempotency_keys WHERE user_id = $1 AND key = $2`, uid, key))
		requireInvariants(t, m)
	})
}

// TestPrunePeriodicJob checks the prune job is scheduled and works in a
// process that works jobs: old idempotency records and ended jobs no scrape
// took are gone.
func TestPrunePeriodicJob(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, nil)
	_, err := m.Pool().Exec(context.Background(), `
INSERT INTO idempotency_keys (user_id, key, request_hash, status, body, created_at)
VALUES (gen_random_uuid(), 'old', '\x00', 202, '{}', now() - interval '25 hours')`)
	require.NoError(t, err)
	_, err = m.Pool().Exec(context.Background(), `
INSERT INTO metrics_job_outcomes (operation, queue, outcome, credits, charged, created_at)
VALUES ('generate', 'urgent', 'succeeded', 1, true, now() - interval '2 hours')`)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return count(t, m, `SELECT count(*) FROM river_job WHERE kind = $1 AND state = 'completed'`, maintenance.PruneArgs{}.Kind()) > 0
	}, 30*time.Second, 100*time.Millisecond)
	require.Zero(t, count(t, m, `SELECT count(*) FROM idempotency_keys`))
	require.Zero(t, count(t, m, `SELECT count(*) FROM metrics_job_outcomes`))
	requireInvariants(t, m)
}

func grantCredits(t testing.TB, m *Main, uid string, amount int64) {
	t.Helper()
	ctx := context.Background()
	tx, err := m.Pool().Begin(ctx)
	require.NoError(t, err)
	_, _, err = ledger.Grant(ctx, tx, uid, amount, "test", "")
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
}

// withoutPosition decodes a job's body and takes out its queue_position,
// failing unless it has one.
func withoutPosition(t *testing.T, body []byte) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(body, &m))
	require.Contains(t, m, "queue_position")
	delete(m, "queue_position")
	return m
}
