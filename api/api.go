// Package api is the huma HTTP API of aiqueue: submit, status and cancel of
// AI jobs, credits, the operations catalog, admin grants, retries and
// webhook endpoints, with bearer auth and RFC 9457 problem details.
package api

import (
	"cmp"
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/adapters/humago"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/jobs"
)

// Tags group operations in the document; the generated clients use them.
const (
	tagJobs       = "jobs"
	tagBatches    = "batches"
	tagCredits    = "credits"
	tagOperations = "operations"
	tagAdmin      = "admin"
	tagFal        = "fal"
)

// Config configures the API.
type Config struct {
	Auth    AuthConfig
	Logger  *slog.Logger
	Version string
	// Watcher wakes long polls and event streams when something the
	// studio sees of a job changes. Without one they only end at their
	// timeout (queued jobs are still read again now and then).
	Watcher *Watcher
	// FalWebhooks takes in fal's webhooks; without a Verifier the endpoint
	// answers 404.
	FalWebhooks FalWebhooks
	// UserMaxStreams caps the event streams and long polls a user holds
	// open in this process (429 beyond it). Default DefaultUserMaxStreams.
	UserMaxStreams int
	// WebhookAllowPrivate lets admins register webhook endpoints on http
	// and on private hosts (WEBHOOK_ALLOW_PRIVATE).
	WebhookAllowPrivate bool
}

// dbTimeout bounds the database work of one request (acquiring a
// connection included), so an unreachable database answers 503 quickly
// instead of hanging.
const dbTimeout = 5 * time.Second

// MaxBodyBytes is the largest request body accepted (413 above it).
const MaxBodyBytes = 1 << 20

// Server holds the API's dependencies.
type Server struct {
	pool     *pgxpool.Pool
	jobs     *jobs.Service
	auth     *authenticator
	logger   *slog.Logger
	api      huma.API
	watcher  *Watcher
	falHooks FalWebhooks
	pacing   pacing
	streams  *streamCounts
	rereads  rereads
	// webhookAllowPrivate is Config.WebhookAllowPrivate.
	webhookAllowPrivate bool

	// stopping is closed by Shutdown: long polls answer at once and
	// event streams end, so a graceful shutdown does not wait for them.
	stopping chan struct{}
	stopOnce sync.Once
}

// Shutdown ends the long polls and event streams in progress (they answer
// with the job as it is). Register it with http.Server.RegisterOnShutdown.
func (s *Server) Shutdown() {
	s.stopOnce.Do(func() { close(s.stopping) })
}

// New registers every route on mux and returns the server.
func New(mux *http.ServeMux, pool *pgxpool.Pool, svc *jobs.Service, cfg Config) (*Server, error) {
	if err := cfg.Auth.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{pool: pool, jobs: svc, auth: newAuthenticator(cfg.Auth), logger: logger,
		watcher: cfg.Watcher, falHooks: cfg.FalWebhooks, pacing: defaultPacing, stopping: make(chan struct{}),
		webhookAllowPrivate: cfg.WebhookAllowPrivate,
		streams:             &streamCounts{limit: cmp.Or(cfg.UserMaxStreams, DefaultUserMaxStreams), open: map[string]int{}}}
	s.api = humago.New(mux, Document(cfg.Version))
	s.api.UseMiddleware(s.limitBody, s.authMiddleware, s.checkText, s.streamMiddleware)
	s.register()
	documentAPI(s.api.OpenAPI())
	return s, nil
}

// db bounds the database work of a request (dbTimeout).
func (s *Server) db(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, dbTimeout)
}

// API returns the huma API (for tests and the OpenAPI document).
func (s *Server) API() huma.API { return s.api }

func init() {
	// Every array the API sends is non-nil (empty lists are []), so the
	// document says so and generated clients need no null checks.
	huma.DefaultArrayNullable = false
}

// Document returns the huma config: title, version, bearer security scheme.
func Document(version string) huma.Config {
	cfg := huma.DefaultConfig("aiqueue", version)
	// huma's /docs loads its renderer from a CDN; package web serves /docs
	// from the binary instead.
	cfg.DocsPath = ""
	cfg.Info.Description = "One queue for every paid AI request of the studio: submit, follow and cancel jobs; credits are reserved with the job and settled exactly once when it ends."
	cfg.Components.SecuritySchemes = map[string]*huma.SecurityScheme{
		"bearer": {Type: "http", Scheme: "bearer", BearerFormat: "JWT", Description: "Supabase access token (HS256, or RS256/ES256 via JWKS)."},
	}
	cfg.Transformers = append(cfg.Transformers, clipErrorValues)
	// After huma's own hook, which adds the transformer writing $schema.
	cfg.CreateHooks = append(cfg.CreateHooks, func(c huma.Config) huma.Config {
		c.Transformers = append(c.Transformers, relativeSchemaLink)
		return c
	})
	cfg.Tags = []*huma.Tag{
		{Name: tagJobs, Description: "AI jobs"},
		{Name: tagBatches, Description: "Batches of AI jobs"},
		{Name: tagCredits, Description: "Credits"},
		{Name: tagOperations, Description: "The catalog of AI operations"},
		{Name: tagAdmin, Description: "Admin only"},
		{Name: tagFal, Description: "Callbacks from fal"},
	}
	return cfg
}

func (s *Server) register() {
	reg := s.api.OpenAPI().Components.Schemas
	job, item := requestSchemas(reg, s.jobs.Catalog())
	s.registerJobs(job)
	s.registerBatches(batchSchema(reg, item))
	s.registerCredits()
	s.registerRetry()
	s.registerWebhooks()
	s.registerOperations()
	s.registerFalWebhook()
}

var bearer = []map[string][]string{{"bearer": {}}}
