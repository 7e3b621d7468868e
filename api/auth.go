package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/golang-jwt/jwt/v5"

	"github.com/aiqueue/aiqueue/internal/logging"
)

// AuthConfig configures token checks.
type AuthConfig struct {
	// HS256Secret is the shared secret of HS256 tokens (Supabase JWT secret).
	HS256Secret []byte
	// Audience, when set, must be in the token's aud.
	Audience string
	// Issuer, when set, must be the token's iss.
	Issuer string
	// Keyfunc resolves asymmetric keys (JWKS); optional.
	Keyfunc jwt.Keyfunc
}

// Validate reports a config that cannot authenticate anyone.
func (c AuthConfig) Validate() error {
	if len(c.HS256Secret) == 0 && c.Keyfunc == nil {
		return errors.New("no auth configured: set AUTH_JWT_SECRET or AUTH_JWKS_URL")
	}
	return nil
}

// Claims are the token claims the service reads (Supabase shape).
type Claims struct {
	jwt.RegisteredClaims
	Role        string `json:"role,omitempty"`
	AppMetadata struct {
		Role string `json:"role,omitempty"`
	} `json:"app_metadata"`
}

// Principal is the authenticated caller.
type Principal struct {
	UserID string
	Admin  bool
	// Service is a service_role token without a user (sub): admin
	// endpoints only.
	Service bool
}

type principalKey struct{}

func principalFrom(ctx context.Context) Principal {
	p, _ := ctx.Value(principalKey{}).(Principal)
	return p
}

// authenticator checks bearer tokens.
type authenticator struct {
	cfg    AuthConfig
	parser *jwt.Parser
}

func newAuthenticator(cfg AuthConfig) *authenticator {
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(validMethods(cfg)),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(30 * time.Second),
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	return &authenticator{cfg: cfg, parser: jwt.NewParser(opts...)}
}

func validMethods(cfg AuthConfig) []string {
	var m []string
	if len(cfg.HS256Secret) > 0 {
		m = append(m, "HS256")
	}
	if cfg.Keyfunc != nil {
		m = append(m, "RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA", "PS256")
	}
	return m
}

// keyfunc picks the key by algorithm, so an HS256 token can never be checked
// against a public key (algorithm confusion) and "none" is never accepted.
func (a *authenticator) keyfunc(t *jwt.Token) (any, error) {
	switch t.Method.(type) {
	case *jwt.SigningMethodHMAC:
		if len(a.cfg.HS256Secret) == 0 {
			return nil, errors.New("HS256 tokens are not accepted")
		}
		return a.cfg.HS256Secret, nil
	default:
		if a.cfg.Keyfunc == nil {
			return nil, fmt.Errorf("%s tokens are not accepted", t.Method.Alg())
		}
		return a.cfg.Keyfunc(t)
	}
}

// errNoToken is a request without an Authorization header.
var errNoToken = errors.New("missing bearer token")

// errNotBearer is an Authorization header that is not "Bearer <token>".
var errNotBearer = errors.New("malformed Authorization header: expected Bearer")

// errSubject is a token whose sub is not a user id in canonical form.
var errSubject = errors.New("token subject is not a user id (a UUID in canonical form: lower-case, hyphenated)")

// serviceUserID is the user id of a service_role token without a sub
// (Supabase's service key): it may only call admin endpoints, and its
// idempotency keys are scoped to this id.
const serviceUserID = "00000000-0000-0000-0000-000000000000"

// authenticate checks the Authorization header. The principal's UserID is
// the token's sub, which must be a UUID in canonical form (lower-case,
// hyphenated, as Supabase writes it): other spellings of a UUID (upper
// case, braces, "urn:uuid:", no hyphens) are refused rather than
// normalised, so one user has exactly one id as text.
func (a *authenticator) authenticate(header string) (Principal, error) {
	header = strings.TrimSpace(header)
	if header == "" {
		return Principal{}, errNoToken
	}
	scheme, raw, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(raw) == "" {
		return Principal{}, errNotBearer
	}
	var c Claims
	if _, err := a.parser.ParseWithClaims(strings.TrimSpace(raw), &c, a.keyfunc); err != nil {
		return Principal{}, err
	}
	admin := c.Role == "service_role" || c.AppMetadata.Role == "admin"
	if c.Subject == "" && c.Role == "service_role" {
		return Principal{UserID: serviceUserID, Admin: true, Service: true}, nil
	}
	if !canonicalUUID(c.Subject) {
		return Principal{}, errSubject
	}
	return Principal{UserID: c.Subject, Admin: admin}, nil
}

// authMiddleware authenticates the callers of operations that declare the
// bearer security scheme, refusing them with 401; other operations (fal's
// signed webhook) pass.
func (s *Server) authMiddleware(ctx huma.Context, next func(huma.Context)) {
	op := ctx.Operation()
	if op == nil || !slices.ContainsFunc(op.Security, func(req map[string][]string) bool { _, ok := req["bearer"]; return ok }) {
		next(ctx)
		return
	}
	p, err := s.auth.authenticate(ctx.Header("Authorization"))
	if err != nil {
		// RFC 6750: no error code when the request had no token at all.
		challenge := `Bearer realm="aiqueue"`
		switch {
		case errors.Is(err, errNoToken):
		case errors.Is(err, errNotBearer):
			challenge += `, error="invalid_request"`
		default:
			challenge += `, error="invalid_token"`
		}
		ctx.SetHeader("WWW-Authenticate", challenge)
		// The reason is safe to show: it never includes the token.
		detail := "invalid or missing bearer token: " + reason(err)
		if errors.Is(err, errNotBearer) {
			detail = reason(err) + " <token>"
		}
		_ = huma.WriteErr(s.api, ctx, http.StatusUnauthorized, detail)
		return
	}
	logging.SetUser(ctx.Context(), p.UserID)
	switch {
	case adminOnly(op) && !p.Admin:
		_ = huma.WriteErr(s.api, ctx, http.StatusForbidden, "this endpoint needs the admin role")
		return
	case !adminOnly(op) && p.Service:
		ctx.SetHeader("WWW-Authenticate", `Bearer realm="aiqueue", error="invalid_token"`)
		_ = huma.WriteErr(s.api, ctx, http.StatusUnauthorized, "invalid or missing bearer token: a service token without a user (sub) can only call admin endpoints")
		return
	}
	next(huma.WithValue(ctx, principalKey{}, p))
}

func reason(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "token expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "token not valid yet"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong audience"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "wrong issuer"
	case errors.Is(err, errNoToken):
		return "no token"
	case errors.Is(err, errNotBearer), errors.Is(err, errSubject):
		return err.Error()
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "bad signature"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "unverifiable: unknown signing key or algorithm"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed token"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "a required claim is missing"
	default:
		return err.Error()
	}
}

func adminOnly(op *huma.Operation) bool {
	for _, t := range op.Tags {
		if t == tagAdmin {
			return true
		}
	}
	return false
}

// MintToken signs an HS256 token for sub, for `server token` and tests.
func MintToken(secret []byte, sub string, admin bool, ttl time.Duration, audience string) (string, error) {
	now := time.Now()
	c := Claims{RegisteredClaims: jwt.RegisteredClaims{
		Subject:   sub,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}, Role: "authenticated"}
	if audience != "" {
		c.Audience = jwt.ClaimStrings{audience}
	}
	if admin {
		c.AppMetadata.Role = "admin"
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
}
