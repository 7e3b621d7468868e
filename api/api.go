// Package api is the huma HTTP API of aiqueue: submit, status and cancel of
// AI jobs, credits, the operations catalog and admin grants, with bearer
// auth and RFC 9457 problem details.
package api

import (
	"log/slog"
	"net/http"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/adapters/humago"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/jobs"
)

// Tags group operations in the document; the generated clients use them.
const (
	tagJobs       = "jobs"
	tagCredits    = "credits"
	tagOperations = "operations"
	tagAdmin      = "admin"
)

// Config configures the API.
type Config struct {
	Auth    AuthConfig
	Logger  *slog.Logger
	Version string
}

// Server holds the API's dependencies.
type Server struct {
	pool   *pgxpool.Pool
	jobs   *jobs.Service
	auth   *authenticator
	logger *slog.Logger
	api    huma.API
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
	s := &Server{pool: pool, jobs: svc, auth: newAuthenticator(cfg.Auth), logger: logger}
	s.api = humago.New(mux, Document(cfg.Version))
	s.api.UseMiddleware(s.authMiddleware)
	s.register()
	return s, nil
}

// API returns the huma API (for tests and the OpenAPI document).
func (s *Server) API() huma.API { return s.api }

// Document returns the huma config: title, version, bearer security scheme.
func Document(version string) huma.Config {
	cfg := huma.DefaultConfig("aiqueue", version)
	cfg.Info.Description = "One queue for every paid AI request of the studio: submit, follow and cancel jobs; credits are reserved with the job and settled exactly once when it ends."
	cfg.Components.SecuritySchemes = map[string]*huma.SecurityScheme{
		"bearer": {Type: "http", Scheme: "bearer", BearerFormat: "JWT", Description: "Supabase access token (HS256, or RS256/ES256 via JWKS)."},
	}
	cfg.Tags = []*huma.Tag{
		{Name: tagJobs, Description: "AI jobs"},
		{Name: tagCredits, Description: "Credits"},
		{Name: tagOperations, Description: "The catalog of AI operations"},
		{Name: tagAdmin, Description: "Admin only"},
	}
	return cfg
}

func (s *Server) register() {
	s.registerJobs()
	s.registerCredits()
	s.registerOperations()
}

var bearer = []map[string][]string{{"bearer": {}}}
