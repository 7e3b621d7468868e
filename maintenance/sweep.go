package maintenance

import (
	"context"
	"log/slog"
	"time"

	"github.com/riverqueue/river"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/jobs"
)

// SweepArgs is the periodic River job that frees the fal slots no worker
// will free: it cancels at fal the requests of jobs that ended without their
// worker and abandons claims whose process died (dispatch.FalRequests.Sweep).
type SweepArgs struct{}

// Kind is the River job kind.
func (SweepArgs) Kind() string { return "fal_sweep" }

// InsertOpts puts the job in the background queue.
func (SweepArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: jobs.QueueBackground, MaxAttempts: 1}
}

// SweepWorker works SweepArgs.
type SweepWorker struct {
	river.WorkerDefaults[SweepArgs]
	Requests *dispatch.Requests
	// Retention is how long finished requests are kept (JOB_RETENTION).
	Retention time.Duration
	Logger    *slog.Logger
}

// Timeout bounds one sweep (it calls fal for each request it cancels).
func (w *SweepWorker) Timeout(*river.Job[SweepArgs]) time.Duration { return time.Minute }

// Work sweeps once and records what it did as the job's output.
func (w *SweepWorker) Work(ctx context.Context, _ *river.Job[SweepArgs]) error {
	res, err := w.Requests.Sweep(ctx, w.Retention)
	if err != nil {
		return err
	}
	if res != (dispatch.SweepResult{}) && w.Logger != nil {
		w.Logger.InfoContext(ctx, "fal request sweep", slog.Int("cancelled", res.Cancelled), slog.Int("abandoned", res.Abandoned),
			slog.Int("pending", res.Pending), slog.Int("resolved", res.Resolved), slog.Int("deleted", res.Deleted))
	}
	return river.RecordOutput(ctx, res)
}

// SweepPeriodicJob runs SweepArgs every interval (FAL_SWEEP_INTERVAL).
func SweepPeriodicJob(interval time.Duration) *river.PeriodicJob {
	return river.NewPeriodicJob(river.PeriodicInterval(interval),
		func() (river.JobArgs, *river.InsertOpts) { return SweepArgs{}, nil },
		&river.PeriodicJobOpts{ID: "fal_sweep"})
}
