package main

import (
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPprof(t *testing.T) {
	t.Parallel()

	t.Run("RefusesNonLoopbackAddress", func(t *testing.T) {
		t.Parallel()
		for _, addr := range []string{":6060", "0.0.0.0:6060", "10.1.2.3:6060", "example.com:6060", "nonsense"} {
			cfg, err := ConfigFromEnv(func(k string) string {
				return map[string]string{"PPROF_ADDR": addr, "AUTH_JWT_SECRET": testSecret}[k]
			})
			require.NoError(t, err)
			require.ErrorContains(t, cfg.Validate(), "PPROF_ADDR", addr)
		}
		for _, addr := range []string{"127.0.0.1:0", "localhost:6060", "[::1]:6060"} {
			cfg, err := ConfigFromEnv(func(k string) string {
				return map[string]string{"PPROF_ADDR": addr, "AUTH_JWT_SECRET": testSecret}[k]
			})
			require.NoError(t, err)
			require.NoError(t, cfg.Validate(), addr)
		}
	})

	t.Run("ServesProfilesOnItsOwnListener", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"PPROF_ADDR": "127.0.0.1:0", "ROLE": "api"})
		require.NotEmpty(t, m.PprofURL())
		require.NotEqual(t, m.URL(), m.PprofURL())

		get := func(url string) (int, string) {
			resp, err := http.Get(url)
			require.NoError(t, err)
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			return resp.StatusCode, string(b)
		}
		code, body := get(m.PprofURL() + "/debug/pprof/mutex?debug=1")
		require.Equal(t, http.StatusOK, code)
		require.Contains(t, body, "mutex")
		// The API listener does not serve profiles.
		code, _ = get(m.URL() + "/debug/pprof/")
		require.Equal(t, http.StatusNotFound, code)
	})

	t.Run("OffByDefault", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api"})
		require.Empty(t, m.PprofURL())
	})
}
