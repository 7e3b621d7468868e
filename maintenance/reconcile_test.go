package maintenance_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/internal/logtest"
	"github.com/aiqueue/aiqueue/maintenance"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

func TestReconciler(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	type reconcileBundle struct {
		*testBundle
		reconciler *maintenance.Reconciler
		logs       *logtest.Buffer
		registry   *prometheus.Registry
	}
	setupReconciler := func(t *testing.T) *reconcileBundle {
		t.Helper()
		b := setup(t)
		logs := &logtest.Buffer{}
		reg := prometheus.NewRegistry()
		r, err := maintenance.NewReconciler(b.Pool, maintenance.ReconcilerConfig{Logger: slog.New(slog.NewJSONHandler(logs, nil)), Registerer: reg})
		require.NoError(t, err)
		return &reconcileBundle{testBundle: b, reconciler: r, logs: logs, registry: reg}
	}
	fixed := func(r *maintenance.Reconciler, action string) float64 {
		var m dto.Metric
		require.NoError(t, r.Fixed().WithLabelValues(action).Write(&m))
		return m.GetCounter().GetValue()
	}

	t.Run("HealthyDatabaseNeedsNoFix", func(t *testing.T) {
		t.Parallel()
		b := setupReconciler(t)
		uid := grant(t, b.Pool, 20)
		w := startWorkers(t, b.Pool, nil)
		w.Sim.FailModel("fal-ai/birefnet", falsim.Failure{Status: 422, Ops: []string{falsim.OpSubmit}})

		completed := submit(t, b.testBundle, uid)
		discarded, err := b.Svc.Submit(ctx, uid, []jobs.Item{{Operation: "remove-bg", Params: []byte(`{"image_url":"https://x.test/a.png"}`)}}, jobs.SubmitOpts{})
		require.NoError(t, err)
		requireJobState(t, b.Pool, completed, "completed")
		requireJobState(t, b.Pool, discarded[0], "cancelled") // failed for good: River's JobCancel with the error code
		w.Stop(t)
		cancelled := submit(t, b.testBundle, uid)
		_, err = b.Svc.Cancel(ctx, uid, jobs.FormatID(cancelled))
		require.NoError(t, err)
		deleted := submit(t, b.testBundle, uid)
		_, err = b.River.JobDelete(ctx, deleted)
		require.NoError(t, err)
		queued := submit(t, b.testBundle, uid)

		fixes, err := b.reconciler.Reconcile(ctx)
		require.NoError(t, err)
		require.Empty(t, fixes)
		require.Zero(t, fixed(b.reconciler, maintenance.ReconcileCharge))
		require.Zero(t, fixed(b.reconciler, maintenance.ReconcileRefund))
		require.Empty(t, b.logs.Level(t, "WARN"))
		require.Equal(t, ledger.HoldReserved, holdState(t, b.Pool, queued))
		requireInvariants(t, b.Pool)

		// The metric is exported with both actions at zero.
		families, err := b.registry.Gather()
		require.NoError(t, err)
		require.Len(t, families, 1)
		require.Equal(t, "aiqueue_ledger_reconciled_total", families[0].GetName())
		require.Len(t, families[0].GetMetric(), 2)
	})

	t.Run("SettlesHoldsOfFinalOrGoneJobs", func(t *testing.T) {
		t.Parallel()
		b := setupReconciler(t)
		uid := grant(t, b.Pool, 20)
		completed := submit(t, b.testBundle, uid)
		discarded := submit(t, b.testBundle, uid)
		cancelled := submit(t, b.testBundle, uid)
		deleted := submit(t, b.testBundle, uid)
		queued := submit(t, b.testBundle, uid)

		breakSettlement(t, b.Pool, func() {
			_, err := b.Pool.Exec(ctx, `UPDATE river_job SET state = 'completed', finalized_at = now() WHERE id = $1`, completed)
			require.NoError(t, err)
			_, err = b.Pool.Exec(ctx, `UPDATE river_job SET state = 'discarded', finalized_at = now() WHERE id = $1`, discarded)
			require.NoError(t, err)
			_, err = b.River.JobCancel(ctx, cancelled)
			require.NoError(t, err)
			_, err = b.River.JobDelete(ctx, deleted)
			require.NoError(t, err)
		})
		vs, err := ledger.CheckInvariants(ctx, b.Pool)
		require.NoError(t, err)
		require.NotEmpty(t, vs) // broken on purpose

		fixes, err := b.reconciler.Reconcile(ctx)
		require.NoError(t, err)
		require.Equal(t, []maintenance.Fix{
			{JobID: completed, UserID: uid, Amount: 1, JobState: "succeeded", Action: maintenance.ReconcileCharge},
			{JobID: discarded, UserID: uid, Amount: 1, JobState: "failed", Action: maintenance.ReconcileRefund},
			{JobID: cancelled, UserID: uid, Amount: 1, JobState: "cancelled", Action: maintenance.ReconcileRefund},
			{JobID: deleted, UserID: uid, Amount: 1, JobState: "gone", Action: maintenance.ReconcileRefund},
		}, fixes)
		require.InDelta(t, 1, fixed(b.reconciler, maintenance.ReconcileCharge), 0)
		require.InDelta(t, 3, fixed(b.reconciler, maintenance.ReconcileRefund), 0)
		warnings := b.logs.Level(t, "WARN")
		require.Len(t, warnings, 4)
		for i, w := range warnings {
			require.InDelta(t, float64(fixes[i].JobID), w["job_id"], 0)
			require.Equal(t, fixes[i].Action, w["action"])
			require.Equal(t, fixes[i].JobState, w["job_state"])
		}

		require.Equal(t, ledger.HoldCharged, holdState(t, b.Pool, completed))
		require.Equal(t, ledger.HoldRefunded, holdState(t, b.Pool, discarded))
		require.Equal(t, ledger.HoldRefunded, holdState(t, b.Pool, cancelled))
		require.Equal(t, ledger.HoldRefunded, holdState(t, b.Pool, deleted))
		require.Equal(t, ledger.HoldReserved, holdState(t, b.Pool, queued))
		requireBalance(t, b.Pool, uid, ledger.Balance{Balance: 19, Reserved: 1, Available: 18})
		requireInvariants(t, b.Pool)

		// Fixed once: the next run finds nothing.
		fixes, err = b.reconciler.Reconcile(ctx)
		require.NoError(t, err)
		require.Empty(t, fixes)
		require.InDelta(t, 3, fixed(b.reconciler, maintenance.ReconcileRefund), 0)
	})

	t.Run("RunsAsRiverPeriodicJob", func(t *testing.T) {
		t.Parallel()
		b := setupReconciler(t)
		uid := grant(t, b.Pool, 5)
		id := submit(t, b.testBundle, uid)
		breakSettlement(t, b.Pool, func() {
			_, err := b.River.JobCancel(ctx, id)
			require.NoError(t, err)
		})
		require.Equal(t, ledger.HoldReserved, holdState(t, b.Pool, id))

		// The server's wiring: dispatch.NewClient with the reconciler's
		// periodic job and worker; it runs once at start.
		client, err := dispatch.NewClient(b.Pool, dispatch.ClientConfig{
			Limits:   dispatch.QueueLimits{Urgent: 1, Normal: 1, Background: 1},
			Work:     true,
			Worker:   dispatch.NewWorker(b.Pool, nil, jobs.DefaultCatalog(), dispatch.NewLine(b.Pool, dispatch.DefaultCaps, nil), nil, dispatch.WorkerConfig{}),
			Periodic: []*river.PeriodicJob{b.reconciler.PeriodicJob(maintenance.ReconcileInterval)},
			Workers:  []func(*river.Workers){b.reconciler.AddWorker},
		})
		require.NoError(t, err)
		require.NoError(t, client.Start(ctx))
		t.Cleanup(func() {
			stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			require.NoError(t, client.Stop(stopCtx))
		})
		require.Eventually(t, func() bool { return holdState(t, b.Pool, id) == ledger.HoldRefunded },
			20*time.Second, 20*time.Millisecond)
		require.Eventually(t, func() bool {
			return count(t, b.Pool, `SELECT count(*) FROM river_job WHERE kind = 'ledger_reconcile' AND state = 'completed' AND queue = $1`, jobs.QueueBackground) == 1
		}, 10*time.Second, 20*time.Millisecond)
		require.InDelta(t, 1, fixed(b.reconciler, maintenance.ReconcileRefund), 0)
		requireInvariants(t, b.Pool)
	})
}
