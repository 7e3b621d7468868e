package dispatch

import (
	"context"

	"github.com/aiqueue/aiqueue/falclient"
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
