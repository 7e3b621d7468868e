package falsim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient/falsim"
)

// TestOfficialJSClient runs fal's official JavaScript client (@fal-ai/client
// 1.10.1, pinned in jsclient/package-lock.json) against the simulator:
// submit with queue options, status with logs, result, cancel, and
// subscribe in polling and streaming mode (jsclient/client.mjs). It needs
// Node 20 and npm, and installs the client with npm ci (from npm's cache
// once it has been installed).
func TestOfficialJSClient(t *testing.T) {
	t.Parallel()
	node, errNode := exec.LookPath("node")
	npm, errNpm := exec.LookPath("npm")
	if errNode != nil || errNpm != nil {
		t.Skip("node and npm are needed to run fal's JavaScript client")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	install := exec.CommandContext(ctx, npm, "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error")
	install.Dir = "jsclient"
	out, err := install.CombinedOutput()
	require.NoError(t, err, "npm ci: %s", out)

	const key = "sk-js-key-id:sk-js-key-secret"
	sim := falsim.New(falsim.Options{
		Keys:                []string{key},
		Now:                 time.Now,
		Concurrency:         1,
		DefaultLatency:      250 * time.Millisecond,
		DefaultVideoLatency: 400 * time.Millisecond,
	})
	sim.FailModel("fal-ai/broken/model", falsim.Failure{Status: 500, Ops: []string{falsim.OpRun}})
	srv := httptest.NewServer(sim) // on a loopback port
	t.Cleanup(srv.Close)
	t.Cleanup(sim.Close)

	run := exec.CommandContext(ctx, node, "client.mjs")
	run.Dir = "jsclient"
	run.Env = append(os.Environ(), "FALSIM_URL="+srv.URL, "FALSIM_KEY="+key)
	var stdout, stderr bytes.Buffer
	run.Stdout, run.Stderr = &stdout, &stderr
	require.NoError(t, run.Run(), "client.mjs failed:\n%s\n%s", stdout.String(), stderr.String())

	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var summary struct {
		Submitted, Cancelled, Polled, Streamed, Workflow string
		StreamedStates                                   []string
	}
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &summary), stdout.String())

	byID := map[string]falsim.RequestInfo{}
	for _, r := range sim.Requests() {
		byID[r.ID] = r
	}
	// The client's queue options reached the simulator as headers.
	require.Equal(t, "low", byID[summary.Submitted].Priority)
	require.Equal(t, 30*time.Second, byID[summary.Submitted].StartTimeout)
	require.Equal(t, "normal", byID[summary.Polled].Priority)
	require.True(t, byID[summary.Cancelled].Cancelled)
	require.Equal(t, "client_cancelled", byID[summary.Cancelled].ErrorType)
	require.Equal(t, "workflows/acme/ring-shots", byID[summary.Workflow].Model)
	require.Equal(t, float64(2), byID[summary.Submitted].BillableUnits)

	st := sim.Stats()
	require.Equal(t, 6, st.Submits)
	require.Positive(t, st.StreamCalls, "subscribe in streaming mode used the status stream")
	require.NotContains(t, stdout.String()+stderr.String(), "sk-js-key-secret")
}
