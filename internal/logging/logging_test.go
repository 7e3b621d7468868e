package logging_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/logging"
)

func records(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &rec), line)
		out = append(out, rec)
	}
	return out
}

func TestParseLevel(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]slog.Level{"debug": slog.LevelDebug, "INFO": slog.LevelInfo, "": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError} {
		got, err := logging.ParseLevel(in)
		require.NoError(t, err)
		require.Equal(t, want, got, in)
	}
	_, err := logging.ParseLevel("verbose")
	require.Error(t, err)
}

func TestMiddleware(t *testing.T) {
	t.Parallel()

	setup := func(t *testing.T, level string) (*bytes.Buffer, http.Handler) {
		t.Helper()
		buf := &bytes.Buffer{}
		logger := logging.New(level, buf)
		h := logging.Middleware(logger, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v1/jobs" {
				logging.SetUser(r.Context(), "user-1")
				logger.InfoContext(r.Context(), "inside the handler")
			}
			w.WriteHeader(http.StatusAccepted)
			_, _ = w.Write([]byte("hello"))
			http.NewResponseController(w).Flush() //nolint:errcheck // the recorder supports it
		}))
		return buf, h
	}

	t.Run("KeepsAGoodRequestID", func(t *testing.T) {
		t.Parallel()
		buf, h := setup(t, "info")
		req := httptest.NewRequest(http.MethodPost, "/v1/jobs?secret=query", nil)
		req.Header.Set("X-Request-Id", "abc-123")
		req.Header.Set("Authorization", "Bearer tok.en.value")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		require.Equal(t, "abc-123", rec.Header().Get("X-Request-Id"))
		require.True(t, rec.Flushed)

		recs := records(t, buf)
		require.Len(t, recs, 2)
		require.Equal(t, "inside the handler", recs[0]["msg"])
		require.Equal(t, "abc-123", recs[0]["request_id"])
		require.Equal(t, "user-1", recs[0]["user_id"])
		access := recs[1]
		require.Equal(t, "http request", access["msg"])
		require.Equal(t, "POST", access["method"])
		require.Equal(t, "/v1/jobs", access["path"])
		require.Equal(t, 202.0, access["status"])
		require.Equal(t, 5.0, access["bytes"])
		require.Equal(t, "abc-123", access["request_id"])
		require.Equal(t, "user-1", access["user_id"])
		require.NotContains(t, buf.String(), "tok.en.value")
		require.NotContains(t, buf.String(), "secret=query")
	})

	t.Run("ReplacesABadRequestID", func(t *testing.T) {
		t.Parallel()
		buf, h := setup(t, "info")
		for _, bad := range []string{"", "has space", strings.Repeat("x", 129), "quote\"d"} {
			req := httptest.NewRequest(http.MethodGet, "/v1/operations", nil)
			if bad != "" {
				req.Header.Set("X-Request-Id", bad)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			id := rec.Header().Get("X-Request-Id")
			require.Regexp(t, `^[0-9a-f]{24}$`, id)
		}
		for _, rec := range records(t, buf) {
			require.NotContains(t, rec, "user_id")
		}
	})

	t.Run("ProbesAtDebug", func(t *testing.T) {
		t.Parallel()
		buf, h := setup(t, "info")
		for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, p, nil))
		}
		require.Empty(t, buf.String())

		buf, h = setup(t, "debug")
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/healthz", nil))
		recs := records(t, buf)
		require.Len(t, recs, 1)
		require.Equal(t, "DEBUG", recs[0]["level"])
	})
}
