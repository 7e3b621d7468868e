package api

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"

	"github.com/danielgtaylor/huma/v2"
)

// Harden wraps the server's mux with what every answer needs:
//
//   - X-Content-Type-Options: nosniff on every answer, and Cache-Control:
//     no-store on the API's (/v1/): they carry a user's jobs and credits,
//     which no shared cache may keep (an event stream may say no-cache
//     instead; it is never stored either).
//   - The router's own errors (no route: 404, wrong method: 405 with Allow)
//     are problem details like every other error, not net/http's text.
func Harden(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		if strings.HasPrefix(r.URL.Path, "/v1/") {
			h.Set("Cache-Control", "no-store")
		}
		if _, pattern := mux.Handler(r); pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		// No route: ask the mux which error it is (404, or 405 and the
		// methods allowed) without letting it write its text body.
		rec := &routerError{header: http.Header{}}
		handler, _ := mux.Handler(r)
		handler.ServeHTTP(rec, r)
		detail := "no endpoint at this path (the API is described at /openapi.json)"
		if allow := rec.header.Get("Allow"); allow != "" {
			h.Set("Allow", allow)
			detail = "method " + r.Method + " is not allowed here; allowed: " + allow
		}
		status := rec.status
		if status < http.StatusBadRequest {
			status = http.StatusNotFound
		}
		writeProblem(w, newProblem(status, detail))
	})
}

// writeProblem writes p as application/problem+json outside huma.
func writeProblem(w http.ResponseWriter, p *Problem) {
	for k, vs := range p.GetHeaders() {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	body, _ := json.Marshal(p)
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(p.Status)
	_, _ = w.Write(body)
}

// routerError records the status and headers of the mux's error handler.
type routerError struct {
	header http.Header
	status int
}

func (r *routerError) Header() http.Header { return r.header }

func (r *routerError) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return len(b), nil
}

func (r *routerError) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}

// relativeSchemaLink makes the $schema link huma adds to response bodies
// relative ("/schemas/Job.json"). huma builds it from the request's Host
// (or X-Forwarded-Host, Forwarded) header, so a client choosing the header
// would choose the URL in the body, which a cache or a log could hand to
// others.
func relativeSchemaLink(_ huma.Context, _ string, v any) (any, error) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct || rv.Elem().NumField() == 0 {
		return v, nil
	}
	e := rv.Elem()
	if f := e.Type().Field(0); f.Tag.Get("json") != "$schema" || f.Type.Kind() != reflect.String || !e.Field(0).CanSet() {
		return v, nil
	}
	link := e.Field(0).String()
	if i := strings.LastIndex(link, "/schemas/"); i >= 0 {
		e.Field(0).SetString(link[i:])
	}
	return v, nil
}
