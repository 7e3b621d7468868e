package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/aiqueue/aiqueue/api"
	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/internal/logging"
	"github.com/aiqueue/aiqueue/internal/pglocal"
	"github.com/aiqueue/aiqueue/internal/plans"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
	"github.com/aiqueue/aiqueue/maintenance"
	"github.com/aiqueue/aiqueue/metrics"
	"github.com/aiqueue/aiqueue/migrations"
	"github.com/aiqueue/aiqueue/riverui"
	"github.com/aiqueue/aiqueue/web"
	"github.com/aiqueue/aiqueue/webhooks"
)

// Version is set at build time.
var Version = "dev"

// simKeys are the built-in simulator's keys when no fal key is set.
var builtinSimKeys = []string{"sim-key-1", "sim-key-2", "sim-key-3"}

// DemoUserID is the user `make run` grants credits to.
const DemoUserID = "00000000-0000-4000-8000-000000000001"

// Main is the running program: Run starts it, Close stops it. Tests boot the
// real program through it.
type Main struct {
	Config Config
	Logger *slog.Logger
	// Registry collects the metrics served at /metrics.
	Registry *prometheus.Registry

	cluster *pglocal.Cluster
	pool    *pgxpool.Pool
	// plans says when the busiest statements run on generic plans, for
	// the submissions and the completions alike.
	plans    *plans.Grown
	river    *river.Client[pgx.Tx]
	watcher  *api.Watcher
	api      *api.Server
	fal      *falclient.Client
	dispatch *dispatch.Dispatch
	// webhooks delivers outbound webhooks (nil with ROLE=api).
	webhooks *webhooks.Deliverer
	sim      *falsim.Server
	simSrv   *http.Server
	simURL   string
	pprof    *http.Server
	pprofURL string
	// metricsSrv serves /metrics on METRICS_ADDR (nil when it is the API
	// listener).
	metricsSrv *http.Server
	metricsURL string
	http       *http.Server
	listener   net.Listener
	serveErr   chan error
	cancel     context.CancelFunc

	// DemoToken is a bearer token for the demo user (Config.Demo).
	DemoToken string
	// playgroundToken is the demo user's token without the admin role,
	// which /playground offers to browsers on this machine (Config.Demo).
	playgroundToken string
	// riverUIPasswordFile holds the River UI password make run generated.
	riverUIPasswordFile string

	closeOnce sync.Once
	closeErr  error
}

// NewMain returns a Main for cfg with a JSON logger on stderr.
func NewMain(cfg Config) *Main {
	return &Main{Config: cfg, Logger: logging.New(cfg.LogLevel, os.Stderr)}
}

// Run starts the database (when embedded), the fal backend, River and the
// HTTP server, and returns once they are serving.
func (m *Main) Run(ctx context.Context) (err error) {
	cfg := &m.Config
	if m.Logger == nil {
		m.Logger = logging.New(cfg.LogLevel, os.Stderr)
	}
	if m.Registry == nil {
		m.Registry = prometheus.NewRegistry()
		m.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.cancel = cancel

	if cfg.Demo && cfg.JWTSecret == "" {
		if cfg.JWTSecret, err = devSecret(cfg.DataDir, "dev-jwt-secret"); err != nil {
			return err
		}
	}
	if cfg.Demo && cfg.RiverUser == "" && cfg.RiverPass == "" {
		// make run shows River UI too, behind a password of its own.
		cfg.RiverUser = "admin"
		if cfg.RiverPass, err = devSecret(cfg.DataDir, "dev-riverui-password"); err != nil {
			return err
		}
		m.riverUIPasswordFile = filepath.Join(cfg.DataDir, "dev-riverui-password")
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	catalog := jobs.DefaultCatalog()
	if cfg.OperationsFile != "" {
		if catalog, err = jobs.LoadCatalog(cfg.OperationsFile); err != nil {
			return err
		}
	}

	if cfg.DatabaseURL == "" {
		if err := m.startPostgres(ctx); err != nil {
			return err
		}
	}
	if err := m.openPool(ctx); err != nil {
		return err
	}
	if cfg.AutoMigrate {
		if err := migrations.Up(ctx, m.pool); err != nil {
			return err
		}
	}

	if err := m.startFal(ctx); err != nil {
		return err
	}
	jobMetrics := metrics.NewMetrics(m.pool, m.Logger.With(slog.String("component", "metrics")))
	if err := jobMetrics.Register(m.Registry); err != nil {
		return err
	}
	if err := m.startDispatch(runCtx, catalog, jobMetrics); err != nil {
		return err
	}
	mux := http.NewServeMux()
	m.registerOps(mux)
	if cfg.Role != RoleWorker {
		if err := m.startAPI(runCtx, mux, catalog, jobMetrics); err != nil {
			return err
		}
	}

	if cfg.Demo {
		if err := m.setupDemo(ctx); err != nil {
			return err
		}
	}
	if cfg.Role != RoleWorker {
		web.Register(mux, web.Config{DemoToken: m.playgroundToken})
	}

	if cfg.PprofAddr != "" {
		if err := m.startPprof(ctx); err != nil {
			return err
		}
	}
	if !cfg.metricsOnAPI() {
		if err := m.startMetrics(ctx); err != nil {
			return err
		}
	}
	m.listener, err = new(net.ListenConfig).Listen(ctx, "tcp", cfg.ListenAddr)
	if err != nil {
		return err
	}
	if cfg.metricsOnAPI() {
		m.metricsURL = m.URL() + "/metrics"
	}
	m.http = newHTTPServer(logging.Middleware(m.Logger, api.CORS(cfg.CORSAllowedOrigins, api.Harden(mux))), cfg.HTTP)
	if m.api != nil {
		m.http.RegisterOnShutdown(m.api.Shutdown) // end long polls and event streams
	}
	m.serveErr = make(chan error, 1)
	go func() { m.serveErr <- m.http.Serve(m.listener) }()
	m.Logger.Info("server started", slog.String("addr", m.listener.Addr().String()), slog.String("role", cfg.Role))
	return nil
}

// startDispatch builds and starts the line, the worker and River, with the
// periodic maintenance jobs River's leader runs.
func (m *Main) startDispatch(ctx context.Context, catalog *jobs.Catalog, jobMetrics *metrics.Metrics) error {
	cfg := &m.Config
	reconciler, err := maintenance.NewReconciler(m.pool, maintenance.ReconcilerConfig{
		Logger:     m.Logger.With(slog.String("component", "reconciler")),
		Registerer: m.Registry,
	})
	if err != nil {
		return err
	}
	sweeper := &maintenance.SweepWorker{Retention: cfg.JobRetention, Logger: m.Logger.With(slog.String("component", "sweep"))}
	m.plans = plans.NewGrown(m.pool)
	m.dispatch, err = dispatch.New(dispatch.Config{
		Pool:       m.pool,
		Fal:        m.fal,
		Capacities: cfg.FalCapacities,
		Catalog:    catalog,
		Logger:     m.Logger,
		Caps:       cfg.SlotCaps,
		Worker:     dispatch.WorkerConfig{AttemptTimeout: cfg.JobAttemptTimeout, WebhookURL: cfg.FalWebhookURL, Plans: m.plans},
		Client: dispatch.ClientConfig{
			Limits:       cfg.Limits,
			Work:         cfg.Role != RoleAPI,
			Logger:       m.Logger.With(slog.String("component", "river")),
			RescueAfter:  cfg.RescueAfter,
			Middleware:   []rivertype.Middleware{jobMetrics.Middleware()},
			PollOnly:     cfg.RiverPollOnly,
			JobRetention: cfg.JobRetention,
			Periodic: []*river.PeriodicJob{reconciler.PeriodicJob(maintenance.ReconcileInterval), maintenance.PrunePeriodicJob(),
				maintenance.SweepPeriodicJob(cfg.FalSweepInterval)},
			Workers: []func(*river.Workers){reconciler.AddWorker, func(w *river.Workers) {
				river.AddWorker(w, &maintenance.PruneWorker{DB: m.pool, IdempotencyTTL: api.IdempotencyKeyTTL})
				river.AddWorker(w, sweeper)
			}},
		},
	})
	if err != nil {
		return err
	}
	sweeper.Requests = m.dispatch.Requests()
	m.river = m.dispatch.River
	if err := m.Registry.Register(dispatch.NewCollector(m.pool, m.dispatch.Line, m.dispatch.Requests(), m.Logger)); err != nil {
		return err
	}
	if err := m.dispatch.Start(ctx); err != nil {
		return err
	}
	if cfg.Role != RoleAPI {
		return m.startWebhooks(ctx, catalog)
	}
	return nil
}

// startWebhooks starts the delivery of outbound webhooks, in the processes
// that work jobs.
func (m *Main) startWebhooks(ctx context.Context, catalog *jobs.Catalog) error {
	cfg := &m.Config
	logger := m.Logger.With(slog.String("component", "webhooks"))
	if cfg.WebhookAllowPrivate {
		logger.Warn("WEBHOOK_ALLOW_PRIVATE=true: webhook endpoints may be on http and on private, loopback and link-local addresses")
	}
	var err error
	m.webhooks, err = webhooks.New(webhooks.Config{
		Pool:         m.pool,
		Reader:       jobs.NewService(jobs.Config{Pool: m.pool, River: m.river, Catalog: catalog}),
		Logger:       logger,
		Registerer:   m.Registry,
		AllowPrivate: cfg.WebhookAllowPrivate,
		Timeout:      cfg.WebhookTimeout,
		UserAgent:    "aiqueue-webhooks/" + Version,
	})
	if err != nil {
		return err
	}
	m.webhooks.Start(ctx)
	return nil
}

// startAPI mounts the API and River UI on mux.
func (m *Main) startAPI(ctx context.Context, mux *http.ServeMux, catalog *jobs.Catalog, jobMetrics *metrics.Metrics) error {
	cfg := &m.Config
	auth := api.AuthConfig{HS256Secret: []byte(cfg.JWTSecret), Audience: cfg.JWTAudience, Issuer: cfg.JWTIssuer}
	if cfg.JWKSURL != "" {
		var err error
		if auth.Keyfunc, err = api.NewJWKS(ctx, cfg.JWKSURL, api.JWKSOptions{Logger: m.Logger}); err != nil {
			return err
		}
	}
	// Every API process records its default spend caps; the last to start
	// decides for all.
	if err := ledger.SetCapDefaults(ctx, m.pool, cfg.SpendCapDaily, cfg.SpendCapMonthly); err != nil {
		return err
	}
	m.watcher = api.NewWatcher(m.pool.Config().ConnConfig, m.Logger.With(slog.String("component", "watch")))
	go m.watcher.Run(ctx)
	svc := jobs.NewService(jobs.Config{
		Pool:    m.pool,
		River:   m.river,
		Catalog: catalog,
		Limits: jobs.Limits{
			RatePerMinute:   cfg.RateLimitPerMinute,
			Burst:           cfg.RateLimitBurst,
			UserMaxPending:  cfg.UserMaxPending,
			QueueMaxPending: cfg.QueueMaxPending,
		},
		Deadlines: cfg.Deadlines,
		Hooks:     jobs.Hooks{Submitted: jobMetrics.Submitted, Committed: m.dispatch.Line.Committed, Cancelled: m.dispatch.Requests().Cancelled},
		Plans:     m.plans,
	})
	falHooks, err := m.falWebhooks()
	if err != nil {
		return err
	}
	if m.api, err = api.New(mux, m.pool, svc, api.Config{
		Auth:        auth,
		Logger:      m.Logger,
		Version:     Version,
		Watcher:     m.watcher,
		FalWebhooks: falHooks,
		// Counted in this process: with several api processes a user may
		// hold this many in each.
		UserMaxStreams:      cfg.UserMaxStreams,
		WebhookAllowPrivate: cfg.WebhookAllowPrivate,
	}); err != nil {
		return err
	}
	if err := riverui.Mount(ctx, mux, m.river, riverui.Config{User: cfg.RiverUser, Password: cfg.RiverPass, Logger: m.Logger, Pool: m.pool}); err != nil {
		return fmt.Errorf("river ui: %w", err)
	}
	return nil
}

// falWebhooks is how the API takes in fal's webhooks: when FAL_WEBHOOK_URL
// is set, verified with FAL_WEBHOOK_JWKS_URL's keys (default fal's, or the
// built-in simulator's own).
func (m *Main) falWebhooks() (api.FalWebhooks, error) {
	cfg := &m.Config
	if cfg.FalWebhookURL == "" {
		return api.FalWebhooks{}, nil
	}
	jwks := cfg.FalWebhookJWKSURL
	if jwks == "" && m.simURL != "" {
		jwks = m.simURL + "/.well-known/jwks.json"
	}
	v, err := falclient.NewWebhookVerifier(falclient.WebhookVerifierConfig{JWKSURL: jwks})
	if err != nil {
		return api.FalWebhooks{}, err
	}
	return api.FalWebhooks{
		Verifier: v,
		Accept:   m.dispatch.Webhook,
		Replayed: func(err error) bool { return errors.Is(err, dispatch.ErrWebhookReplayed) },
	}, nil
}

// URL is the base URL the server listens on.
func (m *Main) URL() string { return baseURL(m.listener.Addr()) }

// baseURL is the http URL of a listener's address, on loopback when it
// listens on every address.
func baseURL(a net.Addr) string {
	addr := a.(*net.TCPAddr)
	host := addr.IP.String()
	if addr.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	return fmt.Sprintf("http://%s", net.JoinHostPort(host, fmt.Sprint(addr.Port)))
}

// Pool returns the database pool.
func (m *Main) Pool() *pgxpool.Pool { return m.pool }

// River returns the River client.
func (m *Main) River() *river.Client[pgx.Tx] { return m.river }

// Watcher returns the job state watcher (nil with ROLE=worker).
func (m *Main) Watcher() *api.Watcher { return m.watcher }

// Sim returns the built-in fal simulator, or nil when real fal is used.
func (m *Main) Sim() *falsim.Server { return m.sim }

func (m *Main) startPostgres(ctx context.Context) error {
	dir, err := filepath.Abs(filepath.Join(m.Config.DataDir, "postgres"))
	if err != nil {
		return err
	}
	m.Logger.Info("DATABASE_URL is not set: starting a private PostgreSQL", slog.String("dir", dir))
	m.cluster, err = pglocal.Start(ctx, pglocal.Options{Dir: dir, Logger: m.Logger})
	if err != nil {
		return err
	}
	admin, err := pgx.Connect(ctx, m.cluster.URL("postgres"))
	if err != nil {
		return err
	}
	defer admin.Close(ctx)
	var exists bool
	if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'aiqueue')`).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if _, err := admin.Exec(ctx, `CREATE DATABASE aiqueue`); err != nil {
			return err
		}
	}
	m.Config.DatabaseURL = m.cluster.URL("aiqueue")
	return nil
}

func (m *Main) openPool(ctx context.Context) error {
	pc, err := pgxpool.ParseConfig(m.Config.DatabaseURL)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", redactURLError(err))
	}
	pc.MaxConns = m.Config.DatabaseMaxConns
	pc.ConnConfig.ConnectTimeout = 5 * time.Second
	m.pool, err = pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return err
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := m.pool.Ping(pingCtx); err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	return nil
}

// redactURLError keeps a password in DATABASE_URL out of error messages.
func redactURLError(err error) error {
	return errors.New(strings.SplitN(err.Error(), ":", 2)[0] + ": cannot parse connection string")
}

func (m *Main) startFal(ctx context.Context) error {
	cfg := m.Config
	keys := cfg.FalKeys
	if cfg.FalSimulate && len(keys) == 0 {
		keys = builtinSimKeys
	}
	baseURL := cfg.FalQueueURL
	if cfg.FalSimulate && baseURL == "" {
		m.sim = falsim.New(falsim.Options{Keys: keys, Fast: cfg.FalSimFast, LatencyScale: cfg.FalSimScale, Logger: m.Logger.With(slog.String("component", "falsim"))})
		ln, err := new(net.ListenConfig).Listen(ctx, "tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		m.simSrv = &http.Server{Handler: m.sim, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = m.simSrv.Serve(ln) }()
		baseURL = "http://" + ln.Addr().String()
		m.simURL = baseURL
		m.Logger.Warn("FAL SIMULATOR IN USE: no fal key is set (or FAL_SIMULATE=true); jobs get fake results from the built-in simulator and nothing is sent to fal.ai",
			slog.String("fal_queue_url", baseURL))
	} else if cfg.FalSimulate {
		m.Logger.Warn("FAL SIMULATOR IN USE at FAL_QUEUE_URL: nothing is sent to fal.ai", slog.String("fal_queue_url", baseURL))
	}
	var err error
	m.fal, err = falclient.New(falclient.Config{
		BaseURL:    baseURL,
		Keys:       keys,
		Logger:     m.Logger.With(slog.String("component", "falclient")),
		Registerer: m.Registry,
	})
	return err
}

func (m *Main) registerOps(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "application/json")
		if err := m.pool.Ping(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"status":"unavailable","reason":"database unreachable"}`))
			return
		}
		if err := migrations.Check(ctx, m.pool); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"status":"unavailable","reason":"migrations pending"}`))
			return
		}
		_, _ = w.Write([]byte(`{"status":"ready"}`))
	})
	if m.Config.metricsOnAPI() {
		mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	}
}

// startMetrics serves /metrics on METRICS_ADDR, a listener of its own
// (loopback by default), so the job volumes, credits and key counts it
// shows are not public with the API.
func (m *Main) startMetrics(ctx context.Context) error {
	ln, err := new(net.ListenConfig).Listen(ctx, "tcp", m.Config.MetricsAddr)
	if err != nil {
		return fmt.Errorf("METRICS_ADDR=%s: %w (is another server running on this machine? give each its own METRICS_ADDR)", m.Config.MetricsAddr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	m.metricsSrv = newHTTPServer(logging.Middleware(m.Logger, mux), m.Config.HTTP)
	m.metricsURL = baseURL(ln.Addr()) + "/metrics"
	go func() { _ = m.metricsSrv.Serve(ln) }()
	return nil
}

// MetricsURL is the URL of /metrics.
func (m *Main) MetricsURL() string { return m.metricsURL }

// setupDemo grants the demo user credits once and mints a token.
func (m *Main) setupDemo(ctx context.Context) error {
	tx, err := m.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if _, _, err := ledger.Grant(ctx, tx, DemoUserID, 1000, "demo credits", "demo-grant-"+DemoUserID); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	m.DemoToken, err = api.MintToken([]byte(m.Config.JWTSecret), DemoUserID, true, 24*time.Hour, m.Config.JWTAudience)
	if err != nil {
		return err
	}
	// The playground offers a token without the admin role.
	m.playgroundToken, err = api.MintToken([]byte(m.Config.JWTSecret), DemoUserID, false, 24*time.Hour, m.Config.JWTAudience)
	return err
}

// devSecret returns a secret of make run (the HS256 secret, the River UI
// password), created once under dir in the file name and kept there.
func devSecret(dir, name string) (string, error) {
	if secret, err := readDevSecret(dir, name); err == nil {
		return secret, nil
	}
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	secret := hex.EncodeToString(buf)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", err
	}
	return secret, os.WriteFile(filepath.Join(dir, name), []byte(secret+"\n"), 0o600)
}

// readDevSecret reads a secret devSecret created; `server token` uses it.
func readDevSecret(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(filepath.Clean(dir), name))
	if err != nil {
		return "", err
	}
	secret := strings.TrimSpace(string(b))
	if len(secret) < 32 {
		return "", fmt.Errorf("%s is too short", name)
	}
	return secret, nil
}

// Close shuts the program down: it stops taking requests (the listener
// closes at once, requests in flight may finish) and stops fetching jobs
// while running jobs finish, both within SHUTDOWN_TIMEOUT; jobs still
// running then are cancelled and handed back to the queue as retryable (a
// later attempt resumes their stored fal request, so none is paid twice).
// Then it stops the embedded database. It is safe to call more than once.
func (m *Main) Close() error {
	m.closeOnce.Do(func() {
		var (
			mu   sync.Mutex
			errs []error
			wg   sync.WaitGroup
		)
		add := func(err error) {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
		timeout := cmp.Or(m.Config.ShutdownTimeout, 25*time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if m.http != nil {
			wg.Go(func() {
				if err := m.http.Shutdown(ctx); err != nil {
					m.Logger.Warn("requests still in flight at the shutdown timeout; closing them", slog.Any("error", err))
					_ = m.http.Close()
				}
			})
		}
		if m.webhooks != nil {
			wg.Go(func() { m.webhooks.Stop(ctx) })
		}
		if m.river != nil && m.Config.Role != RoleAPI {
			wg.Go(func() {
				if err := m.river.Stop(ctx); err != nil {
					m.Logger.Warn("running jobs did not finish within the shutdown timeout; handing them back to the queue",
						slog.Duration("shutdown_timeout", timeout))
					hard, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					add(m.river.StopAndCancel(hard))
				}
			})
		}
		wg.Wait()
		if m.cancel != nil {
			m.cancel()
		}
		if m.simSrv != nil {
			m.sim.Close() // ends open status streams and webhook deliveries
			_ = m.simSrv.Close()
		}
		if m.pprof != nil {
			_ = m.pprof.Close()
		}
		if m.metricsSrv != nil {
			_ = m.metricsSrv.Close()
		}
		if m.pool != nil {
			m.pool.Close()
		}
		if m.cluster != nil {
			add(m.cluster.Stop())
		}
		for _, e := range errs {
			if e != nil && !errors.Is(e, http.ErrServerClosed) && !errors.Is(e, context.Canceled) {
				m.closeErr = errors.Join(m.closeErr, e)
			}
		}
	})
	return m.closeErr
}

// redactDSN hides the password of a connection string.
func redactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.User == nil {
		return dsn
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
