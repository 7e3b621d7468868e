package bench

import (
	"context"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/internal/pglocal"
	"github.com/aiqueue/aiqueue/ledger"
)

// aqSystem is aiqueue as versus-seed runs it: the real server binary
// (ROLE=all, its built-in fal simulator answering at once) on its own
// Postgres cluster.
type aqSystem struct {
	e        *env
	settings map[string]string
	pg       *Postgres
	pool     *pgxpool.Pool
	dbURL    string
	tokens   string
	srv      *Server
	// pprof makes the next start open a pprof listener.
	pprof bool
}

const (
	aqDB      = "aiqueue"
	bareSQLDB = "bare_sql"
)

// startAiqueue starts aiqueue's cluster with settings, migrates the
// database and funds users.
func (e *env) startAiqueue(ctx context.Context, settings map[string]string, users []user) (_ *aqSystem, err error) {
	a := &aqSystem{e: e, settings: settings}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	if err := a.startCluster(ctx, settings); err != nil {
		return nil, err
	}
	if err := a.pg.CreateTemplate(ctx, aqDB, len(users)); err != nil {
		return nil, err
	}
	a.tokens = filepath.Join(e.dir, "aiqueue-tokens.txt")
	if err := writeTokens(a.tokens, users); err != nil {
		return nil, err
	}
	return a, a.open(ctx)
}

func (a *aqSystem) startCluster(ctx context.Context, settings map[string]string) error {
	c, err := pglocal.Start(ctx, pglocal.Options{Dir: filepath.Join(a.e.dir, "aiqueue-pg"), Settings: settings})
	if err != nil {
		return err
	}
	a.pg = &Postgres{Cluster: c}
	return nil
}

// startBareSQL starts the cluster where pgbench runs the bare SQL of a job:
// aiqueue's migrated schema with settings, alone on its cluster so that no
// background work of aiqueue's runs (autovacuum, checkpoints) lands in its
// CPU. Its clients are users 0..c-1, so user 0 is funded too.
func (e *env) startBareSQL(ctx context.Context, settings map[string]string, users int) (_ *Postgres, err error) {
	c, err := pglocal.Start(ctx, pglocal.Options{Dir: filepath.Join(e.dir, "bare-sql-pg"), Settings: settings})
	if err != nil {
		return nil, err
	}
	p := &Postgres{Cluster: c}
	defer func() {
		if err != nil {
			_ = p.Stop()
		}
	}()
	if err := p.CreateTemplate(ctx, bareSQLDB, users); err != nil {
		return nil, err
	}
	pool, err := openPool(ctx, c.URL(bareSQLDB), 2)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if _, _, err := ledger.Grant(ctx, tx, UserID(0), userCredits, "benchmark", ""); err != nil {
		return nil, err
	}
	return p, tx.Commit(ctx)
}

func (a *aqSystem) open(ctx context.Context) error {
	a.dbURL = a.pg.Cluster.URL(aqDB)
	var err error
	a.pool, err = openPool(ctx, a.dbURL, 4)
	return err
}

// restartCluster restarts the cluster with other settings (for
// pg_stat_statements), on the same data.
func (a *aqSystem) restartCluster(ctx context.Context, settings map[string]string) error {
	a.pool.Close()
	if err := a.pg.Stop(); err != nil {
		return err
	}
	if err := a.startCluster(ctx, settings); err != nil {
		return err
	}
	return a.open(ctx)
}

func (a *aqSystem) name() string       { return "aiqueue" }
func (a *aqSystem) url() string        { return a.srv.URL }
func (a *aqSystem) tokensFile() string { return a.tokens }
func (a *aqSystem) db() *pgxpool.Pool  { return a.pool }

// serverEnv is the server's environment: the built-in fal simulator
// answering at once, every limit that would refuse load raised, and as
// many urgent workers as the seed's worker has.
func (a *aqSystem) serverEnv() map[string]string {
	m := map[string]string{
		"DATABASE_URL":          a.dbURL,
		"AUTH_JWT_SECRET":       a.e.secret,
		"AUTO_MIGRATE":          "false",
		"LOG_LEVEL":             "warn",
		"ROLE":                  "all",
		"FAL_SIMULATE":          "true",
		"FAL_SIMULATE_FAST":     "true",
		"FAL_KEY_MAX_IN_FLIGHT": "1000",
		"RATE_LIMIT_PER_MINUTE": "1000000",
		"RATE_LIMIT_BURST":      "1000000",
		"USER_MAX_PENDING":      "1000000",
		"QUEUE_MAX_PENDING":     "10000000",
		"QUEUE_URGENT_WORKERS":  strconv.Itoa(a.e.cfg.SeedConcurrency),
		// A port of its own: a server of another bench on this machine
		// must not keep this one from starting.
		"METRICS_ADDR": "auto",
	}
	if a.pprof {
		m["PPROF_ADDR"] = "auto"
	}
	return m
}

func (a *aqSystem) start(ctx context.Context) error {
	var err error
	a.srv, err = StartServer(ctx, &ServerSpec{Bin: a.e.bin, Name: "versus-aiqueue", LogDir: a.e.logDir(), Env: a.serverEnv()})
	return err
}

func (a *aqSystem) stop() error {
	if a.srv == nil {
		return nil
	}
	_, err := a.srv.Stop(30 * time.Second)
	return err
}

func (a *aqSystem) backlog(ctx context.Context) (int, error) {
	return queryInt(ctx, a.pool, `SELECT count(*) FROM river_job
 WHERE state IN ('available', 'pending', 'retryable', 'running', 'scheduled')`)
}

func (a *aqSystem) drained(ctx context.Context) (bool, error) {
	var none bool
	err := a.pool.QueryRow(ctx, `SELECT NOT EXISTS (SELECT 1 FROM river_job
 WHERE state IN ('available', 'pending', 'retryable', 'running', 'scheduled'))`).Scan(&none)
	return none, err
}

func (a *aqSystem) cpu() map[string]time.Duration {
	m := map[string]time.Duration{"postgres": clusterCPU(a.pg.Cluster.Dir())}
	if a.srv != nil && !a.srv.Exited() {
		m["server"], _ = procCPU(a.srv.PID(), false)
	}
	return m
}

func (a *aqSystem) close() {
	_ = a.stop()
	if a.pool != nil {
		a.pool.Close()
	}
	if a.pg != nil {
		_ = a.pg.Stop()
	}
}
