package bench

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/jobs"
)

// BacklogRun is one wrk run of the backlog scenario.
type BacklogRun struct {
	Case  string `json:"case"`
	Round int    `json:"round"`
	// Waiting is the number of jobs waiting in urgent when wrk started: in
	// the line for a fal slot, or given one and not yet fetched.
	Waiting int       `json:"waiting"`
	Wrk     WrkResult `json:"wrk"`
	CPU     CPUPerJob `json:"cpu_per_job"`
}

// BacklogResult is the backlog scenario's details.
type BacklogResult struct {
	Load  WrkLoad      `json:"load"`
	Users int          `json:"users"`
	Jobs  int          `json:"jobs"`
	Runs  []BacklogRun `json:"runs"`
}

const (
	backlogEmpty = "empty"
	backlogDeep  = "deep"
)

// runBacklog measures POST /v1/jobs (wrk, the versus-seed load) against a
// ROLE=api server while BacklogJobs jobs wait in urgent, the queue the
// submits go to, next to the same with an empty queue, interleaved (empty,
// deep, empty, deep ...). Each case has its own database; the jobs a run
// (and its warm-up) added are deleted off the clock, so every empty run
// starts empty and every deep run with the same backlog.
func (e *env) runBacklog(ctx context.Context) error {
	cfg := e.cfg
	type side struct {
		name string
		url  string
		pool *pgxpool.Pool
		base int // jobs up to this id are the backlog
	}
	var sides []*side
	for _, name := range []string{backlogEmpty, backlogDeep} {
		url, pool, err := e.newDB(ctx, "backlog_"+name, 4)
		if err != nil {
			return err
		}
		defer pool.Close()
		sides = append(sides, &side{name: name, url: url, pool: pool})
	}
	deep := sides[1]
	e.logf("inserting %d jobs into urgent", cfg.BacklogJobs)
	if err := e.insertBacklog(ctx, deep.pool, cfg.BacklogJobs, jobs.QueueUrgent); err != nil {
		return err
	}
	if _, err := deep.pool.Exec(ctx, `VACUUM ANALYZE river_job`); err != nil {
		return err
	}
	var err error
	if deep.base, err = queryInt(ctx, deep.pool, `SELECT coalesce(max(id), 0) FROM river_job`); err != nil {
		return err
	}
	tokens := filepath.Join(e.dir, "backlog-tokens.txt")
	if err := writeTokens(tokens, e.users[:cfg.VersusUsers]); err != nil {
		return err
	}
	// reset deletes what a run added (refunding it) and the fal slots the
	// line gave it, and vacuums.
	reset := func(s *side) error {
		if _, err := s.pool.Exec(ctx, `DELETE FROM river_job WHERE id > $1`, s.base); err != nil {
			return err
		}
		if _, err := s.pool.Exec(ctx, `DELETE FROM fal_requests WHERE job_id > $1`, s.base); err != nil {
			return err
		}
		_, err := s.pool.Exec(ctx, `VACUUM ANALYZE river_job`)
		return err
	}

	res := BacklogResult{Load: cfg.Wrk, Users: cfg.VersusUsers, Jobs: cfg.BacklogJobs}
	for round := 1; round <= cfg.Rounds; round++ {
		for _, s := range sides {
			run, err := e.backlogRun(ctx, s.name, round, s.url, s.pool, tokens, func() error { return reset(s) })
			if err != nil {
				return fmt.Errorf("%s round %d: %w", s.name, round, err)
			}
			res.Runs = append(res.Runs, run)
		}
	}
	e.rep.Details[ScenarioBacklog] = res
	e.reportBacklog(res)
	return e.checkInvariants(ctx, deep.pool, ScenarioBacklog)
}

func (e *env) backlogRun(ctx context.Context, name string, round int, url string, pool *pgxpool.Pool, tokens string, reset func() error) (BacklogRun, error) {
	cfg := e.cfg
	run := BacklogRun{Case: name, Round: round}
	// The line runs in the API process too; with 6 fal slots (the default
	// 2 per key) they are taken at once, as with any deep backlog, and
	// nothing works the jobs: every submit joins the line.
	srv, err := e.startServer(ctx, "backlog-"+name, url, map[string]string{"ROLE": "api", "FAL_KEY_MAX_IN_FLIGHT": "2"})
	if err != nil {
		return run, err
	}
	defer e.stopServer(srv)
	dir := filepath.Join(e.dir, "wrk-backlog")
	if cfg.Warmup > 0 {
		warm := cfg.Wrk
		warm.Duration = cfg.Warmup
		if _, err := runWrk(ctx, dir, srv.URL, tokens, warm); err != nil {
			return run, fmt.Errorf("warm-up: %w", err)
		}
		if err := reset(); err != nil {
			return run, err
		}
	}
	if run.Waiting, err = queryInt(ctx, pool, `SELECT count(*) FROM river_job WHERE queue = 'urgent' AND state IN ('pending', 'available')`); err != nil {
		return run, err
	}
	last := round == cfg.Rounds
	if last {
		e.resetStatements(ctx, pool)
	}
	e.logf("backlog %s round %d (%d waiting): %s", name, round, run.Waiting, cfg.Wrk)
	cpu0 := e.cpuNow(srv)
	run.Wrk, err = runWrk(ctx, dir, srv.URL, tokens, cfg.Wrk)
	if err != nil {
		return run, err
	}
	run.CPU = e.cpuNow(srv).per(cpu0, max(run.Wrk.Accepted, 1))
	run.CPU.LoadgenMS = 0 // wrk does the load; this process only waits
	if last {
		e.topStatements(ctx, pool, "backlog."+name)
	}
	e.logf("backlog %s round %d: %.0f requests/s, p50 %.1f ms, p99 %.1f ms, %d non-2xx, CPU per submit %s",
		name, round, run.Wrk.RequestsPerS, run.Wrk.P50MS, run.Wrk.P99MS, run.Wrk.Non2xx, run.CPU)
	e.stopServer(srv)
	return run, reset()
}

func (e *env) reportBacklog(res BacklogResult) {
	var empty, deep []BacklogRun
	for _, r := range res.Runs {
		if r.Case == backlogEmpty {
			empty = append(empty, r)
		} else {
			deep = append(deep, r)
		}
	}
	load := fmt.Sprintf("%s, %d users, ROLE=api", res.Load, res.Users)
	p5099 := func(r BacklogRun) string { return fmt.Sprintf("%.1f/%.1f ms", r.Wrk.P50MS, r.Wrk.P99MS) }
	var sums [4]float64
	for i := range min(len(empty), len(deep)) {
		em, dp := empty[i], deep[i]
		e.rep.add(Row{Scenario: ScenarioBacklog, Figure: fmt.Sprintf("round %d: submits/s with %d waiting in urgent (%s; non-2xx %d vs %d)", i+1, dp.Waiting, load, dp.Wrk.Non2xx, em.Wrk.Non2xx),
			Value: dp.Wrk.RequestsPerS, Unit: "req/s", Reference: "empty queue", RefValue: ptr(em.Wrk.RequestsPerS),
			Target: ">= 0.9x", Pass: ptr(dp.Wrk.RequestsPerS >= 0.9*em.Wrk.RequestsPerS)})
		e.rep.add(Row{Scenario: ScenarioBacklog, Figure: fmt.Sprintf("round %d: submit p50/p99 with the backlog", i+1), Value: dp.Wrk.P99MS, Unit: "ms",
			Display: p5099(dp), Reference: "empty queue", RefValue: ptr(em.Wrk.P99MS), RefDisplay: p5099(em),
			Target: "<= 1.1x", Pass: ptr(dp.Wrk.P99MS <= 1.1*em.Wrk.P99MS), Note: "ratio of p99"})
		e.rep.add(Row{Scenario: ScenarioBacklog, Figure: fmt.Sprintf("round %d: CPU per submit with the backlog", i+1), Value: dp.CPU.Total(), Unit: "ms",
			Display: dp.CPU.String(), Reference: "empty queue", RefValue: ptr(em.CPU.Total()), RefDisplay: em.CPU.String()})
		sums[0] += dp.Wrk.RequestsPerS
		sums[1] += em.Wrk.RequestsPerS
		sums[2] += dp.Wrk.P99MS
		sums[3] += em.Wrk.P99MS
	}
	if n := float64(min(len(empty), len(deep))); n > 1 {
		e.rep.add(Row{Scenario: ScenarioBacklog, Figure: fmt.Sprintf("all %.0f rounds: mean submits/s with the backlog", n), Value: sums[0] / n, Unit: "req/s",
			Reference: "empty queue", RefValue: ptr(sums[1] / n), Target: ">= 0.9x", Pass: ptr(sums[0] >= 0.9*sums[1])})
		e.rep.add(Row{Scenario: ScenarioBacklog, Figure: fmt.Sprintf("all %.0f rounds: mean p99 with the backlog", n), Value: sums[2] / n, Unit: "ms",
			Reference: "empty queue", RefValue: ptr(sums[3] / n), Target: "<= 1.1x", Pass: ptr(sums[2] <= 1.1*sums[3])})
	}
	for _, c := range []string{backlogEmpty, backlogDeep} {
		stats, _ := e.rep.Details["backlog."+c+".pg_stat_statements"].([]stmtStat)
		for i, st := range stats {
			if i == 3 {
				break
			}
			e.rep.note("backlog %s, last round, statement %d by time: %.3f ms per call (lock waits included), %d calls: %s",
				c, i+1, st.MeanMS, st.Calls, shorten(st.Query, 120))
		}
	}
	e.rep.note("backlog: the server runs with ROLE=api and 6 fal slots (taken at once; nothing works the jobs); each case has its own database, and what a run added is deleted (refunded) with its fal slots and vacuumed off the clock, so each run starts with the same queue")
}
