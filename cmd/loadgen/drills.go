package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"strings"

	"github.com/aiqueue/aiqueue/bench"
)

func drillsCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("drills", flag.ContinueOnError)
	smoke := fs.Bool("smoke", false, "each drill once, in seconds; does not wait for River's rescuer")
	drills := fs.String("drills", "", "comma-separated subset of "+strings.Join(bench.AllDrills, ","))
	results := fs.String("results", "bench/results", "directory for the JSON report (empty: none)")
	server := fs.String("server", "", "server binary (default: go build ./cmd/server)")
	workDir := fs.String("workdir", "", "keep Postgres and server logs here (default: a temp dir, removed)")
	kills := fs.Int("kills", 0, "kill -9 count of the kill drill (default 10)")
	crashes := fs.Int("crashes", 0, "Postgres crashes of the pg-crash drill (default 6)")
	shortRescue := fs.Bool("short-rescue", false, "RIVER_RESCUE_AFTER=15s and JOB_ATTEMPT_TIMEOUT=10s (default: the server's defaults; the worker heartbeat hands a dead process's jobs back)")
	rate := fs.Float64("rate", 0, "submits per second during a drill (default 20)")
	settle := fs.Duration("settle", 0, "longest wait for jobs to end after the load (default: long enough for River's rescuer)")
	revokeFor := fs.Duration("revoke-for", -1, "how long key-2 stays revoked in the fal drill; 0 until the end (default 0, smoke 1.5s)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := bench.FullDrillConfig()
	if *smoke {
		cfg = bench.SmokeDrillConfig()
	}
	if *kills > 0 {
		cfg.Kills = *kills
	}
	if *crashes > 0 {
		cfg.Crashes = *crashes
	}
	cfg.ShortRescue = *shortRescue
	if *rate > 0 {
		cfg.Rate = *rate
	}
	if *settle > 0 {
		cfg.Settle = *settle
	}
	if *revokeFor >= 0 {
		cfg.RevokeFor = *revokeFor
	}
	cfg.Drills = list(*drills)
	cfg.ServerBin, cfg.WorkDir, cfg.Log = *server, *workDir, os.Stderr

	rep, runErr := bench.RunDrills(ctx, cfg)
	if rep == nil {
		return runErr
	}
	return errors.Join(runErr, report(rep, *results))
}
