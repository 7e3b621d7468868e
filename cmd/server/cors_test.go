package main

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestCORS checks CORS_ALLOWED_ORIGINS through the real server: an allowed
// origin's preflight and actual request get their grants, another origin's
// preflight is refused and its actual request carries no grant.
func TestCORS(t *testing.T) {
	t.Parallel()
	const studio = "https://studio.example.com"
	m := MustRunMain(t, map[string]string{"CORS_ALLOWED_ORIGINS": studio + ", http://localhost:3000", "ROLE": "api"})
	c, _ := newUser(t, m, 5)

	send := func(method, path, origin string, body string, headers map[string]string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, m.URL()+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Origin", origin)
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, string(b)
	}
	preflight := map[string]string{"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type,idempotency-key"}
	submit := map[string]string{"Authorization": "Bearer " + c.token, "Content-Type": "application/json"}
	body := `{"operation":"generate","params":{"prompt":"a ring"}}`

	t.Run("AllowedOrigin", func(t *testing.T) {
		resp, _ := send(http.MethodOptions, "/v1/jobs", studio, "", preflight)
		require.Equal(t, http.StatusNoContent, resp.StatusCode)
		require.Equal(t, studio, resp.Header.Get("Access-Control-Allow-Origin"))
		require.Equal(t, "GET, POST, OPTIONS", resp.Header.Get("Access-Control-Allow-Methods"))
		require.Contains(t, resp.Header.Get("Access-Control-Allow-Headers"), "Idempotency-Key")
		require.Equal(t, "600", resp.Header.Get("Access-Control-Max-Age"))
		require.Contains(t, resp.Header.Values("Vary"), "Origin")
		require.Empty(t, resp.Header.Get("Access-Control-Allow-Credentials"))

		resp, out := send(http.MethodPost, "/v1/jobs", studio, body, submit)
		require.Equal(t, http.StatusAccepted, resp.StatusCode, out)
		require.Equal(t, studio, resp.Header.Get("Access-Control-Allow-Origin"))
		require.Equal(t, "Retry-After, Location, Idempotent-Replayed, X-Request-Id", resp.Header.Get("Access-Control-Expose-Headers"))
		require.NotEmpty(t, resp.Header.Get("Location"))
		require.Empty(t, resp.Header.Get("Access-Control-Allow-Credentials"))

		// Errors carry the grant too, so the page can read the problem.
		resp, out = send(http.MethodGet, "/v1/jobs/nope", "http://localhost:3000", "", map[string]string{"Authorization": "Bearer " + c.token})
		require.Equal(t, http.StatusNotFound, resp.StatusCode, out)
		require.Equal(t, "http://localhost:3000", resp.Header.Get("Access-Control-Allow-Origin"))
	})

	t.Run("RefusedOrigin", func(t *testing.T) {
		resp, out := send(http.MethodOptions, "/v1/jobs", "https://evil.example.net", "", preflight)
		require.Equal(t, http.StatusForbidden, resp.StatusCode)
		require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))
		require.Contains(t, out, "CORS_ALLOWED_ORIGINS")
		require.Empty(t, resp.Header.Get("Access-Control-Allow-Origin"))

		resp, _ = send(http.MethodGet, "/v1/credits", "https://evil.example.net", "", map[string]string{"Authorization": "Bearer " + c.token})
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Empty(t, resp.Header.Get("Access-Control-Allow-Origin"))
		require.Empty(t, resp.Header.Get("Access-Control-Expose-Headers"))
	})
}

func TestCORSConfig(t *testing.T) {
	t.Parallel()
	env := map[string]string{"CORS_ALLOWED_ORIGINS": "*, https://studio.example.com/"}
	_, err := ConfigFromEnv(func(k string) string { return env[k] })
	require.ErrorContains(t, err, `"*" is refused`)
	require.ErrorContains(t, err, `"https://studio.example.com/" has a path`)

	cfg, err := ConfigFromEnv(func(string) string { return "" })
	require.NoError(t, err)
	require.Empty(t, cfg.CORSAllowedOrigins, "no CORS by default")
}
