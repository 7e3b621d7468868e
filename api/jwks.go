package api

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// JWKSOptions configure NewJWKS. Zero fields take the defaults.
type JWKSOptions struct {
	// RefreshInterval is how often the key set is fetched again (default
	// 10 minutes).
	RefreshInterval time.Duration
	// UnknownKIDInterval is the least time between two refreshes caused by
	// a token whose kid is not in the cached set (default 1 minute), so a
	// flood of made-up kids cannot hammer the key server. A rotated key is
	// picked up by the first token that uses it.
	UnknownKIDInterval time.Duration
	// HTTPTimeout bounds one fetch (default 5 seconds).
	HTTPTimeout time.Duration
	// Client fetches the key set (default: a client with HTTPTimeout).
	Client *http.Client
	// Logger receives fetch failures; never a token.
	Logger *slog.Logger
}

// NewJWKS returns a jwt.Keyfunc for the asymmetric tokens (RS256, ES256,
// EdDSA ...) signed by the keys published at url: the key set is cached,
// refreshed every RefreshInterval and at once (rate-limited) when a token
// names an unknown kid. A key set that cannot be fetched at start is not an
// error (tokens are refused until it can be); the refresh goroutine stops
// when ctx ends.
func NewJWKS(ctx context.Context, url string, opts JWKSOptions) (jwt.Keyfunc, error) {
	if opts.RefreshInterval <= 0 {
		opts.RefreshInterval = 10 * time.Minute
	}
	if opts.UnknownKIDInterval <= 0 {
		opts.UnknownKIDInterval = time.Minute
	}
	if opts.HTTPTimeout <= 0 {
		opts.HTTPTimeout = 5 * time.Second
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{url}, keyfunc.Override{
		Client:          opts.Client,
		HTTPTimeout:     opts.HTTPTimeout,
		RefreshInterval: opts.RefreshInterval,
		// One refresh for an unknown kid per interval. A token arriving
		// while the limiter is empty waits at most RateLimitWaitMax: the
		// limiter's Wait fails at once when its next token is further
		// away than that, and the token is refused.
		RefreshUnknownKID: rate.NewLimiter(rate.Every(opts.UnknownKIDInterval), 1),
		RateLimitWaitMax:  opts.HTTPTimeout,
		RefreshErrorHandlerFunc: func(u string) func(ctx context.Context, err error) {
			return func(ctx context.Context, err error) {
				logger.WarnContext(ctx, "cannot refresh the JWKS", slog.String("url", u), slog.String("error", err.Error()))
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("AUTH_JWKS_URL: %w", err)
	}
	return kf.Keyfunc, nil
}
