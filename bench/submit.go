package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// noopArgs are raw River's reference jobs: the same JSON as an AI job's
// args under a kind that no server works and that has no ledger triggers.
type noopArgs struct{ jobs.Args }

// Kind is the raw reference's job kind.
func (noopArgs) Kind() string { return "bench_noop" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
}

func (noopWorker) Work(context.Context, *river.Job[noopArgs]) error { return nil }

func noopWorkers() *river.Workers {
	w := river.NewWorkers()
	river.AddWorker(w, &noopWorker{})
	return w
}

func sampleArgs(userID string) noopArgs {
	return noopArgs{jobs.Args{UserID: userID, Operation: "generate", Model: "fal-ai/flux/dev",
		Params: []byte(`{"prompt":"a gold ring on marble"}`), Cost: 1}}
}

// The raw references insert into queues no server works.
const (
	rawInsertQueue = "bench_raw"
	pgbenchQueue   = "bench_pgbench"
)

var submitBody = []byte(`{"operation":"generate","params":{"prompt":"a gold ring on marble"}}`)

// submitDrainEvery is how many HTTP submits run between two drains of the
// urgent queue: the server runs with ROLE=api, so without draining the
// queue would grow to SubmitJobs deep, which no real urgent queue is, and
// every submit would pay for counting its queue_position at that depth.
const submitDrainEvery = 500

// runSubmit measures POST /v1/jobs against raw River InsertTx and pgbench
// running the same reserve + insert SQL, on one database, with the same
// concurrency and job count. The server runs with ROLE=api, so nothing
// works the jobs; the urgent queue is emptied off the clock every
// submitDrainEvery submits. A last, shorter HTTP run measures submits with
// PickupBacklog jobs queued ahead in the same queue.
func (e *env) runSubmit(ctx context.Context) error {
	cfg := e.cfg
	dbURL, pool, err := e.newDB(ctx, "submit", int32(cfg.Concurrency)+4) //nolint:gosec // small
	if err != nil {
		return err
	}
	defer pool.Close()

	e.newFal()
	srv, err := e.startServer(ctx, "submit-api", dbURL, map[string]string{"ROLE": "api"})
	if err != nil {
		return err
	}
	defer e.stopServer(srv)
	client := newAPIClient(srv.URL, cfg.Concurrency)
	defer client.close()
	submit := func(ctx context.Context, _ int) error {
		u := e.users[rand.IntN(len(e.users))]
		status, body, err := client.do(ctx, http.MethodPost, "/v1/jobs", u.Token, submitBody)
		if err != nil {
			return err
		}
		if status != http.StatusAccepted {
			return &statusError{"POST /v1/jobs", status, string(body)}
		}
		return nil
	}
	drain := func(ctx context.Context) error {
		if _, err := pool.Exec(ctx, `DELETE FROM river_job WHERE queue = 'urgent' AND state = 'available'`); err != nil {
			return err
		}
		_, err := pool.Exec(ctx, `VACUUM river_job`)
		return err
	}
	meter := func() cpuTimes { return e.cpuNow(srv) }
	warm := min(cfg.SubmitJobs/10, 200)
	closedLoop(ctx, cfg.Concurrency, warm, submit)
	if err := drain(ctx); err != nil {
		return err
	}

	e.logf("HTTP: %d submits, %d concurrent", cfg.SubmitJobs, cfg.Concurrency)
	e.resetStatements(ctx, pool)
	stopProfile := e.profile(ctx, srv, "submit", e.estimate(cfg.SubmitJobs, 500))
	waits := e.sampleWaits(ctx, pool)
	httpRes := chunkedLoop(ctx, cfg.Concurrency, cfg.SubmitJobs, submitDrainEvery, submit, drain, meter)
	e.recordWaits("submit.http", waits.finish())
	stopProfile()
	e.topStatements(ctx, pool, "submit.http")

	var deep LoadResult
	if cfg.PickupBacklog > 0 {
		if err := drain(ctx); err != nil {
			return err
		}
		e.logf("HTTP with %d jobs queued ahead in urgent", cfg.PickupBacklog)
		if err := e.insertBacklog(ctx, pool, cfg.PickupBacklog, jobs.QueueUrgent); err != nil {
			return err
		}
		_, _ = pool.Exec(ctx, `VACUUM ANALYZE river_job`)
		e.resetStatements(ctx, pool)
		deep = chunkedLoop(ctx, cfg.Concurrency, min(cfg.SubmitJobs, 1000), min(cfg.SubmitJobs, 1000), submit, nil, meter)
		e.topStatements(ctx, pool, "submit.http_deep_queue")
		e.noteQueuePosition("submit.http_deep_queue", cfg.PickupBacklog)
	}
	e.stopServer(srv)

	e.logf("raw River InsertTx: %d inserts, %d concurrent", cfg.SubmitJobs, cfg.Concurrency)
	rc, err := river.NewClient(riverpgxv5.New(pool), &river.Config{Workers: noopWorkers()})
	if err != nil {
		return err
	}
	insert := func(ctx context.Context, _ int) error {
		u := e.users[rand.IntN(len(e.users))]
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
		if _, err := rc.InsertTx(ctx, tx, sampleArgs(u.ID), &river.InsertOpts{Queue: rawInsertQueue}); err != nil {
			return err
		}
		return tx.Commit(ctx)
	}
	closedLoop(ctx, cfg.Concurrency, warm, insert)
	e.resetStatements(ctx, pool)
	waits = e.sampleWaits(ctx, pool)
	rawRes := chunkedLoop(ctx, cfg.Concurrency, cfg.SubmitJobs, cfg.SubmitJobs, insert, nil, func() cpuTimes { return e.cpuNow(nil) })
	e.recordWaits("submit.raw_river", waits.finish())
	e.topStatements(ctx, pool, "submit.raw_river")

	e.logf("pgbench: %d transactions, %d clients", cfg.SubmitJobs, cfg.Concurrency)
	e.resetStatements(ctx, pool)
	waits = e.sampleWaits(ctx, pool)
	cpu0 := e.cpuNow(nil)
	pgbRes, pgbErr := e.runPgbench(ctx, dbURL, cfg.Concurrency, cfg.SubmitJobs)
	pgbRes.CPU = e.cpuNow(nil).per(cpu0, pgbRes.Ops)
	pgbRes.CPU.LoadgenMS = 0 // pgbench's own CPU is not measured
	e.recordWaits("submit.pgbench", waits.finish())
	e.topStatements(ctx, pool, "submit.pgbench")

	e.rep.Details["submit"] = map[string]any{
		"http": httpRes, "http_deep_queue": deep, "raw_river_insert_tx": rawRes, "pgbench": pgbRes,
		"drain_every": submitDrainEvery,
	}
	fig := fmt.Sprintf("submit throughput, HTTP POST /v1/jobs (%d jobs, %d concurrent)", cfg.SubmitJobs, cfg.Concurrency)
	e.rep.add(Row{Scenario: ScenarioSubmit, Figure: fig, Value: httpRes.Throughput, Unit: "jobs/s",
		Reference: "raw River InsertTx", RefValue: ptr(rawRes.Throughput), Target: ">= 0.6x",
		Pass: ptr(rawRes.Throughput > 0 && httpRes.Throughput >= 0.6*rawRes.Throughput)})
	lat := func(s Summary) string { return fmt.Sprintf("%.1f/%.1f/%.1f ms", s.P50, s.P95, s.P99) }
	e.rep.add(Row{Scenario: ScenarioSubmit, Figure: "submit latency p50/p95/p99, HTTP", Value: httpRes.Latency.P99, Unit: "ms",
		Display: lat(httpRes.Latency), Reference: "raw River InsertTx", RefValue: ptr(rawRes.Latency.P99), RefDisplay: lat(rawRes.Latency),
		Note: "ratio of p99"})
	e.rep.add(Row{Scenario: ScenarioSubmit, Figure: "CPU per submit, server + Postgres", Value: httpRes.CPU.Total(), Unit: "ms",
		Display: httpRes.CPU.String(), Reference: "raw River InsertTx", RefValue: ptr(rawRes.CPU.Total()), RefDisplay: rawRes.CPU.String()})
	if pgbErr != nil {
		e.rep.note("pgbench reference not measured: %v", pgbErr)
	} else {
		e.rep.add(Row{Scenario: ScenarioSubmit, Figure: fig, Value: httpRes.Throughput, Unit: "jobs/s",
			Reference: "pgbench, same reserve+insert SQL", RefValue: ptr(pgbRes.Throughput)})
		e.rep.add(Row{Scenario: ScenarioSubmit, Figure: "submit latency p50/p95/p99, HTTP", Value: httpRes.Latency.P99, Unit: "ms",
			Display: lat(httpRes.Latency), Reference: "pgbench, same reserve+insert SQL", RefValue: ptr(pgbRes.Latency.P99), RefDisplay: lat(pgbRes.Latency)})
		e.rep.add(Row{Scenario: ScenarioSubmit, Figure: "CPU per submit, server + Postgres", Value: httpRes.CPU.Total(), Unit: "ms",
			Display: httpRes.CPU.String(), Reference: "pgbench, same reserve+insert SQL", RefValue: ptr(pgbRes.CPU.Total()), RefDisplay: pgbRes.CPU.String()})
	}
	if deep.Ops > 0 {
		e.rep.add(Row{Scenario: ScenarioSubmit, Figure: fmt.Sprintf("submit p50/p95/p99, HTTP, %d jobs queued ahead in urgent", cfg.PickupBacklog),
			Value: deep.Latency.P99, Unit: "ms", Display: lat(deep.Latency), Reference: "same, shallow queue",
			RefValue: ptr(httpRes.Latency.P99), RefDisplay: lat(httpRes.Latency), Note: "ratio of p99"})
		e.rep.add(Row{Scenario: ScenarioSubmit, Figure: fmt.Sprintf("CPU per submit, %d jobs queued ahead in urgent", cfg.PickupBacklog),
			Value: deep.CPU.Total(), Unit: "ms", Display: deep.CPU.String(), Reference: "same, shallow queue",
			RefValue: ptr(httpRes.CPU.Total()), RefDisplay: httpRes.CPU.String()})
	}
	if httpRes.Errors > 0 || rawRes.Errors > 0 || pgbRes.Errors > 0 || deep.Errors > 0 {
		e.rep.note("submit errors: HTTP %d %v, deep queue %d %v, raw River %d %v, pgbench %d", httpRes.Errors, httpRes.ErrorKinds,
			deep.Errors, deep.ErrorKinds, rawRes.Errors, rawRes.ErrorKinds, pgbRes.Errors)
	}
	e.rep.note("submit: the server ran with ROLE=api (no workers); the urgent queue was emptied off the clock every %d submits, so it stayed as shallow as a worked queue", submitDrainEvery)
	if err := e.checkInvariants(ctx, pool, ScenarioSubmit); err != nil {
		return err
	}
	if httpRes.Errors > 0 || deep.Errors > 0 {
		return fmt.Errorf("%d HTTP submits failed: %v %v", httpRes.Errors+deep.Errors, httpRes.ErrorKinds, deep.ErrorKinds)
	}
	return errors.Join(pgbErr, errIf(rawRes.Errors > 0, "%d raw inserts failed: %v", rawRes.Errors, rawRes.ErrorKinds))
}

// noteQueuePosition notes how much of a run's statement time went to
// counting queue_position, which grows with the queue's depth.
func (e *env) noteQueuePosition(key string, depth int) {
	stats, _ := e.rep.Details[key+".pg_stat_statements"].([]stmtStat)
	var total, count float64
	var calls int64
	for _, s := range stats {
		total += s.TotalMS
		if strings.HasPrefix(s.Query, "SELECT count(*) FROM river_job WHERE state = ") {
			count, calls = s.TotalMS, s.Calls
		}
	}
	if calls > 0 && total > 0 {
		e.rep.note("%s: with %d jobs queued ahead, counting queue_position took %.0f%% of the statement time (%.2f ms per call)",
			key, depth, 100*count/total, count/float64(calls))
	}
}

// estimate guesses how long n operations take at rate per second, for the
// length of a CPU profile.
func (e *env) estimate(n int, rate float64) time.Duration {
	return time.Duration(float64(n) / rate * float64(time.Second))
}

func errIf(cond bool, format string, args ...any) error {
	if !cond {
		return nil
	}
	return fmt.Errorf(format, args...)
}

// loadgenApp is the application_name of the load generator's own
// connections.
const loadgenApp = "aiqueue-loadgen"

func openPool(ctx context.Context, url string, maxConns int32) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	pc.MaxConns = maxConns
	pc.ConnConfig.RuntimeParams["application_name"] = loadgenApp
	return pgxpool.NewWithConfig(ctx, pc)
}

// pgbenchScript is one submit in SQL for a random user, like POST
// /v1/jobs: River's job row, whose insert reserves the job's cost (the
// river_job_reserve_credits trigger), in one transaction.
const pgbenchScript = `\set u random(1, :nusers)
BEGIN;
INSERT INTO river_job (args, kind, max_attempts, metadata, priority, queue, scheduled_at, state, tags)
VALUES (jsonb_build_object('user_id', ` + userIDSQL + `, 'operation', 'generate', 'model', 'fal-ai/flux/dev',
                           'params', '{"prompt":"a gold ring on marble"}'::jsonb, 'cost', 1),
        'ai', 5, '{}', 1, '` + pgbenchQueue + `', now(), 'available', '{}')
RETURNING id AS job_id;
COMMIT;
`

var (
	pgbenchTPS    = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	pgbenchFailed = regexp.MustCompile(`number of failed transactions: (\d+)`)
	pgbenchDone   = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
)

// runPgbench runs the submit script with clients connections for total
// transactions and reads the latency of each from pgbench's log.
func (e *env) runPgbench(ctx context.Context, dbURL string, clients, total int) (LoadResult, error) {
	bin, err := findPgbench(e.pg.Cluster.BinDir())
	if err != nil {
		return LoadResult{}, err
	}
	dir, err := os.MkdirTemp(e.dir, "pgbench-")
	if err != nil {
		return LoadResult{}, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	script := filepath.Join(dir, "submit.sql")
	if err := os.WriteFile(script, []byte(pgbenchScript), 0o644); err != nil {
		return LoadResult{}, err
	}
	perClient := max(total/clients, 1)
	threads := min(clients, runtime.NumCPU())
	args := []string{"-n", "-M", "prepared", "-c", strconv.Itoa(clients), "-j", strconv.Itoa(threads),
		"-t", strconv.Itoa(perClient), "-D", "nusers=" + strconv.Itoa(len(e.users)), "-f", script,
		"-l", "--log-prefix=" + filepath.Join(dir, "log"), dbURL}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	begin := time.Now()
	out, err := cmd.CombinedOutput()
	elapsed := time.Since(begin)
	if err != nil {
		return LoadResult{}, fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	res := LoadResult{ElapsedS: elapsed.Seconds()}
	if m := pgbenchTPS.FindSubmatch(out); m != nil {
		res.Throughput, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	if m := pgbenchFailed.FindSubmatch(out); m != nil {
		res.Errors, _ = strconv.Atoi(string(m[1]))
	}
	lat, err := readPgbenchLogs(filepath.Join(dir, "log"))
	if err != nil {
		return LoadResult{}, err
	}
	res.Latency = Summarize(lat)
	res.Ops = res.Latency.N
	if m := pgbenchDone.FindSubmatch(out); m != nil {
		res.Ops, _ = strconv.Atoi(string(m[1]))
	}
	if res.Throughput == 0 {
		return res, fmt.Errorf("pgbench: no tps in its output:\n%s", out)
	}
	return res, nil
}

// readPgbenchLogs reads the per-transaction latencies (third field, in
// microseconds) of every log file pgbench wrote with prefix.
func readPgbenchLogs(prefix string) ([]time.Duration, error) {
	files, err := filepath.Glob(prefix + ".*")
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, errors.New("pgbench wrote no transaction log")
	}
	var out []time.Duration
	for _, f := range files {
		d, err := parsePgbenchLog(f)
		if err != nil {
			return nil, err
		}
		out = append(out, d...)
	}
	return out, nil
}

func parsePgbenchLog(path string) ([]time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []time.Duration
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		us, err := strconv.ParseInt(fields[2], 10, 64)
		if err != nil {
			continue // "failed" or "skipped"
		}
		out = append(out, time.Duration(us)*time.Microsecond)
	}
	return out, sc.Err()
}

// findPgbench looks for pgbench on PATH, next to the Postgres binaries in
// use, then in /usr/lib/postgresql/*/bin.
func findPgbench(binDir string) (string, error) {
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p, nil
	}
	candidates := []string{filepath.Join(binDir, "pgbench")}
	more, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pgbench")
	candidates = append(candidates, more...)
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return c, nil
		}
	}
	return "", errors.New("pgbench not found (PATH, the Postgres bin directory, /usr/lib/postgresql/*/bin)")
}

// invariantsTimeout bounds the ledger invariant check of a scenario.
const invariantsTimeout = 10 * time.Minute

// checkInvariants runs ledger.CheckInvariants and records the count; any
// violation is an error.
func (e *env) checkInvariants(ctx context.Context, pool *pgxpool.Pool, scenario string) error {
	ctx, cancel := context.WithTimeout(ctx, invariantsTimeout)
	defer cancel()
	begin := time.Now()
	vs, err := ledger.CheckInvariants(ctx, pool)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("ledger invariant check did not finish within %s: %w", invariantsTimeout, err)
		}
		return err
	}
	if took := time.Since(begin); took > 10*time.Second {
		e.rep.note("%s: the ledger invariant check took %s", scenario, took.Round(time.Second))
	}
	e.rep.add(Row{Scenario: scenario, Figure: "ledger invariant violations", Value: float64(len(vs)), Target: "0", Pass: ptr(len(vs) == 0)})
	if len(vs) > 0 {
		if len(vs) > 10 {
			vs = vs[:10]
		}
		return fmt.Errorf("ledger invariants violated: %s", strings.Join(vs, "; "))
	}
	return nil
}

// queryInt runs a single-value query.
func queryInt(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, sql string, args ...any) (int, error) {
	var n int
	err := q.QueryRow(ctx, sql, args...).Scan(&n)
	return n, err
}
