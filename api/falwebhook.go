package api

import (
	"context"
	"errors"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/aiqueue/aiqueue/falclient"
)

// FalWebhooks takes in fal's webhooks (POST /v1/fal/webhook).
type FalWebhooks struct {
	// Verifier checks fal's signature.
	Verifier *falclient.WebhookVerifier
	// Accept takes a verified webhook in; it returns
	// dispatch.ErrWebhookReplayed (matched with Replayed) for a signature
	// seen before.
	Accept func(ctx context.Context, wh *falclient.Webhook) error
	// Replayed reports whether an error of Accept is a replay.
	Replayed func(error) bool
}

type falWebhookInput struct {
	RequestID string `header:"X-Fal-Webhook-Request-Id" doc:"fal's request id."`
	UserID    string `header:"X-Fal-Webhook-User-Id" doc:"fal's user id."`
	Timestamp string `header:"X-Fal-Webhook-Timestamp" doc:"Unix seconds; accepted within 5 minutes of now."`
	Signature string `header:"X-Fal-Webhook-Signature" doc:"Hex Ed25519 signature over request id, user id, timestamp and the body's SHA-256, by a key of fal's JWKS."`
	RawBody   []byte
}

func (s *Server) registerFalWebhook() {
	huma.Register(s.api, huma.Operation{
		OperationID:   "fal-webhook",
		Method:        http.MethodPost,
		Path:          "/v1/fal/webhook",
		Summary:       "fal's completion callback",
		Description:   "fal calls it when a request submitted with FAL_WEBHOOK_URL ends. Verified with fal's Ed25519 signature; anything unsigned, forged, stale or replayed is refused with 401 and changes nothing. 404 when webhooks are not enabled.",
		Tags:          []string{tagFal},
		Security:      []map[string][]string{{}}, // fal signs its callbacks: no bearer token
		DefaultStatus: http.StatusNoContent,
		MaxBodyBytes:  MaxBodyBytes,
		Errors:        []int{http.StatusUnauthorized, http.StatusNotFound, http.StatusServiceUnavailable},
	}, s.falWebhook)
}

func (s *Server) falWebhook(ctx context.Context, in *falWebhookInput) (*struct{}, error) {
	if s.falHooks.Verifier == nil {
		return nil, newProblem(http.StatusNotFound, "fal webhooks are not enabled (FAL_WEBHOOK_URL)")
	}
	h := http.Header{}
	h.Set(falclient.HeaderWebhookRequestID, in.RequestID)
	h.Set(falclient.HeaderWebhookUserID, in.UserID)
	h.Set(falclient.HeaderWebhookTimestamp, in.Timestamp)
	h.Set(falclient.HeaderWebhookSignature, in.Signature)
	wh, err := s.falHooks.Verifier.Verify(h, in.RawBody)
	switch {
	case errors.Is(err, falclient.ErrWebhookKeys):
		s.logger.WarnContext(ctx, "fal webhook: fal's signing keys are unavailable", "error", err.Error())
		return nil, newProblem(http.StatusServiceUnavailable, "cannot verify the webhook now; retry").retryAfter(0)
	case err != nil:
		s.logger.WarnContext(ctx, "fal webhook refused", "error", err.Error())
		return nil, unauthorizedWebhook(err)
	}
	dbCtx, cancel := s.db(ctx)
	defer cancel()
	if err := s.falHooks.Accept(dbCtx, wh); err != nil {
		if s.falHooks.Replayed(err) {
			return nil, unauthorizedWebhook(err)
		}
		s.logger.ErrorContext(ctx, "fal webhook: could not take it in", "error", err.Error())
		return nil, newProblem(http.StatusServiceUnavailable, "the service is temporarily unavailable; fal retries").retryAfter(dbRetryAfter)
	}
	return nil, nil
}

func unauthorizedWebhook(err error) *Problem {
	return newProblem(http.StatusUnauthorized, "webhook refused: "+err.Error())
}
