// Package logging builds the server's structured JSON logger (log/slog) and
// the HTTP middleware that gives every request an id and one access log
// line. Records logged with a request's context carry its request_id and,
// once the API has authenticated the caller, its user_id.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
)

// ParseLevel parses LOG_LEVEL: debug, info, warn or error (any case).
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		l = slog.LevelDebug
	case "", "info":
		l = slog.LevelInfo
	case "warn", "warning":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		return l, fmt.Errorf("LOG_LEVEL=%q is not debug, info, warn or error", s)
	}
	return l, nil
}

// New returns a JSON logger writing to w at level (LOG_LEVEL's value; an
// unknown level means info). Records logged with a context carry the
// request attributes Middleware put there.
func New(level string, w io.Writer) *slog.Logger {
	l, _ := ParseLevel(level)
	return slog.New(NewHandler(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})))
}

// NewHandler wraps h so that records carry the request attributes found in
// their context.
func NewHandler(h slog.Handler) slog.Handler { return &handler{Handler: h} }

type handler struct{ slog.Handler }

// Handle adds the context's request attributes to r.
func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	if info := infoFrom(ctx); info != nil {
		r.AddAttrs(info.attrs()...)
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h *handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &handler{Handler: h.Handler.WithAttrs(attrs)}
}

// WithGroup implements slog.Handler.
func (h *handler) WithGroup(name string) slog.Handler {
	return &handler{Handler: h.Handler.WithGroup(name)}
}

// requestInfo is what a request's log lines carry. Middleware creates it;
// the API fills in the user once the token is checked.
type requestInfo struct {
	id string

	mu     sync.Mutex
	userID string
}

func (i *requestInfo) attrs() []slog.Attr {
	attrs := []slog.Attr{slog.String("request_id", i.id)}
	if u := i.user(); u != "" {
		attrs = append(attrs, slog.String("user_id", u))
	}
	return attrs
}

func (i *requestInfo) user() string {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.userID
}

type infoKey struct{}

func infoFrom(ctx context.Context) *requestInfo {
	if ctx == nil {
		return nil
	}
	info, _ := ctx.Value(infoKey{}).(*requestInfo)
	return info
}

// RequestID returns the id of the request ctx belongs to, or "".
func RequestID(ctx context.Context) string {
	if info := infoFrom(ctx); info != nil {
		return info.id
	}
	return ""
}

// SetUser records the authenticated user of the request ctx belongs to, so
// that its later log lines and its access log line name the user. It does
// nothing outside a request.
func SetUser(ctx context.Context, userID string) {
	if info := infoFrom(ctx); info != nil {
		info.mu.Lock()
		info.userID = userID
		info.mu.Unlock()
	}
}
