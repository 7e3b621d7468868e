package bench

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// system is one side of versus-seed: processes started fresh for each run
// on data (Postgres, Redis) kept across runs.
type system interface {
	name() string
	start(ctx context.Context) error
	stop() error
	url() string
	tokensFile() string
	// db is the system's database, where credit_holds is.
	db() *pgxpool.Pool
	// backlog is the number of jobs submitted and not finished, from the
	// system's own queue.
	backlog(ctx context.Context) (int, error)
	// drained reports whether the backlog is empty, cheaply: the drain
	// asks ten times a second, and counting a backlog of thousands of
	// jobs each time would load the system it measures.
	drained(ctx context.Context) (bool, error)
	// cpu is the CPU time used so far by each of its processes.
	cpu() map[string]time.Duration
}

// falsimPart is the seed's fal simulator in CPU figures: reported, but not
// part of the system's own cost.
const falsimPart = "falsim"

// BacklogSample is the backlog at a time since the start of wrk.
type BacklogSample struct {
	AtS     float64 `json:"at_s"`
	Backlog int     `json:"backlog"`
}

// VersusRun is one measured run of one system.
type VersusRun struct {
	System string    `json:"system"`
	Round  int       `json:"round"`
	Wrk    WrkResult `json:"wrk"`
	// CPUPerJobMS is CPU time per job charged, by process, from the start
	// of wrk until the backlog drained (or the drain limit).
	CPUPerJobMS map[string]float64 `json:"cpu_per_job_ms"`
	// CPUTotalMS is the system's own CPU per job (every process but the
	// fal simulator).
	CPUTotalMS float64 `json:"cpu_total_ms"`
	// Backlog is sampled every second during wrk.
	Backlog      []BacklogSample `json:"backlog"`
	BacklogMax   int             `json:"backlog_max"`
	BacklogAtEnd int             `json:"backlog_at_end"`
	// DrainS is how long after wrk ended the backlog took to reach 0;
	// Drained is false when it did not within the limit (BacklogLeft
	// then).
	DrainS      float64 `json:"drain_s"`
	Drained     bool    `json:"drained"`
	BacklogLeft int     `json:"backlog_left,omitempty"`
	// Charged is the holds charged from the start of wrk to the end of the
	// drain: the accepted submits plus those still in flight when wrk
	// stopped. Reserved is the system's holds still reserved after it.
	Charged  int `json:"charged"`
	Reserved int `json:"reserved"`
	// StatStatements marks the aiqueue run with pg_stat_statements loaded:
	// reported, not in the ratios.
	StatStatements bool        `json:"stat_statements,omitempty"`
	Waits          []WaitShare `json:"pg_waits,omitempty"`
	// LockWaits are the statements waiting on heavyweight locks, by wait
	// event, as shares of all such samples (the pg_stat_statements run).
	LockWaits []WaitShare `json:"pg_lock_waits,omitempty"`
	// Fsync is the disk's flush time during wrk, under the directory of
	// both systems' data, probed every 100 ms.
	Fsync FsyncProbe `json:"fsync"`
}

// PgbenchJob is pgbench running the bare SQL of one aiqueue job.
type PgbenchJob struct {
	// Notify is false for the run with the river_job_notify_final trigger
	// disabled (no NOTIFY at a job's completion).
	Notify        bool    `json:"notify"`
	Clients       int     `json:"clients"`
	DurationS     float64 `json:"duration_s"`
	Transactions  int     `json:"transactions"`
	TPS           float64 `json:"tps"`
	PostgresMSJob float64 `json:"postgres_cpu_per_job_ms"`
	Errors        int     `json:"errors"`
}

// VersusResult is the versus-seed scenario's details.
type VersusResult struct {
	Load       WrkLoad               `json:"load"`
	Users      int                   `json:"users"`
	Runs       []VersusRun           `json:"runs"`
	Pgbench    []PgbenchJob          `json:"pgbench_bare_sql"`
	Statements map[string][]StmtStat `json:"pg_stat_statements,omitempty"`
	// Functions are the PL/pgSQL functions and triggers by their own time
	// (pg_stat_user_functions, track_functions = pl) in the same run.
	Functions []FuncStat `json:"pg_stat_user_functions,omitempty"`
}

//go:embed pgbench_submit.sql
var pgbenchSubmitSQL string

//go:embed pgbench_settle.sql
var pgbenchSettleSQL string

// pgbenchJobSQL is the bare SQL of one aiqueue job: the submit (River's
// insert, whose trigger reserves the credits), River's fetch marking it
// running, and its completion, whose trigger charges the hold.
func pgbenchJobSQL() string { return pgbenchSubmitSQL + "\n" + pgbenchSettleSQL }

// versusSettings are the settings of both systems' clusters: initdb's
// defaults (fsync on, synchronous_commit on) and pglocal's.
var versusSettings = map[string]string{}

// runVersusSeed measures aiqueue against the seed design under the same
// wrk load, in interleaved runs (seed, aiqueue, seed, aiqueue ...), each
// system with its own Postgres cluster. After each round pgbench runs the
// bare SQL of a job on a third cluster at the same concurrency, with and
// without the job-state NOTIFY; at the end one more aiqueue run with
// pg_stat_statements loaded says where Postgres's time goes.
func (e *env) runVersusSeed(ctx context.Context) error {
	cfg := e.cfg
	seedDir, err := seedTools(ctx)
	if err != nil {
		return err
	}
	if e.falsimBin == "" {
		e.logf("building the fal simulator")
		if e.falsimBin, err = BuildFalsim(ctx, e.dir); err != nil {
			return err
		}
	}
	users := e.users[:cfg.VersusUsers]
	e.logf("starting the seed design (Postgres, redis-server with appendfsync always)")
	seed, err := e.startSeed(ctx, seedDir, versusSettings, users)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	defer seed.close()
	e.logf("starting aiqueue's Postgres")
	aq, err := e.startAiqueue(ctx, versusSettings, users)
	if err != nil {
		return fmt.Errorf("aiqueue: %w", err)
	}
	defer aq.close()
	bare, err := e.startBareSQL(ctx, versusSettings, len(users))
	if err != nil {
		return fmt.Errorf("bare SQL: %w", err)
	}
	defer func() { _ = bare.Stop() }()

	res := VersusResult{Load: cfg.Wrk, Users: len(users), Statements: map[string][]StmtStat{}}
	var errs []error
	for round := 1; round <= cfg.Rounds; round++ {
		for _, sys := range []system{seed, aq} {
			run, err := e.versusRun(ctx, sys, round, false)
			if err != nil {
				return fmt.Errorf("%s round %d: %w", sys.name(), round, err)
			}
			res.Runs = append(res.Runs, run)
		}
		for _, notify := range []bool{true, false} {
			pgb, err := e.pgbenchJob(ctx, bare, notify)
			if err != nil {
				errs = append(errs, err)
			} else {
				res.Pgbench = append(res.Pgbench, pgb)
			}
		}
	}

	e.logf("aiqueue once more with pg_stat_statements")
	stat := maps.Clone(versusSettings)
	stat["shared_preload_libraries"] = "pg_stat_statements"
	stat["pg_stat_statements.track"] = "all"
	stat["track_functions"] = "pl"
	stat["pg_stat_statements.track_planning"] = "on"
	if err := aq.restartCluster(ctx, stat); err != nil {
		return err
	}
	if _, err := aq.pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
		return err
	}
	aq.pprof = e.cfg.ProfileDir != ""
	run, err := e.versusRun(ctx, aq, 0, true)
	if err != nil {
		return fmt.Errorf("aiqueue with pg_stat_statements: %w", err)
	}
	res.Runs = append(res.Runs, run)
	for _, top := range []bool{true, false} {
		stats, err := statements(ctx, aq.pool, top, 20)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		key := "top_level"
		if !top {
			key = "nested"
		}
		res.Statements[key] = stats
	}
	if res.Functions, err = functions(ctx, aq.pool, 10); err != nil {
		errs = append(errs, err)
	}

	e.rep.Details[ScenarioVersusSeed] = res
	e.reportVersus(res)
	if err := e.checkInvariants(ctx, aq.pool, ScenarioVersusSeed); err != nil {
		errs = append(errs, err)
	}
	for _, r := range res.Runs {
		if !r.Drained {
			e.rep.note("versus-seed: %s round %d did not drain within %s: %d jobs left", r.System, r.Round, cfg.DrainLimit, r.BacklogLeft)
		}
		if r.Reserved > 0 && r.Drained {
			errs = append(errs, fmt.Errorf("%s round %d: %d holds still reserved after the backlog drained", r.System, r.Round, r.Reserved))
		}
	}
	return errors.Join(errs...)
}

// Accepted is the number of submits answered 2xx.
func (r VersusRun) Accepted() int { return r.Wrk.Accepted }

// jobs is what a run's figures per job divide by: the holds charged from
// the start of wrk to the end of the drain (wrk does not count the
// answers still in flight when it stops; the systems work those jobs
// too), at least the accepted submits, at least 1.
func (r VersusRun) jobs() float64 { return float64(max(r.Charged, r.Accepted(), 1)) }

// versusRun starts sys, warms it up, measures one wrk run with the backlog
// sampled every second, waits for the backlog to drain and stops sys.
func (e *env) versusRun(ctx context.Context, sys system, round int, stat bool) (VersusRun, error) {
	cfg := e.cfg
	run := VersusRun{System: sys.name(), Round: round, StatStatements: stat}
	label := fmt.Sprintf("%s round %d", sys.name(), round)
	if stat {
		label = sys.name() + " with pg_stat_statements"
	}
	e.logf("%s: starting", label)
	if err := sys.start(ctx); err != nil {
		return run, err
	}
	defer func() {
		if err := sys.stop(); err != nil {
			e.rep.note("%s: %v", label, err)
		}
	}()
	dir, err := os.MkdirTemp(e.dir, "wrk-")
	if err != nil {
		return run, err
	}
	if cfg.Warmup > 0 {
		warm := cfg.Wrk
		warm.Duration = cfg.Warmup
		if _, err := runWrk(ctx, dir, sys.url(), sys.tokensFile(), warm); err != nil {
			return run, fmt.Errorf("warm-up: %w", err)
		}
		if _, _, err := e.drain(ctx, sys); err != nil {
			return run, err
		}
	}
	charged0, err := queryInt(ctx, sys.db(), `SELECT count(*) FROM credit_holds WHERE state = 'charged'`)
	if err != nil {
		return run, err
	}
	var waits, lockWaits *waitSampler
	if stat {
		_, _ = sys.db().Exec(ctx, `SELECT pg_stat_statements_reset(), pg_stat_reset()`)
		waits = e.sampleWaits(ctx, sys.db())
		lockWaits = e.sampleLockWaits(ctx, sys.db())
	}
	stopProfile := func() {}
	if s, ok := sys.(*aqSystem); ok && stat {
		stopProfile = e.profile(ctx, s.srv, "versus-aiqueue", cfg.Wrk.Duration)
	}

	e.logf("%s: %s", label, cfg.Wrk)
	cpu0 := sys.cpu()
	begin := time.Now()
	sampler := sampleBacklog(ctx, sys, begin)
	fsync := probeFsync(e.dir, 100*time.Millisecond)
	wrkRes, wrkErr := runWrk(ctx, dir, sys.url(), sys.tokensFile(), cfg.Wrk)
	run.Backlog = sampler.finish()
	run.Fsync, err = fsync.finish()
	if err := errors.Join(wrkErr, err); err != nil {
		return run, err
	}
	run.Wrk = wrkRes
	if n, err := sys.backlog(ctx); err == nil {
		run.BacklogAtEnd = n
		run.Backlog = append(run.Backlog, BacklogSample{AtS: time.Since(begin).Seconds(), Backlog: n})
	}
	for _, s := range run.Backlog {
		run.BacklogMax = max(run.BacklogMax, s.Backlog)
	}
	drainS, left, err := e.drain(ctx, sys)
	if err != nil {
		return run, err
	}
	run.DrainS, run.Drained, run.BacklogLeft = drainS, left == 0, left
	cpu1 := sys.cpu()
	if waits != nil {
		run.Waits = waits.finish()
		run.LockWaits = lockWaits.finish()
	}
	stopProfile()

	charged1, err := queryInt(ctx, sys.db(), `SELECT count(*) FROM credit_holds WHERE state = 'charged'`)
	if err != nil {
		return run, err
	}
	run.Charged = charged1 - charged0
	run.CPUPerJobMS = map[string]float64{}
	for name, t1 := range cpu1 {
		ms := float64(t1-cpu0[name]) / float64(time.Millisecond) / run.jobs()
		run.CPUPerJobMS[name] = ms
		if name != falsimPart {
			run.CPUTotalMS += ms
		}
	}
	if run.Reserved, err = queryInt(ctx, sys.db(), `SELECT count(*) FROM credit_holds WHERE state = 'reserved'`); err != nil {
		return run, err
	}
	e.logf("%s: %.0f requests/s, p50 %.1f ms, p99 %.1f ms, %d non-2xx, backlog max %d, drained in %.1fs, CPU per job %s, fsync p50/p99/max %.2f/%.1f/%.1f ms",
		label, run.Wrk.RequestsPerS, run.Wrk.P50MS, run.Wrk.P99MS, run.Wrk.Non2xx, run.BacklogMax, run.DrainS, cpuString(run),
		run.Fsync.P50MS, run.Fsync.P99MS, run.Fsync.MaxMS)
	return run, nil
}

// drain waits until the system's backlog is 0, at most DrainLimit; it
// returns how long it waited and what was left.
func (e *env) drain(ctx context.Context, sys system) (float64, int, error) {
	begin := time.Now()
	for {
		done, err := sys.drained(ctx)
		if err != nil {
			return 0, 0, err
		}
		if done {
			return time.Since(begin).Seconds(), 0, nil
		}
		if time.Since(begin) > e.cfg.DrainLimit {
			n, err := sys.backlog(ctx)
			return time.Since(begin).Seconds(), n, err
		}
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// backlogSampler reads a system's backlog every second.
type backlogSampler struct {
	stop    chan struct{}
	done    chan struct{}
	samples []BacklogSample
}

func sampleBacklog(ctx context.Context, sys system, begin time.Time) *backlogSampler {
	s := &backlogSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if n, err := sys.backlog(ctx); err == nil {
					s.samples = append(s.samples, BacklogSample{AtS: time.Since(begin).Seconds(), Backlog: n})
				}
			}
		}
	}()
	return s
}

func (s *backlogSampler) finish() []BacklogSample {
	close(s.stop)
	<-s.done
	return s.samples
}

// pgbenchJob runs the bare SQL of one job on its own cluster with as many
// clients as wrk has connections, for as long, and measures the cluster's
// CPU per job. Without notify, the job-state NOTIFY trigger is disabled for
// the run: every notifying commit holds Postgres's global notify lock
// through its WAL flush, which serializes the completions.
func (e *env) pgbenchJob(ctx context.Context, bare *Postgres, notify bool) (PgbenchJob, error) {
	cfg := e.cfg
	res := PgbenchJob{Clients: cfg.Wrk.Connections, Notify: notify}
	pool, err := openPool(ctx, bare.Cluster.URL(bareSQLDB), 1)
	if err != nil {
		return res, err
	}
	defer pool.Close()
	if !notify {
		if _, err := pool.Exec(ctx, `ALTER TABLE river_job DISABLE TRIGGER river_job_notify_final`); err != nil {
			return res, err
		}
		defer func() { _, _ = pool.Exec(ctx, `ALTER TABLE river_job ENABLE TRIGGER river_job_notify_final`) }()
	}
	bin, err := findPgbench(bare.Cluster.BinDir())
	if err != nil {
		return res, err
	}
	dir, err := os.MkdirTemp(e.dir, "pgbench-job-")
	if err != nil {
		return res, err
	}
	script := filepath.Join(dir, "job.sql")
	if err := os.WriteFile(script, []byte(pgbenchJobSQL()), 0o644); err != nil {
		return res, err
	}
	secs := max(int(cfg.Wrk.Duration/time.Second), 1)
	e.logf("pgbench: the bare SQL of a job (job-state NOTIFY %v), %d clients, %ds", notify, res.Clients, secs)
	cmd := exec.CommandContext(ctx, bin, "-n", "-M", "prepared", "-c", strconv.Itoa(res.Clients),
		"-j", strconv.Itoa(min(cfg.Wrk.Threads, res.Clients)), "-T", strconv.Itoa(secs),
		"-D", "users="+strconv.Itoa(cfg.VersusUsers), "-D", "client_init=0", "-f", script, bare.Cluster.URL(bareSQLDB))
	cmd.Dir = dir
	if err := quiesce(ctx, pool); err != nil {
		return res, err
	}
	cpu0 := clusterCPU(bare.Cluster.Dir())
	begin := time.Now()
	out, err := cmd.CombinedOutput()
	res.DurationS = time.Since(begin).Seconds()
	if err := quiesce(ctx, pool); err != nil {
		return res, err
	}
	cpu1 := clusterCPU(bare.Cluster.Dir())
	if err != nil {
		return res, fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	if m := pgbenchDone.FindSubmatch(out); m != nil {
		res.Transactions, _ = strconv.Atoi(string(m[1]))
	}
	if m := pgbenchTPS.FindSubmatch(out); m != nil {
		res.TPS, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	if m := pgbenchFailed.FindSubmatch(out); m != nil {
		res.Errors, _ = strconv.Atoi(string(m[1]))
	}
	if res.Transactions == 0 {
		return res, fmt.Errorf("pgbench ran no transaction:\n%s", out)
	}
	res.PostgresMSJob = float64(cpu1-cpu0) / float64(time.Millisecond) / float64(res.Transactions)
	e.logf("pgbench: %.0f jobs/s, Postgres CPU %.2f ms per job", res.TPS, res.PostgresMSJob)
	return res, nil
}

// quiesce waits until the cluster of pool has no client backend but the
// load generator's own (openPool names them), so that backends of a stopped client have exited and their
// CPU time is in the postmaster's children's time before a reading; a
// backend's CPU would otherwise land in whichever reading first sees it
// reaped.
func quiesce(ctx context.Context, pool *pgxpool.Pool) error {
	err := waitFor(ctx, 30*time.Second, func() (bool, error) {
		n, err := queryInt(ctx, pool, `SELECT count(*) FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND application_name <> $1`, loadgenApp)
		return n == 0, err
	})
	time.Sleep(100 * time.Millisecond) // the postmaster reaps at once; be generous
	return err
}

// StmtStat is one pg_stat_statements row, with its share of the run's
// statement time and its time per job.
type StmtStat struct {
	Query    string  `json:"query"`
	Calls    int64   `json:"calls"`
	TotalMS  float64 `json:"total_ms"`
	MeanMS   float64 `json:"mean_ms"`
	Rows     int64   `json:"rows"`
	Share    float64 `json:"share"`
	TopLevel bool    `json:"top_level"`
	// Plans and PlanMS: how often Postgres planned the statement and how
	// long that took (pg_stat_statements.track_planning), apart from
	// TotalMS; a statement planned at nearly every call runs on custom
	// plans (package plans).
	Plans  int64   `json:"plans"`
	PlanMS float64 `json:"plan_ms"`
}

// statements reads the statements that took the most time, top-level ones
// (what clients sent) or nested ones (run inside functions and triggers,
// whose time is also in their top-level statement).
func statements(ctx context.Context, pool *pgxpool.Pool, topLevel bool, limit int) ([]StmtStat, error) {
	rows, err := pool.Query(ctx, `
WITH s AS (
  SELECT query, calls, total_exec_time, mean_exec_time, rows, toplevel, plans, total_plan_time
    FROM pg_stat_statements
   WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND toplevel = $1
     AND query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%pg_stat_activity%'
)
SELECT left(regexp_replace(query, '\s+', ' ', 'g'), 400), calls, total_exec_time, mean_exec_time, rows, toplevel,
       total_exec_time / NULLIF(sum(total_exec_time) OVER (), 0), plans, total_plan_time
  FROM s ORDER BY total_exec_time DESC LIMIT $2`, topLevel, limit)
	if err != nil {
		return nil, fmt.Errorf("pg_stat_statements: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (StmtStat, error) {
		var s StmtStat
		var share *float64
		err := r.Scan(&s.Query, &s.Calls, &s.TotalMS, &s.MeanMS, &s.Rows, &s.TopLevel, &share, &s.Plans, &s.PlanMS)
		if share != nil {
			s.Share = *share
		}
		return s, err
	})
}

// FuncStat is one function's line of pg_stat_user_functions.
type FuncStat struct {
	Name    string  `json:"name"`
	Calls   int64   `json:"calls"`
	SelfMS  float64 `json:"self_ms"`
	TotalMS float64 `json:"total_ms"`
}

// functions reads the PL/pgSQL functions (triggers included) that took the
// most time of their own: what running them costs beyond the statements
// pg_stat_statements already names.
func functions(ctx context.Context, pool *pgxpool.Pool, limit int) ([]FuncStat, error) {
	rows, err := pool.Query(ctx, `
SELECT funcname, calls, self_time, total_time FROM pg_stat_user_functions
 ORDER BY self_time DESC LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("pg_stat_user_functions: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[FuncStat])
}

func cpuString(r VersusRun) string {
	order := []string{"server", "route", "worker", "redis", "postgres"}
	var parts []string
	for _, k := range order {
		if v, ok := r.CPUPerJobMS[k]; ok {
			parts = append(parts, fmt.Sprintf("%s %.2f", k, v))
		}
	}
	s := strings.Join(parts, " + ") + fmt.Sprintf(" = %.2f ms", r.CPUTotalMS)
	if v, ok := r.CPUPerJobMS[falsimPart]; ok {
		s += fmt.Sprintf(" (+ falsim %.2f)", v)
	}
	return s
}

// reportVersus adds the scenario's rows: per round, aiqueue against the
// seed run just before it; over all rounds; the backlog; Postgres CPU per
// job against pgbench; and the top statements as notes.
func (e *env) reportVersus(res VersusResult) {
	runs := func(system string) []VersusRun {
		var out []VersusRun
		for _, r := range res.Runs {
			if r.System == system && !r.StatStatements {
				out = append(out, r)
			}
		}
		return out
	}
	seeds, aqs := runs("seed"), runs("aiqueue")
	load := fmt.Sprintf("%s, %d users", res.Load, res.Users)
	// rateRow is a requests/s row against the seed's. A paced load asks
	// whether each system keeps up with it, not how much it takes:
	// requests/s is then the pace for both, without the 1.5x target.
	rateRow := func(figure string, a, s float64) Row {
		r := Row{Scenario: ScenarioVersusSeed, Figure: figure, Value: a, Unit: "req/s", Reference: "seed design", RefValue: ptr(s)}
		if res.Load.Rate <= 0 {
			r.Target, r.Pass = ">= 1.5x", ptr(s > 0 && a >= 1.5*s)
		}
		return r
	}
	p5099 := func(r VersusRun) string { return fmt.Sprintf("%.1f/%.1f ms", r.Wrk.P50MS, r.Wrk.P99MS) }
	for i := range min(len(seeds), len(aqs)) {
		s, a := seeds[i], aqs[i]
		e.rep.add(rateRow(fmt.Sprintf("round %d: requests/s (%s; non-2xx %d vs %d)", i+1, load, a.Wrk.Non2xx, s.Wrk.Non2xx),
			a.Wrk.RequestsPerS, s.Wrk.RequestsPerS))
		e.rep.add(Row{Scenario: ScenarioVersusSeed, Figure: fmt.Sprintf("round %d: latency p50/p99", i+1), Value: a.Wrk.P99MS, Unit: "ms",
			Display: p5099(a), Reference: "seed design", RefValue: ptr(s.Wrk.P99MS), RefDisplay: p5099(s),
			Target: "lower p99", Pass: ptr(a.Wrk.P99MS < s.Wrk.P99MS), Note: "ratio of p99"})
		e.rep.add(Row{Scenario: ScenarioVersusSeed, Figure: fmt.Sprintf("round %d: CPU per job", i+1), Value: a.CPUTotalMS, Unit: "ms",
			Display: cpuString(a), Reference: "seed design", RefValue: ptr(s.CPUTotalMS), RefDisplay: cpuString(s)})
		backlog := func(r VersusRun) string {
			d := fmt.Sprintf("drained in %.1f s", r.DrainS)
			if !r.Drained {
				d = fmt.Sprintf("%d left after %.0f s", r.BacklogLeft, r.DrainS)
			}
			return fmt.Sprintf("max %d, at end %d, %s", r.BacklogMax, r.BacklogAtEnd, d)
		}
		flush := func(r VersusRun) string {
			return fmt.Sprintf("%.2f/%.1f/%.1f ms", r.Fsync.P50MS, r.Fsync.P99MS, r.Fsync.MaxMS)
		}
		e.rep.add(Row{Scenario: ScenarioVersusSeed, Figure: fmt.Sprintf("round %d: disk flush p50/p99/max during wrk (4 KiB write + fsync)", i+1),
			Value: a.Fsync.P99MS, Unit: "ms", Display: flush(a), Reference: "during the seed's run", RefValue: ptr(s.Fsync.P99MS), RefDisplay: flush(s),
			Note: "the machine, not a system: both wait for it on every durable commit"})
		e.rep.add(Row{Scenario: ScenarioVersusSeed, Figure: fmt.Sprintf("round %d: backlog (submitted, not finished)", i+1),
			Value: float64(a.BacklogMax), Display: backlog(a), Reference: "seed design", RefValue: ptr(float64(s.BacklogMax)), RefDisplay: backlog(s),
			Target: "<= 1 s of submits", Pass: ptr(keepsUp(a))})
		e.rep.add(Row{Scenario: ScenarioVersusSeed, Figure: fmt.Sprintf("round %d: jobs finished per second, during wrk / draining after it", i+1),
			Value: workRates(a)[0], Display: workDisplay(a), Reference: "seed design", RefValue: ptr(workRates(s)[0]), RefDisplay: workDisplay(s),
			Note: "during wrk: accepted minus the backlog at its end; how much of the machine work gets while submits come in"})
	}
	if len(aqs) > 0 && len(seeds) > 0 {
		mean := func(rs []VersusRun, f func(VersusRun) float64) float64 {
			var sum float64
			for _, r := range rs {
				sum += f(r)
			}
			return sum / float64(len(rs))
		}
		rps := func(r VersusRun) float64 { return r.Wrk.RequestsPerS }
		p99 := func(r VersusRun) float64 { return r.Wrk.P99MS }
		e.rep.add(rateRow(fmt.Sprintf("all %d rounds: mean requests/s", len(aqs)), mean(aqs, rps), mean(seeds, rps)))
		e.rep.add(Row{Scenario: ScenarioVersusSeed, Figure: fmt.Sprintf("all %d rounds: mean p99", len(aqs)), Value: mean(aqs, p99), Unit: "ms",
			Reference: "seed design", RefValue: ptr(mean(seeds, p99)), Target: "lower", Pass: ptr(mean(aqs, p99) < mean(seeds, p99))})
		keeps := true
		for _, r := range aqs {
			keeps = keeps && keepsUp(r)
		}
		e.rep.add(Row{Scenario: ScenarioVersusSeed, Figure: "aiqueue's work keeps up with submits (every round)", Value: b2f(keeps),
			Display: strconv.FormatBool(keeps), Target: "backlog <= 1 s of submits", Pass: ptr(keeps)})
		// The CPU budget: work keeps up with submits at a rate only if the
		// machine's CPUs can do a job's whole cost that often. The rows
		// say what rate a run's CPU per job allows, every process on the
		// machine counted (the seed's fal simulator and wrk included;
		// aiqueue's simulator is inside its server), against the rate the
		// target needs: an upper bound, every core busy with this load
		// and nothing else.
		need, needs := 1.5*mean(seeds, rps), "1.5x the seed's mean requests/s"
		if res.Load.Rate > 0 {
			need, needs = res.Load.Rate, "the pace"
		}
		for _, side := range []struct {
			name string
			rs   []VersusRun
		}{{"aiqueue", aqs}, {"the seed design", seeds}} {
			per := mean(side.rs, machineMSPerJob)
			allow := float64(e.rep.Machine.CPUs) * 1000 / per
			e.rep.add(Row{Scenario: ScenarioVersusSeed,
				Figure: fmt.Sprintf("jobs/s %d CPUs allow at %s's CPU per job with wrk's (mean of rounds)", e.rep.Machine.CPUs, side.name),
				Value:  allow, Unit: "jobs/s", Display: fmt.Sprintf("%.0f jobs/s (%.2f ms a job)", allow, per),
				Reference: "work keeping up at " + needs, RefValue: ptr(need),
				Note: "at most: every core on this load alone; work keeps up only below it"})
		}
		pg := func(r VersusRun) float64 { return r.CPUPerJobMS["postgres"] }
		for _, notify := range []bool{true, false} {
			var cpu, tps float64
			var n int
			for _, p := range res.Pgbench {
				if p.Notify == notify {
					cpu += p.PostgresMSJob
					tps += p.TPS
					n++
				}
			}
			if n == 0 {
				continue
			}
			cpu, tps = cpu/float64(n), tps/float64(n)
			if notify {
				e.rep.add(Row{Scenario: ScenarioVersusSeed, Figure: "Postgres CPU per job, aiqueue (mean of rounds)", Value: mean(aqs, pg), Unit: "ms",
					Reference: fmt.Sprintf("pgbench, bare SQL of a job (insert+reserve, fetch, complete+settle; %.0f jobs/s)", tps), RefValue: ptr(cpu),
					Target: "<= 2x", Pass: ptr(mean(aqs, pg) <= 2*cpu)})
			} else {
				e.rep.add(Row{Scenario: ScenarioVersusSeed, Figure: "Postgres CPU per job, aiqueue (mean of rounds)", Value: mean(aqs, pg), Unit: "ms",
					Reference: fmt.Sprintf("same bare SQL without the job-state NOTIFY trigger (%.0f jobs/s)", tps), RefValue: ptr(cpu)})
			}
		}
		e.rep.add(Row{Scenario: ScenarioVersusSeed, Figure: "Postgres CPU per job, aiqueue vs the seed's (mean of rounds)", Value: mean(aqs, pg), Unit: "ms",
			Reference: "seed design (reserve_credit + confirm_credit)", RefValue: ptr(mean(seeds, pg))})
	}
	for _, r := range res.Runs {
		if r.StatStatements {
			e.rep.note("versus-seed, aiqueue with pg_stat_statements (not in the ratios): %.0f requests/s, p99 %.1f ms, CPU per job %s",
				r.Wrk.RequestsPerS, r.Wrk.P99MS, cpuString(r))
			var parts []string
			for i, w := range r.Waits {
				if i == 6 || w.Share < 0.02 {
					break
				}
				parts = append(parts, fmt.Sprintf("%.0f%% %s", 100*w.Share, w.State))
			}
			if len(parts) > 0 {
				e.rep.note("versus-seed, aiqueue: busy Postgres backends were %s", strings.Join(parts, ", "))
			}
			for i, w := range r.LockWaits {
				if i == 4 {
					break
				}
				e.rep.note("versus-seed, aiqueue: %.0f%% of the lock waits: %s", 100*w.Share, w.State)
			}
			jobs := r.jobs()
			for i, f := range res.Functions {
				if i == 6 {
					break
				}
				e.rep.note("versus-seed, aiqueue function %d: %s, %.2f calls and %.3f ms of its own per job (%.3f ms with what it calls)",
					i+1, f.Name, float64(f.Calls)/jobs, f.SelfMS/jobs, f.TotalMS/jobs)
			}
			for _, k := range []string{"top_level", "nested"} {
				for i, s := range res.Statements[k] {
					if i == 6 {
						break
					}
					e.rep.note("versus-seed, aiqueue %s statement %d: %.0f%% of the time, %.3f ms per call (lock waits included), %.2f calls and %.2f ms per job: %s",
						strings.ReplaceAll(k, "_", "-"), i+1, 100*s.Share, s.MeanMS, float64(s.Calls)/jobs, s.TotalMS/jobs, shorten(s.Query, 120))
				}
			}
		}
	}
}

// workRates are the jobs a run finished per second during wrk (accepted
// minus the backlog left at its end) and while draining after it.
func workRates(r VersusRun) [2]float64 {
	var out [2]float64
	if r.Wrk.DurationS > 0 {
		out[0] = float64(max(r.Accepted()-r.BacklogAtEnd, 0)) / r.Wrk.DurationS
	}
	if r.DrainS > 0 {
		out[1] = float64(r.BacklogAtEnd-r.BacklogLeft) / r.DrainS
	}
	return out
}

func workDisplay(r VersusRun) string {
	w := workRates(r)
	return fmt.Sprintf("%.0f / %.0f jobs/s", w[0], w[1])
}

// keepsUp reports whether a run's backlog stayed within one second's worth
// of its submits.
func keepsUp(r VersusRun) bool {
	return r.Wrk.RequestsPerS > 0 && float64(r.BacklogMax) <= r.Wrk.RequestsPerS
}

// machineMSPerJob is the CPU a run's job cost the machine: every process
// of the system (its fal simulator too) and wrk's share.
func machineMSPerJob(r VersusRun) float64 {
	ms := r.Wrk.CPUMS / r.jobs()
	for _, v := range r.CPUPerJobMS {
		ms += v
	}
	return ms
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
