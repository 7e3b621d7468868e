package riverui_test

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/riverui"
)

func TestBasicAuth(t *testing.T) {
	t.Parallel()
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("river ui")) })
	h := riverui.BasicAuth("admin", "s3cret-pass", ok)

	for _, tc := range []struct {
		name       string
		user, pass string
		noAuth     bool
		want       int
	}{
		{name: "NoCredentials", noAuth: true, want: http.StatusUnauthorized},
		{name: "WrongPassword", user: "admin", pass: "s3cret-pas", want: http.StatusUnauthorized},
		{name: "WrongUser", user: "root", pass: "s3cret-pass", want: http.StatusUnauthorized},
		{name: "Empty", user: "", pass: "", want: http.StatusUnauthorized},
		{name: "Right", user: "admin", pass: "s3cret-pass", want: http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := httptest.NewRequest(http.MethodGet, "/riverui/", nil)
			if !tc.noAuth {
				req.SetBasicAuth(tc.user, tc.pass)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			require.Equal(t, tc.want, rec.Code)
			if tc.want == http.StatusUnauthorized {
				require.Contains(t, rec.Header().Get("WWW-Authenticate"), `Basic realm="River UI"`)
				require.NotContains(t, rec.Body.String(), "river ui")
				require.NotContains(t, rec.Body.String(), "s3cret")
			} else {
				require.Equal(t, "river ui", rec.Body.String())
			}
		})
	}
}

func TestMountDisabled(t *testing.T) {
	t.Parallel()
	require.False(t, riverui.Config{}.Enabled())
	require.False(t, riverui.Config{User: "admin"}.Enabled())
	mux := http.NewServeMux()
	// Not enabled: nothing is mounted and no River client is needed.
	require.NoError(t, riverui.Mount(t.Context(), mux, nil, riverui.Config{}))
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/riverui/", nil))
	require.Equal(t, http.StatusNotFound, rec.Code)
}

func TestMountNeedsThePool(t *testing.T) {
	t.Parallel()
	// River UI's Retry runs on the pool (retry.go): enabled without one is
	// a configuration error, not a Retry that fails later.
	err := riverui.Mount(t.Context(), http.NewServeMux(), nil, riverui.Config{User: "admin", Password: "s3cret-pass"})
	require.ErrorContains(t, err, "pool")
}

func TestProtect(t *testing.T) {
	t.Parallel()
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("river ui")) })
	const user, pass = "admin", "s3cret-pass"

	do := func(h http.Handler, method string, header map[string]string, auth bool, remote string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, "http://admin.example.com/riverui/api/jobs/cancel", strings.NewReader(`{"ids":["1"]}`))
		for k, v := range header {
			req.Header.Set(k, v)
		}
		if auth {
			req.SetBasicAuth(user, pass)
		}
		if remote != "" {
			req.RemoteAddr = remote
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		require.Equal(t, "DENY", rec.Header().Get("X-Frame-Options"), "every answer")
		require.Equal(t, "frame-ancestors 'none'", rec.Header().Get("Content-Security-Policy"), "every answer")
		return rec
	}

	t.Run("ChangesOnlyFromItsOwnPages", func(t *testing.T) {
		t.Parallel()
		h := riverui.Protect(user, pass, ok)
		for _, tc := range []struct {
			name   string
			method string
			header map[string]string
			want   int
		}{
			// What River UI's own pages send: JSON as text/plain, a pause
			// with no body at all.
			{"OwnPage", http.MethodPost, map[string]string{"Content-Type": "text/plain;charset=UTF-8", "Origin": "http://admin.example.com", "Sec-Fetch-Site": "same-origin"}, http.StatusOK},
			{"OwnPagePause", http.MethodPut, map[string]string{"Sec-Fetch-Site": "same-origin"}, http.StatusOK},
			{"OldBrowserSameOrigin", http.MethodPost, map[string]string{"Content-Type": "text/plain", "Origin": "http://admin.example.com"}, http.StatusOK},
			{"CrossSiteForm", http.MethodPost, map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
			{"CrossSiteJSON", http.MethodPost, map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
			{"SameSiteIsNotSameOrigin", http.MethodPost, map[string]string{"Content-Type": "text/plain", "Sec-Fetch-Site": "same-site"}, http.StatusForbidden},
			{"OldBrowserCrossOrigin", http.MethodPost, map[string]string{"Content-Type": "text/plain", "Origin": "https://evil.example"}, http.StatusForbidden},
			{"NullOrigin", http.MethodDelete, map[string]string{"Content-Type": "application/json", "Origin": "null"}, http.StatusForbidden},
			// Not a browser (curl): JSON only.
			{"CurlJSON", http.MethodPost, map[string]string{"Content-Type": "application/json; charset=utf-8"}, http.StatusOK},
			{"CurlText", http.MethodPost, map[string]string{"Content-Type": "text/plain"}, http.StatusForbidden},
			{"CurlForm", http.MethodPost, map[string]string{"Content-Type": "multipart/form-data; boundary=x"}, http.StatusForbidden},
			{"CurlNoType", http.MethodPut, nil, http.StatusForbidden},
			// Reading is not changing.
			{"CrossSiteRead", http.MethodGet, map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusOK},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				rec := do(h, tc.method, tc.header, true, "")
				require.Equal(t, tc.want, rec.Code, rec.Body.String())
				if tc.want != http.StatusOK {
					require.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
					require.NotContains(t, rec.Body.String(), "river ui")
				}
			})
		}
	})

	t.Run("FailureLimitPerAddress", func(t *testing.T) {
		t.Parallel()
		h := riverui.Protect(user, pass, ok)
		const attacker, admin = "192.0.2.7:4000", "198.51.100.9:5000"
		// Asking for the login prompt is not a failure.
		for range 2 * riverui.MaxFailures {
			require.Equal(t, http.StatusUnauthorized, do(h, http.MethodGet, nil, false, attacker).Code)
		}
		wrong := map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":guess"))}
		for i := range riverui.MaxFailures {
			require.Equal(t, http.StatusUnauthorized, do(h, http.MethodGet, wrong, false, attacker).Code, "guess %d", i+1)
		}
		// Then no guess is checked, not even the right password.
		for _, rec := range []*httptest.ResponseRecorder{do(h, http.MethodGet, wrong, false, attacker), do(h, http.MethodGet, nil, true, attacker)} {
			require.Equal(t, http.StatusTooManyRequests, rec.Code)
			require.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
			retry, err := strconv.Atoi(rec.Header().Get("Retry-After"))
			require.NoError(t, err)
			require.Positive(t, retry)
			require.LessOrEqual(t, retry, 60)
		}
		// Other addresses are not held back.
		require.Equal(t, http.StatusOK, do(h, http.MethodGet, nil, true, admin).Code)
	})
}
