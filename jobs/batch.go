package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// MaxBatchItems bounds the items of one batch.
const MaxBatchItems = 100

// Batch is a group of jobs submitted together.
type Batch struct {
	ID        string    `json:"id" doc:"Opaque batch id." example:"0b9e6c1e-1b7e-4c39-9a3e-2f1d0c7a5e11"`
	Priority  string    `json:"priority,omitempty" doc:"The queue override of the batch, when one was given." enum:"urgent,normal,background"`
	CreatedAt time.Time `json:"created_at"`
	Total     int       `json:"total" doc:"Number of jobs." example:"3"`
	// Counts has one entry per API state (zero included).
	Counts BatchCounts `json:"counts" doc:"Jobs per state."`
	// Done is true when every job is in a final state.
	Done   bool     `json:"done" doc:"Every job reached a final state."`
	JobIDs []string `json:"job_ids" doc:"Job ids in item order." example:"[\"101\",\"102\",\"103\"]"`
}

// BatchCounts counts a batch's jobs per API state.
type BatchCounts struct {
	Queued    int `json:"queued"`
	Running   int `json:"running"`
	Succeeded int `json:"succeeded"`
	Failed    int `json:"failed"`
	Cancelled int `json:"cancelled"`
}

// SubmitBatchTx validates items, makes the admission checks once (a batch
// takes one rate-limit token), inserts every job with one InsertManyTx,
// reserves their total cost and records the batch, all in the caller's
// transaction. Any error leaves the caller to roll back: all or nothing;
// after its commit the caller calls the Submission's Committed. Of opts,
// Priority, MayRaise and StartBy are used, for every item.
func (s *Service) SubmitBatchTx(ctx context.Context, tx pgx.Tx, userID string, items []Item, opts SubmitOpts) (*Batch, *Submission, error) {
	if len(items) == 0 || len(items) > MaxBatchItems {
		return nil, nil, &Error{Code: EINVALID, Message: fmt.Sprintf("a batch has 1 to %d items", MaxBatchItems), Fields: []FieldError{
			{Location: "body.items", Message: fmt.Sprintf("must have 1 to %d items", MaxBatchItems), Value: len(items)}}}
	}
	id := uuid.NewString()
	priority := opts.Priority
	sub, err := s.SubmitTx(ctx, tx, userID, items, SubmitOpts{BatchID: id, Priority: priority, MayRaise: opts.MayRaise, Batch: true, StartBy: opts.StartBy})
	if err != nil {
		return nil, nil, err
	}
	ids := sub.IDs
	var prio *string
	if priority != "" {
		prio = &priority
	}
	var created time.Time
	err = tx.QueryRow(ctx, `INSERT INTO batches (id, user_id, job_ids, priority) VALUES ($1, $2, $3, $4) RETURNING created_at`,
		id, userID, ids, prio).Scan(&created)
	if err != nil {
		return nil, nil, unavailable(fmt.Errorf("insert batch: %w", err))
	}
	// Nothing else sees the jobs before commit: every one is queued.
	b := newBatch(id, priority, created, ids)
	b.Counts.Queued = len(ids)
	return b, sub, nil
}

// GetBatch returns the user's batch with its counts, or ENOTFOUND when it
// does not exist or belongs to someone else.
func (s *Service) GetBatch(ctx context.Context, userID, id string) (*Batch, error) {
	b, err := s.FindBatch(ctx, userID, id)
	if err != nil {
		return nil, err
	}
	if err := s.CountBatch(ctx, b); err != nil {
		return nil, err
	}
	return b, nil
}

// FindBatch returns the user's batch with its job ids but no counts
// (CountBatch fills them in), or ENOTFOUND when it does not exist or
// belongs to someone else. A batch's jobs never change, so a caller can
// subscribe to them before counting.
func (s *Service) FindBatch(ctx context.Context, userID, id string) (*Batch, error) {
	if _, err := uuid.Parse(id); err != nil {
		return nil, errorf(ENOTFOUND, "batch %q not found", id)
	}
	var ids []int64
	var prio *string
	var created time.Time
	err := s.pool.QueryRow(ctx, `SELECT job_ids, priority, created_at FROM batches WHERE id = $1 AND user_id = $2`, id, userID).
		Scan(&ids, &prio, &created)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errorf(ENOTFOUND, "batch %q not found", id)
	}
	if err != nil {
		return nil, unavailable(err)
	}
	priority := ""
	if prio != nil {
		priority = *prio
	}
	return newBatch(id, priority, created, ids), nil
}

func newBatch(id, priority string, created time.Time, ids []int64) *Batch {
	b := &Batch{ID: id, Priority: priority, CreatedAt: created, Total: len(ids), JobIDs: make([]string, len(ids))}
	for i, n := range ids {
		b.JobIDs[i] = FormatID(n)
	}
	return b
}

// CountBatch sets b's counts and Done from its jobs' states now.
func (s *Service) CountBatch(ctx context.Context, b *Batch) error {
	ids := make([]int64, 0, len(b.JobIDs))
	for _, id := range b.JobIDs {
		if n, ok := JobID(id); ok {
			ids = append(ids, n)
		}
	}
	rows, err := s.pool.Query(ctx, `SELECT state, count(*) FROM ai_jobs WHERE river_job_id = ANY($1) GROUP BY state`, ids)
	if err != nil {
		return unavailable(err)
	}
	defer rows.Close()
	var c BatchCounts
	for rows.Next() {
		var state string
		var n int
		if err := rows.Scan(&state, &n); err != nil {
			return unavailable(err)
		}
		switch state {
		case StateQueued:
			c.Queued = n
		case StateRunning:
			c.Running = n
		case StateSucceeded:
			c.Succeeded = n
		case StateFailed:
			c.Failed = n
		case StateCancelled:
			c.Cancelled = n
		}
	}
	if err := rows.Err(); err != nil {
		return unavailable(err)
	}
	b.Counts = c
	// A job deleted by retention has ended.
	b.Done = c.Queued == 0 && c.Running == 0
	return nil
}
