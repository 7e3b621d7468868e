package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/jackc/pgx/v5"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// CreditsBody is the caller's balance and latest journal entries.
type CreditsBody struct {
	Balance   int64         `json:"balance" doc:"Credits granted minus credits charged."`
	Reserved  int64         `json:"reserved" doc:"Credits held by unfinished jobs."`
	Available int64         `json:"available" doc:"balance - reserved: what new jobs can use."`
	Caps      ledger.Caps   `json:"caps" doc:"The user's daily and monthly spend caps, what was spent in each period and when it resets: a submission that would pass a cap is refused (402 spend_cap_exceeded)."`
	Entries   []CreditEntry `json:"entries" doc:"The latest journal entries, newest first."`
}

// CreditEntry is one journal entry as the API shows it: the job it is about
// is named by its API id (a string, like the job's own id).
type CreditEntry struct {
	ID        int64     `json:"id" doc:"Entry id, increasing."`
	Kind      string    `json:"kind" enum:"grant,reserve,charge,refund" doc:"grant adds to balance; reserve holds credits for a job; charge takes them; refund returns them."`
	Amount    int64     `json:"amount" doc:"Credits, always positive."`
	JobID     string    `json:"job_id,omitempty" doc:"The job of a reserve, charge or refund."`
	Reason    string    `json:"reason,omitempty" doc:"Why a grant was made."`
	CreatedAt time.Time `json:"created_at"`
}

func creditEntry(e ledger.Entry) CreditEntry {
	ce := CreditEntry{ID: e.ID, Kind: e.Kind, Amount: e.Amount, Reason: e.Reason, CreatedAt: e.CreatedAt}
	if e.JobID != nil {
		ce.JobID = jobs.FormatID(*e.JobID)
	}
	return ce
}

type creditsOutput struct{ Body CreditsBody }

// GrantBody is an admin grant.
type GrantBody struct {
	UserID string `json:"user_id" format:"uuid" doc:"The user to credit."`
	Amount int64  `json:"amount" minimum:"1" maximum:"1000000" doc:"Credits to add."`
	Reason string `json:"reason" minLength:"1" maxLength:"500" doc:"Why, for the journal."`
}

type grantInput struct {
	IdempotencyKey string `header:"Idempotency-Key" minLength:"1" maxLength:"255" doc:"A retried grant with the same key and body adds nothing and gets the first response again (for 24 hours; the journal keeps refusing a second grant with the key after that); the same key with another body is refused (422), and 409 while the first request is still running." example:"grant-2026-11-ring-promo"`
	Body           GrantBody
}

// GrantResult is the journal entry of a grant and the user's credits after it.
type GrantResult struct {
	Entry   CreditEntry    `json:"entry" doc:"The grant's journal entry (the first one's, when replayed)."`
	Credits ledger.Balance `json:"credits" doc:"The user's credits after the grant."`
}

type grantOutput struct {
	Status   int
	Replayed string `header:"Idempotent-Replayed" doc:"true when this is the stored response to an earlier request with the same Idempotency-Key."`
	Body     GrantResult
}

// CapsBody sets a user's spend caps.
type CapsBody struct {
	Daily   *int64 `json:"daily,omitempty" nullable:"true" minimum:"0" maximum:"1000000000" doc:"Credits the user may reserve per UTC day; null or absent: the default (SPEND_CAP_DAILY); 0: no spending at all." example:"200"`
	Monthly *int64 `json:"monthly,omitempty" nullable:"true" minimum:"0" maximum:"1000000000" doc:"Credits the user may reserve per UTC month; null or absent: the default (SPEND_CAP_MONTHLY); 0: no spending at all." example:"3000"`
}

type setCapsInput struct {
	ID   string `path:"id" format:"uuid" doc:"The user's id (the token's sub)." example:"00000000-0000-4000-8000-000000000001"`
	Body CapsBody
}

type userIDInput struct {
	ID string `path:"id" format:"uuid" doc:"The user's id (the token's sub)." example:"00000000-0000-4000-8000-000000000001"`
}

// UserCaps are a user's spend caps as an admin sees them.
type UserCaps struct {
	UserID string `json:"user_id" format:"uuid" doc:"The user."`
	ledger.Caps
}

type userCapsOutput struct{ Body UserCaps }

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
		Description:   "Admin only (role service_role, or app_metadata.role admin). Adds credits to a user's balance, creating the account when needed; 201 for a new grant, 200 when the journal already holds a grant with this Idempotency-Key. Idempotent by Idempotency-Key.",
		Tags:          []string{tagAdmin},
		Security:      bearer,
		DefaultStatus: http.StatusCreated,
		MaxBodyBytes:  MaxBodyBytes + 1,
		Errors: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusConflict,
			http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusServiceUnavailable},
	}, s.grantCredits)

	huma.Register(s.api, huma.Operation{
		OperationID: "set-user-caps",
		Method:      http.MethodPost,
		Path:        "/v1/admin/users/{id}/caps",
		Summary:     "Set a user's spend caps",
		Description: "Admin only. Sets the user's daily and monthly spend caps in credits, creating the account when needed: null or " +
			"absent is the server's default (SPEND_CAP_DAILY, SPEND_CAP_MONTHLY), 0 allows no spending at all. A user's spend in a " +
			"period (UTC day, UTC month) is what their submissions reserved in it, less refunds; a submission that would pass a cap " +
			"is refused with 402 spend_cap_exceeded. The answer is the caps as GET says them. Setting the same caps again changes nothing.",
		Tags:         []string{tagAdmin},
		Security:     bearer,
		MaxBodyBytes: MaxBodyBytes + 1,
		Errors: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden,
			http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusServiceUnavailable},
	}, s.setUserCaps)

	huma.Register(s.api, huma.Operation{
		OperationID: "get-user-caps",
		Method:      http.MethodGet,
		Path:        "/v1/admin/users/{id}/caps",
		Summary:     "Get a user's spend caps",
		Description: "Admin only. The user's daily and monthly spend caps (their own, or the default), what they spent in each period and when it resets.",
		Tags:        []string{tagAdmin},
		Security:    bearer,
		Errors:      []int{http.StatusUnauthorized, http.StatusForbidden, http.StatusServiceUnavailable},
	}, s.getUserCaps)
}

func (s *Server) setUserCaps(ctx context.Context, in *setCapsInput) (*userCapsOutput, error) {
	dbCtx, cancel := s.db(ctx)
	defer cancel()
	tx, err := s.pool.Begin(dbCtx)
	if err != nil {
		return nil, s.dbProblem(ctx, err)
	}
	defer tx.Rollback(dbCtx) //nolint:errcheck // no-op after commit
	if err := ledger.SetCaps(dbCtx, tx, in.ID, ledger.CapLimits{Daily: in.Body.Daily, Monthly: in.Body.Monthly}); err != nil {
		return nil, s.dbProblem(ctx, err)
	}
	caps, err := ledger.GetCaps(dbCtx, tx, in.ID)
	if err != nil {
		return nil, s.dbProblem(ctx, err)
	}
	if err := tx.Commit(dbCtx); err != nil {
		return nil, s.dbProblem(ctx, err)
	}
	return &userCapsOutput{Body: UserCaps{UserID: in.ID, Caps: caps}}, nil
}

func (s *Server) getUserCaps(ctx context.Context, in *userIDInput) (*userCapsOutput, error) {
	dbCtx, cancel := s.db(ctx)
	defer cancel()
	caps, err := ledger.GetCaps(dbCtx, s.pool, in.ID)
	if err != nil {
		return nil, s.dbProblem(ctx, err)
	}
	return &userCapsOutput{Body: UserCaps{UserID: in.ID, Caps: caps}}, nil
}

func (s *Server) getCredits(ctx context.Context, _ *struct{}) (*creditsOutput, error) {
	uid := principalFrom(ctx).UserID
	dbCtx, cancel := s.db(ctx)
	defer cancel()
	b, err := ledger.Get(dbCtx, s.pool, uid)
	if err != nil {
		return nil, s.dbProblem(ctx, err)
	}
	entries, err := ledger.Entries(dbCtx, s.pool, uid, 20)
	if err != nil {
		return nil, s.dbProblem(ctx, err)
	}
	caps, err := ledger.GetCaps(dbCtx, s.pool, uid)
	if err != nil {
		return nil, s.dbProblem(ctx, err)
	}
	out := &creditsOutput{Body: CreditsBody{Balance: b.Balance, Reserved: b.Reserved, Available: b.Available, Caps: caps,
		Entries: make([]CreditEntry, 0, len(entries))}}
	for _, e := range entries {
		out.Body.Entries = append(out.Body.Entries, creditEntry(e))
	}
	return out, nil
}

func (s *Server) grantCredits(ctx context.Context, in *grantInput) (*grantOutput, error) {
	p := principalFrom(ctx)
	w, err := inTx(ctx, s, p.UserID, in.IdempotencyKey, http.MethodPost, "/v1/admin/credits/grants", in.Body,
		func(ctx context.Context, tx pgx.Tx) (written[GrantResult], error) {
			// The journal's own key makes the grant idempotent across
			// admins and beyond the 24 hours of the API's record.
			entry, created, err := ledger.Grant(ctx, tx, in.Body.UserID, in.Body.Amount, in.Body.Reason, in.IdempotencyKey)
			if errors.Is(err, ledger.ErrGrantConflict) {
				return written[GrantResult]{}, newProblem(http.StatusUnprocessableEntity, "Idempotency-Key "+strconv.Quote(in.IdempotencyKey)+" was used for a different grant")
			}
			if err != nil {
				return written[GrantResult]{}, s.dbProblem(ctx, err)
			}
			b, err := ledger.Get(ctx, tx, in.Body.UserID)
			if err != nil {
				return written[GrantResult]{}, s.dbProblem(ctx, err)
			}
			status := http.StatusCreated
			if !created {
				status = http.StatusOK
			}
			return written[GrantResult]{Status: status, Body: GrantResult{Entry: creditEntry(entry), Credits: b}}, nil
		})
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	return &grantOutput{Status: w.Status, Replayed: w.replayedHeader(), Body: w.Body}, nil
}
