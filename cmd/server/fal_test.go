package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/internal/logtest"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

const (
	simImageModel = "fal-ai/flux/dev"
	simVideoModel = "fal-ai/kling-video/v2.1/standard/image-to-video"
)

// simKeys look like real fal keys ("<id>:<secret>"), so the scans below
// would find a leak.
var simKeys = []string{
	"3f1c2a9e-1111-4c1d-9a1e-aaaaaaaaaaaa:5e6f0123456789abcdef0123456789ab",
	"7b2d3e4f-2222-4d2e-8b2f-bbbbbbbbbbbb:6f70123456789abcdef0123456789abc",
	"9c3e4f50-3333-4e3f-9c30-cccccccccccc:70813456789abcdef0123456789abcde",
}

// startSim serves a falsim on a free loopback port for the server to reach
// through FAL_QUEUE_URL, as a separate fal would be.
func startSim(t testing.TB, opts falsim.Options) (*falsim.Server, string) {
	t.Helper()
	opts.Keys = simKeys
	sim := falsim.New(opts)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return sim, srv.URL
}

// simEnv is the environment of a server using the fal simulator at url.
func simEnv(url string, more map[string]string) map[string]string {
	env := map[string]string{
		"FAL_SIMULATE":          "true",
		"FAL_QUEUE_URL":         url,
		"FAL_KEYS":              strings.Join(simKeys, ","),
		"RATE_LIMIT_PER_MINUTE": "10000",
		"RATE_LIMIT_BURST":      "10000",
	}
	for k, v := range more {
		env[k] = v
	}
	return env
}

// runMainWithLogs is MustRunMain with the server's JSON logs, at debug
// level, written to w.
func runMainWithLogs(t testing.TB, env map[string]string, w io.Writer) *Main {
	t.Helper()
	full := map[string]string{"LOG_LEVEL": "debug"}
	for k, v := range env {
		full[k] = v
	}
	return mustRunMain(t, full, w)
}

func (c *client) submit(operation string, params map[string]any, priority string) jobs.Job {
	c.t.Helper()
	body := map[string]any{"operation": operation, "params": params}
	if priority != "" {
		body["priority"] = priority
	}
	var j jobs.Job
	resp := c.do(http.MethodPost, "/v1/jobs", body, &j)
	require.Equal(c.t, http.StatusAccepted, resp.StatusCode)
	return j
}

func (c *client) job(id string) jobs.Job {
	c.t.Helper()
	var j jobs.Job
	resp := c.do(http.MethodGet, "/v1/jobs/"+id, nil, &j)
	require.Equal(c.t, http.StatusOK, resp.StatusCode)
	return j
}

func (c *client) waitFinal(id string, within time.Duration) jobs.Job {
	c.t.Helper()
	var j jobs.Job
	require.Eventually(c.t, func() bool {
		j = c.job(id)
		return jobs.Final(j.State)
	}, within, 20*time.Millisecond, "job %s did not finish: %+v", id, j)
	return j
}

func (m *Main) falRequestState(t testing.TB, jobID string) string {
	t.Helper()
	var state string
	require.NoError(t, m.Pool().QueryRow(context.Background(), `SELECT state FROM fal_requests WHERE job_id = $1::bigint ORDER BY id DESC LIMIT 1`, jobID).Scan(&state))
	return state
}

var (
	imageParams = map[string]any{"prompt": "a gold ring on marble"}
	videoParams = map[string]any{"prompt": "slow spin", "image_url": "https://example.com/ring.png"}
)

// inFlightMetric sums aiqueue_fal_key_in_flight over the keys in a
// /metrics page.
func inFlightMetric(t testing.TB, text string) int {
	t.Helper()
	sum := 0
	for _, m := range regexp.MustCompile(`(?m)^aiqueue_fal_key_in_flight\{key="key-\d"\} (\d+)$`).FindAllStringSubmatch(text, -1) {
		n, err := strconv.Atoi(m[1])
		require.NoError(t, err)
		sum += n
	}
	return sum
}

func getText(t testing.TB, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	return string(b)
}

// TestLongJobsFreeTheirWorker: six 10-second videos at fal with two normal
// workers leave both workers free, so a short normal job starts at once.
func TestLongJobsFreeTheirWorker(t *testing.T) {
	t.Parallel()
	sim, url := startSim(t, falsim.Options{
		Latency:        map[string]time.Duration{"fal-ai/kling-video": 10 * time.Second},
		DefaultLatency: 200 * time.Millisecond,
	})
	// Every slot may go to normal work here: the point is River's workers.
	m := MustRunMain(t, simEnv(url, map[string]string{"QUEUE_NORMAL_WORKERS": "2", "FAL_KEY_MAX_IN_FLIGHT": "3",
		"FAL_SLOTS_NORMAL_MAX": "100%", "FAL_SLOTS_BACKGROUND_MAX": "100%"}))
	c, _ := newUser(t, m, 100)

	var videos []string
	for range 6 {
		videos = append(videos, c.submit("video", videoParams, "").ID)
	}
	require.Eventually(t, func() bool { return sim.Stats().InProgress == 6 }, 15*time.Second, 20*time.Millisecond,
		"all six videos reach fal through two workers")
	require.Equal(t, 6, inFlightMetric(t, getText(t, m.MetricsURL())))

	short := c.submit("generate", imageParams, jobs.QueueNormal)
	require.Equal(t, jobs.QueueNormal, short.Priority)
	j := c.waitFinal(short.ID, 20*time.Second)
	require.Equal(t, jobs.StateSucceeded, j.State)
	require.NotNil(t, j.StartedAt)
	t.Logf("with 6 videos at fal and 2 normal workers, a short normal job started %s after it was created", j.StartedAt.Sub(j.CreatedAt))
	require.Less(t, j.StartedAt.Sub(j.CreatedAt), 2*time.Second, "the short job waited for a worker slot")
	for _, id := range videos {
		require.False(t, jobs.Final(c.job(id).State), "the short job finished while every video was still at fal")
	}

	for _, id := range videos {
		v := c.waitFinal(id, 40*time.Second)
		require.Equal(t, jobs.StateSucceeded, v.State)
		require.Equal(t, ledger.HoldCharged, v.Credits.State)
		require.Contains(t, string(v.Result), `"video"`)
	}
	require.Equal(t, 7, sim.Stats().Submits)
	require.Zero(t, inFlightMetric(t, getText(t, m.MetricsURL())))
	requireInvariants(t, m)
}

// TestCancelCancelsAtFal cancels through the API a running image job and a
// video job snoozed between polls: fal's request is cancelled, the job ends
// cancelled and refunded, and the in-flight slot is free.
func TestCancelCancelsAtFal(t *testing.T) {
	t.Parallel()
	sim, url := startSim(t, falsim.Options{Latency: map[string]time.Duration{simImageModel: time.Minute, "fal-ai/kling-video": time.Minute}})
	m := MustRunMain(t, simEnv(url, nil))
	c, _ := newUser(t, m, 100)

	requestOf := func(id string) falsim.RequestInfo {
		var rid string
		require.Eventually(t, func() bool {
			return m.Pool().QueryRow(context.Background(), `SELECT fal_request_id FROM ai_jobs WHERE id = $1 AND fal_request_id IS NOT NULL`, id).Scan(&rid) == nil
		}, 10*time.Second, 10*time.Millisecond)
		for _, r := range sim.Requests() {
			if r.ID == rid {
				return r
			}
		}
		t.Fatalf("fal has no request %s", rid)
		return falsim.RequestInfo{}
	}

	image := c.submit("generate", imageParams, "")
	video := c.submit("video", videoParams, "")
	requestOf(image.ID)
	requestOf(video.ID)
	require.Equal(t, jobs.StateRunning, c.job(image.ID).State, "the image job polls fal within its attempt")
	require.Eventually(t, func() bool {
		var rs string
		require.NoError(t, m.Pool().QueryRow(context.Background(), `SELECT river_state FROM ai_jobs WHERE id = $1`, video.ID).Scan(&rs))
		return rs != "running"
	}, 10*time.Second, 10*time.Millisecond, "the video job snoozes between polls")
	require.Equal(t, jobs.StateRunning, c.job(video.ID).State, "a job between polls of its fal request is running")

	for _, id := range []string{image.ID, video.ID} {
		var j jobs.Job
		resp := c.do(http.MethodPost, "/v1/jobs/"+id+"/cancel", nil, &j)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		j = c.waitFinal(id, 20*time.Second)
		require.Equal(t, jobs.StateCancelled, j.State)
		require.Equal(t, ledger.HoldRefunded, j.Credits.State)
		require.Equal(t, "cancelled", j.Error.Code)
		require.True(t, requestOf(id).Cancelled, "job %s's fal request is cancelled", id)
		require.Equal(t, "cancelled", m.falRequestState(t, id))
	}
	require.Zero(t, inFlightMetric(t, getText(t, m.MetricsURL())))
	var credits struct{ Balance, Reserved, Available int64 }
	c.do(http.MethodGet, "/v1/credits", nil, &credits)
	require.Equal(t, int64(100), credits.Available)
	requireInvariants(t, m)
}

// TestNoFalKeyInLogsOrMetrics drives submits, failures and cancels through
// the server with the built-in simulator and checks that no fal key appears
// in the server's logs (debug level), in /metrics or in an API answer.
func TestNoFalKeyInLogsOrMetrics(t *testing.T) {
	t.Parallel()
	logs := &logtest.Buffer{}
	m := runMainWithLogs(t, map[string]string{
		"FAL_SIMULATE":          "true",
		"FAL_SIMULATE_FAST":     "true",
		"FAL_KEYS":              strings.Join(simKeys, ","),
		"RATE_LIMIT_PER_MINUTE": "10000",
		"RATE_LIMIT_BURST":      "10000",
	}, logs)
	sim := m.Sim()
	require.NotNil(t, sim)
	sim.FailKey(simKeys[0], falsim.Failure{Status: 401, Count: 1})
	sim.FailKey(simKeys[1], falsim.Failure{Status: 429, Count: 2})
	sim.FailModel(simImageModel, falsim.Failure{Status: 500, Count: 1, Ops: []string{falsim.OpStatus}})
	sim.FailModel("fal-ai/birefnet", falsim.Failure{Status: 422, Ops: []string{falsim.OpSubmit}})

	c, _ := newUser(t, m, 100)
	var ids []string
	for range 6 {
		ids = append(ids, c.submit("generate", imageParams, "").ID)
	}
	bad := c.submit("remove-bg", map[string]any{"image_url": "https://example.com/a.png"}, "").ID
	var answers strings.Builder
	for _, id := range ids {
		j := c.waitFinal(id, 30*time.Second)
		require.Equal(t, jobs.StateSucceeded, j.State)
		fmt.Fprintf(&answers, "%+v\n", j)
	}
	j := c.waitFinal(bad, 30*time.Second)
	require.Equal(t, jobs.StateFailed, j.State)
	require.Equal(t, jobs.CodeInvalidParams, j.Error.Code)
	fmt.Fprintf(&answers, "%+v\n", j)

	text := logs.String()
	metrics := getText(t, m.MetricsURL())
	require.Contains(t, text, `"key":"key-1"`, "the logs name keys by index")
	require.Contains(t, text, "fal key rejected, taken out")
	require.Contains(t, metrics, `aiqueue_fal_requests_total{code="401",key="key-1",op="submit"} 1`)
	require.Contains(t, metrics, `aiqueue_fal_key_in_flight{key="key-3"}`)
	for _, k := range simKeys {
		id, secret, _ := strings.Cut(k, ":")
		for _, s := range []string{k, id, secret} {
			require.NotContains(t, text, s, "a fal key is in the logs")
			require.NotContains(t, metrics, s, "a fal key is in /metrics")
			require.NotContains(t, answers.String(), s, "a fal key is in an API answer")
		}
	}
	requireInvariants(t, m)
}

// TestOperationsFile overrides model ids and costs with a YAML and a JSON
// file: the catalog, the model sent to fal and the charge follow the file.
func TestOperationsFile(t *testing.T) {
	t.Parallel()
	for name, file := range map[string]string{
		"operations.yaml": "operations:\n  - name: generate\n    model: fal-ai/flux/schnell\n    cost: 3\n    timeout: 90s\n",
		"operations.json": `[{"name":"generate","model":"fal-ai/flux/schnell","cost":3,"timeout":"90s"}]`,
	} {
		t.Run(strings.ToUpper(filepath.Ext(name)[1:]), func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), name)
			require.NoError(t, os.WriteFile(path, []byte(file), 0o600))
			sim, url := startSim(t, falsim.Options{Fast: true})
			m := MustRunMain(t, simEnv(url, map[string]string{"OPERATIONS_FILE": path}))
			c, uid := newUser(t, m, 10)

			var ops struct {
				Operations []struct {
					Operation, Model string
					Cost             int64
				}
			}
			c.do(http.MethodGet, "/v1/operations", nil, &ops)
			require.Len(t, ops.Operations, 11)
			for _, op := range ops.Operations {
				if op.Operation == "generate" {
					require.Equal(t, "fal-ai/flux/schnell", op.Model)
					require.Equal(t, int64(3), op.Cost)
				}
			}
			j := c.submit("generate", imageParams, "")
			require.Equal(t, int64(3), j.Credits.Amount)
			j = c.waitFinal(j.ID, 20*time.Second)
			require.Equal(t, jobs.StateSucceeded, j.State)
			reqs := sim.Requests()
			require.Len(t, reqs, 1)
			require.Equal(t, "fal-ai/flux/schnell", reqs[0].Model)
			bal, err := ledger.Get(context.Background(), m.Pool(), uid)
			require.NoError(t, err)
			require.Equal(t, int64(7), bal.Balance)
			requireInvariants(t, m)
		})
	}
}

func TestFalConfig(t *testing.T) {
	t.Parallel()
	valid := map[string]string{"AUTH_JWT_SECRET": testSecret}
	parse := func(t *testing.T, more map[string]string) (Config, error) {
		t.Helper()
		env := map[string]string{}
		for k, v := range valid {
			env[k] = v
		}
		for k, v := range more {
			env[k] = v
		}
		cfg, err := ConfigFromEnv(func(k string) string { return env[k] })
		if err != nil {
			return cfg, err
		}
		return cfg, cfg.Validate()
	}

	t.Run("Defaults", func(t *testing.T) {
		t.Parallel()
		cfg, err := parse(t, nil)
		require.NoError(t, err)
		require.Equal(t, dispatch.DefaultAttemptTimeout, cfg.JobAttemptTimeout)
		require.Equal(t, dispatch.DefaultRescueAfter, cfg.RescueAfter)
		require.Equal(t, 15*time.Second, cfg.FalSweepInterval)
		require.InDelta(t, 1.0, cfg.FalSimScale, 0)
	})

	t.Run("Overrides", func(t *testing.T) {
		t.Parallel()
		cfg, err := parse(t, map[string]string{"JOB_ATTEMPT_TIMEOUT": "5s", "RIVER_RESCUE_AFTER": "10s",
			"FAL_SWEEP_INTERVAL": "2s", "FAL_SIMULATE_LATENCY_SCALE": "0.1"})
		require.NoError(t, err)
		require.Equal(t, 5*time.Second, cfg.JobAttemptTimeout)
		require.Equal(t, 10*time.Second, cfg.RescueAfter)
		require.Equal(t, 2*time.Second, cfg.FalSweepInterval)
		require.InDelta(t, 0.1, cfg.FalSimScale, 1e-9)
	})

	t.Run("RefusesRescueShorterThanAnAttempt", func(t *testing.T) {
		t.Parallel()
		_, err := parse(t, map[string]string{"JOB_ATTEMPT_TIMEOUT": "90s", "RIVER_RESCUE_AFTER": "1m"})
		require.ErrorContains(t, err, "RIVER_RESCUE_AFTER=1m0s must be at least JOB_ATTEMPT_TIMEOUT=1m30s")
	})

	t.Run("RefusesBadValues", func(t *testing.T) {
		t.Parallel()
		for name, v := range map[string]string{"FAL_SIMULATE_LATENCY_SCALE": "-1", "JOB_ATTEMPT_TIMEOUT": "10ms", "FAL_SWEEP_INTERVAL": "0s", "RIVER_RESCUE_AFTER": "soon"} {
			_, err := parse(t, map[string]string{name: v})
			require.ErrorContains(t, err, name, "%s=%s", name, v)
		}
	})
}
