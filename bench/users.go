package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/jobs"
)

// studioActions are the quick actions of the studio: urgent image jobs.
var studioActions = [][]byte{
	[]byte(`{"operation":"edit","params":{"prompt":"make the gold warmer","image_urls":["https://example.com/ring.png"]}}`),
	[]byte(`{"operation":"generate","params":{"prompt":"a gold ring on white marble"}}`),
	[]byte(`{"operation":"upscale","params":{"image_url":"https://example.com/ring.png"}}`),
	[]byte(`{"operation":"remove-bg","params":{"image_url":"https://example.com/ring.png"}}`),
	[]byte(`{"operation":"gemstone","params":{"prompt":"a deep blue sapphire","image_urls":["https://example.com/ring.png"]}}`),
	[]byte(`{"operation":"metal-polish","params":{"prompt":"mirror polish","image_urls":["https://example.com/ring.png"]}}`),
	[]byte(`{"operation":"natural-light","params":{"prompt":"soft morning light","image_url":"https://example.com/ring.png"}}`),
}

const batchItem = `{"operation":"generate","params":{"prompt":"catalog shot of a gold ring"}}`

// UsersResult is the outcome of the many-users scenario.
type UsersResult struct {
	Users      int     `json:"users"`
	DurationS  float64 `json:"duration_s"`
	StatusMode string  `json:"status_mode"`
	Actions    int64   `json:"actions"`
	// Batches were sent with POST /v1/batches; BatchFallbacks were sent as
	// single jobs because the server has no batches.
	Batches        int64 `json:"batches"`
	BatchFallbacks int64 `json:"batch_fallbacks"`
	JobsSubmitted  int64 `json:"jobs_submitted"`
	// Submit is every POST that creates jobs; SubmitSingle and SubmitBatch
	// split it.
	Submit       Summary `json:"submit"`
	SubmitSingle Summary `json:"submit_single"`
	SubmitBatch  Summary `json:"submit_batch"`
	SubmitRate   float64 `json:"submit_rate_per_s"`
	StatusCalls  int64   `json:"status_calls"`
	// EndToEnd is from sending a studio action to seeing its job final.
	EndToEnd    Summary        `json:"end_to_end"`
	FollowedOut int64          `json:"followed_out"`
	Errors      int            `json:"errors"`
	ErrorKinds  map[string]int `json:"error_kinds,omitempty"`
	RSSMaxMB    float64        `json:"rss_max_mb"`
	HWMMB       float64        `json:"hwm_mb"`
	JobsByState map[string]int `json:"jobs_by_state"`
	FalSubmits  int            `json:"fal_submits"`
}

type usersRun struct {
	e        *env
	client   *apiClient
	caps     Capabilities
	res      UsersResult
	submit   Recorder
	single   Recorder
	batch    Recorder
	e2e      Recorder
	errs     errorCounter
	status   atomic.Int64
	actions  atomic.Int64
	batches  atomic.Int64
	fallback atomic.Int64
	jobs     atomic.Int64
	timedOut atomic.Int64
}

// runUsers runs Users studio users for UsersDuration against a server with
// the default worker limits.
func (e *env) runUsers(ctx context.Context) error {
	cfg := e.cfg
	dbURL, pool, err := e.newDB(ctx, "users", 8)
	if err != nil {
		return err
	}
	defer pool.Close()
	sim := e.newFal()
	srv, err := e.startServer(ctx, "users", dbURL, nil)
	if err != nil {
		return err
	}
	defer e.stopServer(srv)
	client := newAPIClient(srv.URL, cfg.Users+16)
	defer client.close()

	caps, err := detectCapabilities(ctx, client)
	if err != nil {
		return err
	}
	caps.EnvKnown, _ = binaryKnows(e.bin, "RATE_LIMIT_PER_MINUTE", "USER_MAX_PENDING", "QUEUE_MAX_PENDING", "PPROF_ADDR")
	e.rep.Capabilities = &caps
	r := &usersRun{e: e, client: client, caps: caps}
	r.res.Users, r.res.StatusMode = cfg.Users, caps.StatusMode()
	if !caps.Batches {
		e.rep.note("users: the server has no POST /v1/batches; batch actions were sent as single jobs, one POST each")
	}
	if !caps.SSE && !caps.LongPoll {
		e.rep.note("users: the server has neither SSE nor long poll; users polled GET /v1/jobs/{id} every 500 ms")
	} else if !caps.SSE {
		e.rep.note("users: the server has no SSE; users followed jobs by long poll")
	}

	e.logf("%d users for %s, status by %s", cfg.Users, cfg.UsersDuration, caps.StatusMode())
	e.resetStatements(ctx, pool)
	stopProfile := e.profile(ctx, srv, "users", cfg.UsersDuration)
	memDone := make(chan struct{})
	var rssMax atomic.Int64
	go func() {
		for {
			if rss, _, err := srv.Memory(); err == nil && rss > rssMax.Load() {
				rssMax.Store(rss)
			}
			select {
			case <-memDone:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	waits := e.sampleWaits(ctx, pool)
	begin := time.Now()
	deadline := begin.Add(cfg.UsersDuration)
	var wg sync.WaitGroup
	for i := range cfg.Users {
		u := e.users[i%len(e.users)]
		wg.Go(func() { r.user(ctx, u, deadline) })
	}
	wg.Wait()
	elapsed := time.Since(begin)
	e.recordWaits("users", waits.finish())
	stopProfile()
	close(memDone)
	if _, hwm, err := srv.Memory(); err == nil {
		r.res.HWMMB = mb(hwm)
	}
	r.res.RSSMaxMB = mb(rssMax.Load())
	e.topStatements(ctx, pool, "users")

	// Every job must end; then the books must balance.
	if err := waitFor(ctx, 2*time.Minute, func() (bool, error) {
		n, err := queryInt(ctx, pool, `SELECT count(*) FROM river_job WHERE kind = 'ai' AND state NOT IN ('completed', 'discarded', 'cancelled')`)
		return n == 0, err
	}); err != nil {
		e.rep.note("users: jobs still unfinished after the run: %v", err)
	}
	r.res.JobsByState, err = jobsByState(ctx, pool)
	if err != nil {
		return err
	}
	r.finish(elapsed)
	r.res.FalSubmits = sim.Stats().Submits
	res := r.res
	e.rep.Details["users"] = res

	fig := fmt.Sprintf("%d users for %s: submit p99 (%d submits, %.0f/s)", res.Users, cfg.UsersDuration, res.Submit.N, res.SubmitRate)
	e.rep.add(Row{Scenario: ScenarioUsers, Figure: fig, Value: res.Submit.P99, Unit: "ms", Target: "< 50 ms", Pass: ptr(res.Submit.N > 0 && res.Submit.P99 < 50)})
	lat := func(s Summary) string { return fmt.Sprintf("%.1f/%.1f/%.1f ms", s.P50, s.P95, s.P99) }
	e.rep.add(Row{Scenario: ScenarioUsers, Figure: "submit p50/p95/p99, single jobs", Value: res.SubmitSingle.P99, Unit: "ms", Display: lat(res.SubmitSingle)})
	if res.SubmitBatch.N > 0 {
		e.rep.add(Row{Scenario: ScenarioUsers, Figure: "submit p50/p95/p99, batches of 3-8", Value: res.SubmitBatch.P99, Unit: "ms", Display: lat(res.SubmitBatch)})
	}
	e.rep.add(Row{Scenario: ScenarioUsers, Figure: "errors (any non-2xx or transport error)", Value: float64(res.Errors), Target: "0", Pass: ptr(res.Errors == 0)})
	e.rep.add(Row{Scenario: ScenarioUsers, Figure: "server RSS peak (VmHWM)", Value: res.HWMMB, Unit: "MB", Target: "< 150 MB", Pass: ptr(res.HWMMB > 0 && res.HWMMB < 150)})
	e.rep.add(Row{Scenario: ScenarioUsers, Figure: fmt.Sprintf("studio action -> final state seen p50/p99 (status by %s)", res.StatusMode),
		Value: res.EndToEnd.P99, Unit: "ms", Display: fmt.Sprintf("%.0f/%.0f ms", res.EndToEnd.P50, res.EndToEnd.P99)})
	if res.Errors > 0 {
		e.rep.note("users: errors %v", res.ErrorKinds)
	}
	e.rep.note("users: %d jobs submitted, by state at the end %v, %d fal requests", res.JobsSubmitted, res.JobsByState, res.FalSubmits)
	return e.checkInvariants(ctx, pool, ScenarioUsers)
}

func (r *usersRun) finish(elapsed time.Duration) {
	r.res.DurationS = elapsed.Seconds()
	r.res.Actions = r.actions.Load()
	r.res.Batches = r.batches.Load()
	r.res.BatchFallbacks = r.fallback.Load()
	r.res.JobsSubmitted = r.jobs.Load()
	r.res.Submit = r.submit.Summary()
	r.res.SubmitSingle = r.single.Summary()
	r.res.SubmitBatch = r.batch.Summary()
	r.res.SubmitRate = float64(r.res.Submit.N) / elapsed.Seconds()
	r.res.StatusCalls = r.status.Load()
	r.res.EndToEnd = r.e2e.Summary()
	r.res.FollowedOut = r.timedOut.Load()
	r.res.Errors, r.res.ErrorKinds = r.errs.count()
}

func (r *usersRun) user(ctx context.Context, u user, deadline time.Time) {
	cfg := r.e.cfg
	think := func() time.Duration {
		return cfg.ThinkMin + time.Duration(rand.Int64N(int64(cfg.ThinkMax-cfg.ThinkMin)+1))
	}
	// Users arrive spread over the first think time.
	if !sleepUntil(ctx, time.Now().Add(time.Duration(rand.Int64N(int64(cfg.ThinkMax)))), deadline) {
		return
	}
	for time.Now().Before(deadline) && ctx.Err() == nil {
		r.actions.Add(1)
		if rand.Float64() < cfg.BatchShare {
			r.batchAction(ctx, u)
		} else {
			r.singleAction(ctx, u, studioActions[rand.IntN(len(studioActions))], true)
		}
		if !sleepUntil(ctx, time.Now().Add(think()), deadline) {
			return
		}
	}
}

// sleepUntil sleeps until t and reports whether t is before deadline.
func sleepUntil(ctx context.Context, t, deadline time.Time) bool {
	if !t.Before(deadline) {
		return false
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(time.Until(t)):
		return true
	}
}

// singleAction submits one job and, when follow, follows it to its end.
func (r *usersRun) singleAction(ctx context.Context, u user, body []byte, follow bool) {
	t0 := time.Now()
	status, data, err := r.client.do(ctx, http.MethodPost, "/v1/jobs", u.Token, body)
	if err == nil && status != http.StatusAccepted {
		err = &statusError{"POST /v1/jobs", status, string(data)}
	}
	if err != nil {
		r.errs.add(err)
		return
	}
	d := time.Since(t0)
	r.submit.Add(d)
	r.single.Add(d)
	r.jobs.Add(1)
	if !follow {
		return
	}
	var j struct{ ID string }
	if err := json.Unmarshal(data, &j); err != nil {
		r.errs.add(err)
		return
	}
	if r.follow(ctx, u, j.ID) {
		r.e2e.Add(time.Since(t0))
	}
}

func (r *usersRun) batchAction(ctx context.Context, u user) {
	n := 3 + rand.IntN(6)
	if !r.caps.Batches {
		r.fallback.Add(1)
		body := []byte(strings.Replace(batchItem, `}}`, `},"priority":"normal"}`, 1))
		for range n {
			r.singleAction(ctx, u, body, false)
		}
		return
	}
	items := strings.Repeat(batchItem+",", n)
	body := []byte(`{"priority":"normal","items":[` + items[:len(items)-1] + `]}`)
	t0 := time.Now()
	status, data, err := r.client.do(ctx, http.MethodPost, "/v1/batches", u.Token, body)
	if err == nil && (status < 200 || status > 299) {
		err = &statusError{"POST /v1/batches", status, string(data)}
	}
	if err != nil {
		r.errs.add(err)
		return
	}
	d := time.Since(t0)
	r.submit.Add(d)
	r.batch.Add(d)
	r.batches.Add(1)
	r.jobs.Add(int64(n))
	var b struct{ ID string }
	if json.Unmarshal(data, &b) != nil || b.ID == "" {
		return
	}
	// Look at the batch now and then until nothing in it is left to do.
	end := time.Now().Add(30 * time.Second)
	for time.Now().Before(end) && ctx.Err() == nil {
		time.Sleep(time.Second)
		r.status.Add(1)
		status, data, err := r.client.do(ctx, http.MethodGet, "/v1/batches/"+b.ID, u.Token, nil)
		if err == nil && status != http.StatusOK {
			err = &statusError{"GET /v1/batches/{id}", status, string(data)}
		}
		if err != nil {
			r.errs.add(err)
			return
		}
		var got struct {
			Counts map[string]int `json:"counts"`
		}
		if json.Unmarshal(data, &got) != nil || got.Counts == nil {
			return // an answer this generator cannot read: stop following
		}
		if got.Counts[jobs.StateQueued]+got.Counts[jobs.StateRunning] == 0 {
			return
		}
	}
}

// follow follows a job to a final state with the best means the server
// offers, for at most 30 seconds; it reports whether it saw the end.
func (r *usersRun) follow(ctx context.Context, u user, id string) bool {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var done bool
	switch r.caps.StatusMode() {
	case "sse":
		done = r.followSSE(ctx, u, id)
	case "long-poll":
		done = r.followPoll(ctx, u, id, "?wait=10", 0)
	default:
		done = r.followPoll(ctx, u, id, "", 500*time.Millisecond)
	}
	if !done && ctx.Err() != nil {
		r.timedOut.Add(1)
	}
	return done
}

func (r *usersRun) followPoll(ctx context.Context, u user, id, query string, every time.Duration) bool {
	for ctx.Err() == nil {
		r.status.Add(1)
		status, data, err := r.client.do(ctx, http.MethodGet, "/v1/jobs/"+id+query, u.Token, nil)
		if err == nil && status != http.StatusOK {
			err = &statusError{"GET /v1/jobs/{id}", status, string(data)}
		}
		if err != nil {
			if ctx.Err() == nil {
				r.errs.add(err)
			}
			return false
		}
		var j struct{ State string }
		if err := json.Unmarshal(data, &j); err != nil {
			r.errs.add(err)
			return false
		}
		if jobs.Final(j.State) {
			return true
		}
		if every > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(every):
			}
		}
	}
	return false
}

func (r *usersRun) followSSE(ctx context.Context, u user, id string) bool {
	r.status.Add(1)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.client.base+"/v1/jobs/"+id+"/events", nil)
	if err != nil {
		r.errs.add(err)
		return false
	}
	req.Header.Set("Authorization", "Bearer "+u.Token)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := r.client.hc.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			r.errs.add(err)
		}
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		r.errs.add(&statusError{"GET /v1/jobs/{id}/events", resp.StatusCode, ""})
		return false
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data:")
		if !ok {
			continue
		}
		var j struct{ State string }
		if json.Unmarshal([]byte(strings.TrimSpace(data)), &j) == nil && jobs.Final(j.State) {
			return true
		}
	}
	return false
}

func jobsByState(ctx context.Context, pool *pgxpool.Pool) (map[string]int, error) {
	rows, err := pool.Query(ctx, `SELECT state, count(*) FROM ai_jobs GROUP BY state`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var s string
		var n int
		if err := rows.Scan(&s, &n); err != nil {
			return nil, err
		}
		out[s] = n
	}
	return out, rows.Err()
}
