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
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// Drills, in the order RunDrills runs them.
const (
	DrillKill      = "kill"
	DrillPGRestart = "pg-restart"
	DrillFal       = "fal"
	DrillSIGTERM   = "sigterm"
)

// AllDrills lists every drill.
var AllDrills = []string{DrillKill, DrillPGRestart, DrillFal, DrillSIGTERM}

// Rescue settings the server may read (issue 4). When the binary knows them
// the drills shorten River's rescue of a killed worker's jobs; otherwise they
// wait for the compiled-in default.
const (
	envRescueAfter    = "RIVER_RESCUE_AFTER"
	envAttemptTimeout = "JOB_ATTEMPT_TIMEOUT"
)

// A server that does not read RIVER_RESCUE_AFTER rescues a crashed worker's
// job after these (the walking skeleton's compiled-in values).
const (
	fixedRescueAfter    = 2 * time.Minute
	fixedAttemptTimeout = time.Minute
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
	// Restarts is how many times Postgres restarts; Rounds how many SIGTERM
	// rounds (every worker and the API once per round).
	Restarts int `json:"restarts"`
	Rounds   int `json:"rounds"`
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

	ServerBin string    `json:"-"`
	WorkDir   string    `json:"-"`
	Log       io.Writer `json:"-"`
}

// FullDrillConfig is make drills.
func FullDrillConfig() DrillConfig {
	return DrillConfig{Scale: "full", Kills: 10, Restarts: 3, Rounds: 3, Rate: 20, FalLatency: time.Second,
		Workers: 2, Gap: 3 * time.Second, Storm: 5 * time.Second}
}

// SmokeDrillConfig runs every drill once in seconds. Its kill drill does not
// wait for River's rescuer unless the server's rescue delay is short.
func SmokeDrillConfig() DrillConfig {
	return DrillConfig{Scale: "smoke", Kills: 1, Restarts: 1, Rounds: 1, Rate: 15, FalLatency: 300 * time.Millisecond,
		Workers: 2, Gap: 1200 * time.Millisecond, Storm: 1500 * time.Millisecond, RevokeFor: 1500 * time.Millisecond, Settle: 15 * time.Second}
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
	FalWasted  int      `json:"fal_wasted"`
	Violations []string `json:"violations"`
	DurationS  float64  `json:"duration_s"`
	Notes      []string `json:"notes,omitempty"`
	Error      string   `json:"error,omitempty"`
}

// OK reports whether the drill met its expectations: nothing lost, no
// credits stuck, no fal request paid twice, the ledger invariants intact.
func (r DrillResult) OK() bool {
	return r.Error == "" && r.Lost == 0 && r.Unfinished == 0 && r.CreditsStuck == 0 && r.PaidTwice == 0 && r.FalOrphans == 0 && len(r.Violations) == 0
}

// DrillReport is the result of RunDrills.
type DrillReport struct {
	Started      time.Time       `json:"started"`
	Machine      Machine         `json:"machine"`
	Config       DrillConfig     `json:"config"`
	RescueWait   string          `json:"rescue_wait"`
	EnvKnown     map[string]bool `json:"env_known"`
	Results      []DrillResult   `json:"results"`
	Notes        []string        `json:"notes,omitempty"`
	FinishedWall time.Time       `json:"finished"`
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
	if cfg.Workers < 1 || cfg.Rate <= 0 || cfg.Kills < 1 || cfg.Restarts < 1 || cfg.Rounds < 1 {
		return nil, errors.New("need workers, rate, kills, restarts and rounds >= 1")
	}
	rep := &DrillReport{Started: time.Now().UTC(), Machine: machineInfo(), Config: cfg}
	benv, err := newEnv(ctx, Config{Scale: cfg.Scale, ServerBin: cfg.ServerBin, WorkDir: cfg.WorkDir, Log: cfg.Log, Users: 50}, newReport(Config{}))
	if err != nil {
		return nil, err
	}
	defer benv.close()
	rep.Machine.Postgres = benv.pg.Version

	rep.EnvKnown, err = binaryKnows(benv.bin, envRescueAfter, envAttemptTimeout)
	if err != nil {
		return nil, err
	}
	d := &drills{env: benv, cfg: cfg, rescueEnv: map[string]string{}}
	d.rescueWait = fixedRescueAfter
	switch {
	case rep.EnvKnown[envRescueAfter] && rep.EnvKnown[envAttemptTimeout]:
		d.rescueWait = 15 * time.Second
		d.rescueEnv = map[string]string{envAttemptTimeout: "10s", envRescueAfter: "15s"}
	case rep.EnvKnown[envRescueAfter]:
		d.rescueWait = fixedAttemptTimeout + 5*time.Second
		d.rescueEnv = map[string]string{envRescueAfter: d.rescueWait.String()}
	default:
		rep.Notes = append(rep.Notes, fmt.Sprintf("the server binary does not read %s: a killed worker's jobs are rescued after River's RescueStuckJobsAfter (%s) plus up to %s for the rescuer's next run",
			envRescueAfter, fixedRescueAfter, riverRescuerInterval))
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
	mu        sync.Mutex // guards the processes while faults restart them
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
			i := rand.IntN(len(dr.workers))
			dr.mu.Lock()
			w := dr.workers[i]
			dr.mu.Unlock()
			running := dr.running(ctx)
			if err := w.Kill(); err != nil {
				return err
			}
			dr.lastFault = time.Now()
			dr.fault("kill -9 %s (pid %d), %d jobs running", w.Spec.Name, w.PID(), running)
			nw, err := StartServer(ctx, &w.Spec)
			if err != nil {
				return err
			}
			dr.mu.Lock()
			dr.workers[i] = nw
			dr.mu.Unlock()
			if k < dr.cfg.Kills-1 {
				if err := dr.sleep(ctx, dr.gap()); err != nil {
					return err
				}
			}
		}
	case DrillPGRestart:
		for r := range dr.cfg.Restarts {
			running := dr.running(ctx)
			begin := time.Now()
			if err := dr.env.pg.Cluster.Restart(ctx); err != nil {
				return fmt.Errorf("restart postgres: %w", err)
			}
			dr.lastFault = time.Now()
			dr.fault("postgres restarted (pg_ctl stop -m fast + start) in %s, %d jobs running", time.Since(begin).Round(time.Millisecond), running)
			if r < dr.cfg.Restarts-1 {
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

// Table prints one line per drill and then the faults and notes of each.
func (r *DrillReport) Table(w io.Writer) {
	fmt.Fprintf(w, "\naiqueue fault drills, %s scale, %s, %d CPUs, load average %s at start and %s at end; waited up to %s for jobs to end\n\n",
		r.Config.Scale, r.Started.Format("2006-01-02 15:04 MST"), r.Machine.CPUs, r.Machine.LoadAvgStart, r.Machine.LoadAvgEnd, r.RescueWait)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "DRILL\tSUBMITTED\tREFUSED\tSUCCEEDED\tFAILED\tLOST\tUNFINISHED\tAWAITING RESCUE\tCHARGED\tREFUNDED\tSTUCK\tFAL SUBMITS\tPAID TWICE\tFAL WASTED\tINVARIANTS\tRESULT\t")
	for _, d := range r.Results {
		inv := "ok"
		if len(d.Violations) > 0 {
			inv = strconv.Itoa(len(d.Violations)) + " broken"
		}
		result := "pass"
		if !d.OK() {
			result = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t\n", d.Name, d.Submitted, d.Refused, d.Succeeded, d.Failed,
			d.Lost, d.Unfinished, d.AwaitingRescue, d.CreditsCharged, d.CreditsRefunded, d.CreditsStuck, d.FalSubmits, d.PaidTwice, d.FalWasted, inv, result)
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

// WriteJSON writes the report to dir/drills-<start time>.json and returns
// the path.
func (r *DrillReport) WriteJSON(dir string) (string, error) {
	return writeJSON(dir, "drills-"+r.Started.Format("2006-01-02T15-04-05Z")+".json", r)
}
