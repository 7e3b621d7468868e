package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestSummarize(t *testing.T) {
	t.Parallel()

	t.Run("NearestRankPercentiles", func(t *testing.T) {
		t.Parallel()
		var d []time.Duration
		for i := 100; i >= 1; i-- { // unsorted on purpose
			d = append(d, time.Duration(i)*time.Millisecond)
		}
		s := Summarize(d)
		require.Equal(t, 100, s.N)
		require.InDelta(t, 50, s.P50, 1e-9)
		require.InDelta(t, 95, s.P95, 1e-9)
		require.InDelta(t, 99, s.P99, 1e-9)
		require.InDelta(t, 100, s.Max, 1e-9)
		require.InDelta(t, 50.5, s.Mean, 1e-9)
	})

	t.Run("Empty", func(t *testing.T) {
		t.Parallel()
		require.Equal(t, Summary{}, Summarize(nil))
	})

	t.Run("OneValue", func(t *testing.T) {
		t.Parallel()
		s := Summarize([]time.Duration{3 * time.Millisecond})
		require.InDelta(t, 3, s.P50, 1e-9)
		require.InDelta(t, 3, s.P99, 1e-9)
	})
}

func TestReport(t *testing.T) {
	t.Parallel()

	t.Run("RatioAndTarget", func(t *testing.T) {
		t.Parallel()
		r := newReport(SmokeConfig())
		r.add(Row{Scenario: "submit", Figure: "throughput", Value: 300, Unit: "jobs/s", Reference: "raw", RefValue: ptr(1000.0), Target: ">= 0.6x", Pass: ptr(false)})
		r.add(Row{Scenario: "users", Figure: "errors", Value: 0, Target: "0", Pass: ptr(true)})
		require.InDelta(t, 0.3, *r.Rows[0].Ratio, 1e-9)
		require.Nil(t, r.Rows[1].Ratio)

		var b bytes.Buffer
		r.Table(&b)
		require.Contains(t, b.String(), "0.30x")
		require.Contains(t, b.String(), "300 jobs/s")
		require.Contains(t, b.String(), "1000 jobs/s")
		require.Contains(t, b.String(), "miss")
		require.Contains(t, b.String(), "pass")
	})

	t.Run("WritesJSONNamedByStart", func(t *testing.T) {
		t.Parallel()
		r := newReport(SmokeConfig())
		dir := t.TempDir()
		path, err := r.WriteJSON(dir)
		require.NoError(t, err)
		require.Equal(t, filepath.Join(dir, r.Started.Format("2006-01-02T15-04-05Z")+".json"), path)
		_, err = os.Stat(path + ".tmp")
		require.ErrorIs(t, err, os.ErrNotExist)
	})
}

func TestParsePgbenchLog(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// client_id transaction_no time script_no time_epoch time_us
	require.NoError(t, os.WriteFile(filepath.Join(dir, "log.123"), []byte("0 0 1500 0 1700000000 1\n0 1 2500 0 1700000000 2\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "log.123.1"), []byte("1 0 failed 0 1700000000 3\n1 1 900 0 1700000000 4\n"), 0o644))
	d, err := readPgbenchLogs(filepath.Join(dir, "log"))
	require.NoError(t, err)
	require.ElementsMatch(t, []time.Duration{1500 * time.Microsecond, 2500 * time.Microsecond, 900 * time.Microsecond}, d)

	_, err = readPgbenchLogs(filepath.Join(dir, "none"))
	require.Error(t, err)
}

func TestCapabilities(t *testing.T) {
	t.Parallel()

	t.Run("Skeleton", func(t *testing.T) {
		t.Parallel()
		c, err := parseCapabilities([]byte(`{"paths":{
			"/v1/jobs":{"post":{"operationId":"submit-job"}},
			"/v1/jobs/{id}":{"get":{"operationId":"get-job","parameters":[{"name":"id","in":"path"}]}}}}`))
		require.NoError(t, err)
		require.Equal(t, Capabilities{}, c)
		require.Equal(t, "poll", c.StatusMode())
	})

	t.Run("Everything", func(t *testing.T) {
		t.Parallel()
		c, err := parseCapabilities([]byte(`{"paths":{
			"/v1/batches":{"post":{"operationId":"submit-batch"}},
			"/v1/jobs/{id}/events":{"get":{"operationId":"get-job-events"}},
			"/v1/jobs/{id}":{"parameters":[],"get":{"operationId":"get-job","parameters":[{"name":"id","in":"path"},{"name":"wait","in":"query"}]}}}}`))
		require.NoError(t, err)
		require.Equal(t, Capabilities{Batches: true, SSE: true, LongPoll: true}, c)
		require.Equal(t, "sse", c.StatusMode())
	})

	t.Run("LongPollOnly", func(t *testing.T) {
		t.Parallel()
		c, err := parseCapabilities([]byte(`{"paths":{"/v1/jobs/{id}":{"get":{"parameters":[{"name":"wait","in":"query"}]}}}}`))
		require.NoError(t, err)
		require.Equal(t, "long-poll", c.StatusMode())
	})

	t.Run("BinaryKnows", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "bin")
		require.NoError(t, os.WriteFile(path, []byte("\x00\x01RIVER_RESCUE_AFTER\x00other"), 0o644))
		known, err := binaryKnows(path, "RIVER_RESCUE_AFTER", "JOB_ATTEMPT_TIMEOUT")
		require.NoError(t, err)
		require.Equal(t, map[string]bool{"RIVER_RESCUE_AFTER": true, "JOB_ATTEMPT_TIMEOUT": false}, known)
	})
}
