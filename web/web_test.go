package web_test

import (
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/web"
)

// rapidocSHA256 is the sha256 of dist/rapidoc-min.js in rapidoc 9.3.8 from
// the npm registry (vendor-rapidoc.sh checks the tarball's integrity).
const rapidocSHA256 = "affbd173a65e870e18f392cca963113bcdafb6e50e88cd2f6a834a65b22db94d"

func serve(t *testing.T, mux *http.ServeMux, path string, edit func(*http.Request)) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, path, nil)
	r.RemoteAddr = "127.0.0.1:50000"
	if edit != nil {
		edit(r)
	}
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	return w
}

func TestPages(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	web.Register(mux, web.Config{})

	t.Run("DocsLoadOnlyFromThisServer", func(t *testing.T) {
		t.Parallel()
		w := serve(t, mux, "/docs", nil)
		require.Equal(t, http.StatusOK, w.Code)
		require.Equal(t, "text/html; charset=utf-8", w.Header().Get("Content-Type"))
		require.Contains(t, w.Header().Get("Content-Security-Policy"), "script-src 'self'")
		body := w.Body.String()
		require.Contains(t, body, `<script type="module" src="docs/rapidoc-min.js"></script>`)
		require.Contains(t, body, `spec-url="openapi.json"`)
		// No src or href to another origin.
		require.Empty(t, regexp.MustCompile(`(src|href)="(https?:)?//`).FindAllString(body, -1))

		w = serve(t, mux, "/docs/rapidoc-min.js", nil)
		require.Equal(t, http.StatusOK, w.Code)
		require.Equal(t, "text/javascript; charset=utf-8", w.Header().Get("Content-Type"))
		sum := sha256.Sum256(w.Body.Bytes())
		require.Equal(t, rapidocSHA256, hex.EncodeToString(sum[:]), "the vendored RapiDoc 9.3.8 (make web-vendor)")
		etag := w.Header().Get("ETag")
		require.NotEmpty(t, etag)
		w = serve(t, mux, "/docs/rapidoc-min.js", func(r *http.Request) { r.Header.Set("If-None-Match", etag) })
		require.Equal(t, http.StatusNotModified, w.Code)

		require.Equal(t, http.StatusOK, serve(t, mux, "/docs/rapidoc-LICENSE.txt", nil).Code)
		require.Equal(t, http.StatusNotFound, serve(t, mux, "/docs/nope.js", nil).Code)
	})

	t.Run("Playground", func(t *testing.T) {
		t.Parallel()
		w := serve(t, mux, "/playground", nil)
		require.Equal(t, http.StatusOK, w.Code)
		require.Contains(t, w.Body.String(), `<script type="module" src="playground/playground.js"></script>`)
		require.Contains(t, w.Body.String(), `<meta name="aiqueue-demo-token" content="">`)
		require.Equal(t, "no-store", w.Header().Get("Cache-Control"))
		for _, f := range []string{"/playground/playground.js", "/playground/playground.css"} {
			require.Equal(t, http.StatusOK, serve(t, mux, f, nil).Code, f)
		}
	})
}

func TestDemoToken(t *testing.T) {
	t.Parallel()
	const token = "eyJhbGciOiJIUzI1NiJ9.demo.sig"
	mux := http.NewServeMux()
	web.Register(mux, web.Config{DemoToken: token})
	offered := func(w *httptest.ResponseRecorder) bool {
		return strings.Contains(w.Body.String(), `<meta name="aiqueue-demo-token" content="`+token+`">`)
	}
	require.True(t, offered(serve(t, mux, "/playground", nil)), "to a browser on this machine")
	require.True(t, offered(serve(t, mux, "/playground", func(r *http.Request) { r.RemoteAddr = "[::1]:50000" })))
	require.False(t, offered(serve(t, mux, "/playground", func(r *http.Request) { r.RemoteAddr = "192.0.2.7:50000" })), "not over the network")
	require.False(t, offered(serve(t, mux, "/playground", func(r *http.Request) { r.Header.Set("X-Forwarded-For", "192.0.2.7") })), "not through a proxy")
	require.False(t, offered(serve(t, mux, "/playground", func(r *http.Request) { r.Header.Set("Forwarded", "for=192.0.2.7") })))
	require.NotContains(t, serve(t, mux, "/docs", nil).Body.String(), token)
}

// TestFileSizes keeps every committed page file under 2 MB (10^6 bytes).
func TestFileSizes(t *testing.T) {
	t.Parallel()
	require.NoError(t, filepath.WalkDir("static", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := os.Stat(path)
		require.NoError(t, err)
		require.Less(t, info.Size(), int64(2_000_000), path)
		return nil
	}))
}
