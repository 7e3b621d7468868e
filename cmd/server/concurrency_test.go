package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// watchAvailable samples the user's available credits from the
// credit_balances view until stop is closed, and returns the lowest value
// seen (and how many samples it took) through the returned func.
func watchAvailable(t *testing.T, m *Main, uid string, stop <-chan struct{}) func() (lowest int64, samples int) {
	t.Helper()
	// Its own connection, so it samples while the pool is busy.
	conn, err := pgx.Connect(context.Background(), m.Config.DatabaseURL)
	require.NoError(t, err)
	var (
		wg      sync.WaitGroup
		low     = int64(1 << 62)
		n       int
		lastErr error
	)
	wg.Go(func() {
		defer conn.Close(context.Background())
		for {
			var avail int64
			err := conn.QueryRow(context.Background(), `SELECT available FROM credit_balances WHERE user_id = $1`, uid).Scan(&avail)
			if err != nil {
				lastErr = err
			} else {
				low = min(low, avail)
				n++
			}
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	})
	return func() (int64, int) {
		wg.Wait()
		require.NoError(t, lastErr)
		return low, n
	}
}

func tableCounts(t *testing.T, m *Main) (jobsN, holds, entries int) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, m.Pool().QueryRow(ctx, `
SELECT (SELECT count(*) FROM river_job), (SELECT count(*) FROM credit_holds), (SELECT count(*) FROM credit_entries)`).
		Scan(&jobsN, &holds, &entries))
	return jobsN, holds, entries
}

// TestConcurrentSubmitsNeverOverdraw: 200 submits of a 1-credit job at once
// by a user holding 50 credits, through the real HTTP server. The user's
// submissions queue on the account row, one commit after the other: on a
// loaded machine the last ones may pass the API's database timeout and be
// answered 503 (nothing written). Each submit is sent as a client should:
// with its own Idempotency-Key, again after a 503 (or a 409 while the key's
// earlier request is still in flight), until it gets its final answer.
func TestConcurrentSubmitsNeverOverdraw(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, withEnv(noLimits, map[string]string{"ROLE": "api"})) // nothing works the jobs
	c, uid := newUser(t, m, 50)

	const n = 200
	type answer struct {
		status    int
		needed    int64
		available int64
		err       error
	}
	answers := make(chan answer, n)
	start := make(chan struct{})
	stop := make(chan struct{})
	lowest := watchAvailable(t, m, uid, stop)
	var wg sync.WaitGroup
	var retried atomic.Int64
	for i := range n {
		wg.Go(func() {
			<-start
			key := fmt.Sprintf("Idempotency-Key: overdraw-%d", i)
			giveUp := time.Now().Add(2 * time.Minute)
			for {
				var body struct {
					Needed    int64 `json:"needed"`
					Available int64 `json:"available"`
				}
				status, err := c.try(http.MethodPost, "/v1/jobs", map[string]any{"operation": "generate", "params": map[string]any{"prompt": "a ring"}}, &body, key)
				if err == nil && (status == http.StatusServiceUnavailable || status == http.StatusConflict) && time.Now().Before(giveUp) {
					retried.Add(1)
					time.Sleep(time.Duration(50+rand.IntN(150)) * time.Millisecond)
					continue
				}
				answers <- answer{status, body.Needed, body.Available, err}
				return
			}
		})
	}
	close(start)
	wg.Wait()
	close(stop)
	close(answers)

	statuses := map[int]int{}
	for a := range answers {
		require.NoError(t, a.err)
		statuses[a.status]++
		if a.status == http.StatusPaymentRequired {
			require.Equal(t, int64(1), a.needed)
			require.Equal(t, int64(0), a.available)
		}
	}
	require.Equal(t, map[int]int{http.StatusAccepted: 50, http.StatusPaymentRequired: 150}, statuses)
	low, samples := lowest() // never below 0: the column's CHECK; the counts above are the test
	require.Positive(t, samples)
	t.Logf("available sampled %d times during the run, lowest %d; %d answers of 503 or 409 sent again", samples, low, retried.Load())

	requireCredits(t, c, 50, 50)
	// Nothing else was written: 50 jobs, 50 holds, the grant and 50 reserves.
	jobsN, holds, entries := tableCounts(t, m)
	require.Equal(t, 50, jobsN)
	require.Equal(t, 50, holds)
	require.Equal(t, 51, entries)
	requireInvariants(t, m)
}

// TestConcurrentGrantSubmitCancelComplete runs grants, submits, cancels and
// the workers completing jobs on one account at the same time.
func TestConcurrentGrantSubmitCancelComplete(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, noLimits)
	admin := newAdmin(t, m)
	c, uid := newUser(t, m, 10)

	const (
		grants       = 20 // of 2 credits each, every one sent twice with its key
		submitters   = 3
		perSubmitter = 30
	)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		statuses = map[string]int{}
		errs     []error
		accepted = make(chan string, submitters*perSubmitter)
	)
	record := func(what string, status int, err error) {
		mu.Lock()
		defer mu.Unlock()
		statuses[fmt.Sprintf("%s %d", what, status)]++
		if err != nil {
			errs = append(errs, err)
		}
	}
	start := make(chan struct{})
	stop := make(chan struct{})
	lowest := watchAvailable(t, m, uid, stop)

	for i := range grants {
		for range 2 {
			wg.Go(func() {
				<-start
				// 409 means the other copy is in flight, 503 that the
				// database was too slow for this busy machine: retry with
				// the key, as a client does.
				for range 100 {
					status, err := admin.try(http.MethodPost, "/v1/admin/credits/grants",
						map[string]any{"user_id": uid, "amount": 2, "reason": "top-up"}, nil,
						fmt.Sprintf("Idempotency-Key: top-up-%d", i))
					if (status == http.StatusConflict || status == http.StatusServiceUnavailable) && err == nil {
						time.Sleep(10 * time.Millisecond)
						continue
					}
					record("grant", status, err)
					return
				}
				record("grant gave up", 0, nil)
			})
		}
	}
	var submitting sync.WaitGroup
	for range submitters {
		submitting.Go(func() {
			<-start
			for range perSubmitter {
				var j jobs.Job
				status, err := c.try(http.MethodPost, "/v1/jobs", map[string]any{"operation": "generate", "params": map[string]any{"prompt": "a ring"}}, &j)
				record("submit", status, err)
				if status == http.StatusAccepted {
					accepted <- j.ID
				}
			}
		})
	}
	wg.Go(func() {
		<-start
		i := 0
		for id := range accepted {
			i++
			if i%2 == 0 {
				continue // let the workers finish this one
			}
			status, err := c.try(http.MethodPost, "/v1/jobs/"+id+"/cancel", nil, nil)
			for range 10 { // a cancel is safe to send again
				if status != http.StatusServiceUnavailable || err != nil {
					break
				}
				time.Sleep(50 * time.Millisecond)
				status, err = c.try(http.MethodPost, "/v1/jobs/"+id+"/cancel", nil, nil)
			}
			record("cancel", status, err)
		}
	})
	close(start)
	submitting.Wait()
	close(accepted)
	wg.Wait()

	// Wait (bounded) until every job has ended.
	require.Eventually(t, func() bool {
		var open int
		require.NoError(t, m.Pool().QueryRow(context.Background(),
			`SELECT count(*) FROM river_job WHERE kind = 'ai' AND state NOT IN ('completed', 'discarded', 'cancelled')`).Scan(&open))
		return open == 0
	}, 60*time.Second, 50*time.Millisecond)
	close(stop)
	low, samples := lowest()

	require.Empty(t, errs)
	t.Logf("answers: %v; available sampled %d times, lowest %d", statuses, samples, low)
	// Each key's second copy replays the first answer: 201 both times, one grant.
	require.Equal(t, 2*grants, statuses["grant 201"])
	// A 503 (a database too slow for this busy machine) wrote nothing.
	require.Equal(t, submitters*perSubmitter, statuses["submit 202"]+statuses["submit 402"]+statuses["submit 503"])
	require.Positive(t, statuses["submit 202"])
	require.Equal(t, statuses["submit 202"]/2+statuses["submit 202"]%2, statuses["cancel 200"]+statuses["cancel 409"])

	// Every accepted job ended charged (succeeded) or refunded (cancelled),
	// and the account adds up.
	var succeeded, refunded, jobsN int64
	require.NoError(t, m.Pool().QueryRow(context.Background(), `
SELECT count(*) FILTER (WHERE state = 'succeeded' AND credit_state = 'charged'),
       count(*) FILTER (WHERE state = 'cancelled' AND credit_state = 'refunded'),
       count(*)
  FROM ai_jobs WHERE user_id = $1`, uid).Scan(&succeeded, &refunded, &jobsN))
	require.Equal(t, int64(statuses["submit 202"]), jobsN)
	require.Equal(t, jobsN, succeeded+refunded)
	require.Positive(t, succeeded)
	var bal credits
	require.Equal(t, http.StatusOK, c.do(http.MethodGet, "/v1/credits", nil, &bal).StatusCode)
	require.Equal(t, ledger.Balance{Balance: 10 + 2*grants - succeeded, Available: 10 + 2*grants - succeeded},
		ledger.Balance{Balance: bal.Balance, Reserved: bal.Reserved, Available: bal.Available})
	requireInvariants(t, m)
}
