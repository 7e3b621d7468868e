package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/aiqueue/aiqueue/internal/jobtest"
	"github.com/aiqueue/aiqueue/internal/logtest"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// TestCrashResumesTheSameFalRequest kills a worker process with SIGKILL
// after fal accepted its request and the request id was stored, while the
// job is running. The heartbeat hands the job back, a second worker
// resumes polling that same request, and fal saw one submit.
func TestCrashResumesTheSameFalRequest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	bin := filepath.Join(t.TempDir(), "server")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))

	sim, url := startSim(t, falsim.Options{Latency: map[string]time.Duration{simImageModel: 20 * time.Second}})
	dbURL := pgtest.NewDBURL(t)
	pool, err := pgxpool.New(ctx, dbURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	// Short attempts and a quick rescuer, so the test takes seconds.
	env := simEnv(url, map[string]string{
		"DATABASE_URL":        dbURL,
		"ROLE":                RoleWorker,
		"LISTEN_ADDR":         "127.0.0.1:0",
		"METRICS_ADDR":        "127.0.0.1:0",
		"JOB_ATTEMPT_TIMEOUT": "8s",
		"RIVER_RESCUE_AFTER":  "8s",
		"LOG_LEVEL":           "info",
	})

	// The job, inserted with its reservation the way the API does.
	catalog := jobs.DefaultCatalog()
	inserter := jobtest.InsertOnly(t, pool)
	svc := jobs.NewService(jobs.Config{Pool: pool, River: inserter, Catalog: catalog})
	uid := uuid.NewString()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	_, _, err = ledger.Grant(ctx, tx, uid, 5, "test", "")
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	ids, err := svc.Submit(ctx, uid, []jobs.Item{{Operation: "generate", Params: json.RawMessage(`{"prompt":"a gold ring"}`)}}, jobs.SubmitOpts{})
	require.NoError(t, err)
	id := jobs.FormatID(ids[0])

	// Worker 1: a separate process.
	logs := &logtest.Buffer{}
	w1 := exec.Command(bin, "serve")
	w1.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		w1.Env = append(w1.Env, k+"="+v)
	}
	w1.Stdout, w1.Stderr = logs, logs
	require.NoError(t, w1.Start())
	t.Cleanup(func() { _ = w1.Process.Kill() })

	// Wait until fal accepted the request, its id is stored and the job is
	// running (polling within its attempt).
	var requestID string
	require.Eventually(t, func() bool {
		var state string
		err := pool.QueryRow(ctx, `SELECT COALESCE(fal_request_id, ''), river_state FROM ai_jobs WHERE id = $1`, id).Scan(&requestID, &state)
		require.NoError(t, err)
		return requestID != "" && state == string(rivertype.JobStateRunning) && sim.Stats().Submits == 1
	}, 30*time.Second, 10*time.Millisecond, "worker 1 never submitted; its logs:\n%s", logs.String())

	killed := time.Now()
	require.NoError(t, w1.Process.Signal(syscall.SIGKILL))
	err = w1.Wait()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr)
	require.Equal(t, syscall.SIGKILL, exitErr.Sys().(syscall.WaitStatus).Signal())
	require.Contains(t, logs.String(), "fal request submitted")

	var state string
	require.NoError(t, pool.QueryRow(ctx, `SELECT river_state FROM ai_jobs WHERE id = $1`, id).Scan(&state))
	require.Equal(t, string(rivertype.JobStateRunning), state, "the killed worker left its job running")
	require.Equal(t, 1, sim.Stats().InProgress)

	// Worker 2, in this process: its heartbeat sees worker 1's process gone
	// from this host and hands the job back at once (not after River's
	// rescue time), and the worker resumes the stored request.
	m := MustRunMain(t, env)
	require.Eventually(t, func() bool {
		var attempt int
		require.NoError(t, m.Pool().QueryRow(ctx, `SELECT attempt FROM ai_jobs WHERE id = $1`, id).Scan(&attempt))
		return attempt == 2
	}, 10*time.Second, 20*time.Millisecond, "the dead worker's job was not handed back within seconds")
	t.Logf("job handed back %s after worker 1 was killed", time.Since(killed).Round(100*time.Millisecond))
	var j struct {
		State, CreditState, FalRequestID string
		Attempt                          int
		Errors                           []string
	}
	require.Eventually(t, func() bool {
		err := m.Pool().QueryRow(ctx, `
SELECT a.state, a.credit_state, a.fal_request_id, a.attempt,
       ARRAY(SELECT e ->> 'error' FROM unnest(r.errors) e)
  FROM ai_jobs a JOIN river_job r ON r.id = a.river_job_id WHERE a.id = $1`, id).
			Scan(&j.State, &j.CreditState, &j.FalRequestID, &j.Attempt, &j.Errors)
		require.NoError(t, err)
		return jobs.Final(j.State)
	}, 90*time.Second, 50*time.Millisecond)

	t.Logf("job resumed and succeeded %s after worker 1 was killed", time.Since(killed).Round(100*time.Millisecond))
	require.Equal(t, jobs.StateSucceeded, j.State)
	require.Equal(t, ledger.HoldCharged, j.CreditState)
	require.Equal(t, requestID, j.FalRequestID, "the same fal request")
	require.Equal(t, 2, j.Attempt)
	require.Empty(t, j.Errors, "a hand-back is not an error of the job")
	st := sim.Stats()
	require.Equal(t, 1, st.Submits, "no second paid request")
	require.Zero(t, st.InProgress)
	require.Equal(t, "completed", m.falRequestState(t, id))
	requireInvariants(t, m)
}
