package logging

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"time"
)

// HeaderRequestID is the request id header, read from the client when it
// sends a usable one and always set on the response.
const HeaderRequestID = "X-Request-Id"

// quiet paths are probes and scrapes: their access lines are logged at
// debug level so they do not drown the API's.
var quiet = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// Middleware gives each request an id (the client's X-Request-Id when it is
// 1-128 characters of [A-Za-z0-9._:-], else a random one), echoes it in the
// response's X-Request-Id, puts it in the request context for the logger,
// and writes one access log line when the request ends: method, path
// (without the query), status, bytes, duration, remote address, request id
// and user id. No header is logged, so the Authorization header never is.
func Middleware(logger *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get(HeaderRequestID)
		if !validID(id) {
			id = newID()
		}
		info := &requestInfo{id: id}
		ctx := context.WithValue(r.Context(), infoKey{}, info)
		w.Header().Set(HeaderRequestID, id)
		rec := &recorder{ResponseWriter: w}
		next.ServeHTTP(rec, r.WithContext(ctx))

		level := slog.LevelInfo
		if quiet[r.URL.Path] {
			level = slog.LevelDebug
		}
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		logger.LogAttrs(ctx, level, "http request",
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", rec.status),
			slog.Int64("bytes", rec.bytes),
			slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
			slog.String("remote", r.RemoteAddr),
		)
	})
}

func validID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, c := range []byte(id) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// recorder captures the status and size of a response. It keeps
// http.Flusher working (server-sent events) and unwraps for
// http.ResponseController.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// Flush implements http.Flusher.
func (r *recorder) Flush() {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	_ = http.NewResponseController(r.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
