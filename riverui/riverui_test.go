package riverui_test

import (
	"net/http"
	"net/http/httptest"
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
