package dispatch

import (
	"context"
	"encoding/json"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertest"

	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/jobs"
)

// ErrSlotGone is errSlotGone for the tests.
var ErrSlotGone = errSlotGone

// StoreRequest stores req as the request of slot slotID in attempt, as the
// worker does once fal accepted it.
func StoreRequest(ctx context.Context, r *Requests, slotID int64, attempt int, req falclient.Request) error {
	s, err := scanSlot(r.pool.QueryRow(ctx, `SELECT `+slotColumns+` FROM fal_requests WHERE id = $1`, slotID))
	if err != nil {
		return err
	}
	s.req.ID, s.req.StatusURL, s.req.ResponseURL, s.req.CancelURL = req.ID, req.StatusURL, req.ResponseURL, req.CancelURL
	return r.store(ctx, s, attempt)
}

// CompleteGroup commits the jobs as one group of finished jobs, each
// with its slot and output, as the worker's completions do, with River's
// client in each job's context (rivertest.WorkContext).
func CompleteGroup(ctx context.Context, pool *pgxpool.Pool, client *river.Client[pgx.Tx], list []*river.Job[jobs.Args], slots []int64, output json.RawMessage) error {
	group := make([]*completion, len(list))
	for i, job := range list {
		group[i] = &completion{ctx: rivertest.WorkContext(ctx, client), job: job, slotID: slots[i], output: output}
	}
	return newCompletions(pool, nil).commitTx(group)
}

// ErrNotRunning is errNotRunning for the tests.
var ErrNotRunning = errNotRunning
