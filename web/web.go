// Package web serves the static pages embedded in the binary: the API
// reference at /docs (RapiDoc, vendored, reading /openapi.json) and the
// playground at /playground (the TypeScript client, bundled). Nothing they
// load comes from another origin, so both work offline.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"html"
	"io/fs"
	"mime"
	"net"
	"net/http"
	"path"
	"time"
)

//go:embed static
var static embed.FS

// Config configures the pages.
type Config struct {
	// DemoToken, when set (serve --demo), is offered by the playground's
	// "Use the demo token" button, to browsers on the same machine only.
	DemoToken string
}

// contentSecurityPolicy keeps the pages from loading anything from another
// origin (scripts, styles, fonts); the playground may call an API on
// another origin (connect-src) and show fal's result files (img-src,
// media-src, https only).
const (
	docsCSP       = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
	playgroundCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; media-src 'self' data: https:; connect-src 'self' http: https:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

// demoMeta is the empty element of the playground page that carries the
// demo token when it is offered.
const demoMeta = `<meta name="aiqueue-demo-token" content="">`

// Register adds GET /docs, /playground and their files to mux.
func Register(mux *http.ServeMux, cfg Config) {
	files, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	page := func(name string) []byte {
		b, err := fs.ReadFile(files, name)
		if err != nil {
			panic(err)
		}
		return b
	}
	docs := page("docs/index.html")
	playground := page("playground/index.html")

	mux.HandleFunc("GET /docs", func(w http.ResponseWriter, _ *http.Request) {
		servePage(w, docs, docsCSP)
	})
	mux.HandleFunc("GET /playground", func(w http.ResponseWriter, r *http.Request) {
		body := playground
		if cfg.DemoToken != "" && fromThisMachine(r) {
			body = bytes.Replace(body, []byte(demoMeta),
				[]byte(`<meta name="aiqueue-demo-token" content="`+html.EscapeString(cfg.DemoToken)+`">`), 1)
		}
		servePage(w, body, playgroundCSP)
	})
	for _, dir := range []string{"docs", "playground"} {
		entries, err := fs.ReadDir(files, dir)
		if err != nil {
			panic(err)
		}
		for _, e := range entries {
			name := e.Name()
			if name == "index.html" {
				continue
			}
			body := page(dir + "/" + name)
			sum := sha256.Sum256(body)
			etag := `"` + hex.EncodeToString(sum[:12]) + `"`
			ctype := mime.TypeByExtension(path.Ext(name))
			if ctype == "" {
				ctype = "application/octet-stream"
			}
			mux.HandleFunc("GET /"+dir+"/"+name, func(w http.ResponseWriter, r *http.Request) {
				h := w.Header()
				h.Set("Content-Type", ctype)
				h.Set("ETag", etag)
				h.Set("Cache-Control", "no-cache") // revalidated by ETag
				h.Set("X-Content-Type-Options", "nosniff")
				http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(body))
			})
		}
	}
}

func servePage(w http.ResponseWriter, body []byte, csp string) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store") // the playground may carry the demo token
	_, _ = w.Write(body)
}

// fromThisMachine reports whether r came straight from a loopback address:
// the demo token (a live bearer token for the demo user) is handed only to
// a browser on the machine that runs `make run`, never to one that reaches
// the server over the network or through a proxy.
func fromThisMachine(r *http.Request) bool {
	if r.Header.Get("X-Forwarded-For") != "" || r.Header.Get("Forwarded") != "" || r.Header.Get("X-Real-Ip") != "" {
		return false
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
