package api

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/danielgtaylor/huma/v2"
	"github.com/jackc/pgx/v5"

	"github.com/aiqueue/aiqueue/jobs"
)

// BatchItem is one job of a batch.
type BatchItem struct {
	Operation string          `json:"operation"`
	Params    json.RawMessage `json:"params"`
}

// BatchBody is the body of POST /v1/batches. Its schema in the document
// (and for validation) is BatchRequest.
type BatchBody struct {
	Items    []BatchItem `json:"items"`
	Priority string      `json:"priority,omitempty"`
}

type submitBatchInput struct {
	IdempotencyKey string `header:"Idempotency-Key" minLength:"1" maxLength:"255" doc:"Makes a retry safe: the first response to this key and body is returned again for 24 hours without creating anything; the same key with another body is refused (422), and 409 while the first request is still running." example:"3f7c2a1e-batch-7"`
	Body           BatchBody
}

type submitBatchOutput struct {
	Location string `header:"Location" doc:"URL of the batch."`
	Replayed string `header:"Idempotent-Replayed" doc:"true when this is the stored response to an earlier request with the same Idempotency-Key."`
	Body     *jobs.Batch
}

type batchOutput struct {
	Body *jobs.Batch
}

type batchIDInput struct {
	ID string `path:"id" doc:"Batch id." maxLength:"40" example:"0b9e6c1e-1b7e-4c39-9a3e-2f1d0c7a5e11"`
}

func (s *Server) registerBatches(body *huma.Schema) {
	huma.Register(s.api, huma.Operation{
		OperationID: "submit-batch",
		Method:      http.MethodPost,
		Path:        "/v1/batches",
		Summary:     "Submit a batch of jobs",
		Description: "Validates 1-100 items (every error listed, located by item), then reserves the total cost and queues every job " +
			"in one transaction: all of them or none (402 names the shortfall). The batch takes one rate-limit token; the " +
			"pending-job cap and queue caps count every item.",
		Tags:          []string{tagBatches},
		Security:      bearer,
		DefaultStatus: http.StatusAccepted,
		MaxBodyBytes:  MaxBodyBytes + 1,
		RequestBody: &huma.RequestBody{Required: true, Content: map[string]*huma.MediaType{
			"application/json": {Schema: body},
		}},
		Errors: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusPaymentRequired, http.StatusConflict,
			http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusTooManyRequests, http.StatusServiceUnavailable},
	}, s.submitBatch)

	huma.Register(s.api, huma.Operation{
		OperationID: "get-batch",
		Method:      http.MethodGet,
		Path:        "/v1/batches/{id}",
		Summary:     "Get a batch",
		Description: "The caller's batch: its jobs counted per state, and their ids in item order. List the jobs themselves with GET /v1/jobs?batch_id=.",
		Tags:        []string{tagBatches},
		Security:    bearer,
		Errors:      []int{http.StatusUnauthorized, http.StatusNotFound, http.StatusServiceUnavailable},
	}, s.getBatch)
}

func (s *Server) submitBatch(ctx context.Context, in *submitBatchInput) (*submitBatchOutput, error) {
	p := principalFrom(ctx)
	items := make([]jobs.Item, len(in.Body.Items))
	for i, it := range in.Body.Items {
		items[i] = jobs.Item{Operation: it.Operation, Params: it.Params}
	}
	w, err := inTx(ctx, s, p.UserID, in.IdempotencyKey, http.MethodPost, "/v1/batches", in.Body,
		func(ctx context.Context, tx pgx.Tx) (written[*jobs.Batch], error) {
			b, sub, err := s.jobs.SubmitBatchTx(ctx, tx, p.UserID, items, jobs.SubmitOpts{Priority: in.Body.Priority, MayRaise: p.Admin})
			if err != nil {
				return written[*jobs.Batch]{}, err
			}
			return written[*jobs.Batch]{Status: http.StatusAccepted, Location: "/v1/batches/" + b.ID, Body: b, committed: sub.Committed}, nil
		})
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	return &submitBatchOutput{Location: w.Location, Replayed: w.replayedHeader(), Body: w.Body}, nil
}

func (s *Server) getBatch(ctx context.Context, in *batchIDInput) (*batchOutput, error) {
	dbCtx, cancel := s.db(ctx)
	defer cancel()
	b, err := s.jobs.GetBatch(dbCtx, principalFrom(ctx).UserID, in.ID)
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	return &batchOutput{Body: b}, nil
}
