package api_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/api"
)

func TestParseCORSOrigins(t *testing.T) {
	t.Parallel()

	t.Run("Valid", func(t *testing.T) {
		t.Parallel()
		got, err := api.ParseCORSOrigins(" https://studio.example.com, http://localhost:3000 ,,HTTPS://Studio.Example.com:443,http://127.0.0.1:80,http://[::1]:3000")
		require.NoError(t, err)
		require.Equal(t, []string{"https://studio.example.com", "http://localhost:3000", "https://studio.example.com", "http://127.0.0.1", "http://[::1]:3000"}, got)
	})

	t.Run("Empty", func(t *testing.T) {
		t.Parallel()
		got, err := api.ParseCORSOrigins("")
		require.NoError(t, err)
		require.Empty(t, got)
	})

	t.Run("RefusesEveryBadOriginAtOnce", func(t *testing.T) {
		t.Parallel()
		_, err := api.ParseCORSOrigins("*,https://studio.example.com/,https://studio.example.com/app,studio.example.com,ftp://x.test,https://u:p@x.test,https://*.example.com,https://x.test?a=1,null,https://")
		require.Error(t, err)
		for _, want := range []string{
			`"*" is refused`,
			`"https://studio.example.com/" has a path`,
			`"https://studio.example.com/app" has a path`,
			`"studio.example.com" is not an http or https origin`,
			`"ftp://x.test" is not an http or https origin`,
			`"https://u:p@x.test" carries a user name`,
			`"https://*.example.com" has a wildcard`,
			`"https://x.test?a=1" has a path, query`,
			`"null" is not an http or https origin`,
			`"https://" has no host`,
		} {
			require.Contains(t, err.Error(), want)
		}
	})
}

func TestCORS(t *testing.T) {
	t.Parallel()
	next := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "3")
		w.WriteHeader(http.StatusTeapot)
	})
	serve := func(h http.Handler, method, path, origin string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, nil)
		if origin != "" {
			r.Header.Set("Origin", origin)
		}
		if method == http.MethodOptions {
			r.Header.Set("Access-Control-Request-Method", "POST")
			r.Header.Set("Access-Control-Request-Headers", "authorization,content-type")
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	h := api.CORS([]string{"https://studio.example.com"}, next)

	t.Run("NoOriginsNoHeaders", func(t *testing.T) {
		t.Parallel()
		w := serve(api.CORS(nil, next), http.MethodGet, "/v1/jobs", "https://studio.example.com")
		require.Equal(t, http.StatusTeapot, w.Code)
		for k := range w.Header() {
			require.NotContains(t, []string{"Vary", "Access-Control-Allow-Origin"}, k)
		}
	})

	t.Run("PreflightAllowed", func(t *testing.T) {
		t.Parallel()
		w := serve(h, http.MethodOptions, "/v1/jobs", "https://studio.example.com")
		require.Equal(t, http.StatusNoContent, w.Code)
		require.Equal(t, "https://studio.example.com", w.Header().Get("Access-Control-Allow-Origin"))
		require.Equal(t, "GET, POST, OPTIONS", w.Header().Get("Access-Control-Allow-Methods"))
		require.Equal(t, "Authorization, Content-Type, Idempotency-Key, Last-Event-ID, X-Request-Id", w.Header().Get("Access-Control-Allow-Headers"))
		require.Equal(t, "600", w.Header().Get("Access-Control-Max-Age"))
		require.Equal(t, "Origin", w.Header().Get("Vary"))
		require.Empty(t, w.Header().Get("Access-Control-Allow-Credentials"))
	})

	t.Run("PreflightRefused", func(t *testing.T) {
		t.Parallel()
		w := serve(h, http.MethodOptions, "/v1/jobs", "https://evil.example.net")
		require.Equal(t, http.StatusForbidden, w.Code)
		require.Equal(t, "application/problem+json", w.Header().Get("Content-Type"))
		require.Contains(t, w.Body.String(), "origin https://evil.example.net is not allowed")
		require.Empty(t, w.Header().Get("Access-Control-Allow-Origin"))
	})

	t.Run("ActualRequest", func(t *testing.T) {
		t.Parallel()
		w := serve(h, http.MethodGet, "/v1/jobs/1", "https://studio.example.com")
		require.Equal(t, http.StatusTeapot, w.Code)
		require.Equal(t, "https://studio.example.com", w.Header().Get("Access-Control-Allow-Origin"))
		require.Equal(t, "Retry-After, Location, Idempotent-Replayed, X-Request-Id", w.Header().Get("Access-Control-Expose-Headers"))
		require.Empty(t, w.Header().Get("Access-Control-Allow-Credentials"))

		w = serve(h, http.MethodGet, "/v1/jobs/1", "https://evil.example.net")
		require.Equal(t, http.StatusTeapot, w.Code, "served, without a grant")
		require.Empty(t, w.Header().Get("Access-Control-Allow-Origin"))
		require.Equal(t, "Origin", w.Header().Get("Vary"))
	})

	t.Run("OnlyTheAPI", func(t *testing.T) {
		t.Parallel()
		w := serve(h, http.MethodGet, "/healthz", "https://studio.example.com")
		require.Empty(t, w.Header().Get("Access-Control-Allow-Origin"))
		w = serve(h, http.MethodOptions, "/riverui/", "https://studio.example.com")
		require.Equal(t, http.StatusTeapot, w.Code)
	})
}
