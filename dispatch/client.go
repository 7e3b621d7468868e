package dispatch

import (
	"cmp"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"
)

// ClientConfig configures the River client.
type ClientConfig struct {
	// Limits are the per-queue worker limits of this process.
	Limits QueueLimits
	// Work starts the queues; without it the client only inserts (ROLE=api).
	Work bool
	// Worker works AI jobs; required.
	Worker *Worker
	// Logger receives River's logs.
	Logger *slog.Logger
	// Periodic jobs run by the elected leader (reconciler, pruners).
	Periodic []*river.PeriodicJob
	// Workers registers more workers (for the periodic jobs).
	Workers []func(*river.Workers)
	// RescueAfter is River's RescueStuckJobsAfter: a job still running this
	// long after its attempt started is taken to belong to a dead worker and
	// is handed back (or discarded when out of attempts). Default
	// DefaultRescueAfter; at least the worker's attempt timeout. The worker
	// heartbeat hands a dead process's jobs back in seconds; this is the
	// backstop for a process that is alive but stuck.
	RescueAfter time.Duration
	// Middleware is River middleware installed globally (Metrics.Middleware).
	Middleware []rivertype.Middleware
	// PollOnly makes River poll for jobs instead of holding a LISTEN
	// connection (behind PgBouncer in transaction pooling mode).
	PollOnly bool
	// JobRetention is how long River's cleaner keeps finished jobs
	// (JOB_RETENTION, default DefaultJobRetention): they stay readable
	// through the API and ai_jobs until then.
	JobRetention time.Duration
}

// DefaultJobRetention is the default ClientConfig.JobRetention.
const DefaultJobRetention = 30 * 24 * time.Hour

// DefaultRescueAfter is the default ClientConfig.RescueAfter: no attempt
// runs long (a submit, or one round of polling), so a crashed worker's job
// is recovered within about two minutes instead of River's default hour.
const DefaultRescueAfter = 2 * time.Minute

// droppedIndexes are River's indexes that migration 00009 drops: GIN
// indexes over river_job's args and metadata that nothing reads through
// and every job's four row versions write to.
var droppedIndexes = []string{"river_job_args_index", "river_job_metadata_index"}

// ReindexedIndexes are the indexes River's reindexer rebuilds: River's
// defaults but the ones the migrations drop, which it would otherwise
// warn about at every run.
func ReindexedIndexes() []string {
	return slices.DeleteFunc(river.ReindexerIndexNamesDefault(), func(name string) bool {
		return slices.Contains(droppedIndexes, name)
	})
}

// NewClient builds the River client: the three queues, AI worker, attempt
// timeout and a rescuer that recovers a crashed worker's job within
// RescueAfter.
func NewClient(pool *pgxpool.Pool, cfg ClientConfig) (*river.Client[pgx.Tx], error) {
	// River refuses a rescue time shorter than the attempt timeout; the
	// server's config says so first, in the variables' names.
	rescueAfter := cmp.Or(cfg.RescueAfter, DefaultRescueAfter)
	workers := river.NewWorkers()
	if err := river.AddWorkerSafely(workers, cfg.Worker); err != nil {
		return nil, err
	}
	for _, add := range cfg.Workers {
		add(workers)
	}
	rc := &river.Config{
		Workers:              workers,
		JobTimeout:           cfg.Worker.AttemptTimeout(),
		RescueStuckJobsAfter: rescueAfter,
		Logger:               cfg.Logger,
		PeriodicJobs:         cfg.Periodic,
		Middleware:           cfg.Middleware,
		PollOnly:             cfg.PollOnly,
		ReindexerIndexNames:  ReindexedIndexes(),
	}
	retention := cmp.Or(cfg.JobRetention, DefaultJobRetention)
	rc.CompletedJobRetentionPeriod = retention
	rc.CancelledJobRetentionPeriod = retention
	rc.DiscardedJobRetentionPeriod = retention
	if cfg.Work {
		if err := cfg.Limits.Validate(); err != nil {
			return nil, err
		}
		rc.Queues = cfg.Limits.QueueConfigs()
	}
	return river.NewClient(riverpgxv5.New(pool), rc)
}
