// Package riverui mounts River UI under /riverui/ behind HTTP Basic auth.
// River UI can cancel, delete and retry jobs and has no auth of its own, so
// it is only ever served behind this check; without credentials configured
// it is not mounted at all (404). Its Retry is answered here (retry.go), so
// the admin reads why the database refused one.
package riverui

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net/http"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"riverqueue.com/riverui"
)

// Prefix is where River UI is served.
const Prefix = "/riverui"

// Config holds the Basic auth credentials and the database River UI's
// Retry runs on.
type Config struct {
	User     string
	Password string
	Logger   *slog.Logger
	Pool     *pgxpool.Pool
}

// Enabled reports whether credentials are configured.
func (c Config) Enabled() bool { return c.User != "" && c.Password != "" }

// Mount starts River UI's handler and mounts it on mux behind Basic auth.
// It does nothing when cfg is not Enabled.
func Mount(ctx context.Context, mux *http.ServeMux, client *river.Client[pgx.Tx], cfg Config) error {
	if !cfg.Enabled() {
		return nil
	}
	if cfg.Pool == nil {
		return errors.New("river ui needs the database pool")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	h, err := riverui.NewHandler(&riverui.HandlerOpts{
		Endpoints: riverui.NewEndpoints(client, nil),
		Logger:    logger,
		Prefix:    Prefix,
	})
	if err != nil {
		return err
	}
	if err := h.Start(ctx); err != nil {
		return err
	}
	mux.Handle(Prefix+"/", BasicAuth(cfg.User, cfg.Password, h))
	mux.Handle(http.MethodPost+" "+retryPath, BasicAuth(cfg.User, cfg.Password, &retryHandler{pool: cfg.Pool, client: client, logger: logger}))
	return nil
}

// BasicAuth wraps next with HTTP Basic auth, comparing in constant time
// (over hashes, so the length of the secret leaks nothing either).
func BasicAuth(user, password string, next http.Handler) http.Handler {
	wantUser := sha256.Sum256([]byte(user))
	wantPass := sha256.Sum256([]byte(password))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		gotUser := sha256.Sum256([]byte(u))
		gotPass := sha256.Sum256([]byte(p))
		userOK := subtle.ConstantTimeCompare(gotUser[:], wantUser[:])
		passOK := subtle.ConstantTimeCompare(gotPass[:], wantPass[:])
		if !ok || userOK&passOK != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="River UI", charset="UTF-8"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}
