package dispatch

import (
	"context"
	"errors"
)

// Claim claims a fal key for a new request of the job, as the worker does
// before it submits.
func (r *FalRequests) Claim(ctx context.Context, jobID int64, attempt int, model string) (claim int64, key int, err error) {
	return r.claim(ctx, jobID, attempt, model)
}

// Release frees a claim of the job, as the worker does when fal refuses the
// submit.
func (r *FalRequests) Release(ctx context.Context, claim, jobID int64) {
	r.release(ctx, claim, jobID, errors.New("released by the test"))
}
