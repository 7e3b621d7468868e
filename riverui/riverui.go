// Package riverui mounts River UI under /riverui/ behind HTTP Basic auth.
// River UI can cancel, delete and retry jobs and has no auth of its own, so
// it is only ever served behind Protect; without credentials configured it
// is not mounted at all (404). Its Retry is answered here (retry.go), so
// the admin reads why the database refused one.
package riverui

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"golang.org/x/time/rate"
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

// Mount starts River UI's handler and mounts it on mux behind Protect.
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
	mux.Handle(Prefix+"/", Protect(cfg.User, cfg.Password, h))
	mux.Handle(http.MethodPost+" "+retryPath, Protect(cfg.User, cfg.Password, &retryHandler{pool: cfg.Pool, client: client, logger: logger}))
	return nil
}

// Protect puts next (River UI) behind what an admin page on the open
// internet needs, in this order:
//
//   - every answer says X-Frame-Options: DENY and Content-Security-Policy:
//     frame-ancestors 'none', so no other site can frame it (clickjacking);
//   - a request that changes something (any method but GET, HEAD and
//     OPTIONS) must come from River UI's own pages (SameOrigin), so a page
//     on another site cannot use the admin's cached Basic credentials to
//     cancel, delete or retry jobs (403);
//   - BasicAuth, with at most MaxFailures wrong passwords per client
//     address per minute (429 with Retry-After beyond them).
func Protect(user, password string, next http.Handler) http.Handler {
	return frameDenied(SameOrigin(BasicAuth(user, password, next)))
}

func frameDenied(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("Content-Security-Policy", "frame-ancestors 'none'")
		next.ServeHTTP(w, r)
	})
}

// SameOrigin refuses (403) a request that changes something unless it
// comes from a page of this origin. Browsers say where a request comes
// from: Sec-Fetch-Site (every current browser) or else Origin, which must
// name this host (net/http's CrossOriginProtection checks both). A request
// with neither header is not from a current browser (curl, a script); it
// must then send Content-Type: application/json, which no page of another
// site can send without a CORS preflight that is never granted here.
// River UI's own pages send their JSON as text/plain, and pause and resume
// a queue with no body at all, so that content type is not asked of
// requests a browser marked as same-origin.
func SameOrigin(next http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			next.ServeHTTP(w, r)
			return
		}
		if err := cop.Check(r); err != nil {
			writeProblem(w, http.StatusForbidden, "cross-origin request refused: River UI changes jobs only from its own pages")
			return
		}
		if r.Header.Get("Sec-Fetch-Site") == "" && r.Header.Get("Origin") == "" {
			if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
				writeProblem(w, http.StatusForbidden, "a request without Origin or Sec-Fetch-Site (not from a browser) must send Content-Type: application/json")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// MaxFailures is how many wrong credentials a client address may send per
// minute; further attempts are refused (429) without being checked.
const MaxFailures = 10

// BasicAuth wraps next with HTTP Basic auth, comparing in constant time
// (over hashes, so the length of the secret leaks nothing either), and
// limits wrong credentials to MaxFailures per minute per client address
// (the connection's address: behind a reverse proxy, the proxy's, so its
// clients share the limit). A request without credentials is the browser
// asking for the login prompt and does not count.
func BasicAuth(user, password string, next http.Handler) http.Handler {
	wantUser := sha256.Sum256([]byte(user))
	wantPass := sha256.Sum256([]byte(password))
	failures := &failureLimiter{limiters: map[string]*failureEntry{}}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		addr := clientAddr(r)
		if wait := failures.blocked(addr); wait > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
			writeProblem(w, http.StatusTooManyRequests, "too many wrong River UI credentials from this address; retry later")
			return
		}
		u, p, ok := r.BasicAuth()
		gotUser := sha256.Sum256([]byte(u))
		gotPass := sha256.Sum256([]byte(p))
		userOK := subtle.ConstantTimeCompare(gotUser[:], wantUser[:])
		passOK := subtle.ConstantTimeCompare(gotPass[:], wantPass[:])
		if !ok || userOK&passOK != 1 {
			if ok {
				failures.fail(addr)
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="River UI", charset="UTF-8"`)
			writeProblem(w, http.StatusUnauthorized, "River UI needs the admin's user name and password")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// failureLimiter is a token bucket of MaxFailures per minute per address.
type failureLimiter struct {
	mu       sync.Mutex
	limiters map[string]*failureEntry
}

type failureEntry struct {
	lim  *rate.Limiter
	last time.Time
}

// blocked returns how long addr must wait before its credentials are
// checked again, or 0.
func (f *failureLimiter) blocked(addr string) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.limiters[addr]
	if e == nil {
		return 0
	}
	now := time.Now()
	if tokens := e.lim.TokensAt(now); tokens < 1 {
		return time.Duration((1 - tokens) * float64(time.Minute/MaxFailures))
	}
	return 0
}

func (f *failureLimiter) fail(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if len(f.limiters) >= 10000 {
		// Forget addresses whose bucket has refilled.
		for a, e := range f.limiters {
			if now.Sub(e.last) > time.Minute {
				delete(f.limiters, a)
			}
		}
	}
	e := f.limiters[addr]
	if e == nil {
		e = &failureEntry{lim: rate.NewLimiter(rate.Every(time.Minute/MaxFailures), MaxFailures)}
		f.limiters[addr] = e
	}
	e.last = now
	e.lim.AllowN(now, 1)
}

// writeProblem answers an RFC 9457 problem detail, like the API's errors.
func writeProblem(w http.ResponseWriter, status int, detail string) {
	body, _ := json.Marshal(map[string]any{"type": "about:blank", "title": http.StatusText(status), "status": status, "detail": detail})
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
