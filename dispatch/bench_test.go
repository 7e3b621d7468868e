package dispatch_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/jobtest"
	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// benchClients is the number of concurrent submitters, in Go and in pgbench.
const benchClients = 16

// pgbenchScript is the same transaction as Service.Submit, in SQL.
const pgbenchScript = "../bench/pgbench_submit.sql"

// benchUser is the id of the i-th benchmark user, as the pgbench script
// derives it from its client id.
func benchUser(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }

var tpsRE = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// BenchmarkSubmitTx measures the submit transaction alone (River insert +
// ledger reserve in one transaction, committed) against the real database,
// with benchClients concurrent submitters: through Service.Submit ("Go"),
// then the same SQL through pgbench ("pgbench") on the same database in the
// same run. Users=1 puts every submitter on one account (the account row is
// the hot spot: each reservation holds its lock until commit); Users=16
// gives each submitter its own. Each reports tx/s; compare with e.g.
//
//	go test ./jobs -run '^$' -bench SubmitTx -benchtime 20000x
func BenchmarkSubmitTx(b *testing.B) {
	for _, users := range []int{1, benchClients} {
		b.Run(fmt.Sprintf("Users=%d", users), func(b *testing.B) {
			benchmarkSubmitTx(b, users)
		})
	}
}

func benchmarkSubmitTx(b *testing.B, users int) {
	ctx := context.Background()
	dbURL := pgtest.NewDBURL(b)
	cfg, err := pgxpool.ParseConfig(dbURL)
	require.NoError(b, err)
	cfg.MaxConns = benchClients
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(b, err)
	b.Cleanup(pool.Close)

	tx, err := pool.Begin(ctx)
	require.NoError(b, err)
	for i := range users {
		_, _, err = ledger.Grant(ctx, tx, benchUser(i), 1<<50, "benchmark", "")
		require.NoError(b, err)
	}
	require.NoError(b, tx.Commit(ctx))

	catalog := jobs.DefaultCatalog()
	client := jobtest.InsertOnly(b, pool)
	svc := jobs.NewService(jobs.Config{Pool: pool, River: client, Catalog: catalog})
	item := []jobs.Item{generate("a gold ring on marble")}

	b.Run("Go", func(b *testing.B) {
		var next atomic.Int64
		b.SetParallelism(max(benchClients/runtime.GOMAXPROCS(0), 1))
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			uid := benchUser(int(next.Add(1)-1) % users)
			for pb.Next() {
				if _, err := svc.Submit(ctx, uid, item, jobs.SubmitOpts{}); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tx/s")
	})

	b.Run("pgbench", func(b *testing.B) {
		_, err := os.Stat(pgbenchScript)
		require.NoError(b, err)
		cmd := exec.CommandContext(ctx, "pgbench", "--no-vacuum", "--protocol=prepared",
			"--client="+strconv.Itoa(benchClients), "--jobs=2", "--transactions="+strconv.Itoa(max(b.N/benchClients, 1)),
			"--file="+pgbenchScript, "--define=users="+strconv.Itoa(users), "--define=client_init=0", dbURL)
		b.ResetTimer()
		out, err := cmd.CombinedOutput()
		b.StopTimer()
		require.NoError(b, err, string(out))
		m := tpsRE.FindSubmatch(out)
		require.NotNil(b, m, string(out))
		tps, err := strconv.ParseFloat(string(m[1]), 64)
		require.NoError(b, err)
		b.ReportMetric(tps, "tx/s")
	})

	// Both wrote what they should: one hold per job, and the money adds up.
	vs, err := ledger.CheckInvariants(ctx, pool)
	require.NoError(b, err)
	require.Empty(b, vs)
}
