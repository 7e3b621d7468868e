package bench

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
)

// SettleResult is one backlog worked off.
type SettleResult struct {
	Jobs      int `json:"jobs"`
	Completed int `json:"completed"`
	// Charged is the number of holds charged (AI jobs only).
	Charged int `json:"charged,omitempty"`
	// SpanS is from the first fetch to the last completion (database clock);
	// Throughput is Jobs / SpanS.
	SpanS      float64 `json:"span_s"`
	Throughput float64 `json:"throughput_per_s"`
	// WallS is from starting the workers to seeing the queue empty.
	WallS   float64 `json:"wall_s"`
	InsertS float64 `json:"insert_s"`
	// FalSubmits is the number of requests fal accepted (AI jobs only).
	FalSubmits int       `json:"fal_submits,omitempty"`
	CPU        CPUPerJob `json:"cpu_per_job"`
	// RSS and HWM are the worker process's memory at the end, in MB.
	RSSMB float64 `json:"rss_mb,omitempty"`
	HWMMB float64 `json:"hwm_mb,omitempty"`
}

// rawSettleQueue is where the raw reference's no-op jobs wait.
const rawSettleQueue = "bench_raw_settle"

// runSettle measures how fast the workers work off a backlog (submit to
// fal simulator to charge), next to raw River working as many no-op jobs
// with the same queue settings and pool size.
func (e *env) runSettle(ctx context.Context) error {
	cfg := e.cfg
	dbURL, pool, err := e.newDB(ctx, "settle", 8)
	if err != nil {
		return err
	}
	defer pool.Close()

	e.logf("inserting %d AI jobs in %s", cfg.SettleJobs, cfg.SettleQueue)
	begin := time.Now()
	if err := e.insertBacklog(ctx, pool, cfg.SettleJobs, cfg.SettleQueue); err != nil {
		return err
	}
	ai := SettleResult{Jobs: cfg.SettleJobs, InsertS: time.Since(begin).Seconds()}
	_, _ = pool.Exec(ctx, `VACUUM ANALYZE river_job`)

	sim := e.newFal()
	e.logf("working them off")
	e.resetStatements(ctx, pool)
	srv, err := e.startServer(ctx, "settle-worker", dbURL, map[string]string{"ROLE": "worker"})
	if err != nil {
		return err
	}
	defer e.stopServer(srv)
	begin = time.Now()
	stopProfile := e.profile(ctx, srv, "settle", min(e.estimate(cfg.SettleJobs, 300), 60*time.Second))
	waits := e.sampleWaits(ctx, pool)
	cpu0 := e.cpuNow(srv)
	err = e.waitQueueDone(ctx, pool, "ai", cfg.SettleQueue)
	ai.CPU = e.cpuNow(srv).per(cpu0, cfg.SettleJobs)
	e.recordWaits("settle.ai", waits.finish())
	ai.WallS = time.Since(begin).Seconds()
	stopProfile()
	if err != nil {
		return err
	}
	if rss, hwm, err := srv.Memory(); err == nil {
		ai.RSSMB, ai.HWMMB = mb(rss), mb(hwm)
	}
	e.stopServer(srv)
	e.topStatements(ctx, pool, "settle.ai")
	if err := e.settleStats(ctx, pool, "ai", cfg.SettleQueue, &ai); err != nil {
		return err
	}
	ai.Charged, err = queryInt(ctx, pool, `SELECT count(*) FROM credit_holds WHERE state = 'charged'`)
	if err != nil {
		return err
	}

	e.logf("raw River: inserting and working %d no-op jobs", cfg.SettleJobs)
	raw, err := e.rawSettle(ctx, dbURL)
	if err != nil {
		return err
	}

	e.rep.Details["settle"] = map[string]any{"ai": ai, "raw_river": raw, "queue": cfg.SettleQueue,
		"queue_config": cfg.Limits.QueueConfigs()[cfg.SettleQueue]}
	e.rep.add(Row{Scenario: ScenarioSettle,
		Figure: fmt.Sprintf("settle throughput, %d-job backlog in %s (submit -> fal sim -> charge)", cfg.SettleJobs, cfg.SettleQueue),
		Value:  ai.Throughput, Unit: "jobs/s", Reference: "raw River, no-op jobs, same queue settings", RefValue: ptr(raw.Throughput),
		Target: ">= 0.5x", Pass: ptr(raw.Throughput > 0 && ai.Throughput >= 0.5*raw.Throughput)})
	e.rep.add(Row{Scenario: ScenarioSettle, Figure: "CPU per settled job, worker + Postgres", Value: ai.CPU.Total(), Unit: "ms",
		Display: ai.CPU.String(), Reference: "raw River, no-op jobs", RefValue: ptr(raw.CPU.Total()), RefDisplay: raw.CPU.String()})
	if qc := cfg.Limits.QueueConfigs()[cfg.SettleQueue]; qc.FetchCooldown > 0 {
		e.rep.note("settle: %s fetches at most %d jobs per %s fetch cooldown, a ceiling of %.0f jobs/s for any job, however fast",
			cfg.SettleQueue, qc.MaxWorkers, qc.FetchCooldown, float64(qc.MaxWorkers)/qc.FetchCooldown.Seconds())
	}
	ai.FalSubmits = sim.Stats().Submits
	e.rep.note("settle: %d of %d AI jobs completed and %d charged, %d fal requests; worker RSS %.0f MB (peak %.0f MB) at the end",
		ai.Completed, ai.Jobs, ai.Charged, ai.FalSubmits, ai.RSSMB, ai.HWMMB)
	if err := e.checkInvariants(ctx, pool, ScenarioSettle); err != nil {
		return err
	}
	return errIf(ai.Completed != ai.Jobs || ai.Charged != ai.Jobs || ai.FalSubmits != ai.Jobs,
		"%d jobs: %d completed, %d charged, %d fal requests", ai.Jobs, ai.Completed, ai.Charged, ai.FalSubmits)
}

func (e *env) rawSettle(ctx context.Context, dbURL string) (SettleResult, error) {
	cfg := e.cfg
	res := SettleResult{Jobs: cfg.SettleJobs}
	// The server's pool size (DATABASE_MAX_CONNS default).
	pool, err := openPool(ctx, dbURL, 10)
	if err != nil {
		return res, err
	}
	defer pool.Close()
	ins, err := river.NewClient(riverpgxv5.New(pool), &river.Config{Workers: noopWorkers()})
	if err != nil {
		return res, err
	}
	begin := time.Now()
	for done := 0; done < cfg.SettleJobs; {
		n := min(1000, cfg.SettleJobs-done)
		params := make([]river.InsertManyParams, n)
		for i := range params {
			params[i] = river.InsertManyParams{Args: sampleArgs(e.users[(done+i)%len(e.users)].ID), InsertOpts: &river.InsertOpts{Queue: rawSettleQueue}}
		}
		if _, err := ins.InsertManyFast(ctx, params); err != nil {
			return res, err
		}
		done += n
	}
	res.InsertS = time.Since(begin).Seconds()
	_, _ = pool.Exec(ctx, `VACUUM ANALYZE river_job`)

	qc := cfg.Limits.QueueConfigs()[cfg.SettleQueue]
	rc, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Workers: noopWorkers(),
		Queues:  map[string]river.QueueConfig{rawSettleQueue: qc},
		Logger:  slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return res, err
	}
	e.resetStatements(ctx, pool)
	begin = time.Now()
	if err := rc.Start(ctx); err != nil {
		return res, err
	}
	waits := e.sampleWaits(ctx, pool)
	cpu0 := e.cpuNow(nil)
	err = e.waitQueueDone(ctx, pool, "bench_noop", rawSettleQueue)
	res.CPU = e.cpuNow(nil).per(cpu0, cfg.SettleJobs)
	// The raw client works in this process: its CPU is the worker's.
	res.CPU.ServerMS, res.CPU.LoadgenMS = res.CPU.LoadgenMS, 0
	e.recordWaits("settle.raw_river", waits.finish())
	res.WallS = time.Since(begin).Seconds()
	stopCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_ = rc.Stop(stopCtx)
	cancel()
	if err != nil {
		return res, err
	}
	e.topStatements(ctx, pool, "settle.raw_river")
	return res, e.settleStats(ctx, pool, "bench_noop", rawSettleQueue, &res)
}

// waitQueueDone waits until no job of kind in queue is unfinished, failing
// when the count stops going down for a minute.
func (e *env) waitQueueDone(ctx context.Context, pool *pgxpool.Pool, kind, queue string) error {
	const stall = time.Minute
	// Counting is not free on a big table: poll the big backlogs less often.
	// The throughput comes from the jobs' own timestamps, not from this.
	poll := 100 * time.Millisecond
	if e.cfg.SettleJobs > 5000 {
		poll = time.Second
	}
	last, lastChange := -1, time.Now()
	nextLog := time.Now().Add(10 * time.Second)
	for {
		n, err := queryInt(ctx, pool, `SELECT count(*) FROM river_job WHERE kind = $1 AND queue = $2
   AND state NOT IN ('completed', 'discarded', 'cancelled')`, kind, queue)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if n != last {
			last, lastChange = n, time.Now()
		}
		if time.Since(lastChange) > stall {
			return fmt.Errorf("%d %s jobs in %s made no progress for %s", n, kind, queue, stall)
		}
		if time.Now().After(nextLog) {
			e.logf("  %d left", n)
			nextLog = time.Now().Add(10 * time.Second)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
}

func (e *env) settleStats(ctx context.Context, pool *pgxpool.Pool, kind, queue string, r *SettleResult) error {
	var span *float64
	err := pool.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE state = 'completed'),
       extract(epoch FROM max(finalized_at) - min(attempted_at))::float8
  FROM river_job WHERE kind = $1 AND queue = $2`, kind, queue).Scan(&r.Completed, &span)
	if err != nil {
		return err
	}
	if span != nil && *span > 0 {
		r.SpanS = *span
		r.Throughput = float64(r.Completed) / *span
	}
	return nil
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }
