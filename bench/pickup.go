package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aiqueue/aiqueue/jobs"
)

// PickupResult is one pickup measurement.
type PickupResult struct {
	Jobs int `json:"jobs"`
	// CommitToStart is from the commit of the submit transaction
	// (pg_xact_commit_timestamp of its ledger entry) to River's fetch of the
	// job (attempted_at), both on the database's clock.
	CommitToStart Summary `json:"commit_to_start"`
	// RequestToStart is from the client sending POST /v1/jobs to the fetch.
	RequestToStart Summary `json:"request_to_start"`
	// Submit is the latency of POST /v1/jobs itself.
	Submit Summary `json:"submit"`
	// Retried counts jobs fetched more than once (left out of the figures).
	Retried int `json:"retried"`
	Errors  int `json:"errors"`
	// NormalWaiting is the number of jobs waiting in normal before and after.
	NormalWaitingBefore int `json:"normal_waiting_before"`
	NormalWaitingAfter  int `json:"normal_waiting_after"`
}

// runPickup measures how soon an urgent job is picked up after its commit,
// with an empty queue and with a backlog waiting in normal (worked by few
// workers, so it stays there).
func (e *env) runPickup(ctx context.Context) error {
	cfg := e.cfg
	dbURL, pool, err := e.newDB(ctx, "pickup", 8)
	if err != nil {
		return err
	}
	defer pool.Close()
	e.newFal()
	srv, err := e.startServer(ctx, "pickup", dbURL, map[string]string{"QUEUE_NORMAL_WORKERS": strconv.Itoa(cfg.PickupNormalWorkers)})
	if err != nil {
		return err
	}
	defer e.stopServer(srv)
	client := newAPIClient(srv.URL, 64)
	defer client.close()

	// Warm up connections and the worker.
	for range 5 {
		u := e.users[rand.IntN(len(e.users))]
		_, _, _ = client.do(ctx, http.MethodPost, "/v1/jobs", u.Token, submitBody)
	}
	time.Sleep(200 * time.Millisecond)

	e.logf("pickup with an empty queue: %d urgent jobs at %.0f/s", cfg.PickupJobs, cfg.PickupRate)
	e.resetStatements(ctx, pool)
	empty, err := e.pickupRun(ctx, pool, e.submitHTTP(client), httpCommits)
	if err != nil {
		return err
	}

	e.logf("inserting a backlog of %d jobs in normal", cfg.PickupBacklog)
	if err := e.insertBacklog(ctx, pool, cfg.PickupBacklog, jobs.QueueNormal); err != nil {
		return err
	}
	// A backlog that has waited a while has been vacuumed: do it off the
	// clock rather than let autovacuum (and the GIN pending-list flush of
	// the args index) run during the measurement.
	if _, err := pool.Exec(ctx, `VACUUM (ANALYZE) river_job`); err != nil {
		return err
	}
	e.logf("pickup with the backlog: %d urgent jobs at %.0f/s", cfg.PickupJobs, cfg.PickupRate)
	stopProfile := e.profile(ctx, srv, "pickup", time.Duration(float64(cfg.PickupJobs)/cfg.PickupRate*float64(time.Second)))
	waits := e.sampleWaits(ctx, pool)
	backlog, err := e.pickupRun(ctx, pool, e.submitHTTP(client), httpCommits)
	e.recordWaits("pickup", waits.finish())
	stopProfile()
	if err != nil {
		return err
	}
	e.topStatements(ctx, pool, "pickup")
	e.stopServer(srv)

	e.logf("raw River pickup with the backlog: %d no-op urgent jobs at %.0f/s", cfg.PickupJobs, cfg.PickupRate)
	raw, err := e.rawPickupRun(ctx, pool)
	if err != nil {
		return err
	}

	e.rep.Details["pickup"] = map[string]any{"empty": empty, "backlog": backlog, "raw_river_backlog": raw}
	pp := func(s Summary) string { return fmt.Sprintf("%.2f/%.2f ms", s.P50, s.P99) }
	e.rep.add(Row{Scenario: ScenarioPickup,
		Figure: fmt.Sprintf("urgent pickup p50/p99, commit -> fetch, %d waiting in normal", backlog.NormalWaitingBefore),
		Value:  backlog.CommitToStart.P99, Unit: "ms", Display: pp(backlog.CommitToStart),
		Reference: "same, empty queue", RefValue: ptr(empty.CommitToStart.P99), RefDisplay: pp(empty.CommitToStart),
		Target: "p99 <= 5 ms", Pass: ptr(backlog.CommitToStart.N > 0 && backlog.CommitToStart.P99 <= 5), Note: "ratio of p99"})
	e.rep.add(Row{Scenario: ScenarioPickup,
		Figure: fmt.Sprintf("urgent pickup p50/p99, commit -> fetch, %d waiting in normal", backlog.NormalWaitingBefore),
		Value:  backlog.CommitToStart.P99, Unit: "ms", Display: pp(backlog.CommitToStart),
		Reference: "raw River, same backlog, urgent's fetch settings", RefValue: ptr(raw.CommitToStart.P99), RefDisplay: pp(raw.CommitToStart),
		Note: "ratio of p99"})
	e.rep.add(Row{Scenario: ScenarioPickup, Figure: "urgent pickup p50/p99, HTTP request sent -> fetch, with the backlog",
		Value: backlog.RequestToStart.P99, Unit: "ms", Display: pp(backlog.RequestToStart),
		Reference: "same, empty queue", RefValue: ptr(empty.RequestToStart.P99), RefDisplay: pp(empty.RequestToStart)})
	e.rep.note("pickup: %d jobs in normal before the urgent jobs, %d after (normal worked by %d worker(s))",
		backlog.NormalWaitingBefore, backlog.NormalWaitingAfter, cfg.PickupNormalWorkers)
	if err := e.checkInvariants(ctx, pool, ScenarioPickup); err != nil {
		return err
	}
	failed := empty.Errors + backlog.Errors + raw.Errors
	return errIf(failed > 0, "%d urgent submits failed", failed)
}

// sentJob is one job a pickup run submitted.
type sentJob struct {
	id  int64
	xid int64     // the inserting transaction (raw River runs)
	t0  time.Time // when its HTTP request was sent (HTTP runs)
}

// httpCommits reads, for jobs submitted through HTTP, when the submit
// transaction committed: the commit timestamp of the job's reserve entry.
const httpCommits = `
SELECT j.id, j.attempt, j.attempted_at, pg_xact_commit_timestamp(e.xmin)
  FROM unnest($1::bigint[], $2::bigint[]) AS t (id, xid)
  JOIN river_job j ON j.id = t.id
  JOIN credit_entries e ON e.job_id = j.id AND e.kind = 'reserve'`

// rawCommits reads, for raw River jobs, when their inserting transaction
// (t.xid) committed.
const rawCommits = `
SELECT j.id, j.attempt, j.attempted_at, pg_xact_commit_timestamp((t.xid % 4294967296)::text::xid)
  FROM unnest($1::bigint[], $2::bigint[]) AS t (id, xid)
  JOIN river_job j ON j.id = t.id`

// pickupRun submits PickupJobs jobs with submit, at PickupRate with
// Poisson arrivals, waits until River fetched every one, and reads commit
// -> fetch with commits (httpCommits or rawCommits).
func (e *env) pickupRun(ctx context.Context, pool *pgxpool.Pool, submit func(ctx context.Context) (sentJob, error), commits string) (PickupResult, error) {
	cfg := e.cfg
	var res PickupResult
	waiting := func() int {
		n, _ := queryInt(ctx, pool, `SELECT count(*) FROM river_job WHERE queue = 'normal' AND state IN ('available', 'pending')`)
		return n
	}
	res.NormalWaitingBefore = waiting()

	out := make([]sentJob, cfg.PickupJobs)
	var submitRec Recorder
	var errs errorCounter
	var wg sync.WaitGroup
	next := time.Now()
	for i := range cfg.PickupJobs {
		next = next.Add(time.Duration(rand.ExpFloat64() / cfg.PickupRate * float64(time.Second)))
		time.Sleep(time.Until(next))
		wg.Go(func() {
			t0 := time.Now()
			s, err := submit(ctx)
			if err != nil {
				errs.add(err)
				return
			}
			submitRec.Add(time.Since(t0))
			out[i] = s
		})
	}
	wg.Wait()
	res.Errors, _ = errs.count()
	res.Submit = submitRec.Summary()
	ids, xids := make([]int64, 0, len(out)), make([]int64, 0, len(out))
	sentAt := map[int64]time.Time{}
	for _, s := range out {
		if s.id != 0 {
			ids = append(ids, s.id)
			xids = append(xids, s.xid)
			sentAt[s.id] = s.t0
		}
	}
	if err := waitFor(ctx, time.Minute, func() (bool, error) {
		n, err := queryInt(ctx, pool, `SELECT count(*) FROM river_job WHERE id = ANY($1) AND attempted_at IS NULL`, ids)
		return n == 0, err
	}); err != nil {
		return res, fmt.Errorf("urgent jobs not all fetched: %w", err)
	}
	res.NormalWaitingAfter = waiting()

	rows, err := pool.Query(ctx, commits, ids, xids)
	if err != nil {
		return res, err
	}
	var commitToStart, requestToStart []time.Duration
	for rows.Next() {
		var id int64
		var attempt int
		var attemptedAt, committedAt time.Time
		if err := rows.Scan(&id, &attempt, &attemptedAt, &committedAt); err != nil {
			rows.Close()
			return res, err
		}
		if attempt != 1 {
			res.Retried++
			continue
		}
		commitToStart = append(commitToStart, max(attemptedAt.Sub(committedAt), 0))
		if t0 := sentAt[id]; !t0.IsZero() {
			requestToStart = append(requestToStart, max(attemptedAt.Sub(t0), 0))
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return res, err
	}
	res.Jobs = len(commitToStart)
	res.CommitToStart = Summarize(commitToStart)
	res.RequestToStart = Summarize(requestToStart)
	return res, nil
}

// submitHTTP submits one urgent job through POST /v1/jobs as a random user.
func (e *env) submitHTTP(client *apiClient) func(ctx context.Context) (sentJob, error) {
	return func(ctx context.Context) (sentJob, error) {
		u := e.users[rand.IntN(len(e.users))]
		t0 := time.Now()
		status, body, err := client.do(ctx, http.MethodPost, "/v1/jobs", u.Token, submitBody)
		if err != nil {
			return sentJob{}, err
		}
		if status != http.StatusAccepted {
			return sentJob{}, &statusError{"POST /v1/jobs", status, string(body)}
		}
		var j struct{ ID string }
		if err := json.Unmarshal(body, &j); err != nil {
			return sentJob{}, err
		}
		id, ok := jobs.JobID(j.ID)
		if !ok {
			return sentJob{}, fmt.Errorf("bad job id %q", j.ID)
		}
		return sentJob{id: id, t0: t0}, nil
	}
}

// rawPickupRun is the pickup reference: raw River in this process, with
// the urgent queue's fetch settings (dispatch.QueueLimits.QueueConfigs) and a
// client FetchCooldown of as much (River's own insert notification, at
// most one per cooldown), works no-op jobs inserted one per transaction
// with InsertTx at PickupRate (Poisson) into urgent, while the backlog
// still waits in normal (which it does not work) and no server runs.
func (e *env) rawPickupRun(ctx context.Context, pool *pgxpool.Pool) (PickupResult, error) {
	urgent := e.cfg.Limits.QueueConfigs()[jobs.QueueUrgent]
	rc, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Workers:       noopWorkers(),
		FetchCooldown: urgent.FetchCooldown,
		Queues:        map[string]river.QueueConfig{jobs.QueueUrgent: urgent},
	})
	if err != nil {
		return PickupResult{}, err
	}
	if err := rc.Start(ctx); err != nil {
		return PickupResult{}, err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = rc.Stop(sctx)
	}()
	insert := func(ctx context.Context) (sentJob, error) {
		u := e.users[rand.IntN(len(e.users))]
		var s sentJob
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			r, err := rc.InsertTx(ctx, tx, sampleArgs(u.ID), &river.InsertOpts{Queue: jobs.QueueUrgent})
			if err != nil {
				return err
			}
			s.id = r.Job.ID
			return tx.QueryRow(ctx, `SELECT txid_current()`).Scan(&s.xid)
		})
		return s, err
	}
	return e.pickupRun(ctx, pool, insert, rawCommits)
}

// insertBacklog inserts n generate jobs into queue through jobs.Service (a
// reservation per job, 100 jobs per transaction), from an insert-only River
// client in this process.
func (e *env) insertBacklog(ctx context.Context, pool *pgxpool.Pool, n int, queue string) error {
	rc, err := river.NewClient(riverpgxv5.New(pool), &river.Config{SkipUnknownJobCheck: true})
	if err != nil {
		return err
	}
	svc := jobs.NewService(jobs.Config{Pool: pool, River: rc, Catalog: jobs.DefaultCatalog()})
	const perTx = 100
	batches := (n + perTx - 1) / perTx
	res := closedLoop(ctx, 4, batches, func(ctx context.Context, b int) error {
		size := min(perTx, n-b*perTx)
		items := make([]jobs.Item, size)
		for i := range items {
			items[i] = jobs.Item{Operation: "generate", Params: json.RawMessage(`{"prompt":"a gold ring on marble"}`)}
		}
		u := e.users[rand.IntN(len(e.users))]
		_, err := svc.Submit(ctx, u.ID, items, jobs.SubmitOpts{Priority: queue})
		return err
	})
	if res.Errors > 0 {
		return fmt.Errorf("backlog: %d of %d inserts failed: %v", res.Errors, batches, res.ErrorKinds)
	}
	return nil
}

// waitFor polls cond every 50ms until it is true, it fails, or timeout.
func waitFor(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	return waitForEvery(ctx, timeout, 50*time.Millisecond, cond)
}

// waitForEvery is waitFor asking cond every interval.
func waitForEvery(ctx context.Context, timeout, every time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still not done after %s", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
}
