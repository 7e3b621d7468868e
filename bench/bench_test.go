package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// binDir holds the server binary the tests build once.
var binDir string

func TestMain(m *testing.M) {
	var err error
	if binDir, err = os.MkdirTemp("", "aiqueue-bench-bin-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(binDir)
	os.Exit(code)
}

var buildServer = sync.OnceValues(func() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	return BuildServer(ctx, binDir)
})

func serverBin(t *testing.T) string {
	t.Helper()
	bin, err := buildServer()
	require.NoError(t, err)
	return bin
}

// testLog sends progress lines to the test log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func findRow(t *testing.T, rep *Report, scenario, figurePrefix, reference string) Row {
	t.Helper()
	for _, r := range rep.Rows {
		if r.Scenario == scenario && strings.HasPrefix(r.Figure, figurePrefix) && r.Reference == reference {
			return r
		}
	}
	require.Failf(t, "row not found", "%s / %s / %s", scenario, figurePrefix, reference)
	return Row{}
}

// TestRunSmoke runs every scenario at smoke scale against the real server
// binary. It checks that the tooling measures what it says and that the
// books balance afterwards, never how fast anything is.
func TestRunSmoke(t *testing.T) {
	t.Parallel()
	cfg := SmokeConfig()
	cfg.Scenarios = []string{ScenarioSubmit, ScenarioPickup, ScenarioSettle, ScenarioUsers, ScenarioSaturated, ScenarioOverhead}
	cfg.ServerBin = serverBin(t)
	cfg.WorkDir = t.TempDir()
	cfg.Log = testLog{t}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	rep, err := Run(ctx, cfg)
	require.NoError(t, err)
	require.Empty(t, rep.Errors)

	submit := rep.Details["submit"].(map[string]any)
	for _, k := range []string{"http", "raw_river_insert_tx", "pgbench"} {
		res := submit[k].(LoadResult)
		require.Equal(t, cfg.SubmitJobs, res.Ops, k)
		require.Zero(t, res.Errors, k)
		require.Positive(t, res.Throughput, k)
		require.Equal(t, cfg.SubmitJobs, res.Latency.N, k)
	}
	row := findRow(t, rep, ScenarioSubmit, "submit throughput", "raw River InsertTx")
	require.NotNil(t, row.Ratio)
	require.NotNil(t, row.Pass)
	findRow(t, rep, ScenarioSubmit, "submit throughput", "pgbench, same reserve+insert SQL")

	pickup := rep.Details["pickup"].(map[string]any)
	for _, k := range []string{"empty", "backlog", "raw_river_backlog"} {
		res := pickup[k].(PickupResult)
		require.Zero(t, res.Errors, k)
		require.Equal(t, cfg.PickupJobs, res.Jobs+res.Retried, k)
		require.Equal(t, res.Jobs, res.CommitToStart.N, k)
	}
	require.Positive(t, pickup["backlog"].(PickupResult).NormalWaitingBefore)
	require.NotNil(t, findRow(t, rep, ScenarioPickup, "urgent pickup p50/p99, commit", "same, empty queue").Pass)
	require.NotNil(t, findRow(t, rep, ScenarioPickup, "urgent pickup p50/p99, commit", "raw River, same backlog, urgent's fetch settings").RefValue)

	settle := rep.Details["settle"].(map[string]any)
	ai, raw := settle["ai"].(SettleResult), settle["raw_river"].(SettleResult)
	require.Equal(t, cfg.SettleJobs, ai.Completed)
	require.Equal(t, cfg.SettleJobs, ai.Charged)
	require.Equal(t, cfg.SettleJobs, raw.Completed)
	require.Positive(t, ai.Throughput)
	require.Positive(t, raw.Throughput)

	users := rep.Details["users"].(UsersResult)
	require.Zero(t, users.Errors, "%v", users.ErrorKinds)
	require.Positive(t, users.Submit.N)
	require.Positive(t, users.EndToEnd.N)
	require.Positive(t, users.HWMMB)
	require.NotNil(t, rep.Capabilities)
	require.Positive(t, users.JobsByState["succeeded"])

	sat := rep.Details[ScenarioSaturated].(SaturatedResult)
	require.Zero(t, sat.Refused)
	require.Equal(t, sat.Jobs, sat.Succeeded)
	require.Equal(t, cfg.Saturated.BatchJobs, sat.JobsKind[arrivalBatch])
	require.Equal(t, 1, sat.JobsKind[arrivalSingle])
	require.Equal(t, cfg.Saturated.Videos, sat.JobsKind[arrivalVideo])
	for _, s := range []SaturatedSchedule{sat.Measured, sat.Ideal} {
		require.Equal(t, sat.Jobs, s.TotalByQueue["urgent"].N+s.TotalByQueue["normal"].N)
		require.Positive(t, s.BatchMakespanS)
		require.Positive(t, s.BusyWhileWaiting)
	}
	require.InDelta(t, 1.0, sat.Ideal.BusyWhileWaiting, 1e-9, "the ideal schedule never idles a slot while work waits")
	require.Positive(t, sat.WritesPerJob["river_job"]["upd"])
	require.Positive(t, sat.CPU.PostgresMS)
	require.NotNil(t, findRow(t, rep, ScenarioSaturated, "urgent: submit to final", "ideal schedule (same trace, zero overhead)").Pass)

	over := rep.Details[ScenarioOverhead].([]OverheadCase)
	require.Len(t, over, 2)
	for _, c := range over {
		require.Zero(t, c.Errors, c.Name)
		require.Equal(t, cfg.OverheadJobs, c.Overhead.N, c.Name)
		require.Equal(t, cfg.OverheadJobs, c.HeldPastFal.N, c.Name)
		require.Positive(t, c.StatusReadsPerJob, c.Name)
	}
	require.InDelta(t, float64(cfg.OverheadLatency.Milliseconds()), over[1].FalTime.P50, 50)

	requireLedgerChecked(t, rep)

	var table bytes.Buffer
	rep.Table(&table)
	require.Contains(t, table.String(), "submit throughput, HTTP POST /v1/jobs")
	require.Contains(t, table.String(), "raw River InsertTx")

	path, err := rep.WriteJSON(t.TempDir())
	require.NoError(t, err)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var back Report
	require.NoError(t, json.Unmarshal(b, &back))
	require.Len(t, back.Rows, len(rep.Rows))
	require.Equal(t, "smoke", back.Scale)
}

// TestVersusSeedSmoke runs versus-seed and backlog at smoke scale: the
// seed design (Node, BullMQ, redis-server) next to the real server under
// wrk, and submits with and without a backlog. It takes 30-60 s, so it runs
// only with BENCH_SEED_SMOKE=1, and it skips when redis-server, wrk, node
// or bench/seed's npm packages are missing (bench/setup.sh installs them;
// this test installs nothing).
func TestVersusSeedSmoke(t *testing.T) {
	t.Parallel()
	if os.Getenv("BENCH_SEED_SMOKE") != "1" {
		t.Skip("set BENCH_SEED_SMOKE=1 to run the versus-seed and backlog smoke (30-60 s)")
	}
	if _, err := seedTools(context.Background()); err != nil {
		t.Skip(err)
	}
	cfg := SmokeConfig()
	cfg.Scenarios = []string{ScenarioVersusSeed, ScenarioBacklog}
	cfg.ServerBin = serverBin(t)
	cfg.WorkDir = t.TempDir()
	cfg.Log = testLog{t}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	rep, err := Run(ctx, cfg)
	require.NoError(t, err)
	require.Empty(t, rep.Errors)

	vs := rep.Details[ScenarioVersusSeed].(VersusResult)
	require.Len(t, vs.Runs, 2*cfg.Rounds+1)
	for _, r := range vs.Runs {
		require.Positive(t, r.Wrk.Requests, r.System)
		require.Zero(t, r.Wrk.Non2xx, r.System)
		require.Zero(t, r.Wrk.SocketErrors, r.System)
		require.Positive(t, r.Wrk.P99MS, r.System)
		require.True(t, r.Drained, r.System)
		require.Zero(t, r.Reserved, r.System)
		// wrk does not count the answers in flight when it (or the warm-up
		// before) stops; the systems still work those jobs.
		require.GreaterOrEqual(t, r.Charged, r.Wrk.Accepted, "%s: every accepted job is charged", r.System)
		require.LessOrEqual(t, r.Charged, r.Wrk.Accepted+2*cfg.Wrk.Connections, r.System)
		require.Positive(t, r.CPUPerJobMS["postgres"], r.System)
		require.Positive(t, r.Wrk.CPUMS, r.System)
	}
	require.Positive(t, vs.Runs[0].CPUPerJobMS["route"])
	require.Positive(t, vs.Runs[0].CPUPerJobMS["worker"])
	require.Positive(t, vs.Runs[1].CPUPerJobMS["server"])
	require.Len(t, vs.Pgbench, 2*cfg.Rounds)
	require.Positive(t, vs.Pgbench[0].Transactions)
	require.Zero(t, vs.Pgbench[0].Errors)
	require.NotEmpty(t, vs.Statements["top_level"])
	require.NotNil(t, findRow(t, rep, ScenarioVersusSeed, "round 1: requests/s", "seed design").Ratio)
	for _, side := range []string{"aiqueue", "the seed design"} {
		b := findRow(t, rep, ScenarioVersusSeed, fmt.Sprintf("jobs/s %d CPUs allow at %s's", rep.Machine.CPUs, side), "work keeping up at 1.5x the seed's mean requests/s")
		require.Positive(t, b.Value, side)
		seed := findRow(t, rep, ScenarioVersusSeed, fmt.Sprintf("all %d rounds: mean requests/s", cfg.Rounds), "seed design").RefValue
		require.InDelta(t, 1.5**seed, *b.RefValue, 1e-9, side)
	}

	bl := rep.Details[ScenarioBacklog].(BacklogResult)
	require.Len(t, bl.Runs, 2*cfg.Rounds)
	for _, r := range bl.Runs {
		require.Positive(t, r.Wrk.Requests, r.Case)
		require.Zero(t, r.Wrk.Non2xx, r.Case)
	}
	require.Zero(t, bl.Runs[0].Waiting)
	require.Equal(t, cfg.BacklogJobs, bl.Runs[1].Waiting)
	require.NotNil(t, findRow(t, rep, ScenarioBacklog, "round 1: submits/s", "empty queue").Pass)

	requireLedgerChecked(t, rep)
}

// TestMachineMSPerJob counts every process of a run and wrk's share per
// job, the fal simulator included.
func TestMachineMSPerJob(t *testing.T) {
	t.Parallel()
	r := VersusRun{CPUPerJobMS: map[string]float64{"server": 1.5, "postgres": 2.5, falsimPart: 0.5}, Charged: 200,
		Wrk: WrkResult{CPUMS: 100, Accepted: 190}}
	require.InDelta(t, 5.0, machineMSPerJob(r), 1e-9)
	r.Charged = 0 // per accepted job when nothing was charged
	require.InDelta(t, 4.5+100.0/190, machineMSPerJob(r), 1e-9)
}

// TestParseWrk reads the line bench/submit.lua's done() prints.
func TestParseWrk(t *testing.T) {
	t.Parallel()
	out := []byte("Running 2s test @ http://127.0.0.1:1/v1/jobs\n" +
		`WRK_RESULT {"requests":1000,"duration_us":2000000,"connect_errors":0,"read_errors":1,"write_errors":0,` +
		`"status_errors":10,"timeouts":2,"mean_us":5000.5,"p50_us":4000,"p90_us":8000,"p99_us":20000,"max_us":50000}` + "\n")
	r, err := parseWrk(out)
	require.NoError(t, err)
	require.Equal(t, 1000, r.Requests)
	require.Equal(t, 10, r.Non2xx)
	require.Equal(t, 990, r.Accepted)
	require.Equal(t, 1, r.SocketErrors)
	require.InDelta(t, 500.0, r.RequestsPerS, 1e-9)
	require.InDelta(t, 4.0, r.P50MS, 1e-9)
	require.InDelta(t, 20.0, r.P99MS, 1e-9)

	_, err = parseWrk([]byte("no summary"))
	require.Error(t, err)
}

// drillEvidence are the server log lines that say why a job may have been
// submitted to fal twice.
var drillEvidence = []string{"submitting again", "abandoned a fal claim", "cancelling it at fal",
	"handed back", "could not store the fal request id", "giving up"}

// logDrillEvidence logs drill's server log lines that bear on a double
// payment (the work dir, with the logs, is gone after the test).
func logDrillEvidence(t *testing.T, workDir, drill string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(workDir, "logs", "drill-"+drill, "*.log"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(b)) {
			for _, e := range drillEvidence {
				if strings.Contains(line, e) {
					t.Logf("%s: %s", filepath.Base(f), strings.TrimSpace(line))
					break
				}
			}
		}
	}
}

// TestRunDrillsSmoke runs every fault drill once, briefly, and requires
// what the drills require: nothing lost, no credits stuck, nothing paid
// twice, the ledger invariants intact.
func TestRunDrillsSmoke(t *testing.T) {
	t.Parallel()
	cfg := SmokeDrillConfig()
	cfg.ServerBin = serverBin(t)
	cfg.WorkDir = t.TempDir()
	cfg.Log = testLog{t}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Paying fal twice is what the kill and pg-crash drills look for. A
	// kill -9 between fal's answer and storing its request id can still
	// cause it (README, crash safety): make drills fails on it, this test
	// logs it. A Postgres crash must not (issue 20): it fails here too.
	paidTwiceOpen := map[string]bool{DrillKill: true}
	rep, err := RunDrills(ctx, cfg)
	require.NotNil(t, rep, "%v", err)
	require.Len(t, rep.Results, len(AllDrills))
	for _, r := range rep.Results {
		require.Empty(t, r.Error, r.Name)
		if r.PaidTwice > 0 {
			logDrillEvidence(t, cfg.WorkDir, r.Name)
		}
		if r.PaidTwice > 0 && paidTwiceOpen[r.Name] {
			t.Logf("drill %s paid fal twice for %d jobs (an open issue; make drills fails on it)", r.Name, r.PaidTwice)
			r.PaidTwice = 0
		}
		require.True(t, r.OK(), r.Name)
		require.Positive(t, r.Submitted, r.Name)
		require.Positive(t, r.Succeeded, r.Name)
		require.Zero(t, r.Lost, r.Name)
		require.Zero(t, r.Unfinished, r.Name)
		require.Zero(t, r.CreditsStuck, r.Name)
		require.Zero(t, r.FalOrphans, r.Name)
		require.Empty(t, r.Violations, r.Name)
		require.Equal(t, r.Submitted, r.Succeeded+r.Failed+r.Cancelled+r.AwaitingRescue, r.Name)
		require.GreaterOrEqual(t, r.FalSubmits, r.Succeeded, r.Name)
		require.NotEmpty(t, r.Faults, r.Name)
	}
	require.Len(t, rep.Results[0].Faults, cfg.Kills)
	for _, r := range rep.Results {
		switch r.Name {
		case DrillPGCrash:
			require.Len(t, r.Outages, cfg.Crashes)
		case DrillPGRestart:
			require.Len(t, r.Outages, cfg.Restarts)
		}
	}

	var table bytes.Buffer
	rep.Table(&table)
	for _, d := range AllDrills {
		require.Contains(t, table.String(), d)
	}
}

// requireLedgerChecked requires that every scenario of rep reports its
// ledger check, with no violation.
func requireLedgerChecked(t *testing.T, rep *Report) {
	t.Helper()
	scenarios, checked := map[string]bool{}, map[string]bool{}
	for _, r := range rep.Rows {
		scenarios[r.Scenario] = true
		if r.Figure == "ledger invariant violations" {
			require.Zero(t, r.Value, r.Scenario)
			checked[r.Scenario] = true
		}
	}
	require.Equal(t, scenarios, checked, "a scenario without its ledger check")
}
