package webhooks_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/jobtest"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/webhooks"
)

// TestSignature pins the signing library to the test vector the Standard
// Webhooks specification publishes.
func TestSignature(t *testing.T) {
	t.Parallel()
	wh, err := standardwebhooks.NewWebhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	require.NoError(t, err)
	sig, err := wh.Sign("msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	require.NoError(t, err)
	require.Equal(t, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", sig)
}

func TestCheckURL(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		url     string
		private bool
		want    string // a part of the message; "" for valid
	}{
		{url: "https://studio.example.com/hooks?token=x", want: ""},
		{url: "http://studio.example.com/hooks", want: "https URL"},
		{url: "http://studio.example.com/hooks", private: true, want: ""},
		{url: "https://127.0.0.1/hooks", want: "loopback"},
		{url: "https://127.0.0.1/hooks", private: true, want: ""},
		{url: "https://10.1.2.3/", want: "private"},
		{url: "https://169.254.169.254/latest", want: "link-local"},
		{url: "https://[::ffff:10.0.0.1]/", want: "private"},
		{url: "https://localhost:8080/", want: "local name"},
		{url: "https://user:pass@studio.example.com/", want: "user name"},
		{url: "https://studio.example.com/#x", want: "fragment"},
		{url: "ftp://studio.example.com/", private: true, want: "http or https"},
		{url: "/hooks", want: "absolute"},
		{url: "https://studio.example.com/" + strings.Repeat("a", webhooks.MaxURLBytes), want: "at most"},
	} {
		got := webhooks.CheckURL(c.url, c.private)
		if c.want == "" {
			require.Empty(t, got, c.url)
		} else {
			require.Contains(t, got, c.want, c.url)
		}
	}
}

func TestEndpoints(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("SecretOnceAndListWithout", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		e, secret, err := webhooks.Create(ctx, b.Pool, "https://studio.example.com/hooks", []string{webhooks.EventJobSucceeded}, false)
		require.NoError(t, err)
		require.True(t, strings.HasPrefix(secret, "whsec_"))
		key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
		require.NoError(t, err)
		require.GreaterOrEqual(t, len(key), 24)
		list, err := webhooks.List(ctx, b.Pool)
		require.NoError(t, err)
		require.Equal(t, []webhooks.Endpoint{*e}, list)
		raw, err := json.Marshal(list)
		require.NoError(t, err)
		require.NotContains(t, string(raw), secret)
		require.NotContains(t, string(raw), "whsec_")
		require.NoError(t, webhooks.Delete(ctx, b.Pool, e.ID))
		require.Equal(t, jobs.ENOTFOUND, jobs.ErrorCode(webhooks.Delete(ctx, b.Pool, e.ID)))
	})

	t.Run("RefusesEveryProblemAtOnce", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		_, _, err := webhooks.Create(ctx, b.Pool, "http://10.0.0.1/", []string{"job.done", webhooks.EventJobFailed, webhooks.EventJobFailed}, false)
		var je *jobs.Error
		require.ErrorAs(t, err, &je)
		require.Equal(t, jobs.EINVALID, je.Code)
		var locs []string
		for _, f := range je.Fields {
			locs = append(locs, f.Location)
		}
		require.Equal(t, []string{"body.url", "body.events[0]", "body.events[2]"}, locs)
		require.Zero(t, jobtest.Count(t, b.Pool, `SELECT count(*) FROM webhook_endpoints`))
	})
}

// TestOutbox checks what the database writes when a job ends.
func TestOutbox(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("NoEndpointWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		id := b.submit(t)
		_, err := b.River.JobCancel(ctx, id)
		require.NoError(t, err)
		require.Zero(t, jobtest.Count(t, b.Pool, `SELECT count(*) FROM webhook_outbox`))
		jobtest.RequireInvariants(t, b.Pool)
	})

	t.Run("OneDeliveryPerSubscribedEndpoint", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.endpoint(t, "https://a.example.com/", webhooks.EventJobCancelled, webhooks.EventJobSucceeded)
		b.endpoint(t, "https://b.example.com/", webhooks.EventJobCancelled)
		b.endpoint(t, "https://c.example.com/", webhooks.EventJobFailed)
		cancelled, succeeded, failed := b.submit(t), b.submit(t), b.submit(t)
		_, err := b.River.JobCancel(ctx, cancelled)
		require.NoError(t, err)
		b.end(t, succeeded, "completed")
		b.end(t, failed, "discarded")
		ds := b.deliveries(t)
		require.Len(t, ds, 4)
		events := map[string][]string{}
		ids := map[string]string{}
		for _, d := range ds {
			events[d.JobID] = append(events[d.JobID], d.Event)
			require.Equal(t, webhooks.StatePending, d.State)
			require.Regexp(t, `^evt_[0-9a-f]{32}$`, d.EventID)
			if prev, ok := ids[d.JobID]; ok {
				require.Equal(t, prev, d.EventID, "one event, one id for every endpoint")
			}
			ids[d.JobID] = d.EventID
		}
		require.Equal(t, map[string][]string{
			jobs.FormatID(cancelled): {webhooks.EventJobCancelled, webhooks.EventJobCancelled},
			jobs.FormatID(succeeded): {webhooks.EventJobSucceeded},
			jobs.FormatID(failed):    {webhooks.EventJobFailed},
		}, events)
		jobtest.RequireInvariants(t, b.Pool)
	})

	t.Run("RolledBackEndingWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.endpoint(t, "https://a.example.com/", webhooks.EventJobCancelled)
		id := b.submit(t)
		tx, err := b.Pool.Begin(ctx)
		require.NoError(t, err)
		_, err = b.River.JobCancelTx(ctx, tx, id)
		require.NoError(t, err)
		require.Equal(t, 1, jobtest.Count(t, tx, `SELECT count(*) FROM webhook_outbox`), "written with the ending")
		require.NoError(t, tx.Rollback(ctx))
		require.Zero(t, jobtest.Count(t, b.Pool, `SELECT count(*) FROM webhook_outbox`))
		jobtest.RequireInvariants(t, b.Pool)
	})

	t.Run("BatchCompletesOnce", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		_, secret := b.endpoint(t, b.rec.URL, webhooks.EventBatchCompleted)
		uid := jobtest.User(t, b.Pool, 10)
		tx, err := b.Pool.Begin(ctx)
		require.NoError(t, err)
		batch, sub, err := b.Svc.SubmitBatchTx(ctx, tx, uid, []jobs.Item{jobtest.Generate("a"), jobtest.Generate("b"), jobtest.Generate("c"), jobtest.Generate("d")}, jobs.SubmitOpts{})
		require.NoError(t, err)
		require.NoError(t, tx.Commit(ctx))
		// Two deliverers, and the jobs ending at once.
		b.start(t, webhooks.Config{AllowPrivate: true})
		b.start(t, webhooks.Config{AllowPrivate: true, Registerer: prometheus.NewRegistry()})
		var wg sync.WaitGroup
		for _, id := range sub.IDs {
			wg.Go(func() {
				_, err := b.River.JobCancel(ctx, id)
				require.NoError(t, err)
			})
		}
		wg.Wait()
		got := b.rec.Wait(t, "", 1)
		got[0].Verify(t, secret)
		body := bodyOf(t, got[0])
		require.Equal(t, webhooks.EventBatchCompleted, body.Type)
		var seen jobs.Batch
		require.NoError(t, json.Unmarshal(body.Data, &seen))
		want, err := b.Svc.GetBatch(ctx, uid, batch.ID)
		require.NoError(t, err)
		requireJSON(t, want, body.Data, "the batch as GET /v1/batches/{id} shows it")
		require.True(t, seen.Done)
		require.Equal(t, 4, seen.Counts.Cancelled)
		time.Sleep(300 * time.Millisecond) // room for a second one, which must not come
		require.Len(t, b.rec.Requests(""), 1)
		require.Zero(t, jobtest.Count(t, b.Pool, `SELECT count(*) FROM webhook_batch_endings`))
		jobtest.RequireInvariants(t, b.Pool)
	})
}

func TestDeliver(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("SignedOnceWithTheJob", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		_, secret := b.endpoint(t, b.rec.URL+"/hooks", webhooks.EventJobCancelled)
		b.start(t, webhooks.Config{AllowPrivate: true})
		id := b.submit(t)
		_, err := b.River.JobCancel(ctx, id)
		require.NoError(t, err)
		got := b.rec.Wait(t, "", 1)
		r := got[0]
		r.Verify(t, secret)
		require.Equal(t, "application/json", r.Header.Get("Content-Type"))
		require.Regexp(t, `^evt_[0-9a-f]{32}$`, r.Header.Get("webhook-id"))
		body := bodyOf(t, r)
		require.Equal(t, webhooks.EventJobCancelled, body.Type)
		var j jobs.Job
		require.NoError(t, json.Unmarshal(body.Data, &j))
		uid := ""
		require.NoError(t, b.Pool.QueryRow(ctx, `SELECT user_id::text FROM ai_jobs WHERE river_job_id = $1`, id).Scan(&uid))
		want, err := b.Svc.Get(ctx, uid, jobs.FormatID(id), false)
		require.NoError(t, err)
		requireJSON(t, want, body.Data, "the job as GET /v1/jobs/{id} shows it")
		require.Equal(t, jobs.StateCancelled, j.State)
		require.Eventually(t, func() bool { return b.deliveries(t)[0].State == webhooks.StateDelivered }, 10*time.Second, 10*time.Millisecond)
		require.Equal(t, 1.0, b.metric(t, webhooks.EventJobCancelled, "delivered"))
		time.Sleep(200 * time.Millisecond)
		require.Len(t, b.rec.Requests(""), 1)
		jobtest.RequireInvariants(t, b.Pool)
	})

	t.Run("RetriedWithTheSameIDUntil2xx", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		_, secret := b.endpoint(t, b.rec.URL, webhooks.EventJobCancelled)
		b.rec.SetAnswer(func(n int, _ *http.Request) int {
			if n == 0 {
				return http.StatusInternalServerError
			}
			return http.StatusOK
		})
		b.start(t, webhooks.Config{AllowPrivate: true})
		_, err := b.River.JobCancel(ctx, b.submit(t))
		require.NoError(t, err)
		b.rec.Wait(t, "", 1)
		var failed delivery
		require.Eventually(t, func() bool {
			failed = b.deliveries(t)[0]
			return failed.LastStatus != nil
		}, 10*time.Second, 10*time.Millisecond)
		require.Equal(t, 500, *failed.LastStatus)
		require.Equal(t, "HTTP 500", failed.LastError)
		require.LessOrEqual(t, failed.NextAttemptAt.Sub(*failed.LastAttemptAt), 10*time.Second, "the first retry within 10 s")
		got := b.rec.Wait(t, "", 2)
		require.Equal(t, got[0].Header.Get("webhook-id"), got[1].Header.Get("webhook-id"))
		require.Equal(t, got[0].Body, got[1].Body, "the same body byte for byte")
		got[1].Verify(t, secret)
		require.LessOrEqual(t, got[1].At.Sub(got[0].At), 10*time.Second)
		require.Eventually(t, func() bool { return b.deliveries(t)[0].State == webhooks.StateDelivered }, 10*time.Second, 10*time.Millisecond)
		d := b.deliveries(t)[0]
		require.Equal(t, 2, d.Attempts)
		require.Equal(t, 200, *d.LastStatus)
		require.Empty(t, d.LastError)
		time.Sleep(200 * time.Millisecond)
		require.Len(t, b.rec.Requests(""), 2, "nothing after the 2xx")
		require.Equal(t, 1.0, b.metric(t, webhooks.EventJobCancelled, "error"))
		require.Equal(t, 1.0, b.metric(t, webhooks.EventJobCancelled, "delivered"))
	})

	t.Run("InOrderPerJob", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.endpoint(t, b.rec.URL, webhooks.EventJobCancelled, webhooks.EventJobFailed)
		// The first event fails once; the second, already due, waits for it.
		b.rec.SetAnswer(func(n int, _ *http.Request) int {
			if n == 0 {
				return http.StatusServiceUnavailable
			}
			return http.StatusOK
		})
		id := b.submit(t)
		b.end(t, id, "discarded") // run 1 fails
		_, err := b.River.JobRetry(ctx, id)
		require.NoError(t, err)
		_, err = b.River.JobCancel(ctx, id) // run 2 is cancelled
		require.NoError(t, err)
		require.Len(t, b.deliveries(t), 2)
		b.start(t, webhooks.Config{AllowPrivate: true, Workers: 4})
		got := b.rec.Wait(t, "", 3)
		var types []string
		for _, r := range got {
			types = append(types, bodyOf(t, r).Type)
		}
		require.Equal(t, []string{webhooks.EventJobFailed, webhooks.EventJobFailed, webhooks.EventJobCancelled}, types)
		jobtest.RequireInvariants(t, b.Pool)
	})

	t.Run("RedirectNotFollowed", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.endpoint(t, b.rec.URL+"/old", webhooks.EventJobCancelled)
		b.rec.SetAnswer(func(_ int, r *http.Request) int {
			if r.URL.Path == "/old" {
				return http.StatusFound // to /new (the receiver sets Location)
			}
			return http.StatusOK
		})
		b.start(t, webhooks.Config{AllowPrivate: true})
		_, err := b.River.JobCancel(ctx, b.submit(t))
		require.NoError(t, err)
		b.rec.Wait(t, "", 1)
		require.Eventually(t, func() bool { return b.deliveries(t)[0].LastStatus != nil }, 10*time.Second, 10*time.Millisecond)
		d := b.deliveries(t)[0]
		require.Equal(t, 302, *d.LastStatus)
		require.Contains(t, d.LastError, "redirects are not followed")
		require.Equal(t, webhooks.StatePending, d.State)
		time.Sleep(200 * time.Millisecond)
		for _, r := range b.rec.Requests("") {
			require.Equal(t, "/old", r.Path, "the redirect to /new is not followed")
		}
	})

	t.Run("PrivateAddressRefusedAtDial", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		// Registered as if its name had resolved to a public address then:
		// the delivery checks the address it connects to.
		_, err := b.Pool.Exec(ctx, `INSERT INTO webhook_endpoints (url, events, secret) VALUES ($1, '{job.cancelled}', 'whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0')`,
			strings.Replace(b.rec.URL, "127.0.0.1", "localhost", 1))
		require.NoError(t, err)
		b.start(t, webhooks.Config{})
		_, err = b.River.JobCancel(ctx, b.submit(t))
		require.NoError(t, err)
		require.Eventually(t, func() bool { return b.deliveries(t)[0].LastError != "" }, 10*time.Second, 10*time.Millisecond)
		d := b.deliveries(t)[0]
		require.Contains(t, d.LastError, "non-public address")
		require.Contains(t, d.LastError, "loopback")
		require.Nil(t, d.LastStatus)
		require.Empty(t, b.rec.Requests(""))
	})

	t.Run("LeaseHandsOverAfterACrash", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		_, secret := b.endpoint(t, b.rec.URL, webhooks.EventJobCancelled)
		hang := make(chan struct{})
		b.rec.SetAnswer(func(n int, r *http.Request) int {
			if n == 0 {
				select { // the first call never gets an answer
				case <-r.Context().Done():
				case <-hang:
				}
			}
			return http.StatusNoContent
		})
		defer close(hang)
		first, err := webhooks.New(webhooks.Config{Pool: b.Pool, Reader: b.Svc, AllowPrivate: true, Timeout: time.Second, PollInterval: 20 * time.Millisecond})
		require.NoError(t, err)
		first.Start(ctx)
		_, err = b.River.JobCancel(ctx, b.submit(t))
		require.NoError(t, err)
		b.rec.Wait(t, "", 1)
		cut, cancel := context.WithCancel(ctx)
		cancel()
		first.Stop(cut) // the process dies mid-call: nothing recorded
		d := b.deliveries(t)[0]
		require.Equal(t, webhooks.StatePending, d.State)
		require.Equal(t, 1, d.Attempts)
		require.Nil(t, d.LastStatus)
		b.start(t, webhooks.Config{AllowPrivate: true})
		got := b.rec.Wait(t, "", 2)
		got[1].Verify(t, secret)
		require.Equal(t, got[0].Header.Get("webhook-id"), got[1].Header.Get("webhook-id"))
		require.Eventually(t, func() bool { return b.deliveries(t)[0].State == webhooks.StateDelivered }, 20*time.Second, 10*time.Millisecond)
	})

	t.Run("ReplaySendsTheSameEventAgain", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		_, secret := b.endpoint(t, b.rec.URL, webhooks.EventJobCancelled)
		_, err := b.River.JobCancel(ctx, b.submit(t))
		require.NoError(t, err)
		id := b.deliveries(t)[0].ID
		_, err = webhooks.Replay(ctx, b.Pool, id)
		require.Equal(t, jobs.ECONFLICT, jobs.ErrorCode(err), "a pending delivery is on its way")
		_, err = webhooks.Replay(ctx, b.Pool, "999999")
		require.Equal(t, jobs.ENOTFOUND, jobs.ErrorCode(err))
		_, err = webhooks.Replay(ctx, b.Pool, "x")
		require.Equal(t, jobs.ENOTFOUND, jobs.ErrorCode(err))

		b.start(t, webhooks.Config{AllowPrivate: true})
		b.rec.Wait(t, "", 1)
		require.Eventually(t, func() bool { return b.deliveries(t)[0].State == webhooks.StateDelivered }, 10*time.Second, 10*time.Millisecond)
		d, err := webhooks.Replay(ctx, b.Pool, id)
		require.NoError(t, err)
		require.Equal(t, webhooks.StatePending, d.State)
		got := b.rec.Wait(t, "", 2)
		got[1].Verify(t, secret)
		require.Equal(t, got[0].Header.Get("webhook-id"), got[1].Header.Get("webhook-id"))
		require.Equal(t, got[0].Body, got[1].Body)
		require.Eventually(t, func() bool { return b.deliveries(t)[0].State == webhooks.StateDelivered }, 10*time.Second, 10*time.Millisecond)
	})

	t.Run("GivenUpAfterTheWindow", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.endpoint(t, b.rec.URL, webhooks.EventJobCancelled)
		b.rec.SetAnswer(func(int, *http.Request) int { return http.StatusBadGateway })
		_, err := b.River.JobCancel(ctx, b.submit(t))
		require.NoError(t, err)
		_, err = b.Pool.Exec(ctx, `UPDATE webhook_outbox SET retry_until = now() - interval '1 second', created_at = now() - interval '1 day'`)
		require.NoError(t, err)
		b.start(t, webhooks.Config{AllowPrivate: true})
		require.Eventually(t, func() bool { return b.deliveries(t)[0].State == webhooks.StateFailed }, 10*time.Second, 10*time.Millisecond)
		require.Equal(t, 1.0, b.metric(t, webhooks.EventJobCancelled, "failed"))
		time.Sleep(200 * time.Millisecond)
		require.Len(t, b.rec.Requests(""), 1)
	})

	t.Run("NoSecretLeaks", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		// A receiver failing every way, and a URL with a token of its own.
		_, secret := b.endpoint(t, b.rec.URL+"/hooks?token=receiver-token-0123", webhooks.EventJobCancelled)
		b.rec.SetAnswer(func(int, *http.Request) int { return http.StatusInternalServerError })
		_, badSecret := b.endpoint(t, "http://127.0.0.1:1/closed?token=receiver-token-0123", webhooks.EventJobCancelled)
		b.start(t, webhooks.Config{AllowPrivate: true})
		_, err := b.River.JobCancel(ctx, b.submit(t))
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			ds := b.deliveries(t)
			return ds[0].LastError != "" && ds[1].LastError != ""
		}, 10*time.Second, 10*time.Millisecond)
		logs := b.logs.String()
		require.Contains(t, logs, "webhook delivery failed")
		for _, s := range []string{secret, badSecret, strings.TrimPrefix(secret, "whsec_"), "receiver-token-0123"} {
			require.NotContains(t, logs, s)
			for _, d := range b.deliveries(t) {
				require.NotContains(t, d.LastError, s)
			}
		}
		fams, err := b.reg.Gather()
		require.NoError(t, err)
		for _, f := range fams {
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					require.NotContains(t, l.GetValue(), "whsec_")
					require.NotContains(t, l.GetValue(), "token")
				}
			}
		}
	})
}

// requireJSON fails unless got is v as JSON.
func requireJSON(t *testing.T, v any, got []byte, msg string) {
	t.Helper()
	want, err := json.Marshal(v)
	require.NoError(t, err)
	require.JSONEq(t, string(want), string(got), msg)
}
