package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aiqueue/aiqueue/internal/logtest"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/api"
	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/ledger"
)

var (
	buildOnce sync.Once
	builtPath string
	buildErr  error
)

// serverBinary builds this command once per test run.
func serverBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "aiqueue-server-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtPath = filepath.Join(dir, "server")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", "build", "-o", builtPath, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New("go build: " + err.Error() + ": " + string(out))
		}
	})
	require.NoError(t, buildErr)
	return builtPath
}

// process is a server running as a real OS process.
type process struct {
	t    *testing.T
	cmd  *exec.Cmd
	logs *logtest.Buffer
	addr string
	done chan struct{}
	err  error // the Wait error, after done
}

// startProcess runs the built server with env (and PATH/HOME) and waits
// until it logs the address it serves on.
func startProcess(t *testing.T, env map[string]string) *process {
	t.Helper()
	cmd := exec.Command(serverBinary(t), "serve")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	cmd.Stdout = io.Discard
	require.NoError(t, cmd.Start())
	p := &process{t: t, cmd: cmd, logs: &logtest.Buffer{}, done: make(chan struct{})}
	addrCh := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			_, _ = p.logs.Write(append(append([]byte{}, line...), '\n'))
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "server started" {
				addrCh <- rec.Addr
			}
		}
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	select {
	case p.addr = <-addrCh:
	case <-p.done:
		t.Fatalf("server exited before serving: %v\n%s", p.err, p.logs.String())
	case <-time.After(time.Minute):
		t.Fatalf("server did not start in time\n%s", p.logs.String())
	}
	return p
}

func (p *process) url() string { return "http://" + p.addr }

// stop sends SIGTERM and returns how long the process took to exit and
// when its port first refused a connection (zero if it never did before
// the exit).
func (p *process) stop(timeout time.Duration) (took time.Duration, refusedBeforeExit bool) {
	p.t.Helper()
	start := time.Now()
	require.NoError(p.t, p.cmd.Process.Signal(syscall.SIGTERM))
	deadline := time.After(timeout)
	for {
		select {
		case <-p.done:
			require.NoError(p.t, p.err, "exit status; logs:\n%s", p.logs.String())
			require.Equal(p.t, 0, p.cmd.ProcessState.ExitCode())
			return time.Since(start), refusedBeforeExit
		case <-deadline:
			p.t.Fatalf("server did not exit within %s of SIGTERM\n%s", timeout, p.logs.String())
		case <-time.After(20 * time.Millisecond):
			if !refusedBeforeExit {
				conn, err := net.DialTimeout("tcp", p.addr, 100*time.Millisecond)
				if err != nil {
					select {
					case <-p.done: // exited meanwhile: does not count
					default:
						refusedBeforeExit = true
					}
				} else {
					conn.Close()
				}
			}
		}
	}
}

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	// One fal simulator shared by both processes, so its counts show every
	// request paid for. generate takes 2s at fal, upscale 10s: longer than
	// the shutdown timeout.
	sim := falsim.New(falsim.Options{
		Keys:    []string{falKeyA, falKeyB},
		Latency: map[string]time.Duration{"fal-ai/flux/dev": 2 * time.Second, "fal-ai/clarity-upscaler": 10 * time.Second},
	})
	simSrv := httptest.NewServer(sim)
	t.Cleanup(simSrv.Close)

	dbURL := pgtest.NewDBURL(t)
	pool, err := pgxpool.New(ctx, dbURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	env := map[string]string{
		"DATABASE_URL":          dbURL,
		"LISTEN_ADDR":           "127.0.0.1:0",
		"METRICS_ADDR":          "127.0.0.1:0",
		"AUTH_JWT_SECRET":       testSecret,
		"FAL_KEYS":              falKeyA + "," + falKeyB,
		"FAL_QUEUE_URL":         simSrv.URL,
		"FAL_KEY_MAX_IN_FLIGHT": "10",
		"QUEUE_URGENT_WORKERS":  "3",
		"SHUTDOWN_TIMEOUT":      "5s",
		"RIVER_BASIC_AUTH_USER": riverUser,
		"RIVER_BASIC_AUTH_PASS": riverPass,
		"LOG_LEVEL":             "info",
	}
	first := startProcess(t, env)

	uid := uuid.NewString()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	_, _, err = ledger.Grant(ctx, tx, uid, 100, "test", "")
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	token, err := api.MintToken([]byte(testSecret), uid, false, time.Hour, "authenticated")
	require.NoError(t, err)
	c := &client{t: t, base: first.url(), token: token}

	// Two long jobs and a short one take the three urgent workers; three
	// more wait in the queue.
	var ids []string
	for _, op := range []struct {
		name   string
		params map[string]any
	}{
		{"upscale", map[string]any{"image_url": "https://example.com/a.png"}},
		{"upscale", map[string]any{"image_url": "https://example.com/b.png"}},
		{"generate", map[string]any{"prompt": "ring 1"}},
	} {
		ids = append(ids, submit(t, c, op.name, op.params).ID)
	}
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM ai_jobs WHERE river_state = 'running' AND fal_request_id IS NOT NULL`).Scan(&n))
		return n == 3
	}, 30*time.Second, 10*time.Millisecond, "three jobs never ran at fal")
	for i := 2; i <= 4; i++ {
		ids = append(ids, submit(t, c, "generate", map[string]any{"prompt": "ring queued " + string(rune('0'+i))}).ID)
	}

	took, refused := first.stop(30 * time.Second)
	require.True(t, refused, "the port kept accepting connections while the jobs finished")
	require.GreaterOrEqual(t, took, 4*time.Second, "the server did not wait for its running jobs")

	// After the first process: the short job finished, the long ones went
	// back to the queue with their fal request stored, the queued ones were
	// not touched; nothing is running and nothing was settled twice.
	states := map[string]string{}
	rows, err := pool.Query(ctx, `SELECT id, river_state FROM ai_jobs`)
	require.NoError(t, err)
	for rows.Next() {
		var id, st string
		require.NoError(t, rows.Scan(&id, &st))
		states[id] = st
	}
	require.NoError(t, rows.Err())
	require.Len(t, states, 6)
	require.Equal(t, "completed", states[ids[2]])
	for _, id := range ids[:2] {
		require.Contains(t, []string{"retryable", "available"}, states[id], "long job %s", id)
	}
	for _, id := range ids[3:] {
		require.Equal(t, "available", states[id], "queued job %s", id)
	}
	var storedLong int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM ai_jobs WHERE id = ANY($1) AND fal_request_id IS NOT NULL`, ids[:2]).Scan(&storedLong))
	require.Equal(t, 2, storedLong)
	require.Equal(t, 3, sim.Stats().Submits)
	vs, err := ledger.CheckInvariants(ctx, pool)
	require.NoError(t, err)
	require.Empty(t, vs)

	// A second process finishes everything, resuming the stored requests.
	second := startProcess(t, env)
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM ai_jobs WHERE state = 'succeeded'`).Scan(&n))
		return n == 6
	}, 60*time.Second, 50*time.Millisecond, "the second process did not finish the jobs")
	_, _ = second.stop(30 * time.Second)

	// Every job paid fal once and the user once.
	require.Equal(t, 6, sim.Stats().Submits, "a fal request was paid twice")
	var distinct int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(DISTINCT fal_request_id) FROM ai_jobs`).Scan(&distinct))
	require.Equal(t, 6, distinct)
	simIDs := map[string]bool{}
	for _, r := range sim.Requests() {
		simIDs[r.ID] = true
	}
	rows, err = pool.Query(ctx, `SELECT fal_request_id FROM ai_jobs`)
	require.NoError(t, err)
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		require.True(t, simIDs[id], "stored fal request %s is not one the simulator served", id)
	}
	require.NoError(t, rows.Err())
	var charges, reserves int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE kind = 'charge'), count(*) FILTER (WHERE kind = 'reserve') FROM credit_entries WHERE user_id = $1`, uid).Scan(&charges, &reserves))
	require.Equal(t, 6, charges)
	require.Equal(t, 6, reserves)
	bal, err := ledger.Get(ctx, pool, uid)
	require.NoError(t, err)
	require.Equal(t, ledger.Balance{Balance: 100 - 2*2 - 4*1, Available: 100 - 2*2 - 4*1}, bal)
	vs, err = ledger.CheckInvariants(ctx, pool)
	require.NoError(t, err)
	require.Empty(t, vs)

	// The logs are JSON, tell the story, and hold no secret.
	for _, p := range []*process{first, second} {
		p.logs.Records(t)
		requireNoSecrets(t, token, p.logs.String())
	}
	require.Contains(t, first.logs.String(), "handing them back to the queue")
	require.Contains(t, first.logs.String(), `"msg":"shut down"`)
	resp, err := http.Get(first.url() + "/healthz") //nolint:noctx // the process is gone
	if err == nil {
		resp.Body.Close()
	}
	require.Error(t, err, "the first process still answers")
}
