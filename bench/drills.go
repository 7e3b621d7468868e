package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// Drills, in the order RunDrills runs them.
const (
	DrillKill      = "kill"
	DrillPGRestart = "pg-restart"
	// DrillPGCrash crashes Postgres (pg_ctl stop -m immediate: no shutdown
	// checkpoint, every backend killed) and starts it again a few seconds
	// later, under load; the servers are not restarted.
	DrillPGCrash = "pg-crash"
	DrillFal     = "fal"
	DrillSIGTERM = "sigterm"
)

// AllDrills lists every drill.
var AllDrills = []string{DrillKill, DrillPGRestart, DrillPGCrash, DrillFal, DrillSIGTERM}

// The server's settings of River's own rescue, which the drills shorten
// with DrillConfig.ShortRescue.
const (
	envRescueAfter    = "RIVER_RESCUE_AFTER"
	envAttemptTimeout = "JOB_ATTEMPT_TIMEOUT"
)

// riverRescuerInterval and riverLeaderTTL are River's defaults: how often the
// leader looks for stuck jobs, and how long a killed leader's lease lasts.
const (
	riverRescuerInterval = 30 * time.Second
	riverLeaderTTL       = 15 * time.Second
)

// DrillConfig sizes the drills.
type DrillConfig struct {
	Scale  string   `json:"scale"`
	Drills []string `json:"drills,omitempty"`
	// Kills is how many times the kill drill kills -9 a worker.
	Kills int `json:"kills"`
	// Restarts is how many times Postgres restarts; Crashes how many times
	// it crashes, staying down CrashDown (+-50%) each time; Rounds how many
	// SIGTERM rounds (every worker and the API once per round).
	Restarts  int           `json:"restarts"`
	Crashes   int           `json:"crashes"`
	CrashDown time.Duration `json:"crash_down"`
	Rounds    int           `json:"rounds"`
	// Rate is the submits per second during a drill.
	Rate float64 `json:"rate"`
	// FalLatency is the simulated fal latency of every request.
	FalLatency time.Duration `json:"fal_latency"`
	// Workers is the number of ROLE=worker processes.
	Workers int `json:"workers"`
	// Gap is the time between faults (randomized +-50%).
	Gap time.Duration `json:"gap"`
	// Storm is how long every fal key answers 429 in the fal drill.
	Storm time.Duration `json:"storm"`
	// RevokeFor is how long key-2 answers 401 after the storm; 0 means
	// until the end of the drill.
	RevokeFor time.Duration `json:"revoke_for"`
	// Settle is the longest a drill waits for every job to end after the
	// load stopped; 0 means long enough for River's rescuer.
	Settle time.Duration `json:"settle"`
	// ShortRescue sets RIVER_RESCUE_AFTER=15s and JOB_ATTEMPT_TIMEOUT=10s,
	// shortening River's own rescue of a killed worker's jobs; by default
	// the servers keep their defaults and the worker heartbeat hands a dead
	// process's jobs back.
	ShortRescue bool `json:"short_rescue"`

	ServerBin string    `json:"-"`
	WorkDir   string    `json:"-"`
	Log       io.Writer `json:"-"`
}

// FullDrillConfig is make drills.
func FullDrillConfig() DrillConfig {
	return DrillConfig{Scale: "full", Kills: 10, Restarts: 3, Crashes: 6, CrashDown: 3 * time.Second, Rounds: 3, Rate: 20,
		FalLatency: time.Second, Workers: 2, Gap: 3 * time.Second, Storm: 5 * time.Second}
}

// SmokeDrillConfig runs every drill once in seconds. Its kill drill does not
// wait for River's rescuer unless the server's rescue delay is short.
func SmokeDrillConfig() DrillConfig {
	return DrillConfig{Scale: "smoke", Kills: 1, Restarts: 1, Crashes: 1, CrashDown: time.Second, Rounds: 1, Rate: 15,
		FalLatency: 300 * time.Millisecond, Workers: 2, Gap: 1200 * time.Millisecond, Storm: 1500 * time.Millisecond,
		RevokeFor: 1500 * time.Millisecond, Settle: 15 * time.Second}
}

// DrillResult is what one drill did and what it left behind.
type DrillResult struct {
	Name string `json:"name"`
	// Faults lists what was done, in order.
	Faults []string `json:"faults"`
	// Submitted jobs were answered 202; Refused submits were answered
	// otherwise (503 while Postgres restarts, connection refused while the
	// API restarts ...), which is correct as long as nothing was written.
	Submitted    int            `json:"submitted"`
	Refused      int            `json:"refused"`
	RefusedKinds map[string]int `json:"refused_kinds,omitempty"`
	Succeeded    int            `json:"succeeded"`
	Failed       int            `json:"failed"`
	Cancelled    int            `json:"cancelled"`
	// Lost jobs were answered 202 but do not exist.
	Lost int `json:"lost"`
	// Unfinished jobs exist but did not end within the wait.
	Unfinished int `json:"unfinished"`
	// AwaitingRescue jobs are still marked running since a kill or a
	// Postgres restart (their worker died, or lost the connection that fetched
	// them) and the drill did not wait for River's rescuer (smoke scale
	// only); not lost.
	AwaitingRescue int `json:"awaiting_rescue"`
	// Unacknowledged jobs exist although their submit was not answered 202
	// (the commit happened, the answer was lost).
	Unacknowledged int `json:"unacknowledged"`
	// Credits: charged and refunded holds, and holds still reserved at the
	// end (other than those awaiting rescue).
	CreditsCharged        int64 `json:"credits_charged"`
	CreditsRefunded       int64 `json:"credits_refunded"`
	CreditsStuck          int64 `json:"credits_stuck"`
	CreditsAwaitingRescue int64 `json:"credits_awaiting_rescue"`
	// FalSubmits is the number of requests fal accepted; PaidTwice the jobs
	// with two or more requests not cancelled; FalOrphans requests of no job.
	FalSubmits int `json:"fal_submits"`
	PaidTwice  int `json:"paid_twice"`
	FalOrphans int `json:"fal_orphans"`
	// FalWasted counts fal requests that ran (not cancelled) for jobs that
	// ended failed or cancelled: paid to fal, refunded to the user.
	FalWasted int `json:"fal_wasted"`
	// ClaimsAbandoned counts fal claims given up with fal possibly holding
	// their request, from the servers' logs (the metric
	// aiqueue_fal_claims_abandoned_total dies with a killed process).
	ClaimsAbandoned int `json:"claims_abandoned"`
	// Interrupted are the jobs a kill -9 caught running; Recovery is from
	// the kill to each one's success, RecoveryAfterRestart from the killed
	// process's restart (negative when the other worker finished it
	// first); InterruptedNotSucceeded did not succeed.
	Interrupted             int     `json:"interrupted,omitempty"`
	InterruptedNotSucceeded int     `json:"interrupted_not_succeeded,omitempty"`
	Recovery                Summary `json:"recovery,omitzero"`
	RecoveryAfterRestart    Summary `json:"recovery_after_restart,omitzero"`
	// UrgentRecoveryAfterRestart is the same for urgent jobs, whose target
	// is 15 s.
	UrgentRecoveryAfterRestart Summary `json:"urgent_recovery_after_restart,omitzero"`
	// Outages are the Postgres crashes or restarts: how long the database
	// was away and when every server process answered /readyz 200 again.
	Outages    []Outage `json:"outages,omitempty"`
	Violations []string `json:"violations"`
	DurationS  float64  `json:"duration_s"`
	Notes      []string `json:"notes,omitempty"`
	Error      string   `json:"error,omitempty"`
}

// OK reports whether the drill met its expectations: every accepted job
// succeeded (none lost, failed or unfinished; jobs a short wait left to
// River's rescuer aside), no credits stuck, no fal request paid twice, the
// ledger invariants intact.
func (r DrillResult) OK() bool {
	return r.Error == "" && r.Lost == 0 && r.Unfinished == 0 && r.Failed == 0 && r.Cancelled == 0 && r.InterruptedNotSucceeded == 0 &&
		r.CreditsStuck == 0 && r.PaidTwice == 0 && r.FalOrphans == 0 && len(r.Violations) == 0
}

// DrillReport is the result of RunDrills.
type DrillReport struct {
	Started      time.Time     `json:"started"`
	Machine      Machine       `json:"machine"`
	Config       DrillConfig   `json:"config"`
	RescueWait   string        `json:"rescue_wait"`
	Results      []DrillResult `json:"results"`
	Notes        []string      `json:"notes,omitempty"`
	FinishedWall time.Time     `json:"finished"`
}

// RunDrills runs the configured drills, each on a fresh database with its
// own fal simulator, API process and worker processes, sharing one
// Postgres. It returns an error when a drill could not run or did not meet
// its expectations.
func RunDrills(ctx context.Context, cfg DrillConfig) (*DrillReport, error) {
	for _, d := range cfg.Drills {
		if !slices.Contains(AllDrills, d) {
			return nil, fmt.Errorf("unknown drill %q (one of %v)", d, AllDrills)
		}
	}
	if cfg.Workers < 1 || cfg.Rate <= 0 || cfg.Kills < 1 || cfg.Restarts < 1 || cfg.Crashes < 1 || cfg.Rounds < 1 || cfg.CrashDown <= 0 {
		return nil, errors.New("need workers, rate, kills, restarts, crashes and rounds >= 1 and a crash down time")
	}
	rep := &DrillReport{Started: time.Now().UTC(), Machine: machineInfo(), Config: cfg}
	benv, err := newEnv(ctx, Config{Scale: cfg.Scale, ServerBin: cfg.ServerBin, WorkDir: cfg.WorkDir, Log: cfg.Log, Users: 50}, newReport(Config{}))
	if err != nil {
		return nil, err
	}
	defer benv.close()
	rep.Machine.Postgres = benv.pg.Version

	d := &drills{env: benv, cfg: cfg, rescueEnv: map[string]string{}, rescueWait: dispatch.DefaultRescueAfter}
	if cfg.ShortRescue {
		d.rescueWait = 15 * time.Second
		d.rescueEnv = map[string]string{envAttemptTimeout: "10s", envRescueAfter: "15s"}
		rep.Notes = append(rep.Notes, fmt.Sprintf("%s=15s and %s=10s: River's own rescue shortened", envRescueAfter, envAttemptTimeout))
	} else {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%s and %s at the server's defaults (%s, %s): a killed worker's jobs come back through the worker heartbeat; River's rescuer would take %s",
			envRescueAfter, envAttemptTimeout, dispatch.DefaultRescueAfter, dispatch.DefaultAttemptTimeout, dispatch.DefaultRescueAfter))
	}
	// After a kill: the dead leader's lease, the rescue delay, the
	// rescuer's period, and time to finish.
	full := riverLeaderTTL + d.rescueWait + riverRescuerInterval + 20*time.Second
	d.settle = full
	if cfg.Settle > 0 && cfg.Settle < full {
		d.settle, d.short = cfg.Settle, true
	}
	rep.RescueWait = d.settle.String()

	var errs []error
	for _, name := range AllDrills {
		if len(cfg.Drills) > 0 && !slices.Contains(cfg.Drills, name) {
			continue
		}
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		benv.logf("== drill %s", name)
		res := d.run(ctx, name)
		benv.logf("== drill %s: %s", name, res.summary())
		rep.Results = append(rep.Results, res)
		if !res.OK() {
			errs = append(errs, fmt.Errorf("drill %s: %s", name, res.summary()))
		}
	}
	rep.FinishedWall = time.Now().UTC()
	rep.Machine.LoadAvgEnd = loadAvg()
	return rep, errors.Join(errs...)
}

func (r DrillResult) summary() string {
	if r.Error != "" {
		return "error: " + r.Error
	}
	return fmt.Sprintf("submitted %d, succeeded %d, failed %d, lost %d, unfinished %d, stuck %d credits, paid twice %d, %d invariant violations",
		r.Submitted, r.Succeeded, r.Failed, r.Lost, r.Unfinished, r.CreditsStuck, r.PaidTwice, len(r.Violations))
}

type drills struct {
	env        *env
	cfg        DrillConfig
	rescueEnv  map[string]string
	rescueWait time.Duration
	settle     time.Duration
	short      bool // settle is shorter than a rescue needs
	count      int
}

// drill is one running drill: its database, fal simulator and processes.
type drill struct {
	*drills
	name    string
	res     DrillResult
	begin   time.Time
	dbURL   string
	pool    *pgxpool.Pool
	sim     *falsim.Server
	simSrv  *http.Server
	api     *Server
	workers []*Server
	// lastFault is when the last fault that can strand a running job (a
	// kill, a Postgres restart) happened.
	lastFault time.Time
	// interrupted are the jobs a kill -9 caught running, by id.
	interrupted map[int64]interruption
	logDir      string
	mu          sync.Mutex // guards the processes while faults restart them
}

// interruption is a job a kill -9 caught running: its queue, when its
// process was killed and when that process was back.
type interruption struct {
	queue             string
	killed, restarted time.Time
}

func (d *drills) run(ctx context.Context, name string) DrillResult {
	dr := &drill{drills: d, name: name, res: DrillResult{Name: name}, begin: time.Now()}
	err := dr.setup(ctx)
	if err == nil {
		err = dr.exercise(ctx)
	}
	if err != nil {
		dr.res.Error = err.Error()
	}
	dr.teardown()
	dr.res.DurationS = time.Since(dr.begin).Seconds()
	return dr.res
}

func (dr *drill) logf(format string, args ...any) { dr.env.logf("  "+format, args...) }

func (dr *drill) fault(format string, args ...any) {
	s := fmt.Sprintf("%5.1fs ", time.Since(dr.begin).Seconds()) + fmt.Sprintf(format, args...)
	dr.res.Faults = append(dr.res.Faults, s)
	dr.logf("%s", s)
}

var drillKeys = []string{"drill-key-1", "drill-key-2", "drill-key-3"}

func (dr *drill) setup(ctx context.Context) error {
	dr.count++
	var err error
	if dr.dbURL, err = dr.env.pg.CloneTemplate(ctx, templateDB, fmt.Sprintf("drill_%s_%d", strings.ReplaceAll(dr.name, "-", "_"), dr.count)); err != nil {
		return err
	}
	if dr.pool, err = openPool(ctx, dr.dbURL, 8); err != nil {
		return err
	}
	// A checkpoint now, so a crash replays the drill's own writes and not
	// the copy of the template it was cloned from.
	if _, err := dr.pool.Exec(ctx, `CHECKPOINT`); err != nil {
		return err
	}
	dr.sim = falsim.New(falsim.Options{Keys: drillKeys, DefaultLatency: dr.cfg.FalLatency})
	ln, err := new(net.ListenConfig).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	dr.simSrv = &http.Server{Handler: dr.sim, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = dr.simSrv.Serve(ln) }()
	simURL := "http://" + ln.Addr().String()

	envFor := func(role string) map[string]string {
		m := map[string]string{
			"DATABASE_URL":          dr.dbURL,
			"METRICS_ADDR":          "127.0.0.1:0", // several servers on one machine
			"AUTH_JWT_SECRET":       dr.env.secret,
			"AUTO_MIGRATE":          "false",
			"LOG_LEVEL":             "info",
			"ROLE":                  role,
			"FAL_KEYS":              strings.Join(drillKeys, ","),
			"FAL_QUEUE_URL":         simURL,
			"FAL_SIMULATE":          "false",
			"FAL_KEY_MAX_IN_FLIGHT": "1000",
			"RATE_LIMIT_PER_MINUTE": "1000000",
			"RATE_LIMIT_BURST":      "1000000",
			"USER_MAX_PENDING":      "1000000",
			"QUEUE_MAX_PENDING":     "10000000",
			"SHUTDOWN_TIMEOUT":      "20s",
		}
		maps.Copy(m, dr.rescueEnv)
		return m
	}
	logDir := filepath.Join(dr.env.dir, "logs", "drill-"+dr.name)
	dr.logDir = logDir
	if dr.api, err = StartServer(ctx, &ServerSpec{Bin: dr.env.bin, Name: "api", LogDir: logDir, Env: envFor("api")}); err != nil {
		return err
	}
	for i := range dr.cfg.Workers {
		w, err := StartServer(ctx, &ServerSpec{Bin: dr.env.bin, Name: fmt.Sprintf("worker-%d", i+1), LogDir: logDir, Env: envFor("worker")})
		if err != nil {
			return err
		}
		dr.workers = append(dr.workers, w)
	}
	dr.res.Notes = append(dr.res.Notes, "server logs: "+logDir)
	return nil
}

func (dr *drill) teardown() {
	dr.mu.Lock()
	procs := append([]*Server{dr.api}, dr.workers...)
	dr.mu.Unlock()
	for _, p := range procs {
		if p != nil {
			_, _ = p.Stop(30 * time.Second)
		}
	}
	if dr.simSrv != nil {
		_ = dr.simSrv.Close()
	}
	if dr.pool != nil {
		dr.pool.Close()
	}
}

// exercise runs load, injects the drill's faults, stops the load, waits
// for every job to end and takes stock.
func (dr *drill) exercise(ctx context.Context) error {
	ld := dr.startLoad(ctx)
	faultErr := dr.faults(ctx)
	ld.stop()
	dr.res.Submitted = len(ld.accepted)
	dr.res.Refused, dr.res.RefusedKinds = ld.refused.count()
	if faultErr != nil {
		return faultErr
	}
	dr.logf("load stopped: %d accepted, %d refused; waiting up to %s for every job to end", dr.res.Submitted, dr.res.Refused, dr.settle)
	// Wait until every job ended or, when the wait is too short for River's
	// rescuer, until only jobs stranded by the last fault are left.
	before := dr.lastFault
	if !dr.short || before.IsZero() {
		before = time.Time{}
	} else if err := dr.sleep(ctx, max(3*dr.cfg.FalLatency, 2*time.Second)); err != nil {
		return err // jobs of live workers started before the kill end meanwhile
	}
	_ = waitFor(ctx, dr.settle, func() (bool, error) {
		n, err := queryInt(ctx, dr.pool, `SELECT count(*) FROM river_job WHERE kind = 'ai'
   AND state NOT IN ('completed', 'discarded', 'cancelled')
   AND NOT (state = 'running' AND attempted_at < $1)`, before)
		return err == nil && n == 0, nil // a connection lost in a restart is retried
	})
	return dr.takeStock(ctx, ld)
}

// gap is the time to the next fault: Gap +-50%.
func (dr *drill) gap() time.Duration {
	g := dr.cfg.Gap
	return g/2 + time.Duration(rand.Int64N(int64(g)+1))
}

func (dr *drill) sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func (dr *drill) running(ctx context.Context) int {
	n, _ := queryInt(ctx, dr.pool, `SELECT count(*) FROM river_job WHERE kind = 'ai' AND state = 'running'`)
	return n
}

func (dr *drill) faults(ctx context.Context) error {
	if err := dr.sleep(ctx, dr.gap()); err != nil {
		return err
	}
	switch dr.name {
	case DrillKill:
		for k := range dr.cfg.Kills {
			if err := dr.kill(ctx, rand.IntN(len(dr.workers))); err != nil {
				return err
			}
			if k < dr.cfg.Kills-1 {
				if err := dr.sleep(ctx, dr.gap()); err != nil {
					return err
				}
			}
		}
	case DrillPGRestart:
		for r := range dr.cfg.Restarts {
			c := dr.env.pg.Cluster
			o, err := dr.outage(ctx, c.StopServer, 0, c.StartServer)
			if err != nil {
				return fmt.Errorf("restart postgres: %w", err)
			}
			dr.fault("postgres restarted (pg_ctl stop -m fast + start), %d jobs running: %s", o.Running, o)
			if r < dr.cfg.Restarts-1 {
				if err := dr.sleep(ctx, dr.gap()); err != nil {
					return err
				}
			}
		}
	case DrillPGCrash:
		for r := range dr.cfg.Crashes {
			if err := dr.crashPostgres(ctx); err != nil {
				return err
			}
			if r < dr.cfg.Crashes-1 {
				if err := dr.sleep(ctx, dr.gap()); err != nil {
					return err
				}
			}
		}
	case DrillFal:
		for i := range drillKeys {
			dr.sim.FailKey("key-"+strconv.Itoa(i+1), falsim.Failure{Status: http.StatusTooManyRequests})
		}
		dr.fault("every fal key answers 429 to every call for %s (%d jobs running)", dr.cfg.Storm, dr.running(ctx))
		if err := dr.sleep(ctx, dr.cfg.Storm); err != nil {
			return err
		}
		dr.sim.ClearFailures()
		dr.sim.FailKey("key-2", falsim.Failure{Status: http.StatusUnauthorized})
		if dr.cfg.RevokeFor <= 0 {
			dr.fault("429 storm over; key-2 revoked (401) until the end")
			break
		}
		dr.fault("429 storm over; key-2 revoked (401) for %s", dr.cfg.RevokeFor)
		if err := dr.sleep(ctx, dr.cfg.RevokeFor); err != nil {
			return err
		}
		dr.sim.ClearFailures()
		dr.fault("key-2 works again")
	case DrillSIGTERM:
		for r := range dr.cfg.Rounds {
			for i := range dr.workers {
				if err := dr.term(ctx, &dr.workers[i]); err != nil {
					return err
				}
			}
			if err := dr.term(ctx, &dr.api); err != nil {
				return err
			}
			if r < dr.cfg.Rounds-1 {
				if err := dr.sleep(ctx, dr.gap()); err != nil {
					return err
				}
			}
		}
	}
	// Some load after the last fault.
	return dr.sleep(ctx, dr.gap())
}

// kill kills worker i with SIGKILL, noting the jobs it was running, and
// starts it again.
func (dr *drill) kill(ctx context.Context, i int) error {
	dr.mu.Lock()
	w := dr.workers[i]
	dr.mu.Unlock()
	// The process's River client id, from its heartbeat, names the jobs it
	// runs (the last entry of attempted_by).
	var clientID string
	_ = dr.pool.QueryRow(ctx, `SELECT client_id FROM worker_heartbeats WHERE pid = $1 ORDER BY beat_at DESC LIMIT 1`, w.PID()).Scan(&clientID)
	type job struct {
		id    int64
		queue string
	}
	var caught []job
	if clientID != "" {
		rows, err := dr.pool.Query(ctx, `SELECT id, queue FROM river_job
 WHERE kind = 'ai' AND state = 'running' AND attempted_by[array_length(attempted_by, 1)] = $1`, clientID)
		if err == nil {
			for rows.Next() {
				var j job
				if rows.Scan(&j.id, &j.queue) == nil {
					caught = append(caught, j)
				}
			}
			rows.Close()
		}
	}
	running := dr.running(ctx)
	if err := w.Kill(); err != nil {
		return err
	}
	killed := time.Now()
	dr.lastFault = killed
	dr.fault("kill -9 %s (pid %d), %d jobs running, %d of them its own", w.Spec.Name, w.PID(), running, len(caught))
	if clientID == "" {
		dr.res.Notes = append(dr.res.Notes, fmt.Sprintf("kill at %.1fs: %s had no heartbeat yet; its jobs are not in the recovery times", killed.Sub(dr.begin).Seconds(), w.Spec.Name))
	}
	nw, err := StartServer(ctx, &w.Spec)
	if err != nil {
		return err
	}
	restarted := time.Now()
	dr.mu.Lock()
	dr.workers[i] = nw
	dr.mu.Unlock()
	if dr.interrupted == nil {
		dr.interrupted = map[int64]interruption{}
	}
	for _, j := range caught {
		dr.interrupted[j.id] = interruption{queue: j.queue, killed: killed, restarted: restarted}
	}
	return nil
}

// crashPostgres stops Postgres as pg_ctl stop -m immediate does (SIGQUIT
// to the postmaster: every backend is killed, no shutdown checkpoint, crash
// recovery at the next start), keeps it down for CrashDown +-50% and starts
// it again; the servers stay up.
func (dr *drill) crashPostgres(ctx context.Context) error {
	c := dr.env.pg.Cluster
	crash := func() error {
		pid, err := postmasterPID(c.Dir())
		if err != nil {
			return err
		}
		if err := syscall.Kill(pid, syscall.SIGQUIT); err != nil {
			return fmt.Errorf("crash postgres: %w", err)
		}
		if err := waitFor(ctx, 30*time.Second, func() (bool, error) { return syscall.Kill(pid, 0) != nil, nil }); err != nil {
			return fmt.Errorf("postmaster %d did not exit after SIGQUIT: %w", pid, err)
		}
		return c.StopServer() // pglocal finds no server to stop and takes note
	}
	down := dr.cfg.CrashDown/2 + time.Duration(rand.Int64N(int64(dr.cfg.CrashDown)+1))
	o, err := dr.outage(ctx, crash, down, c.StartServer)
	if err != nil {
		return err
	}
	dr.fault("postgres crashed (pg_ctl stop -m immediate), %d jobs running: %s", o.Running, o)
	return nil
}

// Outage is one time Postgres went away during a drill: how long it was
// down, how long it took to accept connections again once started (crash
// recovery), and when every server process was ready again (/readyz 200),
// counted from the start of the outage and from Postgres accepting
// connections. The servers are not restarted.
type Outage struct {
	Running int     `json:"running"`
	DownS   float64 `json:"down_s"`
	// StartS is from starting Postgres to it accepting connections.
	StartS float64 `json:"start_s"`
	// ReadyS is from the start of the outage to every server ready;
	// ReadyAfterPostgresS from Postgres accepting connections to that.
	ReadyS              float64 `json:"ready_s"`
	ReadyAfterPostgresS float64 `json:"ready_after_postgres_s"`
}

func (o Outage) String() string {
	return fmt.Sprintf("down %.1fs, accepting connections %.1fs after the start, every server ready %.1fs after the outage began (%.0f ms after Postgres)",
		o.DownS, o.StartS, o.ReadyS, 1000*o.ReadyAfterPostgresS)
}

// outage stops Postgres with stop, keeps it down for down, starts it with
// start and measures, with its own probes (pg_ctl's wait is slow on a busy
// machine), when Postgres and then every server answer again.
func (dr *drill) outage(ctx context.Context, stop func() error, down time.Duration, start func(context.Context) error) (Outage, error) {
	o := Outage{Running: dr.running(ctx)}
	begin := time.Now()
	if err := stop(); err != nil {
		return o, err
	}
	if err := dr.sleep(ctx, down); err != nil {
		return o, err
	}
	started := time.Now()
	o.DownS = started.Sub(begin).Seconds()
	type probe struct {
		pg, ready time.Time
		last      error // why the latest probe was not ready
	}
	probed := make(chan probe, 1)
	go func() {
		var p probe
		_ = waitFor(ctx, 2*time.Minute, func() (bool, error) {
			if p.pg.IsZero() {
				pctx, cancel := context.WithTimeout(ctx, time.Second)
				err := dr.pool.Ping(pctx)
				cancel()
				if err != nil {
					p.last = fmt.Errorf("postgres: %w", err)
					return false, nil //nolint:nilerr // not back yet: kept to report, and asked again
				}
				p.pg = time.Now()
			}
			p.last = dr.serversReady(ctx)
			if p.last == nil {
				p.ready = time.Now()
			}
			return p.last == nil, nil
		})
		probed <- p
	}()
	if err := start(ctx); err != nil {
		return o, err
	}
	startTook := time.Since(started)
	dr.lastFault = time.Now()
	p := <-probed
	if p.pg.IsZero() || p.ready.IsZero() {
		// Say which part was not back, so one failure is enough to chase.
		msg := fmt.Sprintf("postgres or a server was not ready again within 2 minutes (the start returned after %.1fs", startTook.Seconds())
		if !p.pg.IsZero() {
			msg += fmt.Sprintf(", postgres answered %.1fs after it", p.pg.Sub(started).Seconds())
		}
		return o, fmt.Errorf("%s): last probe: %w", msg, p.last)
	}
	o.StartS = p.pg.Sub(started).Seconds()
	o.ReadyS = p.ready.Sub(begin).Seconds()
	o.ReadyAfterPostgresS = p.ready.Sub(p.pg).Seconds()
	dr.res.Outages = append(dr.res.Outages, o)
	return o, nil
}

// serversReady returns nil when every server process answers /readyz 200,
// else what the first one that did not answered, with the end of its log.
func (dr *drill) serversReady(ctx context.Context) error {
	dr.mu.Lock()
	procs := append([]*Server{dr.api}, dr.workers...)
	dr.mu.Unlock()
	hc := &http.Client{Timeout: 2 * time.Second}
	for _, p := range procs {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/readyz", nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return fmt.Errorf("%s: /readyz: %w; its log ends:\n%s", p.Spec.Name, err, p.LogTail(8))
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: /readyz %d %s; its log ends:\n%s", p.Spec.Name, resp.StatusCode, strings.TrimSpace(string(body)), p.LogTail(8))
		}
	}
	return nil
}

// postmasterPID reads the postmaster's pid from its data directory.
func postmasterPID(dataDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("postmaster.pid: no pid (%q)", string(b))
	}
	return pid, nil
}

// term stops a process with SIGTERM, checks it exits cleanly, and starts it
// again.
func (dr *drill) term(ctx context.Context, p **Server) error {
	dr.mu.Lock()
	old := *p
	dr.mu.Unlock()
	running := dr.running(ctx)
	took, err := old.Stop(60 * time.Second)
	if err != nil {
		dr.res.Notes = append(dr.res.Notes, fmt.Sprintf("%s: unclean exit: %v", old.Spec.Name, err))
	}
	dr.fault("SIGTERM %s (pid %d): exited in %s (exit %v), %d jobs running", old.Spec.Name, old.PID(), took.Round(time.Millisecond), exitText(old.ExitErr()), running)
	nw, err := StartServer(ctx, &old.Spec)
	if err != nil {
		return err
	}
	dr.mu.Lock()
	*p = nw
	dr.mu.Unlock()
	return nil
}

func passText(ok bool) string {
	if ok {
		return "pass"
	}
	return "miss"
}

func exitText(err error) string {
	if err == nil {
		return "0"
	}
	return err.Error()
}

// load submits jobs to the API at the drill's rate. Every job's prompt
// carries a nonce, so jobs, fal requests and answers can be matched.
type load struct {
	cancel   context.CancelFunc
	done     chan struct{}
	mu       sync.Mutex
	accepted map[string]int64 // nonce -> job id
	refused  errorCounter
}

func (l *load) stop() {
	l.cancel()
	<-l.done
}

func (dr *drill) startLoad(ctx context.Context) *load {
	ctx, cancel := context.WithCancel(ctx)
	l := &load{cancel: cancel, done: make(chan struct{}), accepted: map[string]int64{}}
	client := newAPIClient(dr.api.URL, 64)
	client.hc.Timeout = 15 * time.Second
	users := dr.env.users
	var seq atomic.Int64
	go func() {
		defer close(l.done)
		defer client.close()
		var wg sync.WaitGroup
		defer wg.Wait()
		next := time.Now()
		for {
			next = next.Add(time.Duration(rand.ExpFloat64() / dr.cfg.Rate * float64(time.Second)))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(next)):
			}
			wg.Go(func() {
				nonce := fmt.Sprintf("drill %s #%d", dr.name, seq.Add(1))
				body := fmt.Sprintf(`{"operation":"generate","params":{"prompt":%q}}`, nonce)
				if rand.IntN(3) == 0 {
					body = fmt.Sprintf(`{"operation":"edit","params":{"prompt":%q,"image_urls":["https://example.com/ring.png"]}}`, nonce)
				}
				u := users[rand.IntN(len(users))]
				// Not ctx: a submit in flight when the load stops must get its
				// answer, or a job could exist that the drill never saw accepted.
				status, data, err := client.do(context.WithoutCancel(ctx), http.MethodPost, "/v1/jobs", u.Token, []byte(body))
				if err == nil && status != http.StatusAccepted {
					err = &statusError{"POST /v1/jobs", status, string(data)}
				}
				var j struct{ ID string }
				if err == nil {
					err = json.Unmarshal(data, &j)
				}
				id, ok := jobs.JobID(j.ID)
				if err == nil && !ok {
					err = fmt.Errorf("bad job id %q", j.ID)
				}
				if err != nil {
					l.refused.add(err)
					return
				}
				l.mu.Lock()
				l.accepted[nonce] = id
				l.mu.Unlock()
			})
		}
	}()
	return l
}

// takeStock counts what happened to every job, the credits and the fal
// requests, and checks the ledger invariants.
func (dr *drill) takeStock(ctx context.Context, ld *load) error {
	type row struct {
		id          int64
		state       string
		attemptedAt *time.Time
		hold        *string
		amount      *int64
	}
	rows, err := dr.pool.Query(ctx, `
SELECT j.id, j.state::text, COALESCE(j.args->'params'->>'prompt', ''), j.attempted_at, h.state, h.amount
  FROM river_job j LEFT JOIN credit_holds h ON h.job_id = j.id
 WHERE j.kind = 'ai'`)
	if err != nil {
		return err
	}
	byNonce := map[string]row{}
	for rows.Next() {
		var r row
		var nonce string
		if err := rows.Scan(&r.id, &r.state, &nonce, &r.attemptedAt, &r.hold, &r.amount); err != nil {
			rows.Close()
			return err
		}
		byNonce[nonce] = r
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	awaiting := map[int64]bool{}
	for nonce, id := range ld.accepted {
		r, ok := byNonce[nonce]
		switch {
		case !ok || r.id != id:
			dr.res.Lost++
			if dr.res.Lost <= 10 {
				dr.res.Notes = append(dr.res.Notes, fmt.Sprintf("lost: job %d (%q) was answered 202 but does not exist", id, nonce))
			}
		case r.state == "completed":
			dr.res.Succeeded++
		case r.state == "discarded":
			dr.res.Failed++
		case r.state == "cancelled":
			dr.res.Cancelled++
		case dr.short && r.state == "running" && r.attemptedAt != nil && !dr.lastFault.IsZero() && r.attemptedAt.Before(dr.lastFault):
			dr.res.AwaitingRescue++
			awaiting[r.id] = true
		default:
			dr.res.Unfinished++
			if dr.res.Unfinished <= 10 {
				dr.res.Notes = append(dr.res.Notes, fmt.Sprintf("unfinished: job %d is %s after the wait", r.id, r.state))
			}
		}
	}
	for nonce, r := range byNonce {
		if _, ok := ld.accepted[nonce]; !ok {
			dr.res.Unacknowledged++
		}
		if r.hold == nil || r.amount == nil {
			continue
		}
		switch *r.hold {
		case "charged":
			dr.res.CreditsCharged += *r.amount
		case "refunded":
			dr.res.CreditsRefunded += *r.amount
		default:
			if awaiting[r.id] {
				dr.res.CreditsAwaitingRescue += *r.amount
			} else {
				dr.res.CreditsStuck += *r.amount
			}
		}
	}

	perJob := map[string]int{}
	reqs := dr.sim.Requests()
	dr.res.FalSubmits = len(reqs)
	for _, rq := range reqs {
		var in struct{ Prompt string }
		_ = json.Unmarshal(rq.Input, &in)
		r, ok := byNonce[in.Prompt]
		if !ok {
			dr.res.FalOrphans++
			continue
		}
		if !rq.Cancelled {
			perJob[in.Prompt]++
			if r.state == "discarded" || r.state == "cancelled" {
				dr.res.FalWasted++
			}
		}
	}
	for _, n := range perJob {
		if n > 1 {
			dr.res.PaidTwice++
		}
	}
	if dr.res.FalWasted > 0 {
		dr.res.Notes = append(dr.res.Notes, fmt.Sprintf("%d fal requests ran for jobs that ended failed or cancelled: paid to fal, refunded to the user", dr.res.FalWasted))
	}
	if dr.res.Unacknowledged > 0 {
		dr.res.Notes = append(dr.res.Notes, fmt.Sprintf("%d jobs were committed but their submit was not answered 202 (the client saw an error); they run and are charged like any other", dr.res.Unacknowledged))
	}
	if dr.res.AwaitingRescue > 0 {
		dr.res.Notes = append(dr.res.Notes, fmt.Sprintf("%d jobs (%d credits) are still marked running since the last fault: River's rescuer hands them back after %s, longer than this drill waited (%s)",
			dr.res.AwaitingRescue, dr.res.CreditsAwaitingRescue, dr.rescueWait, dr.settle))
	}
	if err := dr.recoveryTimes(ctx); err != nil {
		return err
	}
	dr.res.ClaimsAbandoned = countLogLines(dr.logDir, `"msg":"abandoned a fal claim`)
	vs, err := ledger.CheckInvariants(ctx, dr.pool)
	if err != nil {
		return err
	}
	dr.res.Violations = vs
	if dr.res.Violations == nil {
		dr.res.Violations = []string{}
	}
	return nil
}

// countLogLines counts the lines containing s in the log files of dir.
func countLogLines(dir, s string) int {
	files, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		n += strings.Count(string(b), s)
	}
	return n
}

// recoveryTimes measures, for every job a kill -9 caught running, how
// long after the kill and after the killed process's restart it succeeded.
func (dr *drill) recoveryTimes(ctx context.Context) error {
	if len(dr.interrupted) == 0 {
		return nil
	}
	var sinceKill, sinceRestart, urgent []time.Duration
	for id, in := range dr.interrupted {
		var state string
		var finalized *time.Time
		if err := dr.pool.QueryRow(ctx, `SELECT state::text, finalized_at FROM river_job WHERE id = $1`, id).Scan(&state, &finalized); err != nil {
			return fmt.Errorf("interrupted job %d: %w", id, err)
		}
		if finalized != nil && finalized.Before(in.killed) {
			continue // it ended just before the kill
		}
		dr.res.Interrupted++
		if state != "completed" || finalized == nil {
			dr.res.InterruptedNotSucceeded++
			dr.res.Notes = append(dr.res.Notes, fmt.Sprintf("job %d, caught running by a kill -9, is %s", id, state))
			continue
		}
		sinceKill = append(sinceKill, finalized.Sub(in.killed))
		sinceRestart = append(sinceRestart, finalized.Sub(in.restarted))
		if in.queue == jobs.QueueUrgent {
			urgent = append(urgent, finalized.Sub(in.restarted))
		}
	}
	dr.res.Recovery, dr.res.RecoveryAfterRestart, dr.res.UrgentRecoveryAfterRestart = Summarize(sinceKill), Summarize(sinceRestart), Summarize(urgent)
	return nil
}

// Table prints one line per drill and then the faults and notes of each.
func (r *DrillReport) Table(w io.Writer) {
	fmt.Fprintf(w, "\naiqueue fault drills, %s scale, %s, %d CPUs, load average %s at start and %s at end; waited up to %s for jobs to end\n\n",
		r.Config.Scale, r.Started.Format("2006-01-02 15:04 MST"), r.Machine.CPUs, r.Machine.LoadAvgStart, r.Machine.LoadAvgEnd, r.RescueWait)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "DRILL\tSUBMITTED\tREFUSED\tSUCCEEDED\tFAILED\tLOST\tUNFINISHED\tAWAITING RESCUE\tCHARGED\tREFUNDED\tSTRANDED\tFAL SUBMITS\tPAID TWICE\tFAL WASTED\tABANDONED\tINVARIANTS\tRESULT\t")
	for _, d := range r.Results {
		inv := "ok"
		if len(d.Violations) > 0 {
			inv = strconv.Itoa(len(d.Violations)) + " broken"
		}
		result := "pass"
		if !d.OK() {
			result = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t\n", d.Name, d.Submitted, d.Refused, d.Succeeded, d.Failed,
			d.Lost, d.Unfinished, d.AwaitingRescue, d.CreditsCharged, d.CreditsRefunded, d.CreditsStuck, d.FalSubmits, d.PaidTwice, d.FalWasted,
			d.ClaimsAbandoned, inv, result)
	}
	_ = tw.Flush()
	for _, d := range r.Results {
		fmt.Fprintf(w, "\n%s (%.0fs):\n", d.Name, d.DurationS)
		for _, f := range d.Faults {
			fmt.Fprintf(w, "  %s\n", f)
		}
		if len(d.RefusedKinds) > 0 {
			fmt.Fprintf(w, "  refused submits: %v\n", d.RefusedKinds)
		}
		if d.Interrupted > 0 {
			fmt.Fprintf(w, "  %d jobs caught running by a kill -9, %d did not succeed; kill -> success p50/p99/max %.1f/%.1f/%.1f s; restart -> success %.1f/%.1f/%.1f s (urgent max %.1f s, target 15 s: %s)\n",
				d.Interrupted, d.InterruptedNotSucceeded, d.Recovery.P50/1000, d.Recovery.P99/1000, d.Recovery.Max/1000,
				d.RecoveryAfterRestart.P50/1000, d.RecoveryAfterRestart.P99/1000, d.RecoveryAfterRestart.Max/1000,
				d.UrgentRecoveryAfterRestart.Max/1000, passText(d.UrgentRecoveryAfterRestart.N > 0 && d.UrgentRecoveryAfterRestart.Max <= 15000))
		}

		for _, n := range d.Notes {
			fmt.Fprintf(w, "  note: %s\n", n)
		}
		for _, v := range d.Violations {
			fmt.Fprintf(w, "  VIOLATION: %s\n", v)
		}
		if d.Error != "" {
			fmt.Fprintf(w, "  ERROR: %s\n", d.Error)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
}

// WriteJSON writes the report to dir/drills-<start time>.json, or
// dir/drills-<drills>[+short-rescue]-<start time>.json for a subset or
// with River's rescue shortened, and returns the path.
func (r *DrillReport) WriteJSON(dir string) (string, error) {
	name := "drills-"
	if len(r.Config.Drills) > 0 {
		name += strings.Join(r.Config.Drills, "+") + "-"
	}
	if r.Config.ShortRescue {
		name += "short-rescue-"
	}
	return writeJSON(dir, name+r.Started.Format("2006-01-02T15-04-05Z")+".json", r)
}
