package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/jobs"
)

// SaturatedConfig sizes the saturated scenario: fal's slots are the
// scarce resource and more work arrives than they can take.
type SaturatedConfig struct {
	// SlotsPerKey is FAL_KEY_MAX_IN_FLIGHT for each of the bench's 3 keys.
	SlotsPerKey int `json:"slots_per_key"`
	// BatchJobs images come from one user at the start, in normal, as
	// batches of up to 100 (POST /v1/batches).
	BatchJobs int `json:"batch_jobs"`
	// ClickUsers users click urgent image actions, ClickRate per second in
	// all (Poisson arrivals), for ClickFor.
	ClickUsers int           `json:"click_users"`
	ClickRate  float64       `json:"click_rate_per_s"`
	ClickFor   time.Duration `json:"click_for"`
	// Videos are submitted by as many users, spread over ClickFor.
	Videos int `json:"videos"`
	// SingleAt is when one more user submits a single normal image job,
	// while the batch runs.
	SingleAt time.Duration `json:"single_at"`
	// LatencyScale multiplies fal's latencies (saturatedLatency).
	LatencyScale float64 `json:"latency_scale"`
	// Seed makes the arrival trace the same in every run.
	Seed uint64 `json:"seed"`
}

// saturatedLatency is how long fal takes per model in this scenario, before
// LatencyScale: images 2-8 s and videos a minute, as fal's models take.
var saturatedLatency = map[string]time.Duration{
	"fal-ai/birefnet":         2 * time.Second, // remove-bg
	"fal-ai/flux":             3 * time.Second, // generate
	"fal-ai/iclight-v2":       4 * time.Second, // natural-light
	"fal-ai/nano-banana":      5 * time.Second, // edit
	"fal-ai/clarity-upscaler": 8 * time.Second, // upscale
	"fal-ai/kling-video":      60 * time.Second,
}

// saturatedImages are the image actions of clicks and of the batch, one
// per latency above.
var saturatedImages = []string{
	`{"operation":"remove-bg","params":{"image_url":"https://example.com/ring.png"}}`,
	`{"operation":"generate","params":{"prompt":"a gold ring on white marble"}}`,
	`{"operation":"natural-light","params":{"prompt":"soft morning light","image_url":"https://example.com/ring.png"}}`,
	`{"operation":"edit","params":{"prompt":"make the gold warmer","image_urls":["https://example.com/ring.png"]}}`,
	`{"operation":"upscale","params":{"image_url":"https://example.com/ring.png"}}`,
}

const saturatedVideo = `{"operation":"video","params":{"prompt":"the ring turns slowly","image_url":"https://example.com/ring.png"}}`

// Kinds of arrivals in the saturated trace.
const (
	arrivalBatch  = "batch"
	arrivalClick  = "click"
	arrivalVideo  = "video"
	arrivalSingle = "single"
)

// arrival is one submit of the trace: at a time from the start, by one
// user, one job (POST /v1/jobs) or a batch.
type arrival struct {
	At   time.Duration
	Kind string
	User int // index into env.users
	Body []byte
	// Batch is true for POST /v1/batches.
	Batch bool
}

// saturatedTrace builds the arrivals: the batch at 0, the clicks (Poisson),
// the videos spread over the click time (in the middle of equal parts),
// and the single job. Users: 0 the
// batch, 1 the single job, 2.. the videos, then the clickers.
func saturatedTrace(c SaturatedConfig) []arrival {
	rng := rand.New(rand.NewPCG(c.Seed, c.Seed^0x5a7))
	var out []arrival
	for done := 0; done < c.BatchJobs; {
		n := min(100, c.BatchJobs-done)
		items := make([]string, n)
		for i := range items {
			items[i] = saturatedImages[(done+i)%len(saturatedImages)]
		}
		body := `{"priority":"normal","items":[` + strings.Join(items, ",") + `]}`
		out = append(out, arrival{Kind: arrivalBatch, User: 0, Body: []byte(body), Batch: true})
		done += n
	}
	out = append(out, arrival{At: c.SingleAt, Kind: arrivalSingle, User: 1,
		Body: []byte(`{"operation":"generate","priority":"normal","params":{"prompt":"one more ring"}}`)})
	for i := range c.Videos {
		at := c.ClickFor * time.Duration(2*i+1) / time.Duration(2*c.Videos)
		out = append(out, arrival{At: at, Kind: arrivalVideo, User: 2 + i, Body: []byte(saturatedVideo)})
	}
	clickers := 2 + c.Videos
	for at := time.Duration(0); ; {
		at += time.Duration(rng.ExpFloat64() / c.ClickRate * float64(time.Second))
		if at >= c.ClickFor {
			break
		}
		out = append(out, arrival{At: at, Kind: arrivalClick, User: clickers + rng.IntN(c.ClickUsers),
			Body: []byte(saturatedImages[rng.IntN(len(saturatedImages))])})
	}
	slices.SortStableFunc(out, func(a, b arrival) int { return int(a.At - b.At) })
	return out
}

// SaturatedSchedule is one schedule's figures: waits for a slot and submit
// to final, per queue and per kind of arrival (ms).
type SaturatedSchedule struct {
	WaitByQueue  map[string]Summary `json:"wait_for_slot_by_queue"`
	TotalByQueue map[string]Summary `json:"submit_to_final_by_queue"`
	WaitByKind   map[string]Summary `json:"wait_for_slot_by_kind"`
	TotalByKind  map[string]Summary `json:"submit_to_final_by_kind"`
	// BusyWhileWaiting is the share of the slots fal worked on while any
	// job waited for one; WaitedS is how long some job waited.
	BusyWhileWaiting float64 `json:"busy_while_waiting"`
	WaitedS          float64 `json:"waited_s"`
	// BatchMakespanS is from the batch's submit to its last job's end.
	BatchMakespanS float64 `json:"batch_makespan_s"`
}

// SaturatedResult is the saturated scenario's details.
type SaturatedResult struct {
	Config   SaturatedConfig `json:"config"`
	Slots    int             `json:"slots"`
	Jobs     int             `json:"jobs"`
	JobsKind map[string]int  `json:"jobs_by_kind"`
	Refused  int             `json:"refused"`
	// Succeeded jobs; the others ended otherwise or not at all.
	Succeeded int     `json:"succeeded"`
	DurationS float64 `json:"duration_s"`
	// Measured is the schedule the server made; Ideal the line's rule with
	// zero overhead on the same arrivals and fal latencies.
	Measured SaturatedSchedule `json:"measured"`
	Ideal    SaturatedSchedule `json:"ideal"`
	// BatchFalMeanMS is fal's mean time for one image of the batch: "one
	// request's time", which the single job should wait at most (issue 12).
	BatchFalMeanMS float64 `json:"batch_fal_mean_ms"`
	// HeldWhileWaiting is the share of the slots held in Postgres (open
	// fal_requests rows) while any job waited: what the line sees.
	HeldWhileWaiting float64 `json:"held_while_waiting"`
	// ClaimToFal is from the line giving a slot to fal accepting the
	// request; HeldPastFal from fal completing it to the slot's release,
	// for images and for videos (which the worker checks on between
	// snoozes).
	ClaimToFal       Summary `json:"claim_to_fal"`
	HeldPastFal      Summary `json:"held_past_fal_completion"`
	HeldPastFalVideo Summary `json:"held_past_fal_completion_video"`
	// FalDoneToFinal is from fal completing a job's request to the job's
	// final state (River's finalized_at).
	FalDoneToFinal Summary `json:"fal_done_to_final"`
	// MaxFalBusy is the most requests fal worked on at once, at most Slots
	// when the line keeps its capacity. MaxHeld is the most slots held at
	// once by fal_requests' timestamps, and HeldOverS how long more than
	// Slots were: claimed_at and finished_at are their transactions'
	// start times (now()), so a slot freed and given again at once can
	// show a few milliseconds of overlap that never was.
	MaxFalBusy int     `json:"max_fal_busy"`
	MaxHeld    int     `json:"max_held"`
	HeldOverS  float64 `json:"held_over_slots_s"`
	// IdleCPUPerS is the server's and Postgres's CPU per second with no
	// work, measured before the trace (heartbeats, the line's tick,
	// River's polls and maintenance); CPU includes it.
	IdleCPUPerS CPUPerJob `json:"idle_cpu_per_s"`
	// Table writes per AI job (pg_stat_user_tables deltas).
	WritesPerJob map[string]map[string]float64 `json:"writes_per_job"`
	CPU          CPUPerJob                     `json:"cpu_per_job"`
	FalRequests  int                           `json:"fal_requests"`
	// MetricWaitMeanS is aiqueue_fal_slot_wait_seconds' mean per queue, as
	// the server's own metric says.
	MetricWaitMeanS map[string]float64 `json:"metric_slot_wait_mean_s,omitempty"`
	ClaimsAbandoned float64            `json:"claims_abandoned"`
}

// runSaturated runs the saturated scenario (issue 12): more work than
// fal's slots take, from a batch, many clicking users, videos and one more
// user's single job, on a fixed trace; then the same trace through the
// ideal schedule.
func (e *env) runSaturated(ctx context.Context) error {
	c := e.cfg.Saturated
	slots := len(benchKeys) * c.SlotsPerKey
	dbURL, pool, err := e.newDB(ctx, "saturated", 4)
	if err != nil {
		return err
	}
	defer pool.Close()
	sim := falsim.New(falsim.Options{Keys: benchKeys, Latency: saturatedLatency, LatencyScale: c.LatencyScale})
	e.fal.Store(sim)
	srv, err := e.startServer(ctx, "saturated", dbURL, map[string]string{
		"ROLE":                  "all",
		"FAL_KEY_MAX_IN_FLIGHT": strconv.Itoa(c.SlotsPerKey),
	})
	if err != nil {
		return err
	}
	defer e.stopServer(srv)

	trace := saturatedTrace(c)
	res := SaturatedResult{Config: c, Slots: slots, JobsKind: map[string]int{}}
	e.logf("saturated: %d slots, %d submits over %s (latency scale %.2f)", slots, len(trace), c.ClickFor, c.LatencyScale)
	tables0, err := tableWrites(ctx, pool)
	if err != nil {
		return err
	}
	idle0, idleFrom := e.cpuNow(srv), time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(5 * time.Second):
	}
	res.IdleCPUPerS = e.cpuNow(srv).per(idle0, 1)
	res.IdleCPUPerS = res.IdleCPUPerS.scale(1 / time.Since(idleFrom).Seconds())
	e.resetStatements(ctx, pool)
	cpu0 := e.cpuNow(srv)
	begin := time.Now()
	kinds, refused := e.playTrace(ctx, srv.URL, trace)
	res.Refused = refused.n
	if refused.n > 0 {
		e.rep.note("saturated: %d submits refused: %v", refused.n, refused.kinds)
	}
	for _, k := range kinds {
		res.JobsKind[k]++
	}
	res.Jobs = len(kinds)
	e.logf("saturated: %d jobs submitted in %s; waiting for them to end", res.Jobs, time.Since(begin).Round(time.Millisecond))
	err = waitForEvery(ctx, c.ClickFor+10*time.Minute, 250*time.Millisecond, func() (bool, error) {
		n, err := queryInt(ctx, pool, `SELECT count(*) FROM river_job WHERE kind = 'ai' AND finalized_at IS NULL`)
		return err == nil && n == 0, nil
	})
	res.DurationS = time.Since(begin).Seconds()
	res.CPU = e.cpuNow(srv).per(cpu0, res.Jobs)
	if err != nil {
		return fmt.Errorf("jobs did not end: %w", err)
	}
	if ms, err := srv.Metrics(ctx); err != nil {
		e.rep.note("saturated: %v", err)
	} else {
		res.MetricWaitMeanS = map[string]float64{}
		for _, q := range jobs.Queues {
			m := map[string]string{"queue": q}
			if n := metricSum(ms, "aiqueue_fal_slot_wait_seconds_count", m); n > 0 {
				res.MetricWaitMeanS[q] = metricSum(ms, "aiqueue_fal_slot_wait_seconds_sum", m) / n
			}
		}
		res.ClaimsAbandoned = metricSum(ms, "aiqueue_fal_claims_abandoned_total", nil)
	}
	e.topStatements(ctx, pool, ScenarioSaturated)
	// Stopping the server ends its connections, whose table statistics
	// are flushed as they exit.
	e.stopServer(srv)
	if err := waitBackendsGone(ctx, pool); err != nil {
		e.rep.note("saturated: %v", err)
	}
	tables1, err := tableWrites(ctx, pool)
	if err != nil {
		return err
	}
	res.WritesPerJob = tables1.perJob(tables0, res.Jobs)

	if err := e.saturatedFigures(ctx, pool, sim, kinds, &res); err != nil {
		return err
	}
	e.rep.Details[ScenarioSaturated] = res
	e.reportSaturated(res)
	if err := e.checkInvariants(ctx, pool, ScenarioSaturated); err != nil {
		return err
	}
	return errIf(res.Succeeded != res.Jobs || res.Refused > 0, "%d jobs submitted, %d refused, %d succeeded", res.Jobs, res.Refused, res.Succeeded)
}

// playTrace submits the trace's arrivals at their times and returns the
// kind of every job accepted, by River job id, and the refused submits.
func (e *env) playTrace(ctx context.Context, url string, trace []arrival) (map[int64]string, *errorCounter) {
	client := newAPIClient(url, 64)
	defer client.close()
	var refused errorCounter
	var mu sync.Mutex
	kinds := map[int64]string{}
	var wg sync.WaitGroup
	begin := time.Now()
	for _, a := range trace {
		select {
		case <-ctx.Done():
			refused.add(ctx.Err())
		case <-time.After(time.Until(begin.Add(a.At))):
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			ids, err := e.submitArrival(ctx, client, a)
			if err != nil {
				refused.add(err)
				return
			}
			mu.Lock()
			for _, id := range ids {
				kinds[id] = a.Kind
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	return kinds, &refused
}

func (e *env) submitArrival(ctx context.Context, client *apiClient, a arrival) ([]int64, error) {
	path, op := "/v1/jobs", "POST /v1/jobs"
	if a.Batch {
		path, op = "/v1/batches", "POST /v1/batches"
	}
	status, data, err := client.do(ctx, http.MethodPost, path, e.users[a.User].Token, a.Body)
	if err == nil && status != http.StatusAccepted {
		err = &statusError{op, status, string(data)}
	}
	if err != nil {
		return nil, err
	}
	var out struct {
		ID     string   `json:"id"`
		JobIDs []string `json:"job_ids"`
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, err
	}
	list := out.JobIDs
	if !a.Batch {
		list = []string{out.ID}
	}
	ids := make([]int64, 0, len(list))
	for _, s := range list {
		id, ok := jobs.JobID(s)
		if !ok {
			return nil, fmt.Errorf("%s: bad job id %q", op, s)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// saturatedFigures reads what happened to every job from the database and
// the simulator, computes the measured figures and runs the ideal schedule
// on the same arrivals and fal latencies.
func (e *env) saturatedFigures(ctx context.Context, pool *pgxpool.Pool, sim *falsim.Server, kinds map[int64]string, res *SaturatedResult) error {
	type jobRow struct {
		id                int64
		queue, user       string
		state             string
		created           time.Time
		finalized         *time.Time
		firstClaim        *time.Time
		completedRequests []string
	}
	rows, err := pool.Query(ctx, `
SELECT j.id, j.queue, j.args ->> 'user_id', j.state::text, j.created_at, j.finalized_at,
       (SELECT min(claimed_at) FROM fal_requests f WHERE f.job_id = j.id),
       ARRAY(SELECT request_id FROM fal_requests f WHERE f.job_id = j.id AND f.state = 'completed' ORDER BY f.id)
  FROM river_job j WHERE j.kind = 'ai' ORDER BY j.id`)
	if err != nil {
		return err
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (jobRow, error) {
		var j jobRow
		err := r.Scan(&j.id, &j.queue, &j.user, &j.state, &j.created, &j.finalized, &j.firstClaim, &j.completedRequests)
		return j, err
	})
	if err != nil {
		return err
	}
	type reqRow struct {
		requestID *string
		claimed   time.Time
		finished  *time.Time
	}
	rows, err = pool.Query(ctx, `SELECT request_id, claimed_at, finished_at FROM fal_requests ORDER BY id`)
	if err != nil {
		return err
	}
	reqs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (reqRow, error) {
		var q reqRow
		err := r.Scan(&q.requestID, &q.claimed, &q.finished)
		return q, err
	})
	if err != nil {
		return err
	}
	falReqs := map[string]falsim.RequestInfo{}
	var falBusy []interval
	for _, r := range sim.Requests() {
		falReqs[r.ID] = r
		if !r.CompletedAt.IsZero() {
			falBusy = append(falBusy, interval{r.StartedAt, r.CompletedAt})
		}
	}
	res.FalRequests = len(falReqs)

	var held []interval
	var claimToFal, heldPast, heldPastVideo []time.Duration
	end := time.Now()
	for _, q := range reqs {
		to := end
		if q.finished != nil {
			to = *q.finished
		}
		held = append(held, interval{q.claimed, to})
		if q.requestID == nil {
			continue
		}
		if info, ok := falReqs[*q.requestID]; ok {
			claimToFal = append(claimToFal, info.SubmittedAt.Sub(q.claimed))
			switch {
			case q.finished == nil || info.CompletedAt.IsZero():
			case strings.Contains(info.Model, "video"):
				heldPastVideo = append(heldPastVideo, q.finished.Sub(info.CompletedAt))
			default:
				heldPast = append(heldPast, q.finished.Sub(info.CompletedAt))
			}
		}
	}
	res.ClaimToFal, res.HeldPastFal, res.HeldPastFalVideo = Summarize(claimToFal), Summarize(heldPast), Summarize(heldPastVideo)

	var trace []traceJob
	measured := map[int64]scheduled{}
	var waits []interval
	var doneToFinal, batchFal []time.Duration
	for _, j := range list {
		if j.state == "completed" {
			res.Succeeded++
		}
		if j.firstClaim == nil || j.finalized == nil || len(j.completedRequests) == 0 {
			continue // not in the schedules: it never ran to its end
		}
		info, ok := falReqs[j.completedRequests[len(j.completedRequests)-1]]
		if !ok {
			continue
		}
		tj := traceJob{ID: j.id, Queue: j.queue, User: j.user, Arrival: j.created, Service: info.CompletedAt.Sub(info.StartedAt)}
		trace = append(trace, tj)
		if kinds[j.id] == arrivalBatch {
			batchFal = append(batchFal, tj.Service)
		}
		measured[j.id] = scheduled{Start: *j.firstClaim, End: *j.finalized}
		waits = append(waits, interval{j.created, *j.firstClaim})
		doneToFinal = append(doneToFinal, j.finalized.Sub(info.CompletedAt))
	}
	res.FalDoneToFinal = Summarize(doneToFinal)
	res.BatchFalMeanMS = Summarize(batchFal).Mean
	ideal := idealSchedule(trace, res.Slots, dispatch.DefaultCaps)

	res.Measured = scheduleFigures(trace, measured, kinds)
	res.Measured.BusyWhileWaiting, res.Measured.WaitedS = shareS(busyWhileWaiting(falBusy, waits, res.Slots))
	res.MaxFalBusy, _ = maxOverlap(falBusy, res.Slots)
	var over time.Duration
	res.MaxHeld, over = maxOverlap(held, res.Slots)
	res.HeldOverS = over.Seconds()
	res.HeldWhileWaiting, _ = busyWhileWaiting(held, waits, res.Slots)

	res.Ideal = scheduleFigures(trace, ideal, kinds)
	var idealBusy, idealWaits []interval
	for _, j := range trace {
		s := ideal[j.ID]
		idealBusy = append(idealBusy, interval{s.Start, s.End})
		idealWaits = append(idealWaits, interval{j.Arrival, s.Start})
	}
	res.Ideal.BusyWhileWaiting, res.Ideal.WaitedS = shareS(busyWhileWaiting(idealBusy, idealWaits, res.Slots))
	return nil
}

func shareS(share float64, waited time.Duration) (float64, float64) { return share, waited.Seconds() }

// maxOverlap is the most intervals that overlap at one moment, and how
// long more than limit did.
func maxOverlap(list []interval, limit int) (int, time.Duration) {
	type edge struct {
		at time.Time
		d  int
	}
	edges := make([]edge, 0, 2*len(list))
	for _, iv := range list {
		if iv.To.After(iv.From) {
			edges = append(edges, edge{iv.From, 1}, edge{iv.To, -1})
		}
	}
	// Ends before starts at the same moment: a slot freed and given again
	// at once is one slot.
	slices.SortFunc(edges, func(a, b edge) int { return cmp.Or(a.at.Compare(b.at), a.d-b.d) })
	n, most := 0, 0
	var over time.Duration
	for i, e := range edges {
		if n > limit {
			over += e.at.Sub(edges[i-1].at)
		}
		n += e.d
		most = max(most, n)
	}
	return most, over
}

// scheduleFigures summarizes one schedule of the trace's jobs.
func scheduleFigures(trace []traceJob, s map[int64]scheduled, kinds map[int64]string) SaturatedSchedule {
	waitQ, totalQ := map[string][]time.Duration{}, map[string][]time.Duration{}
	waitK, totalK := map[string][]time.Duration{}, map[string][]time.Duration{}
	var batchFrom, batchTo time.Time
	for _, j := range trace {
		sc, ok := s[j.ID]
		if !ok {
			continue
		}
		wait, total := sc.Start.Sub(j.Arrival), sc.End.Sub(j.Arrival)
		waitQ[j.Queue] = append(waitQ[j.Queue], wait)
		totalQ[j.Queue] = append(totalQ[j.Queue], total)
		k := kinds[j.ID]
		waitK[k] = append(waitK[k], wait)
		totalK[k] = append(totalK[k], total)
		if k == arrivalBatch {
			if batchFrom.IsZero() || j.Arrival.Before(batchFrom) {
				batchFrom = j.Arrival
			}
			if sc.End.After(batchTo) {
				batchTo = sc.End
			}
		}
	}
	sum := func(m map[string][]time.Duration) map[string]Summary {
		out := make(map[string]Summary, len(m))
		for k, v := range m {
			out[k] = Summarize(v)
		}
		return out
	}
	return SaturatedSchedule{WaitByQueue: sum(waitQ), TotalByQueue: sum(totalQ), WaitByKind: sum(waitK), TotalByKind: sum(totalK),
		BatchMakespanS: batchTo.Sub(batchFrom).Seconds()}
}

// reportSaturated adds the scenario's rows: each figure next to the ideal
// schedule's.
func (e *env) reportSaturated(res SaturatedResult) {
	const ideal = "ideal schedule (same trace, zero overhead)"
	m, id := res.Measured, res.Ideal
	triple := func(s Summary) string { return fmt.Sprintf("%.0f/%.0f/%.0f ms", s.P50, s.P95, s.P99) }
	for _, q := range []string{jobs.QueueUrgent, jobs.QueueNormal} {
		w, iw := m.WaitByQueue[q], id.WaitByQueue[q]
		if w.N == 0 {
			continue
		}
		e.rep.add(Row{Scenario: ScenarioSaturated, Figure: fmt.Sprintf("%s (%d jobs): wait for a slot p50/p95/p99", q, w.N),
			Value: w.P99, Unit: "ms", Display: triple(w), Reference: ideal, RefValue: ptr(iw.P99), RefDisplay: triple(iw)})
		t, it := m.TotalByQueue[q], id.TotalByQueue[q]
		row := Row{Scenario: ScenarioSaturated, Figure: fmt.Sprintf("%s: submit to final p50/p95/p99", q),
			Value: t.P99, Unit: "ms", Display: triple(t), Reference: ideal, RefValue: ptr(it.P99), RefDisplay: triple(it)}
		if q == jobs.QueueUrgent {
			row.Target, row.Pass = "p99 <= 1.1x ideal", ptr(t.P99 <= 1.1*it.P99)
		}
		e.rep.add(row)
	}
	if s, ok := m.WaitByKind[arrivalSingle]; ok {
		is := id.WaitByKind[arrivalSingle]
		e.rep.add(Row{Scenario: ScenarioSaturated, Figure: "single-job user during the batch: wait for a slot", Value: s.Max, Unit: "ms",
			Reference: ideal, RefValue: ptr(is.Max), Target: fmt.Sprintf("<= one image's fal time (%.0f ms)", res.BatchFalMeanMS),
			Pass: ptr(s.Max <= res.BatchFalMeanMS)})
		t, it := m.TotalByKind[arrivalSingle], id.TotalByKind[arrivalSingle]
		e.rep.add(Row{Scenario: ScenarioSaturated, Figure: "single-job user during the batch: submit to final", Value: t.Max, Unit: "ms",
			Reference: ideal, RefValue: ptr(it.Max)})
	}
	if v, ok := m.TotalByKind[arrivalVideo]; ok {
		iv := id.TotalByKind[arrivalVideo]
		e.rep.add(Row{Scenario: ScenarioSaturated, Figure: fmt.Sprintf("videos (%d): submit to final max", v.N), Value: v.Max, Unit: "ms",
			Reference: ideal, RefValue: ptr(iv.Max)})
	}
	e.rep.add(Row{Scenario: ScenarioSaturated, Figure: fmt.Sprintf("batch of %d: submit to last job final", res.JobsKind[arrivalBatch]),
		Value: m.BatchMakespanS, Unit: "s", Reference: ideal, RefValue: ptr(id.BatchMakespanS)})
	e.rep.add(Row{Scenario: ScenarioSaturated, Figure: "slots fal worked on while jobs waited", Value: 100 * m.BusyWhileWaiting, Unit: "%",
		Reference: ideal, RefValue: ptr(100 * id.BusyWhileWaiting), Target: ">= 0.9x ideal", Pass: ptr(m.BusyWhileWaiting >= 0.9*id.BusyWhileWaiting)})
	e.rep.add(Row{Scenario: ScenarioSaturated, Figure: "slots held (open fal_requests) while jobs waited", Value: 100 * res.HeldWhileWaiting, Unit: "%",
		Target: ">= 95%", Pass: ptr(res.HeldWhileWaiting >= 0.95)})
	e.rep.add(Row{Scenario: ScenarioSaturated, Figure: "slot held past fal's completion p50/p99, images", Value: res.HeldPastFal.P99, Unit: "ms",
		Display: fmt.Sprintf("%.0f/%.0f ms", res.HeldPastFal.P50, res.HeldPastFal.P99)})
	if v := res.HeldPastFalVideo; v.N > 0 {
		e.rep.add(Row{Scenario: ScenarioSaturated, Figure: fmt.Sprintf("slot held past fal's completion, videos (%d) max", v.N), Value: v.Max, Unit: "ms"})
	}
	e.rep.add(Row{Scenario: ScenarioSaturated, Figure: "slot given -> fal accepts the request p50/p99", Value: res.ClaimToFal.P99, Unit: "ms",
		Display: fmt.Sprintf("%.0f/%.0f ms", res.ClaimToFal.P50, res.ClaimToFal.P99)})
	if w, ok := res.WritesPerJob["river_job"]; ok {
		e.rep.add(Row{Scenario: ScenarioSaturated, Figure: "river_job updates per job", Value: w["upd"],
			Reference: "made available, fetched, completed", RefValue: ptr(3.0), Target: "<= 6", Pass: ptr(w["upd"] <= 6)})
	}
	e.rep.add(Row{Scenario: ScenarioSaturated, Figure: "CPU per job, server + Postgres", Value: res.CPU.Total(), Unit: "ms", Display: res.CPU.String(),
		Note: fmt.Sprintf("idle: %s per second", res.IdleCPUPerS)})
	e.rep.add(Row{Scenario: ScenarioSaturated, Figure: "most fal requests running at once", Value: float64(res.MaxFalBusy),
		Reference: "slots", RefValue: ptr(float64(res.Slots)), Target: "<= slots", Pass: ptr(res.MaxFalBusy <= res.Slots),
		Note: fmt.Sprintf("slots held by fal_requests' timestamps: at most %d, above %d for %.0f ms in all", res.MaxHeld, res.Slots, 1000*res.HeldOverS)})
	var parts []string
	for _, t := range []string{"river_job", "fal_requests", "credit_accounts", "credit_holds", "credit_entries"} {
		if w, ok := res.WritesPerJob[t]; ok {
			parts = append(parts, fmt.Sprintf("%s %.2f ins + %.2f upd (%.2f HOT) + %.2f del", t, w["ins"], w["upd"], w["hot_upd"], w["del"]))
		}
	}
	e.rep.note("saturated: %d jobs (%v), %d succeeded, %d fal requests, %.0f s; writes per job: %s; claims abandoned (metric) %.0f; the server's mean slot wait (metric) %v s; slots held by fal_requests' timestamps at most %d, above %d for %.0f ms in all; idle CPU per second %s",
		res.Jobs, res.JobsKind, res.Succeeded, res.FalRequests, res.DurationS, strings.Join(parts, "; "), res.ClaimsAbandoned, res.MetricWaitMeanS,
		res.MaxHeld, res.Slots, 1000*res.HeldOverS, res.IdleCPUPerS)
}

// tableCounts are pg_stat_user_tables' write counters per table.
type tableCounts map[string]map[string]float64

// tableWrites reads the write counters of the database's tables, after
// flushing this backend's own.
func tableWrites(ctx context.Context, pool *pgxpool.Pool) (tableCounts, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	_, _ = conn.Exec(ctx, `SELECT pg_stat_force_next_flush()`) // PostgreSQL 15+
	rows, err := conn.Query(ctx, `SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := tableCounts{}
	for rows.Next() {
		var name string
		var ins, upd, hot, del int64
		if err := rows.Scan(&name, &ins, &upd, &hot, &del); err != nil {
			return nil, err
		}
		out[name] = map[string]float64{"ins": float64(ins), "upd": float64(upd), "hot_upd": float64(hot), "del": float64(del)}
	}
	return out, rows.Err()
}

// perJob is the writes between before and t, per job.
func (t tableCounts) perJob(before tableCounts, n int) map[string]map[string]float64 {
	out := map[string]map[string]float64{}
	for name, c := range t {
		m := map[string]float64{}
		changed := false
		for k, v := range c {
			d := v - before[name][k]
			m[k] = d / float64(max(n, 1))
			changed = changed || d != 0
		}
		if changed {
			out[name] = m
		}
	}
	return out
}

// waitBackendsGone waits until no backend other than the load generator's
// is connected to pool's database: the server's connections have ended and
// flushed their statistics.
func waitBackendsGone(ctx context.Context, pool *pgxpool.Pool) error {
	err := waitFor(ctx, 10*time.Second, func() (bool, error) {
		n, err := queryInt(ctx, pool, `SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND application_name <> $1 AND backend_type = 'client backend'`, loadgenApp)
		return err == nil && n == 0, nil
	})
	if err != nil {
		return fmt.Errorf("the server's connections did not end: %w", err)
	}
	return nil
}
