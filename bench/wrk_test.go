package bench

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestWrkPaced runs wrk with the submit script against a server that
// answers at once: unpaced it sends as fast as the answers come, paced at
// 100 requests/s it sends about 100 a second and no more than its
// schedule allows (plus the first request of each connection). It skips
// when wrk is missing (bench/setup.sh installs it).
func TestWrkPaced(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Skip("wrk is not installed (bench/setup.sh installs it)")
	}
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/v1/jobs" && r.Header.Get("Authorization") == "Bearer t1" {
			n.Add(1)
			w.WriteHeader(http.StatusAccepted)
			return
		}
		w.WriteHeader(http.StatusBadRequest)
	}))
	defer srv.Close()
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens.txt")
	require.NoError(t, writeTokens(tokens, []user{{Token: "t1"}}))
	ctx := context.Background()

	load := WrkLoad{Threads: 2, Connections: 8, Duration: 2 * time.Second, Rate: 100}
	paced, err := runWrk(ctx, dir, srv.URL, tokens, load)
	require.NoError(t, err)
	require.Zero(t, paced.Non2xx)
	// wrk does not count the requests still unanswered when it stops.
	require.GreaterOrEqual(t, n.Load(), int64(paced.Requests))
	require.LessOrEqual(t, n.Load(), int64(paced.Requests+load.Connections))
	// Each thread's schedule allows one send per Threads/Rate seconds of its
	// run (wrk's duration, longer than -d on a busy machine) plus one, and
	// each connection's first request goes before the schedule starts.
	allowed := int(math.Ceil(load.Rate*paced.DurationS)) + 2*load.Threads + load.Connections
	require.LessOrEqual(t, paced.Requests, allowed, "paced above its rate (%.2f s)", paced.DurationS)
	require.GreaterOrEqual(t, paced.Requests, 100, "paced far below its rate")

	rate := load.Rate
	load.Rate = 0
	unpaced, err := runWrk(ctx, dir, srv.URL, tokens, load)
	require.NoError(t, err)
	require.Zero(t, unpaced.Non2xx)
	t.Logf("paced at %.0f/s: %d requests in %.2f s; unpaced: %d in %.2f s", rate, paced.Requests, paced.DurationS, unpaced.Requests, unpaced.DurationS)
	require.Greater(t, unpaced.Requests, 2*paced.Requests, "unpaced is not faster than paced")
	// wrk's own CPU: an unpaced run sends as fast as it can and costs more.
	require.Positive(t, paced.CPUMS)
	require.Greater(t, unpaced.CPUMS, paced.CPUMS)
}
