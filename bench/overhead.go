package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/jobs"
)

// OverheadCase is one fal latency of the overhead scenario: one urgent
// job at a time, each followed by long polls until it is final.
type OverheadCase struct {
	Name string `json:"name"`
	// FalLatencyMS is the simulator's latency (0: fast mode, the request
	// completes at its first status read).
	FalLatencyMS float64 `json:"fal_latency_ms"`
	Jobs         int     `json:"jobs"`
	Errors       int     `json:"errors"`
	// ClientTotal is from sending POST /v1/jobs to the long poll answering
	// succeeded; FalTime is fal's own time (submitted to completed, by the
	// simulator); Overhead is their difference, per job.
	ClientTotal Summary `json:"client_total"`
	FalTime     Summary `json:"fal_time"`
	Overhead    Summary `json:"overhead"`
	// HeldPastFal is from fal completing the request to its slot's
	// release (fal_requests.finished_at).
	HeldPastFal Summary `json:"held_past_fal_completion"`
	// StatusReadsPerJob is the status polls and status streams opened per
	// job (a stream counts once), ResultReadsPerJob the result fetches;
	// LongPollsPerJob the client's GETs.
	StatusReadsPerJob float64 `json:"status_reads_per_job"`
	ResultReadsPerJob float64 `json:"result_reads_per_job"`
	LongPollsPerJob   float64 `json:"long_polls_per_job"`
	// Where the overhead goes, per job: the submit's answer; created to the
	// slot given; the slot given to fal accepting the request; fal's
	// completion to the job's final state; the final state to the client's
	// answer.
	SubmitAnswer   Summary   `json:"submit_answer"`
	SentToCreated  Summary   `json:"sent_to_created"`
	CreatedToClaim Summary   `json:"created_to_claim"`
	ClaimToFal     Summary   `json:"claim_to_fal"`
	FalDoneToFinal Summary   `json:"fal_done_to_final"`
	FinalToClient  Summary   `json:"final_to_client"`
	CPU            CPUPerJob `json:"cpu_per_job"`
}

// runOverhead measures what the system adds to fal's own time as a person
// clicking one action meets it (issue 19): submit to succeeded through a
// long poll, minus fal's time, for an instant fal and a 1 s one.
func (e *env) runOverhead(ctx context.Context) error {
	dbURL, pool, err := e.newDB(ctx, "overhead", 4)
	if err != nil {
		return err
	}
	defer pool.Close()
	srv, err := e.startServer(ctx, "overhead", dbURL, map[string]string{"ROLE": "all"})
	if err != nil {
		return err
	}
	defer e.stopServer(srv)
	cases := []struct {
		name string
		opts falsim.Options
		lat  time.Duration
	}{
		{"instant fal", falsim.Options{Keys: benchKeys, Fast: true}, 0},
		{fmt.Sprintf("%s fal", e.cfg.OverheadLatency), falsim.Options{Keys: benchKeys, DefaultLatency: e.cfg.OverheadLatency}, e.cfg.OverheadLatency},
	}
	var out []OverheadCase
	for _, c := range cases {
		sim := falsim.New(c.opts)
		e.fal.Store(sim)
		res, err := e.overheadCase(ctx, srv, pool, sim, c.name, c.lat)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		out = append(out, res)
		e.reportOverhead(res)
	}
	e.rep.Details[ScenarioOverhead] = out
	if err := e.checkInvariants(ctx, pool, ScenarioOverhead); err != nil {
		return err
	}
	for _, c := range out {
		if c.Errors > 0 {
			return fmt.Errorf("%s: %d jobs did not succeed", c.Name, c.Errors)
		}
	}
	return nil
}

func (e *env) overheadCase(ctx context.Context, srv *Server, pool *pgxpool.Pool, sim *falsim.Server, name string, lat time.Duration) (OverheadCase, error) {
	res := OverheadCase{Name: name, FalLatencyMS: ms(lat), Jobs: e.cfg.OverheadJobs}
	client := newAPIClient(srv.URL, 4)
	defer client.close()
	u := e.users[0]
	// One job each way first, unmeasured: connections, prepared statements.
	for range 3 {
		if _, _, _, err := e.clickAndWait(ctx, client, u); err != nil {
			return res, err
		}
	}
	st0 := sim.Stats()
	cpu0 := e.cpuNow(srv)
	type sent struct {
		id          int64
		at, final   time.Time
		submitAnswr time.Duration
	}
	var list []sent
	polls := 0
	for range res.Jobs {
		begin := time.Now()
		id, answered, n, err := e.clickAndWait(ctx, client, u)
		polls += n
		if err != nil {
			res.Errors++
			e.rep.note("overhead %s: %v", name, err)
			continue
		}
		list = append(list, sent{id: id, at: begin, final: time.Now(), submitAnswr: answered.Sub(begin)})
	}
	res.CPU = e.cpuNow(srv).per(cpu0, len(list))
	st1 := sim.Stats()
	res.StatusReadsPerJob = float64(st1.StatusCalls-st0.StatusCalls+st1.StreamCalls-st0.StreamCalls) / float64(max(len(list), 1))
	res.ResultReadsPerJob = float64(st1.ResultCalls-st0.ResultCalls) / float64(max(len(list), 1))
	res.LongPollsPerJob = float64(polls) / float64(max(res.Jobs, 1))

	falReqs := map[string]falsim.RequestInfo{}
	for _, r := range sim.Requests() {
		falReqs[r.ID] = r
	}
	var total, falTime, over, held, answer, toClaim, toFal, toFinal, toClient, toCreated []time.Duration
	for _, s := range list {
		var created, finalized, claimed time.Time
		var finished *time.Time
		var requestID string
		err := pool.QueryRow(ctx, `
SELECT j.created_at, j.finalized_at, f.claimed_at, f.finished_at, f.request_id
  FROM river_job j JOIN fal_requests f ON f.job_id = j.id AND f.state = 'completed'
 WHERE j.id = $1 ORDER BY f.id DESC LIMIT 1`, s.id).Scan(&created, &finalized, &claimed, &finished, &requestID)
		if err != nil {
			if err == pgx.ErrNoRows { //nolint:errorlint // pgx returns it unwrapped
				res.Errors++
				continue
			}
			return res, err
		}
		info, ok := falReqs[requestID]
		if !ok || info.CompletedAt.IsZero() {
			res.Errors++
			continue
		}
		ft := info.CompletedAt.Sub(info.SubmittedAt)
		t := s.final.Sub(s.at)
		total = append(total, t)
		falTime = append(falTime, ft)
		over = append(over, t-ft)
		if finished != nil {
			held = append(held, finished.Sub(info.CompletedAt))
		}
		answer = append(answer, s.submitAnswr)
		toCreated = append(toCreated, created.Sub(s.at))
		toClaim = append(toClaim, claimed.Sub(created))
		toFal = append(toFal, info.SubmittedAt.Sub(claimed))
		toFinal = append(toFinal, finalized.Sub(info.CompletedAt))
		toClient = append(toClient, s.final.Sub(finalized))
	}
	res.ClientTotal, res.FalTime, res.Overhead, res.HeldPastFal = Summarize(total), Summarize(falTime), Summarize(over), Summarize(held)
	res.SubmitAnswer, res.SentToCreated, res.CreatedToClaim = Summarize(answer), Summarize(toCreated), Summarize(toClaim)
	res.ClaimToFal, res.FalDoneToFinal, res.FinalToClient = Summarize(toFal), Summarize(toFinal), Summarize(toClient)
	return res, nil
}

// clickAndWait submits one urgent generate job and long-polls it until it
// is final, as the studio's page does; it returns the job's id, when the
// submit was answered and how many long polls it took.
func (e *env) clickAndWait(ctx context.Context, client *apiClient, u user) (int64, time.Time, int, error) {
	status, data, err := client.do(ctx, http.MethodPost, "/v1/jobs", u.Token, []byte(`{"operation":"generate","params":{"prompt":"a gold ring on white marble"}}`))
	answered := time.Now()
	if err == nil && status != http.StatusAccepted {
		err = &statusError{"POST /v1/jobs", status, string(data)}
	}
	if err != nil {
		return 0, answered, 0, err
	}
	var j struct{ ID, State string }
	if err := json.Unmarshal(data, &j); err != nil {
		return 0, answered, 0, err
	}
	id, _ := jobs.JobID(j.ID)
	polls := 0
	for deadline := time.Now().Add(2 * time.Minute); !jobs.Final(j.State); {
		if time.Now().After(deadline) {
			return id, answered, polls, fmt.Errorf("job %s still %s after 2m", j.ID, j.State)
		}
		polls++
		status, data, err := client.do(ctx, http.MethodGet, "/v1/jobs/"+j.ID+"?wait=25", u.Token, nil)
		if err == nil && status != http.StatusOK {
			err = &statusError{"GET /v1/jobs/{id}?wait=25", status, string(data)}
		}
		if err != nil {
			return id, answered, polls, err
		}
		if err := json.Unmarshal(data, &j); err != nil {
			return id, answered, polls, err
		}
	}
	if j.State != jobs.StateSucceeded {
		return id, answered, polls, fmt.Errorf("job %s ended %s", j.ID, j.State)
	}
	return id, answered, polls, nil
}

func (e *env) reportOverhead(c OverheadCase) {
	pair := func(s Summary) string { return fmt.Sprintf("%.0f/%.0f ms", s.P50, s.P99) }
	e.rep.add(Row{Scenario: ScenarioOverhead, Figure: fmt.Sprintf("%s: submit -> succeeded seen by a long poll p50/p99 (%d jobs)", c.Name, c.ClientTotal.N),
		Value: c.ClientTotal.P99, Unit: "ms", Display: pair(c.ClientTotal), Reference: "fal's own time", RefValue: ptr(c.FalTime.P99), RefDisplay: pair(c.FalTime)})
	e.rep.add(Row{Scenario: ScenarioOverhead, Figure: fmt.Sprintf("%s: overhead (client-seen minus fal's time) p50/p99", c.Name),
		Value: c.Overhead.P99, Unit: "ms", Display: pair(c.Overhead), Target: "p50 <= 100 ms, p99 <= 300 ms",
		Pass: ptr(c.Overhead.N > 0 && c.Overhead.P50 <= 100 && c.Overhead.P99 <= 300)})
	e.rep.add(Row{Scenario: ScenarioOverhead, Figure: fmt.Sprintf("%s: slot held past fal's completion p50/p99", c.Name),
		Value: c.HeldPastFal.P99, Unit: "ms", Display: pair(c.HeldPastFal), Target: "p99 <= 50 ms", Pass: ptr(c.HeldPastFal.N > 0 && c.HeldPastFal.P99 <= 50)})
	e.rep.add(Row{Scenario: ScenarioOverhead, Figure: fmt.Sprintf("%s: fal status reads per job (a stream counts once)", c.Name),
		Value: c.StatusReadsPerJob, Target: "<= 3", Pass: ptr(c.StatusReadsPerJob <= 3)})
	e.rep.note("overhead %s, p50/p99 ms: POST answered %.0f/%.0f; sent -> created %.0f/%.0f; created -> slot %.0f/%.0f; slot -> fal accepts %.0f/%.0f; fal completes -> final %.0f/%.0f; final -> long poll answers %.0f/%.0f; %.2f long polls, %.2f result reads per job; CPU per job %s",
		c.Name, c.SubmitAnswer.P50, c.SubmitAnswer.P99, c.SentToCreated.P50, c.SentToCreated.P99, c.CreatedToClaim.P50, c.CreatedToClaim.P99,
		c.ClaimToFal.P50, c.ClaimToFal.P99, c.FalDoneToFinal.P50, c.FalDoneToFinal.P99, c.FinalToClient.P50, c.FinalToClient.P99,
		c.LongPollsPerJob, c.ResultReadsPerJob, c.CPU)
}
