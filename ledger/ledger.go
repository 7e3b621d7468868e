// Package ledger keeps users' credits in Postgres: accounts, holds (one per
// run of a job) and an append-only journal. Reservation and settlement run
// in SQL, in triggers on river_job: inserting an AI job reserves its cost in
// the same statement (AsInsufficient), an admin retrying a failed or
// cancelled job reserves it again for the new run (or is refused:
// AsInsufficient, IsSucceededRerun), and a job reaching its final state
// charges or refunds its run's hold (credit_settle) in the transaction that
// moves it there, whatever moves it.
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

// Querier is what read functions need: a pool, a connection or a
// transaction.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Hold states.
const (
	HoldReserved = "reserved"
	HoldCharged  = "charged"
	HoldRefunded = "refunded"
)

// Entry kinds of the journal.
const (
	KindGrant   = "grant"
	KindReserve = "reserve"
	KindCharge  = "charge"
	KindRefund  = "refund"
)

// InsufficientError is an AI job insert, or a retry of a finished AI job,
// refused because the account cannot cover the cost (see AsInsufficient).
// Nothing has been written.
type InsufficientError struct {
	Needed    int64
	Available int64
}

func (e *InsufficientError) Error() string {
	return fmt.Sprintf("not enough credits: needed %d, available %d", e.Needed, e.Available)
}

// ErrGrantConflict is returned by Grant when its idempotency key was used
// before for a different grant.
var ErrGrantConflict = errors.New("idempotency key already used for a different grant")

// SQLSTATEs of the ledger's triggers (migrations/sql/00003_ledger.sql):
// insufficientCode fails an AI job insert or retry the account cannot cover;
// succeededCode fails a retry of a succeeded job.
const (
	insufficientCode = "AQ402"
	succeededCode    = "AQ409"
)

// IsSucceededRerun reports whether err is a retry of a succeeded AI job
// (River's JobRetry, River UI's Retry), which the database refuses: its run
// was charged, and a new job is the way to another result. Nothing has been
// written.
func IsSucceededRerun(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == succeededCode
}

// AsInsufficient reports whether err is an AI job insert, or a retry of a
// finished AI job, refused because the user cannot cover its cost, and
// returns it as *InsufficientError.
//
// Credits are reserved by the insert itself: a trigger on river_job moves the
// cost of every AI job a statement inserts (args.user_id, args.cost) from the
// user's available credits to reserved and records one hold and one reserve
// entry per job, or fails the whole statement, writing nothing, when the
// account cannot cover the total. Inserting the job in the caller's
// transaction is therefore the reservation. Retrying a failed or cancelled
// job (River's JobRetryTx) reserves its cost again, for its next run, the
// same way.
func AsInsufficient(err error) (*InsufficientError, bool) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != insufficientCode {
		return nil, false
	}
	var d struct {
		Needed    int64 `json:"needed"`
		Available int64 `json:"available"`
	}
	// Anything but the trigger's detail is left as a database error.
	ok := json.Unmarshal([]byte(pgErr.Detail), &d) == nil
	return &InsufficientError{Needed: d.Needed, Available: d.Available}, ok
}

// Settle settles the open hold of a job: it charges it when charge is true
// and refunds it otherwise. It reports the hold's new state, or "" when the
// hold was not open (already settled, or no hold), so calling it twice is
// harmless. River job state changes settle holds by themselves (a trigger
// calls the same SQL function); Settle is for holds whose job is gone.
func Settle(ctx context.Context, tx pgx.Tx, jobID int64, charge bool) (string, error) {
	var state *string
	if err := tx.QueryRow(ctx, `SELECT credit_settle($1, $2)`, jobID, charge).Scan(&state); err != nil {
		return "", fmt.Errorf("settle job %d: %w", jobID, err)
	}
	if state == nil {
		return "", nil
	}
	return *state, nil
}

// Entry is one row of the journal.
type Entry struct {
	ID        int64     `json:"id"`
	UserID    string    `json:"user_id"`
	Kind      string    `json:"kind"`
	Amount    int64     `json:"amount"`
	JobID     *int64    `json:"job_id,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// Grant adds amount credits to the user's available credits, creating the account when
// needed. With a non-empty idempotency key, a second call with the same key
// and the same user, amount and reason returns the first grant's entry and
// adds nothing (created is false); the same key with anything else returns
// ErrGrantConflict. Concurrent calls with one key wait for each other on the
// key's unique index, so exactly one of them grants.
func Grant(ctx context.Context, tx pgx.Tx, userID string, amount int64, reason, idempotencyKey string) (entry Entry, created bool, err error) {
	if amount <= 0 {
		return Entry{}, false, fmt.Errorf("grant amount must be positive, got %d", amount)
	}
	var key *string
	if idempotencyKey != "" {
		key = &idempotencyKey
	}
	row := tx.QueryRow(ctx, `
INSERT INTO credit_entries (user_id, kind, amount, reason, idempotency_key)
VALUES ($1, 'grant', $2, NULLIF($3, ''), $4)
ON CONFLICT (idempotency_key) WHERE kind = 'grant' AND idempotency_key IS NOT NULL DO NOTHING
RETURNING `+entryColumns, userID, amount, reason, key)
	entry, err = scanEntry(row)
	if errors.Is(err, pgx.ErrNoRows) {
		// The key was used before: replay that grant if it is this one.
		var same bool
		err = tx.QueryRow(ctx, `
SELECT `+entryColumns+`, user_id = $2::uuid AND amount = $3 AND COALESCE(reason, '') = $4
  FROM credit_entries WHERE kind = 'grant' AND idempotency_key = $1`, idempotencyKey, userID, amount, reason).
			Scan(&entry.ID, &entry.UserID, &entry.Kind, &entry.Amount, &entry.JobID, &entry.Reason, &entry.CreatedAt, &same)
		if err != nil {
			return Entry{}, false, fmt.Errorf("grant: %w", err)
		}
		if !same {
			return Entry{}, false, ErrGrantConflict
		}
		return entry, false, nil
	}
	if err != nil {
		return Entry{}, false, fmt.Errorf("grant: %w", err)
	}
	_, err = tx.Exec(ctx, `
INSERT INTO credit_accounts (user_id, available) VALUES ($1, $2)
ON CONFLICT (user_id) DO UPDATE SET available = credit_accounts.available + EXCLUDED.available`, userID, amount)
	if err != nil {
		return Entry{}, false, fmt.Errorf("grant: %w", err)
	}
	return entry, true, nil
}

const entryColumns = `id, user_id::text, kind, amount, job_id, COALESCE(reason, ''), created_at`

func scanEntry(row pgx.Row) (Entry, error) {
	var e Entry
	err := row.Scan(&e.ID, &e.UserID, &e.Kind, &e.Amount, &e.JobID, &e.Reason, &e.CreatedAt)
	return e, err
}

// Balance is a user's account.
type Balance struct {
	Balance   int64 `json:"balance"`
	Reserved  int64 `json:"reserved"`
	Available int64 `json:"available"`
}

// Get returns the user's balance; a user without an account has zeros.
func Get(ctx context.Context, q Querier, userID string) (Balance, error) {
	var b Balance
	err := q.QueryRow(ctx, `SELECT balance, reserved, available FROM credit_balances WHERE user_id = $1`, userID).
		Scan(&b.Balance, &b.Reserved, &b.Available)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return Balance{}, fmt.Errorf("balance: %w", err)
	}
	return b, nil
}

// Entries returns the user's latest journal entries, newest first.
func Entries(ctx context.Context, q Querier, userID string, limit int) ([]Entry, error) {
	rows, err := q.Query(ctx, `
SELECT `+entryColumns+`
  FROM credit_entries WHERE user_id = $1 ORDER BY id DESC LIMIT $2`, userID, limit)
	if err != nil {
		return nil, fmt.Errorf("entries: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Entry, error) { return scanEntry(r) })
}
