// Command loadgen runs aiqueue's benchmarks and fault drills against the
// real server binary on a private PostgreSQL (make bench, make drills).
//
//	loadgen bench  [-smoke] [-scenarios submit,pickup,settle,users,versus-seed,backlog,saturated,overhead] [-results bench/results] [-profile] ...
//	loadgen drills [-smoke] [-drills kill,pg-restart,pg-crash,fal,sigterm] [-kills 10] [-crashes 6] [-short-rescue] ...
//
// bench prints one table (each figure, its reference, their ratio, and the
// target as pass or miss) and writes the same as JSON under -results.
// drills prints, per drill, jobs submitted / succeeded / failed / lost,
// credits charged / refunded / stuck and fal requests paid twice, and exits
// non-zero when a drill loses a job, leaves credits stuck, pays fal twice or
// breaks a ledger invariant.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/aiqueue/aiqueue/bench"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: loadgen bench|drills [flags] (-h for the flags)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "bench":
		return benchCmd(ctx, args[1:])
	case "drills":
		return drillsCmd(ctx, args[1:])
	default:
		return fmt.Errorf("unknown command %q (bench, drills)", args[0])
	}
}

// set sets *dst to v when v is given (positive).
func set[T int | float64 | time.Duration](dst *T, v T) {
	if v > 0 {
		*dst = v
	}
}

func list(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func benchCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	smoke := fs.Bool("smoke", false, "tiny sizes: checks the tooling in seconds; the numbers mean nothing")
	scenarios := fs.String("scenarios", "", "comma-separated subset of "+strings.Join(bench.AllScenarios, ","))
	results := fs.String("results", "bench/results", "directory for the JSON report (empty: none)")
	profile := fs.Bool("profile", false, "save the server's CPU and mutex profiles of each scenario next to the JSON")
	server := fs.String("server", "", "server binary (default: go build ./cmd/server)")
	falsim := fs.String("falsim", "", "fal simulator binary for the seed design in versus-seed (default: go build ./cmd/falsim)")
	workDir := fs.String("workdir", "", "keep Postgres and server logs here (default: a temp dir, removed)")

	def := bench.FullConfig()
	c := fs.Int("c", 0, fmt.Sprintf("concurrency of the submit scenario (default %d)", def.Concurrency))
	submitJobs := fs.Int("submit-jobs", 0, fmt.Sprintf("jobs per submit path (default %d)", def.SubmitJobs))
	pickupJobs := fs.Int("pickup-jobs", 0, fmt.Sprintf("urgent jobs per pickup run (default %d)", def.PickupJobs))
	backlog := fs.Int("pickup-backlog", -1, fmt.Sprintf("jobs waiting in normal during the pickup run (default %d)", def.PickupBacklog))
	settleJobs := fs.Int("settle-jobs", 0, fmt.Sprintf("backlog of the settle scenario (default %d)", def.SettleJobs))
	settleQueue := fs.String("settle-queue", "", "queue of the settle backlog (default "+def.SettleQueue+")")
	users := fs.Int("users", 0, fmt.Sprintf("users of the users scenario (default %d)", def.Users))
	usersFor := fs.Duration("users-duration", 0, fmt.Sprintf("length of the users scenario (default %s)", def.UsersDuration))
	urgent := fs.Int("urgent-workers", 0, "QUEUE_URGENT_WORKERS of the server (default 20)")
	normal := fs.Int("normal-workers", 0, "QUEUE_NORMAL_WORKERS of the server (default 10)")
	rounds := fs.Int("rounds", 0, fmt.Sprintf("versus-seed and backlog: runs of each side, interleaved (default %d)", def.Rounds))
	wrkFor := fs.Duration("wrk-duration", 0, fmt.Sprintf("versus-seed and backlog: wrk -d (default %s)", def.Wrk.Duration))
	wrkConns := fs.Int("wrk-connections", 0, fmt.Sprintf("versus-seed and backlog: wrk -c, and pgbench's clients (default %d)", def.Wrk.Connections))
	wrkRate := fs.Float64("wrk-rate", 0, "versus-seed and backlog: pace wrk at about this many requests/s in all (default 0: as fast as answered)")
	wrkThreads := fs.Int("wrk-threads", 0, fmt.Sprintf("versus-seed and backlog: wrk -t (default %d)", def.Wrk.Threads))
	versusUsers := fs.Int("versus-users", 0, fmt.Sprintf("versus-seed and backlog: users the requests rotate over (default %d)", def.VersusUsers))
	seedConc := fs.Int("seed-concurrency", 0, fmt.Sprintf("versus-seed: the seed worker's BullMQ concurrency and aiqueue's urgent workers (default %d)", def.SeedConcurrency))
	drainLimit := fs.Duration("drain-limit", 0, fmt.Sprintf("versus-seed: longest wait for the backlog to drain after wrk (default %s)", def.DrainLimit))
	backlogJobs := fs.Int("backlog-jobs", 0, fmt.Sprintf("backlog: jobs waiting in urgent in the deep case (default %d)", def.BacklogJobs))
	satBatch := fs.Int("saturated-batch", 0, fmt.Sprintf("saturated: images in the batch (default %d)", def.Saturated.BatchJobs))
	satFor := fs.Duration("saturated-for", 0, fmt.Sprintf("saturated: how long users click (default %s)", def.Saturated.ClickFor))
	satRate := fs.Float64("saturated-rate", 0, fmt.Sprintf("saturated: urgent clicks per second, all users (default %g)", def.Saturated.ClickRate))
	satScale := fs.Float64("saturated-scale", 0, fmt.Sprintf("saturated: fal latency scale (images 2-8 s, videos 60 s, times this; default %g)", def.Saturated.LatencyScale))
	satSlots := fs.Int("saturated-slots-per-key", 0, fmt.Sprintf("saturated: FAL_KEY_MAX_IN_FLIGHT of each of 3 keys (default %d)", def.Saturated.SlotsPerKey))
	overheadJobs := fs.Int("overhead-jobs", 0, fmt.Sprintf("overhead: jobs per fal latency (default %d)", def.OverheadJobs))
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := bench.FullConfig()
	if *smoke {
		cfg = bench.SmokeConfig()
	}
	set(&cfg.Rounds, *rounds)
	set(&cfg.Wrk.Connections, *wrkConns)
	set(&cfg.Wrk.Threads, *wrkThreads)
	set(&cfg.Wrk.Rate, *wrkRate)
	set(&cfg.VersusUsers, *versusUsers)
	set(&cfg.SeedConcurrency, *seedConc)
	set(&cfg.BacklogJobs, *backlogJobs)
	set(&cfg.Saturated.BatchJobs, *satBatch)
	set(&cfg.Saturated.SlotsPerKey, *satSlots)
	set(&cfg.OverheadJobs, *overheadJobs)
	if *satFor > 0 {
		cfg.Saturated.ClickFor = *satFor
		cfg.Saturated.SingleAt = *satFor / 4
	}
	set(&cfg.Saturated.ClickRate, *satRate)
	set(&cfg.Saturated.LatencyScale, *satScale)
	set(&cfg.Wrk.Duration, *wrkFor)
	set(&cfg.DrainLimit, *drainLimit)
	set(&cfg.Concurrency, *c)
	set(&cfg.SubmitJobs, *submitJobs)
	set(&cfg.PickupJobs, *pickupJobs)
	if *backlog >= 0 {
		cfg.PickupBacklog = *backlog
	}
	set(&cfg.SettleJobs, *settleJobs)
	if *settleQueue != "" {
		cfg.SettleQueue = *settleQueue
	}
	set(&cfg.Users, *users)
	if *usersFor > 0 {
		cfg.UsersDuration = *usersFor
	}
	set(&cfg.Limits.Urgent, *urgent)
	set(&cfg.Limits.Normal, *normal)
	cfg.Scenarios = list(*scenarios)
	cfg.ServerBin, cfg.FalsimBin, cfg.WorkDir, cfg.Log = *server, *falsim, *workDir, os.Stderr
	if *profile {
		dir := *results
		if dir == "" {
			dir = "."
		}
		cfg.ProfileDir = filepath.Join(dir, "profiles-"+time.Now().UTC().Format("2006-01-02T15-04-05Z"))
	}

	rep, runErr := bench.Run(ctx, cfg)
	if rep == nil {
		return runErr
	}
	return errors.Join(runErr, report(rep, *results))
}

// report prints a report's table and writes its JSON into the results
// directory (none when empty).
func report(rep interface {
	Table(w io.Writer)
	WriteJSON(dir string) (string, error)
}, results string) error {
	rep.Table(os.Stdout)
	if results == "" {
		return nil
	}
	path, err := rep.WriteJSON(results)
	if err != nil {
		return err
	}
	fmt.Printf("\nJSON: %s\n", path)
	return nil
}
