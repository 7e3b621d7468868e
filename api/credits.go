package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/danielgtaylor/huma/v2"

	"github.com/aiqueue/aiqueue/ledger"
)

// CreditsBody is the caller's balance and latest journal entries.
type CreditsBody struct {
	Balance   int64          `json:"balance" doc:"Credits granted minus credits charged."`
	Reserved  int64          `json:"reserved" doc:"Credits held by unfinished jobs."`
	Available int64          `json:"available" doc:"balance - reserved: what new jobs can use."`
	Entries   []ledger.Entry `json:"entries" doc:"The latest journal entries, newest first."`
}

type creditsOutput struct{ Body CreditsBody }

// GrantBody is an admin grant.
type GrantBody struct {
	UserID string `json:"user_id" format:"uuid" doc:"The user to credit."`
	Amount int64  `json:"amount" minimum:"1" maximum:"1000000" doc:"Credits to add."`
	Reason string `json:"reason" minLength:"1" maxLength:"500" doc:"Why, for the journal."`
}

type grantInput struct {
	IdempotencyKey string `header:"Idempotency-Key" maxLength:"255" doc:"A retried grant with the same key adds nothing."`
	Body           GrantBody
}

type grantOutput struct {
	Status int
	Body   struct {
		Entry   ledger.Entry   `json:"entry"`
		Credits ledger.Balance `json:"credits"`
	}
}

func (s *Server) registerCredits() {
	huma.Register(s.api, huma.Operation{
		OperationID: "get-credits",
		Method:      http.MethodGet,
		Path:        "/v1/credits",
		Summary:     "Get my credits",
		Tags:        []string{tagCredits},
		Security:    bearer,
		Errors:      authErrors,
	}, s.getCredits)

	huma.Register(s.api, huma.Operation{
		OperationID:   "grant-credits",
		Method:        http.MethodPost,
		Path:          "/v1/admin/credits/grants",
		Summary:       "Grant credits to a user",
		Description:   "Admin only. Idempotent by Idempotency-Key.",
		Tags:          []string{tagAdmin},
		Security:      bearer,
		DefaultStatus: http.StatusCreated,
		Errors:        append([]int{http.StatusForbidden, http.StatusConflict, http.StatusUnprocessableEntity}, authErrors...),
	}, s.grantCredits)
}

func (s *Server) getCredits(ctx context.Context, _ *struct{}) (*creditsOutput, error) {
	uid := principalFrom(ctx).UserID
	b, err := ledger.Get(ctx, s.pool, uid)
	if err != nil {
		return nil, s.dbProblem(ctx, err)
	}
	entries, err := ledger.Entries(ctx, s.pool, uid, 20)
	if err != nil {
		return nil, s.dbProblem(ctx, err)
	}
	if entries == nil {
		entries = []ledger.Entry{}
	}
	return &creditsOutput{Body: CreditsBody{Balance: b.Balance, Reserved: b.Reserved, Available: b.Available, Entries: entries}}, nil
}

func (s *Server) grantCredits(ctx context.Context, in *grantInput) (*grantOutput, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, s.dbProblem(ctx, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	entry, created, err := ledger.Grant(ctx, tx, in.Body.UserID, in.Body.Amount, in.Body.Reason, in.IdempotencyKey)
	if errors.Is(err, ledger.ErrGrantConflict) {
		return nil, newProblem(http.StatusUnprocessableEntity, "Idempotency-Key "+strconv.Quote(in.IdempotencyKey)+" was used for a different grant")
	}
	if err != nil {
		return nil, s.dbProblem(ctx, err)
	}
	b, err := ledger.Get(ctx, tx, in.Body.UserID)
	if err != nil {
		return nil, s.dbProblem(ctx, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, s.dbProblem(ctx, err)
	}
	out := &grantOutput{Status: http.StatusCreated}
	if !created {
		out.Status = http.StatusOK
	}
	out.Body.Entry, out.Body.Credits = entry, b
	return out, nil
}
