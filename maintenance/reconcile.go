package maintenance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// ReconcileInterval is how often the server runs the ledger reconciler.
const ReconcileInterval = time.Minute

// ReconcileArgs are the args of the ledger reconciler's periodic job.
type ReconcileArgs struct{}

// Kind is River's job kind of the reconciler.
func (ReconcileArgs) Kind() string { return "ledger_reconcile" }

// InsertOpts put the reconciler in the background queue (River's default
// queue is not worked here), once per interval at most.
func (ReconcileArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{
		Queue:       jobs.QueueBackground,
		MaxAttempts: 3,
		UniqueOpts:  river.UniqueOpts{ByPeriod: ReconcileInterval},
	}
}

// Reconcile actions, the values of the metric's action label.
const (
	ReconcileCharge = "charge"
	ReconcileRefund = "refund"
)

// Fix is one hold the reconciler had to settle.
type Fix struct {
	JobID  int64
	UserID string
	Amount int64
	// JobState is how the job ended (ai_job_outcome: succeeded, failed,
	// cancelled), or "gone" when its row is
	// deleted.
	JobState string
	// Action is ReconcileCharge or ReconcileRefund.
	Action string
}

// ReconcilerConfig configures the reconciler.
type ReconcilerConfig struct {
	// Logger receives one WARN line per fix; default discards.
	Logger *slog.Logger
	// Registerer, when set, registers aiqueue_ledger_reconciled_total.
	Registerer prometheus.Registerer
	// Limit is the most holds one run settles (default 1000); the next run
	// takes the rest.
	Limit int
}

// Reconciler finds every open hold whose job is final or gone and settles it
// the way the job ended says (ai_job_outcome succeeded -> charge; failed,
// cancelled, deleted -> refund). The database settles holds when jobs end
// (triggers on river_job), so in a correct system it finds none; each hold
// it does settle is counted in aiqueue_ledger_reconciled_total{action} and
// logged at WARN, because it means something bypassed those triggers.
type Reconciler struct {
	river.WorkerDefaults[ReconcileArgs]
	pool   *pgxpool.Pool
	logger *slog.Logger
	limit  int
	fixed  *prometheus.CounterVec
}

// NewReconciler returns a reconciler and registers its metric.
func NewReconciler(pool *pgxpool.Pool, cfg ReconcilerConfig) (*Reconciler, error) {
	r := &Reconciler{
		pool:   pool,
		logger: cfg.Logger,
		limit:  cfg.Limit,
		fixed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aiqueue_ledger_reconciled_total",
			Help: "Open credit holds of final or deleted jobs that the reconciler settled; anything above zero means a settlement path bypassed the database triggers.",
		}, []string{"action"}),
	}
	if r.logger == nil {
		r.logger = slog.New(slog.DiscardHandler)
	}
	if r.limit <= 0 {
		r.limit = 1000
	}
	for _, a := range []string{ReconcileCharge, ReconcileRefund} {
		r.fixed.WithLabelValues(a)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(r.fixed); err != nil {
			return nil, fmt.Errorf("register reconciler metric: %w", err)
		}
	}
	return r, nil
}

// Fixed returns the counter of fixes, by action.
func (r *Reconciler) Fixed() *prometheus.CounterVec { return r.fixed }

// AddWorker registers the reconciler's worker (for ClientConfig.Workers).
func (r *Reconciler) AddWorker(w *river.Workers) { river.AddWorker(w, r) }

// PeriodicJob runs the reconciler every interval, and once at start. River
// enqueues periodic jobs on the elected leader only.
func (r *Reconciler) PeriodicJob(interval time.Duration) *river.PeriodicJob {
	return river.NewPeriodicJob(river.PeriodicInterval(interval),
		func() (river.JobArgs, *river.InsertOpts) { return ReconcileArgs{}, nil },
		&river.PeriodicJobOpts{ID: "ledger_reconcile", RunOnStart: true})
}

// Timeout bounds one run.
func (r *Reconciler) Timeout(*river.Job[ReconcileArgs]) time.Duration { return time.Minute }

// Work runs the reconciler once.
func (r *Reconciler) Work(ctx context.Context, _ *river.Job[ReconcileArgs]) error {
	_, err := r.Reconcile(ctx)
	return err
}

const gone = "gone"

// Reconcile settles every open hold whose job is final or gone, each in its
// own transaction that locks the job row and re-checks it, and returns what
// it fixed.
func (r *Reconciler) Reconcile(ctx context.Context) ([]Fix, error) {
	rows, err := r.pool.Query(ctx, `
SELECT h.job_id, h.user_id::text, h.amount, COALESCE(ai_job_outcome(j.state, j.errors), $1)
  FROM credit_holds h LEFT JOIN river_job j ON j.id = h.job_id
 WHERE h.state = 'reserved'
   AND (j.id IS NULL OR ai_job_outcome(j.state, j.errors) IS NOT NULL)
 ORDER BY h.job_id
 LIMIT $2`, gone, r.limit)
	if err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	candidates, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Fix, error) {
		var f Fix
		err := row.Scan(&f.JobID, &f.UserID, &f.Amount, &f.JobState)
		return f, err
	})
	if err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	var fixes []Fix
	for _, c := range candidates {
		f, ok, err := r.settle(ctx, c)
		if err != nil {
			return fixes, err
		}
		if !ok {
			continue
		}
		r.fixed.WithLabelValues(f.Action).Inc()
		r.logger.WarnContext(ctx, "reconciler settled an open credit hold of a finished job",
			slog.Int64("job_id", f.JobID), slog.String("user_id", f.UserID), slog.Int64("amount", f.Amount),
			slog.String("job_state", f.JobState), slog.String("action", f.Action))
		fixes = append(fixes, f)
	}
	return fixes, nil
}

// settle settles one candidate if, with its job row locked, the job is still
// final or gone and the hold still open.
func (r *Reconciler) settle(ctx context.Context, f Fix) (Fix, bool, error) {
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return f, false, fmt.Errorf("reconcile job %d: %w", f.JobID, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	var outcome *string
	err = tx.QueryRow(ctx, `SELECT ai_job_outcome(state, errors) FROM river_job WHERE id = $1 FOR UPDATE`, f.JobID).Scan(&outcome)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		f.JobState = gone
	case err != nil:
		return f, false, fmt.Errorf("reconcile job %d: %w", f.JobID, err)
	case outcome == nil:
		return f, false, nil // back in the queue (retried) since the scan
	default:
		f.JobState = *outcome
	}
	charge := f.JobState == "succeeded"
	state, err := ledger.Settle(ctx, tx, f.JobID, charge)
	if err != nil {
		return f, false, fmt.Errorf("reconcile job %d: %w", f.JobID, err)
	}
	if state == "" {
		return f, false, nil // settled by someone else since the scan
	}
	if err := tx.Commit(ctx); err != nil {
		return f, false, fmt.Errorf("reconcile job %d: %w", f.JobID, err)
	}
	f.Action = ReconcileRefund
	if charge {
		f.Action = ReconcileCharge
	}
	return f, true, nil
}
