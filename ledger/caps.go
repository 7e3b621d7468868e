package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Spend periods of a cap. Periods are UTC: a day starts at 00:00, a month
// on the 1st.
const (
	PeriodDay   = "day"
	PeriodMonth = "month"
)

// capCode is the SQLSTATE of a reservation refused by a spend cap
// (migrations/sql/00003_ledger.sql).
const capCode = "AQCAP"

// CapError is an AI job insert refused because it would take the user's
// spend of a period past their cap (see AsCapExceeded). Nothing has been
// written.
type CapError struct {
	// Period is PeriodDay or PeriodMonth: the monthly cap when both are
	// passed.
	Period string
	// Cap is the user's cap of the period, in credits.
	Cap int64
	// Spent is what the user has spent in the period so far.
	Spent int64
	// Needed is what the refused submission would have reserved.
	Needed int64
	// ResetsAt is when the period ends and its spend starts again at 0.
	ResetsAt time.Time
}

func (e *CapError) Error() string {
	what := "daily"
	if e.Period == PeriodMonth {
		what = "monthly"
	}
	return fmt.Sprintf("%s spend cap reached: cap %d, spent %d, needed %d; resets at %s",
		what, e.Cap, e.Spent, e.Needed, e.ResetsAt.UTC().Format(time.RFC3339))
}

// AsCapExceeded reports whether err is an AI job insert refused by a spend
// cap, and returns it as *CapError.
//
// The reservation (see AsInsufficient) also counts what it reserves in the
// user's spend of the day and of the month, in the same update of the
// account row, and refuses the whole statement when that would pass a cap
// of the user (their own, or the default: SetCapDefaults). The account's
// row lock serializes a user's submissions, so concurrent submissions never
// pass a cap together. A cap is checked before the credits: a user over a
// cap gets this error even without the credits.
func AsCapExceeded(err error) (*CapError, bool) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != capCode {
		return nil, false
	}
	var d struct {
		Period   string    `json:"period"`
		Cap      int64     `json:"cap"`
		Spent    int64     `json:"spent"`
		Needed   int64     `json:"needed"`
		ResetsAt time.Time `json:"resets_at"`
	}
	// Anything but the trigger's detail is left as a database error.
	ok := json.Unmarshal([]byte(pgErr.Detail), &d) == nil
	return &CapError{Period: d.Period, Cap: d.Cap, Spent: d.Spent, Needed: d.Needed, ResetsAt: d.ResetsAt}, ok
}

// Caps are a user's spend caps and what they spent.
type Caps struct {
	Daily   Cap `json:"daily" doc:"The cap of the UTC day."`
	Monthly Cap `json:"monthly" doc:"The cap of the UTC month."`
}

// Cap is one period's cap and spend.
type Cap struct {
	// Cap is the most the user may reserve in the period, nil for no cap.
	Cap *int64 `json:"cap,omitempty" minimum:"0" doc:"Credits the user may reserve in the period (submissions, and admins' retries, less refunds); absent: no cap. 0: nothing may be submitted."`
	// Default is true when Cap is the server's default, not the user's own.
	Default bool `json:"default" doc:"true: the server's default applies (SPEND_CAP_DAILY, SPEND_CAP_MONTHLY); false: the user has a cap of their own."`
	// Spent is what the user reserved in the period, less refunds.
	Spent int64 `json:"spent" doc:"Credits reserved in the period, less what was refunded: charged and still reserved."`
	// Remaining is Cap - Spent, at least 0; nil without a cap.
	Remaining *int64 `json:"remaining,omitempty" minimum:"0" doc:"What can still be reserved in the period (cap - spent, at least 0); absent without a cap."`
	// ResetsAt is when the period ends.
	ResetsAt time.Time `json:"resets_at" doc:"When the period ends and its spend starts again at 0 (00:00 UTC; for the month, of the 1st)."`
}

// CapLimits are caps to set, in credits: nil for the default, 0 for no
// spending at all.
type CapLimits struct {
	Daily   *int64
	Monthly *int64
}

// SetCapDefaults records the caps of users without caps of their own (nil:
// no cap), for every process: the last call decides.
func SetCapDefaults(ctx context.Context, q Querier, daily, monthly *int64) error {
	_, err := q.Exec(ctx, `
INSERT INTO spend_cap_defaults (only_row, daily, monthly) VALUES (true, $1, $2)
ON CONFLICT (only_row) DO UPDATE SET daily = EXCLUDED.daily, monthly = EXCLUDED.monthly, updated_at = now()`, daily, monthly)
	if err != nil {
		return fmt.Errorf("set spend cap defaults: %w", err)
	}
	return nil
}

// SetCaps sets the user's own caps (nil: the default), creating the
// account when needed. The next reservation is checked against them; what
// the user already spent stays counted.
func SetCaps(ctx context.Context, tx pgx.Tx, userID string, l CapLimits) error {
	_, err := tx.Exec(ctx, `
INSERT INTO credit_accounts (user_id, daily_cap, monthly_cap) VALUES ($1, $2, $3)
ON CONFLICT (user_id) DO UPDATE SET daily_cap = EXCLUDED.daily_cap, monthly_cap = EXCLUDED.monthly_cap`, userID, l.Daily, l.Monthly)
	if err != nil {
		return fmt.Errorf("set spend caps: %w", err)
	}
	return nil
}

// GetCaps returns the user's caps (their own or the defaults) and their
// spend in the current periods; a user without an account has spent
// nothing.
func GetCaps(ctx context.Context, q Querier, userID string) (Caps, error) {
	var own, def [2]*int64
	var spent [2]int64
	var resets [2]time.Time
	err := q.QueryRow(ctx, `
WITH p AS (
    SELECT (now() AT TIME ZONE 'UTC')::date AS day, date_trunc('month', now() AT TIME ZONE 'UTC')::date AS month
)
SELECT a.daily_cap, a.monthly_cap, d.daily, d.monthly,
       COALESCE(spend_in(a.spent_day, a.spent_day_of, p.day), 0),
       COALESCE(spend_in(a.spent_month, a.spent_month_of, p.month), 0),
       (p.day + 1)::timestamp AT TIME ZONE 'UTC',
       (p.month + interval '1 month') AT TIME ZONE 'UTC'
  FROM p
  LEFT JOIN credit_accounts a ON a.user_id = $1
  LEFT JOIN spend_cap_defaults d ON true`, userID).
		Scan(&own[0], &own[1], &def[0], &def[1], &spent[0], &spent[1], &resets[0], &resets[1])
	if err != nil {
		return Caps{}, fmt.Errorf("spend caps: %w", err)
	}
	var out [2]Cap
	for i := range out {
		c := Cap{Cap: own[i], Spent: spent[i], ResetsAt: resets[i].UTC()}
		if c.Cap == nil {
			c.Cap, c.Default = def[i], true
		}
		if c.Cap != nil {
			left := max(*c.Cap-c.Spent, 0)
			c.Remaining = &left
		}
		out[i] = c
	}
	return Caps{Daily: out[0], Monthly: out[1]}, nil
}
