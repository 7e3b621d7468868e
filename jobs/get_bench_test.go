package jobs_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
)

// BenchmarkGet is the read a long poll or event stream makes each time the
// watcher wakes it: one job as the API shows it, queued (its place in the
// line), running (its estimate, cached) or final.
func BenchmarkGet(b *testing.B) {
	ctx := context.Background()
	tb := setup(b)
	uid := grant(b, tb.Pool, 100)
	ids, err := tb.Svc.Submit(ctx, uid, []jobs.Item{generate("a"), generate("b"), generate("c")}, jobs.SubmitOpts{})
	require.NoError(b, err)
	_, err = tb.Pool.Exec(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model, request_id, state, submitted_at, stage)
VALUES ($1, 1, $2, 'urgent', 'generate', 1, 'fal-ai/flux/dev', 'r-1', 'in_flight', now(), 'in_progress')`, ids[1], uid)
	require.NoError(b, err)
	_, err = tb.Svc.Cancel(ctx, uid, jobs.FormatID(ids[2]))
	require.NoError(b, err)
	for i, name := range []string{"Queued", "Running", "Final"} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, err := tb.Svc.Get(ctx, uid, jobs.FormatID(ids[i]), false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
