package api

import (
	"context"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/aiqueue/aiqueue/webhooks"
)

// WebhookEndpoint is a registered webhook endpoint, without its secret.
type WebhookEndpoint webhooks.Endpoint

// WebhookEndpointBody is the body of POST /v1/admin/webhook-endpoints.
type WebhookEndpointBody struct {
	URL    string   `json:"url" minLength:"1" maxLength:"2048" doc:"Where to post the events: an https URL of a public host (any http or https URL with WEBHOOK_ALLOW_PRIVATE=true), without user name, password or fragment. The address a name resolves to is checked again at every delivery." example:"https://studio.example.com/hooks/aiqueue"`
	Events []string `json:"events" minItems:"1" maxItems:"4" uniqueItems:"true" enum:"job.succeeded,job.failed,job.cancelled,batch.completed" doc:"The events to receive." example:"[\"job.succeeded\",\"job.failed\",\"job.cancelled\",\"batch.completed\"]"`
}

// CreatedWebhookEndpoint is a new endpoint with its signing secret.
type CreatedWebhookEndpoint struct {
	WebhookEndpoint
	Secret string `json:"secret" doc:"The signing secret (whsec_ and the base64 of 32 random bytes) to verify the webhook-signature header with. Shown in this answer only: store it now." example:"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"`
}

// WebhookEndpointList is every registered endpoint.
type WebhookEndpointList struct {
	Endpoints []WebhookEndpoint `json:"endpoints"`
}

// WebhookDelivery is one event for one endpoint.
type WebhookDelivery webhooks.Delivery

// WebhookDeliveryList is a page of deliveries.
type WebhookDeliveryList struct {
	Deliveries []WebhookDelivery `json:"deliveries"`
	NextCursor string            `json:"next_cursor,omitempty" doc:"Pass as cursor for the next page; absent on the last page."`
}

type createWebhookEndpointInput struct {
	Body WebhookEndpointBody
}

type createWebhookEndpointOutput struct {
	Body CreatedWebhookEndpoint
}

type webhookEndpointIDInput struct {
	ID string `path:"id" maxLength:"40" doc:"The endpoint's id." example:"7d1c0a52-3b8e-4f7e-9a51-2f0c9b1e6d40"`
}

type webhookDeliveryIDInput struct {
	ID string `path:"id" maxLength:"40" doc:"The delivery's id." example:"42"`
}

type listWebhookDeliveriesInput struct {
	EndpointID string `query:"endpoint_id" maxLength:"40" doc:"Only deliveries to this endpoint."`
	JobID      string `query:"job_id" maxLength:"40" doc:"Only deliveries of this job's events."`
	State      string `query:"state" enum:"pending,delivered,failed" doc:"Only deliveries in this state."`
	Limit      int    `query:"limit" minimum:"1" maximum:"100" default:"20" doc:"Page size."`
	Cursor     string `query:"cursor" maxLength:"40" doc:"next_cursor of the previous page."`
}

func (s *Server) registerWebhooks() {
	huma.Register(s.api, huma.Operation{
		OperationID: "create-webhook-endpoint",
		Method:      http.MethodPost,
		Path:        "/v1/admin/webhook-endpoints",
		Summary:     "Register a webhook endpoint",
		Description: "Admin only. From now on, every event of the kinds listed (job.succeeded, job.failed, job.cancelled: a job " +
			"ended; batch.completed: every job of a batch ended) is posted to the URL, signed the Standard Webhooks way " +
			"(headers webhook-id, webhook-timestamp, webhook-signature), with the body {type, timestamp, data} where data is " +
			"the job as GET /v1/jobs/{id} shows it (the batch as GET /v1/batches/{id} for batch.completed); retried with " +
			"back-off for 24 hours until the endpoint answers 2xx. The answer carries the signing secret, which is never shown again.",
		Tags:          []string{tagAdmin},
		Security:      bearer,
		DefaultStatus: http.StatusCreated,
		MaxBodyBytes:  MaxBodyBytes + 1,
		Errors: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden,
			http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusServiceUnavailable},
	}, s.createWebhookEndpoint)

	huma.Register(s.api, huma.Operation{
		OperationID: "list-webhook-endpoints",
		Method:      http.MethodGet,
		Path:        "/v1/admin/webhook-endpoints",
		Summary:     "List the webhook endpoints",
		Description: "Admin only. Every registered endpoint, oldest first, without its secret.",
		Tags:        []string{tagAdmin},
		Security:    bearer,
		Errors:      []int{http.StatusUnauthorized, http.StatusForbidden, http.StatusServiceUnavailable},
	}, s.listWebhookEndpoints)

	huma.Register(s.api, huma.Operation{
		OperationID:   "delete-webhook-endpoint",
		Method:        http.MethodDelete,
		Path:          "/v1/admin/webhook-endpoints/{id}",
		Summary:       "Delete a webhook endpoint",
		Description:   "Admin only. No event is posted to the endpoint any more; its deliveries, pending ones included, are deleted with it.",
		Tags:          []string{tagAdmin},
		Security:      bearer,
		DefaultStatus: http.StatusNoContent,
		Errors:        []int{http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusServiceUnavailable},
	}, s.deleteWebhookEndpoint)

	huma.Register(s.api, huma.Operation{
		OperationID: "list-webhook-deliveries",
		Method:      http.MethodGet,
		Path:        "/v1/admin/webhook-deliveries",
		Summary:     "List webhook deliveries",
		Description: "Admin only. Deliveries newest first, filtered by endpoint, job or state; follow next_cursor for the next page. " +
			"The SQL view webhook_deliveries shows the same.",
		Tags:     []string{tagAdmin},
		Security: bearer,
		Errors:   []int{http.StatusUnauthorized, http.StatusForbidden, http.StatusServiceUnavailable},
	}, s.listWebhookDeliveries)

	huma.Register(s.api, huma.Operation{
		OperationID: "replay-webhook-delivery",
		Method:      http.MethodPost,
		Path:        "/v1/admin/webhook-deliveries/{id}/replay",
		Summary:     "Send a webhook delivery again",
		Description: "Admin only. Puts a delivered or failed delivery back in line: the same event (same webhook-id and body) is " +
			"posted again at once and retried for 24 hours from now until a 2xx. A pending delivery is already on its way: 409.",
		Tags:          []string{tagAdmin},
		Security:      bearer,
		DefaultStatus: http.StatusAccepted,
		Errors: []int{http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusConflict,
			http.StatusServiceUnavailable},
	}, s.replayWebhookDelivery)
}

func (s *Server) createWebhookEndpoint(ctx context.Context, in *createWebhookEndpointInput) (*createWebhookEndpointOutput, error) {
	dbCtx, cancel := s.db(ctx)
	defer cancel()
	e, secret, err := webhooks.Create(dbCtx, s.pool, in.Body.URL, in.Body.Events, s.webhookAllowPrivate)
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	return &createWebhookEndpointOutput{Body: CreatedWebhookEndpoint{WebhookEndpoint: WebhookEndpoint(*e), Secret: secret}}, nil
}

func (s *Server) listWebhookEndpoints(ctx context.Context, _ *struct{}) (*struct{ Body WebhookEndpointList }, error) {
	dbCtx, cancel := s.db(ctx)
	defer cancel()
	list, err := webhooks.List(dbCtx, s.pool)
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	out := &struct{ Body WebhookEndpointList }{Body: WebhookEndpointList{Endpoints: make([]WebhookEndpoint, 0, len(list))}}
	for _, e := range list {
		out.Body.Endpoints = append(out.Body.Endpoints, WebhookEndpoint(e))
	}
	return out, nil
}

func (s *Server) deleteWebhookEndpoint(ctx context.Context, in *webhookEndpointIDInput) (*struct{}, error) {
	dbCtx, cancel := s.db(ctx)
	defer cancel()
	if err := webhooks.Delete(dbCtx, s.pool, in.ID); err != nil {
		return nil, s.toProblem(ctx, err)
	}
	return nil, nil
}

func (s *Server) listWebhookDeliveries(ctx context.Context, in *listWebhookDeliveriesInput) (*struct{ Body WebhookDeliveryList }, error) {
	dbCtx, cancel := s.db(ctx)
	defer cancel()
	list, next, err := webhooks.ListDeliveries(dbCtx, s.pool, webhooks.DeliveryFilter{
		EndpointID: in.EndpointID, JobID: in.JobID, State: in.State, Limit: in.Limit, Cursor: in.Cursor})
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	out := &struct{ Body WebhookDeliveryList }{Body: WebhookDeliveryList{Deliveries: make([]WebhookDelivery, 0, len(list)), NextCursor: next}}
	for _, d := range list {
		out.Body.Deliveries = append(out.Body.Deliveries, WebhookDelivery(d))
	}
	return out, nil
}

func (s *Server) replayWebhookDelivery(ctx context.Context, in *webhookDeliveryIDInput) (*struct{ Body *WebhookDelivery }, error) {
	dbCtx, cancel := s.db(ctx)
	defer cancel()
	d, err := webhooks.Replay(dbCtx, s.pool, in.ID)
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	w := WebhookDelivery(*d)
	return &struct{ Body *WebhookDelivery }{Body: &w}, nil
}
