package main

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aiqueue/aiqueue/api"
	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/jobs"
)

// Roles a process can take.
const (
	RoleAll    = "all"
	RoleAPI    = "api"
	RoleWorker = "worker"
)

// Config is the server's configuration, read from the environment (SPEC
// section 4). Secrets live here and nowhere else; String never prints them.
type Config struct {
	DatabaseURL      string
	DatabaseMaxConns int32
	DataDir          string // where the private Postgres lives when DatabaseURL is empty
	ListenAddr       string
	// MetricsAddr is where /metrics is served: its own listener, unless it
	// equals ListenAddr.
	MetricsAddr string
	Role        string
	// HTTP bounds the API listener's connections; zero fields take the
	// defaults (DefaultHTTPTimeouts). Tests shorten them.
	HTTP HTTPTimeouts

	FalKeys     []string
	FalQueueURL string
	FalSimulate bool
	FalSimFast  bool    // the built-in simulator answers at once (tests, benchmarks)
	FalSimScale float64 // multiplies the built-in simulator's model latencies
	// FalCapacities are the slots of each key (FAL_KEY_MAX_IN_FLIGHT), in
	// key order.
	FalCapacities []int
	// SlotCaps are the slots the lower queues may hold
	// (FAL_SLOTS_NORMAL_MAX, FAL_SLOTS_BACKGROUND_MAX).
	SlotCaps dispatch.Caps
	// FalWebhookURL is the public URL of POST /v1/fal/webhook; when set,
	// every fal submit asks fal to call it.
	FalWebhookURL string
	// FalWebhookJWKSURL are fal's webhook signing keys; default fal's own,
	// or the built-in simulator's.
	FalWebhookJWKSURL string
	// JobRetention is how long finished jobs stay readable.
	JobRetention time.Duration
	// FalSweepInterval is how often a worker process cancels fal requests no
	// job waits for any more and frees their in-flight slots.
	FalSweepInterval time.Duration
	// WebhookAllowPrivate lets admins register webhook endpoints on http
	// and private hosts, and deliveries connect to private, loopback and
	// link-local addresses (tests, internal networks).
	WebhookAllowPrivate bool
	// WebhookTimeout bounds one webhook delivery's HTTP call; zero is
	// webhooks.DefaultTimeout. Tests shorten it.
	WebhookTimeout time.Duration

	// JobAttemptTimeout bounds one attempt of a job; RescueAfter is how long
	// a job may run before River's rescuer takes it for a dead worker's.
	JobAttemptTimeout time.Duration
	RescueAfter       time.Duration

	Limits dispatch.QueueLimits

	QueueMaxPending int
	UserMaxPending  int
	// UserMaxStreams caps the event streams and long polls one user holds
	// open in this process (429 beyond it).
	UserMaxStreams     int
	RateLimitPerMinute int
	RateLimitBurst     int
	// Deadlines are the default deadlines to start per queue
	// (QUEUE_*_START_BY; zero: none).
	Deadlines jobs.Deadlines
	// SpendCapDaily and SpendCapMonthly are the default spend caps of users
	// without their own (SPEND_CAP_DAILY, SPEND_CAP_MONTHLY); nil: no cap.
	SpendCapDaily   *int64
	SpendCapMonthly *int64

	JWTSecret   string
	JWKSURL     string
	JWTAudience string
	JWTIssuer   string

	RiverUser string
	RiverPass string

	// CORSAllowedOrigins are the browser origins allowed to call /v1/ from
	// another origin (api.CORS); none means no CORS headers at all.
	CORSAllowedOrigins []string

	// RiverPollOnly makes River poll instead of LISTEN (PgBouncer in
	// transaction pooling mode).
	RiverPollOnly bool

	OperationsFile  string
	LogLevel        string
	ShutdownTimeout time.Duration
	AutoMigrate     bool
	// PprofAddr, when set, serves net/http/pprof on this loopback address.
	PprofAddr string

	// Demo grants the demo user credits and prints a token (make run).
	Demo bool
}

// ConfigFromEnv reads the configuration; getenv is os.Getenv outside tests.
// It returns every problem at once.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	var errs []error
	num := func(name string, def int) int {
		v := getenv(name)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q is not a number", name, v))
			return def
		}
		return n
	}
	boolean := func(name string, def bool) bool {
		v := getenv(name)
		if v == "" {
			return def
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q is not true or false", name, v))
			return def
		}
		return b
	}
	dur := func(name string, def time.Duration) time.Duration {
		v := getenv(name)
		if v == "" {
			return def
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q is not a duration", name, v))
			return def
		}
		return d
	}
	c := Config{
		DatabaseURL:       getenv("DATABASE_URL"),
		DatabaseMaxConns:  int32(num("DATABASE_MAX_CONNS", DefaultDatabaseMaxConns)), //nolint:gosec // range-checked below
		DataDir:           cmp.Or(getenv("DATA_DIR"), ".data"),
		ListenAddr:        cmp.Or(getenv("LISTEN_ADDR"), ":8080"),
		MetricsAddr:       cmp.Or(getenv("METRICS_ADDR"), DefaultMetricsAddr),
		Role:              cmp.Or(getenv("ROLE"), RoleAll),
		FalKeys:           falclient.KeysFromEnv(getenv),
		FalQueueURL:       cmp.Or(getenv("FAL_QUEUE_URL"), "https://queue.fal.run"),
		FalWebhookURL:     getenv("FAL_WEBHOOK_URL"),
		FalWebhookJWKSURL: getenv("FAL_WEBHOOK_JWKS_URL"),
		JobRetention:      dur("JOB_RETENTION", dispatch.DefaultJobRetention),
		FalSweepInterval:  dur("FAL_SWEEP_INTERVAL", 15*time.Second),
		FalSimScale:       1,
		JobAttemptTimeout: dur("JOB_ATTEMPT_TIMEOUT", dispatch.DefaultAttemptTimeout),
		RescueAfter:       dur("RIVER_RESCUE_AFTER", dispatch.DefaultRescueAfter),
		Limits: dispatch.QueueLimits{
			Urgent:     num("QUEUE_URGENT_WORKERS", 20),
			Normal:     num("QUEUE_NORMAL_WORKERS", 10),
			Background: num("QUEUE_BACKGROUND_WORKERS", 5),
		},
		QueueMaxPending:    num("QUEUE_MAX_PENDING", 10000),
		UserMaxPending:     num("USER_MAX_PENDING", 200),
		UserMaxStreams:     num("USER_MAX_STREAMS", 20),
		RateLimitPerMinute: num("RATE_LIMIT_PER_MINUTE", 10),
		RateLimitBurst:     num("RATE_LIMIT_BURST", 10),
		JWTSecret:          getenv("AUTH_JWT_SECRET"),
		JWKSURL:            getenv("AUTH_JWKS_URL"),
		JWTAudience:        cmp.Or(getenv("AUTH_JWT_AUDIENCE"), "authenticated"),
		JWTIssuer:          getenv("AUTH_JWT_ISSUER"),
		RiverUser:          getenv("RIVER_BASIC_AUTH_USER"),
		RiverPass:          getenv("RIVER_BASIC_AUTH_PASS"),
		OperationsFile:     getenv("OPERATIONS_FILE"),
		LogLevel:           cmp.Or(getenv("LOG_LEVEL"), "info"),
		ShutdownTimeout:    dur("SHUTDOWN_TIMEOUT", 25*time.Second),
		AutoMigrate:        boolean("AUTO_MIGRATE", getenv("DATABASE_URL") == ""),
		PprofAddr:          getenv("PPROF_ADDR"),
	}
	c.Deadlines = jobs.Deadlines{
		Urgent:     dur("QUEUE_URGENT_START_BY", jobs.DefaultDeadlines.Urgent),
		Normal:     dur("QUEUE_NORMAL_START_BY", jobs.DefaultDeadlines.Normal),
		Background: dur("QUEUE_BACKGROUND_START_BY", jobs.DefaultDeadlines.Background),
	}
	for name, dst := range map[string]**int64{"SPEND_CAP_DAILY": &c.SpendCapDaily, "SPEND_CAP_MONTHLY": &c.SpendCapMonthly} {
		if v := getenv(name); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s=%q is not a number of credits", name, v))
				continue
			}
			*dst = &n
		}
	}
	c.FalSimulate = boolean("FAL_SIMULATE", len(c.FalKeys) == 0)
	c.FalSimFast = boolean("FAL_SIMULATE_FAST", false)
	if v := getenv("FAL_SIMULATE_LATENCY_SCALE"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("FAL_SIMULATE_LATENCY_SCALE=%q is not a number", v))
		}
		c.FalSimScale = f
	}
	c.RiverPollOnly = boolean("RIVER_POLL_ONLY", false)
	c.WebhookAllowPrivate = boolean("WEBHOOK_ALLOW_PRIVATE", false)
	nkeys := len(c.FalKeys)
	if nkeys == 0 {
		nkeys = len(builtinSimKeys)
	}
	capacities, err := falclient.ParseMaxInFlight(getenv("FAL_KEY_MAX_IN_FLIGHT"), nkeys)
	if err != nil {
		errs = append(errs, err)
	}
	c.FalCapacities = capacities
	c.SlotCaps = dispatch.DefaultCaps
	for name, dst := range map[string]*dispatch.Cap{"FAL_SLOTS_NORMAL_MAX": &c.SlotCaps.NonUrgent, "FAL_SLOTS_BACKGROUND_MAX": &c.SlotCaps.Background} {
		if v := getenv(name); v != "" {
			cp, err := dispatch.ParseCap(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				continue
			}
			*dst = cp
		}
	}
	origins, err := api.ParseCORSOrigins(getenv("CORS_ALLOWED_ORIGINS"))
	if err != nil {
		errs = append(errs, err)
	}
	c.CORSAllowedOrigins = origins
	if c.FalSimulate && getenv("FAL_QUEUE_URL") == "" {
		c.FalQueueURL = "" // the built-in simulator's address, known at start
	}
	return c, errors.Join(errs...)
}

// Validate returns every reason the server cannot run with c, joined.
func (c Config) Validate() error {
	var errs []error
	switch c.Role {
	case RoleAll, RoleAPI, RoleWorker:
	default:
		errs = append(errs, fmt.Errorf("ROLE=%q is not all, api or worker", c.Role))
	}
	if err := c.Limits.Validate(); err != nil {
		errs = append(errs, err)
	}
	if !c.FalSimulate && len(c.FalKeys) == 0 {
		errs = append(errs, errors.New("FAL_SIMULATE=false but no fal key is set (FAL_KEYS or FAL_AI_KEY_1..5)"))
	}
	if err := c.SlotCaps.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Deadlines.Validate(); err != nil {
		errs = append(errs, err)
	}
	for name, n := range map[string]*int64{"SPEND_CAP_DAILY": c.SpendCapDaily, "SPEND_CAP_MONTHLY": c.SpendCapMonthly} {
		if n != nil && (*n < 0 || *n > 1_000_000_000) {
			errs = append(errs, fmt.Errorf("%s=%d is out of range 0-1000000000 (0: no spending; unset: no cap)", name, *n))
		}
	}
	if c.JobRetention < time.Hour {
		errs = append(errs, fmt.Errorf("JOB_RETENTION=%s must be at least 1h", c.JobRetention))
	}
	if c.FalWebhookURL != "" {
		if !httpsOrLoopback(c.FalWebhookURL) {
			errs = append(errs, errors.New("FAL_WEBHOOK_URL is not an https URL (http only on loopback)"))
		}
	}
	if c.FalWebhookJWKSURL != "" && !httpsOrLoopback(c.FalWebhookJWKSURL) {
		errs = append(errs, errors.New("FAL_WEBHOOK_JWKS_URL is not an https URL (http only on loopback)"))
	}
	if !(c.FalSimScale > 0 && c.FalSimScale <= 1000) {
		errs = append(errs, fmt.Errorf("FAL_SIMULATE_LATENCY_SCALE=%v is out of range (0, 1000]", c.FalSimScale))
	}
	if c.FalSweepInterval < 100*time.Millisecond || c.FalSweepInterval > time.Hour {
		errs = append(errs, fmt.Errorf("FAL_SWEEP_INTERVAL=%s is out of range 100ms-1h", c.FalSweepInterval))
	}
	if c.JobAttemptTimeout < time.Second || c.JobAttemptTimeout > time.Hour {
		errs = append(errs, fmt.Errorf("JOB_ATTEMPT_TIMEOUT=%s is out of range 1s-1h", c.JobAttemptTimeout))
	}
	if c.RescueAfter < c.JobAttemptTimeout {
		errs = append(errs, fmt.Errorf("RIVER_RESCUE_AFTER=%s must be at least JOB_ATTEMPT_TIMEOUT=%s", c.RescueAfter, c.JobAttemptTimeout))
	}
	if c.WebhookTimeout < 0 || c.WebhookTimeout > time.Minute {
		errs = append(errs, fmt.Errorf("webhook timeout %s is out of range 0-1m", c.WebhookTimeout))
	}
	if c.DatabaseMaxConns < 4 || c.DatabaseMaxConns > 1000 {
		errs = append(errs, fmt.Errorf("DATABASE_MAX_CONNS=%d is out of range 4-1000", c.DatabaseMaxConns))
	}
	for name, n := range map[string]int{"QUEUE_MAX_PENDING": c.QueueMaxPending, "USER_MAX_PENDING": c.UserMaxPending,
		"RATE_LIMIT_PER_MINUTE": c.RateLimitPerMinute, "RATE_LIMIT_BURST": c.RateLimitBurst, "USER_MAX_STREAMS": c.UserMaxStreams} {
		if n < 1 {
			errs = append(errs, fmt.Errorf("%s=%d must be at least 1", name, n))
		}
	}
	if c.Role != RoleWorker && c.JWTSecret == "" && c.JWKSURL == "" {
		errs = append(errs, errors.New("no auth configured: set AUTH_JWT_SECRET or AUTH_JWKS_URL"))
	}
	if c.JWKSURL != "" {
		if err := validJWKSURL(c.JWKSURL); err != nil {
			errs = append(errs, err)
		}
	}
	if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
		errs = append(errs, fmt.Errorf("METRICS_ADDR=%q is not host:port", c.MetricsAddr))
	}
	if !c.FalSimulate {
		errs = append(errs, c.validSecrets()...)
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("LOG_LEVEL=%q is not debug, info, warn or error", c.LogLevel))
	}
	if c.PprofAddr != "" {
		if err := validPprofAddr(c.PprofAddr); err != nil {
			errs = append(errs, err)
		}
	}
	if (c.RiverUser == "") != (c.RiverPass == "") {
		errs = append(errs, errors.New("set both RIVER_BASIC_AUTH_USER and RIVER_BASIC_AUTH_PASS, or neither"))
	}
	return errors.Join(errs...)
}

// httpsOrLoopback reports whether raw is an https URL, or an http URL of a
// loopback host (tests, the built-in simulator).
func httpsOrLoopback(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return false
	}
	return u.Scheme == "https" || (u.Scheme == "http" && isLoopbackHost(u.Hostname()))
}

// DefaultDatabaseMaxConns is the pool size when DATABASE_MAX_CONNS is not
// set. A process's goroutines then queue for a connection in the pool,
// where waiting costs nothing, rather than inside Postgres, where forty
// statements at once on a few cores mostly wait on each other's row locks,
// WAL flushes and CPU. Under versus-seed (docs/benchmarks.md, "Day
// (2026-12-07)") pools of 8 to 16 answered more submits than 40 with a
// p99 below the seed design's in every round. A worker holds a connection
// only while it talks to Postgres, never while fal works (README, "Sizing
// the pgx pool").
const DefaultDatabaseMaxConns = 10

// DefaultMetricsAddr is where /metrics is served when METRICS_ADDR is not
// set: loopback only, on a port of its own.
const DefaultMetricsAddr = "127.0.0.1:9090"

// metricsOnAPI reports whether /metrics is served on the API listener:
// METRICS_ADDR is LISTEN_ADDR, and not a port picked at start (":0").
func (c Config) metricsOnAPI() bool {
	_, port, err := net.SplitHostPort(c.MetricsAddr)
	return c.MetricsAddr == c.ListenAddr && err == nil && port != "0"
}

// validJWKSURL accepts https, and plain http only to a loopback host (a
// JWKS served on the same machine, tests): keys fetched over plain http
// from the network could be replaced on the way, and with them every
// token's signature.
func validJWKSURL(raw string) error {
	if httpsOrLoopback(raw) {
		return nil
	}
	if u, err := url.Parse(raw); err == nil && u.Scheme == "http" && u.Host != "" {
		return errors.New("AUTH_JWKS_URL must be https (plain http is accepted only for a loopback host)")
	}
	return errors.New("AUTH_JWKS_URL is not an https URL")
}

// isLoopbackHost reports whether host is localhost or a loopback IP.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// minSecretBytes is the shortest JWT secret or River UI password a server
// calling the real fal.ai accepts.
const minSecretBytes = 32

// publishedSecrets are values this repository has published as defaults or
// examples (compose.yaml, .env.example, the README): anyone who read them
// could mint admin tokens or open River UI.
var publishedSecrets = []string{
	"dev-secret-change-me-0123456789abcdef",
	"admin-change-me",
}

// weakSecret says why secret must not guard a server that spends real
// money, or "" when it may.
func weakSecret(secret string) string {
	lower := strings.ToLower(secret)
	switch {
	case slices.Contains(publishedSecrets, secret), strings.Contains(lower, "change-me"), strings.Contains(lower, "changeme"):
		return "is a published default"
	case len(secret) < minSecretBytes:
		return fmt.Sprintf("is shorter than %d bytes", minSecretBytes)
	}
	return ""
}

// validSecrets refuses a published default or short AUTH_JWT_SECRET or
// River UI password once real fal keys are set (with the simulator nothing
// is paid for, so tests and demos may use anything).
func (c Config) validSecrets() []error {
	var errs []error
	if c.JWTSecret != "" {
		if why := weakSecret(c.JWTSecret); why != "" {
			errs = append(errs, fmt.Errorf("AUTH_JWT_SECRET %s: with real fal keys the server needs a secret of its own, at least %d random bytes (openssl rand -hex 32)", why, minSecretBytes))
		}
	}
	if c.RiverPass != "" {
		if why := weakSecret(c.RiverPass); why != "" {
			errs = append(errs, fmt.Errorf("RIVER_BASIC_AUTH_PASS %s: with real fal keys River UI needs a password of its own, at least %d bytes (openssl rand -hex 32)", why, minSecretBytes))
		}
	}
	return errs
}
