package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/jobs"
)

// Scenarios, in the order Run runs them.
const (
	ScenarioSubmit = "submit"
	ScenarioPickup = "pickup"
	ScenarioSettle = "settle"
	ScenarioUsers  = "users"
	// ScenarioVersusSeed measures aiqueue against the studio's seed design
	// (bench/seed) under the same wrk load.
	ScenarioVersusSeed = "versus-seed"
	// ScenarioBacklog measures submits with a deep queue against an empty
	// one.
	ScenarioBacklog = "backlog"
	// ScenarioSaturated gives more work than fal's slots take and compares
	// the schedule with the ideal one.
	ScenarioSaturated = "saturated"
	// ScenarioOverhead measures what the system adds to fal's own time for
	// one click at a time.
	ScenarioOverhead = "overhead"
)

// AllScenarios lists every scenario.
var AllScenarios = []string{ScenarioSubmit, ScenarioPickup, ScenarioSettle, ScenarioUsers, ScenarioVersusSeed, ScenarioBacklog,
	ScenarioSaturated, ScenarioOverhead}

// Config sizes a benchmark run. FullConfig is make bench; SmokeConfig is
// the few-second version the tests run.
type Config struct {
	// Scale names the preset ("full", "smoke").
	Scale string `json:"scale"`
	// Scenarios to run; empty means all.
	Scenarios []string `json:"scenarios,omitempty"`

	// Concurrency is the number of concurrent submitters in the submit
	// scenario, for HTTP, raw River and pgbench alike.
	Concurrency int `json:"concurrency"`
	// SubmitJobs is how many jobs each of the three submit paths inserts.
	SubmitJobs int `json:"submit_jobs"`

	// PickupJobs urgent jobs are submitted through HTTP at PickupRate per
	// second (Poisson arrivals), once with an empty queue and once with
	// PickupBacklog jobs waiting in normal, worked by PickupNormalWorkers.
	PickupJobs          int     `json:"pickup_jobs"`
	PickupRate          float64 `json:"pickup_rate"`
	PickupBacklog       int     `json:"pickup_backlog"`
	PickupNormalWorkers int     `json:"pickup_normal_workers"`

	// SettleJobs jobs wait in SettleQueue before the workers start.
	SettleJobs  int    `json:"settle_jobs"`
	SettleQueue string `json:"settle_queue"`

	// Users studio users act for UsersDuration: an action every
	// ThinkMin-ThinkMax, a batch of 3-8 jobs in BatchShare of them.
	Users         int           `json:"users"`
	UsersDuration time.Duration `json:"users_duration"`
	ThinkMin      time.Duration `json:"think_min"`
	ThinkMax      time.Duration `json:"think_max"`
	BatchShare    float64       `json:"batch_share"`

	// Limits are the server's worker limits (QUEUE_*_WORKERS).
	Limits dispatch.QueueLimits `json:"limits"`

	// Wrk is the load of versus-seed and backlog: wrk's threads,
	// connections and duration, every request a POST /v1/jobs for one of
	// VersusUsers users in turn.
	Wrk         WrkLoad `json:"wrk"`
	VersusUsers int     `json:"versus_users"`
	// Rounds is how many times each side runs, interleaved (A B A B ...).
	Rounds int `json:"rounds"`
	// Warmup is an unmeasured wrk run before each measured one.
	Warmup time.Duration `json:"warmup"`
	// DrainLimit bounds the wait for a backlog to drain after wrk.
	DrainLimit time.Duration `json:"drain_limit"`
	// SeedConcurrency is the seed worker's BullMQ concurrency and aiqueue's
	// QUEUE_URGENT_WORKERS in versus-seed.
	SeedConcurrency int `json:"seed_concurrency"`
	// BacklogJobs wait in urgent during the deep half of backlog.
	BacklogJobs int `json:"backlog_jobs"`

	// Saturated sizes the saturated scenario.
	Saturated SaturatedConfig `json:"saturated"`
	// OverheadJobs urgent jobs, one at a time, run against an instant fal
	// and against one taking OverheadLatency.
	OverheadJobs    int           `json:"overhead_jobs"`
	OverheadLatency time.Duration `json:"overhead_latency"`

	// ServerBin is the server binary; built from ./cmd/server when empty.
	ServerBin string `json:"-"`
	// FalsimBin is the fal simulator binary the seed design calls; built
	// from ./cmd/falsim when empty.
	FalsimBin string `json:"-"`
	// WorkDir holds the Postgres cluster, server logs and the binary; a
	// temporary directory, removed at the end, when empty.
	WorkDir string `json:"-"`
	// ProfileDir, when set, receives the server's CPU and mutex profiles of
	// each scenario (PPROF_ADDR) and pg_stat_statements is reported.
	ProfileDir string `json:"-"`
	// Log receives progress lines; nil discards them.
	Log io.Writer `json:"-"`
}

// FullConfig is make bench: the sizes of issue 8.
func FullConfig() Config {
	return Config{
		Scale:               "full",
		Concurrency:         16,
		SubmitJobs:          10000,
		PickupJobs:          300,
		PickupRate:          25,
		PickupBacklog:       10000,
		PickupNormalWorkers: 1,
		SettleJobs:          50000,
		SettleQueue:         jobs.QueueNormal,
		Users:               500,
		UsersDuration:       60 * time.Second,
		ThinkMin:            2 * time.Second,
		ThinkMax:            6 * time.Second,
		BatchShare:          0.1,
		Limits:              dispatch.QueueLimits{Urgent: 20, Normal: 10, Background: 5},
		Wrk:                 WrkLoad{Threads: 2, Connections: 32, Duration: 15 * time.Second},
		VersusUsers:         100,
		Rounds:              2,
		Warmup:              3 * time.Second,
		DrainLimit:          60 * time.Second,
		SeedConcurrency:     32,
		BacklogJobs:         50000,
		Saturated: SaturatedConfig{SlotsPerKey: 2, BatchJobs: 200, ClickUsers: 50, ClickRate: 1.5, ClickFor: 60 * time.Second,
			Videos: 3, SingleAt: 15 * time.Second, LatencyScale: 0.25, Seed: 12},
		OverheadJobs:    100,
		OverheadLatency: time.Second,
	}
}

// SmokeConfig runs every scenario in seconds, to check the tooling works;
// its numbers mean nothing.
func SmokeConfig() Config {
	c := FullConfig()
	c.Scale = "smoke"
	c.Concurrency = 4
	c.SubmitJobs = 200
	c.PickupJobs = 15
	c.PickupRate = 30
	c.PickupBacklog = 300
	c.SettleJobs = 300
	c.Users = 20
	c.UsersDuration = 3 * time.Second
	c.ThinkMin = 200 * time.Millisecond
	c.ThinkMax = 600 * time.Millisecond
	c.BatchShare = 0.3
	c.Wrk = WrkLoad{Threads: 1, Connections: 4, Duration: 2 * time.Second}
	c.VersusUsers = 20
	c.Rounds = 1
	c.Warmup = time.Second
	c.DrainLimit = 30 * time.Second
	c.SeedConcurrency = 8
	c.BacklogJobs = 500
	c.Saturated = SaturatedConfig{SlotsPerKey: 2, BatchJobs: 30, ClickUsers: 5, ClickRate: 5, ClickFor: 2 * time.Second,
		Videos: 1, SingleAt: 500 * time.Millisecond, LatencyScale: 0.02, Seed: 12}
	c.OverheadJobs = 5
	c.OverheadLatency = 200 * time.Millisecond
	return c
}

func (c Config) validate() error {
	var errs []error
	for _, s := range c.Scenarios {
		if !slices.Contains(AllScenarios, s) {
			errs = append(errs, fmt.Errorf("unknown scenario %q (one of %v)", s, AllScenarios))
		}
	}
	if c.Concurrency < 1 || c.SubmitJobs < c.Concurrency {
		errs = append(errs, errors.New("need concurrency >= 1 and submit jobs >= concurrency"))
	}
	if c.PickupJobs < 1 || c.PickupRate <= 0 || c.PickupBacklog < 0 || c.PickupNormalWorkers < 1 {
		errs = append(errs, errors.New("need pickup jobs >= 1, rate > 0, backlog >= 0, normal workers >= 1"))
	}
	if c.SettleJobs < 1 || !slices.Contains(jobs.Queues, c.SettleQueue) {
		errs = append(errs, fmt.Errorf("need settle jobs >= 1 and a settle queue in %v", jobs.Queues))
	}
	if c.Users < 1 || c.UsersDuration <= 0 || c.ThinkMin <= 0 || c.ThinkMax < c.ThinkMin {
		errs = append(errs, errors.New("need users >= 1, a duration and think min <= max"))
	}
	if c.Wrk.Threads < 1 || c.Wrk.Connections < c.Wrk.Threads || c.Wrk.Duration < time.Second || c.Wrk.Rate < 0 || c.Rounds < 1 ||
		c.VersusUsers < 1 || c.VersusUsers > c.maxUsers() || c.SeedConcurrency < 1 || c.DrainLimit <= 0 || c.BacklogJobs < 1 {
		errs = append(errs, errors.New("need wrk threads >= 1, connections >= threads, a duration >= 1s, a rate >= 0, rounds >= 1, 1..1000 versus users, seed concurrency >= 1, a drain limit and backlog jobs >= 1"))
	}
	if s := c.Saturated; s.SlotsPerKey < 1 || s.BatchJobs < 1 || s.ClickUsers < 1 || s.ClickRate <= 0 || s.ClickFor <= 0 ||
		s.Videos < 0 || s.SingleAt < 0 || s.LatencyScale <= 0 || 2+s.Videos+s.ClickUsers > c.maxUsers() {
		errs = append(errs, errors.New("need saturated slots per key, batch jobs, click users >= 1, a click rate and time, a latency scale, and at most 1000 users in all"))
	}
	if c.OverheadJobs < 1 || c.OverheadLatency <= 0 {
		errs = append(errs, errors.New("need overhead jobs >= 1 and an overhead fal latency"))
	}
	if err := c.Limits.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c Config) runs(s string) bool { return len(c.Scenarios) == 0 || slices.Contains(c.Scenarios, s) }

// maxUsers is how many users the template database gets credits for.
func (c Config) maxUsers() int { return max(c.Users, 1000) }

// Run runs the configured scenarios and returns the report. A scenario
// that fails is recorded in Report.Errors and the others still run; the
// returned error joins those failures.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	rep := newReport(cfg)
	e, err := newEnv(ctx, cfg, rep)
	if err != nil {
		return nil, err
	}
	defer e.close()

	var errs []error
	for _, s := range []struct {
		name string
		run  func(context.Context) error
	}{
		{ScenarioSubmit, e.runSubmit},
		{ScenarioPickup, e.runPickup},
		{ScenarioSettle, e.runSettle},
		{ScenarioUsers, e.runUsers},
		{ScenarioVersusSeed, e.runVersusSeed},
		{ScenarioBacklog, e.runBacklog},
		{ScenarioSaturated, e.runSaturated},
		{ScenarioOverhead, e.runOverhead},
	} {
		if !cfg.runs(s.name) {
			continue
		}
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		begin := time.Now()
		e.logf("== %s", s.name)
		if err := s.run(ctx); err != nil {
			err = fmt.Errorf("%s: %w", s.name, err)
			rep.Errors = append(rep.Errors, err.Error())
			errs = append(errs, err)
		}
		e.logf("== %s done in %s", s.name, time.Since(begin).Round(time.Millisecond))
	}
	rep.Finished = time.Now().UTC()
	rep.Machine.LoadAvgEnd = loadAvg()
	return rep, errors.Join(errs...)
}
