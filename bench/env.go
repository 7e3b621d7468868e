package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/api"
	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/internal/pglocal"
	"github.com/aiqueue/aiqueue/ledger"
	"github.com/aiqueue/aiqueue/migrations"
)

// userCredits is what every benchmark user is granted: enough never to run
// out.
const userCredits = 1_000_000_000

// templateDB is the migrated database with the users' credits that every
// scenario's database is cloned from.
const templateDB = "bench_tpl"

// UserID is the id of benchmark user i (1-based); pgbench builds the same
// ids in SQL.
func UserID(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }

// userIDSQL is UserID in SQL, for pgbench's integer variable u.
const userIDSQL = `('00000000-0000-4000-8000-' || lpad(:u::text, 12, '0'))::uuid`

type user struct {
	ID    string
	Token string
}

// env is what the scenarios share: the work directory, the server binary,
// the private Postgres with its template database, and the users.
type env struct {
	// fal is the current scenario's fal simulator, served by this process
	// at falURL (see newFal).
	fal    atomic.Pointer[falsim.Server]
	falURL string
	falSrv *http.Server

	cfg    Config
	rep    *Report
	dir    string
	ownDir bool
	bin    string
	// falsimBin is the fal simulator binary (versus-seed), built on first
	// use when Config.FalsimBin is empty.
	falsimBin string
	pg        *Postgres
	secret    string
	users     []user
	dbCount   int
}

func newEnv(ctx context.Context, cfg Config, rep *Report) (_ *env, err error) {
	e := &env{cfg: cfg, rep: rep, dir: cfg.WorkDir, falsimBin: cfg.FalsimBin}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.dir == "" {
		if e.dir, err = os.MkdirTemp("", "aiqueue-bench-"); err != nil {
			return nil, err
		}
		e.ownDir = true
	}
	if err := os.MkdirAll(e.dir, 0o750); err != nil {
		return nil, err
	}
	if err := os.Chmod(e.dir, 0o755); err != nil { // the postgres OS user must traverse it
		return nil, err
	}
	e.bin = cfg.ServerBin
	if e.bin == "" {
		e.logf("building the server")
		if e.bin, err = BuildServer(ctx, e.dir); err != nil {
			return nil, err
		}
	}
	rep.Machine.Commit = gitCommit(ctx)

	e.secret = randomHex(32)

	e.fal.Store(falsim.New(falsim.Options{Keys: benchKeys, Fast: true}))
	ln, err := new(net.ListenConfig).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.falSrv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.fal.Load().ServeHTTP(w, r)
	})}
	go func() { _ = e.falSrv.Serve(ln) }()
	e.falURL = "http://" + ln.Addr().String()

	e.logf("starting PostgreSQL in %s", filepath.Join(e.dir, "pg"))
	if e.pg, err = StartPostgres(ctx, filepath.Join(e.dir, "pg"), nil); err != nil {
		return nil, err
	}
	rep.Machine.Postgres = e.pg.Version
	if !e.pg.StatStatements {
		rep.note("pg_stat_statements could not be preloaded; no statement statistics")
	}
	e.logf("migrating the template database and granting %d users", cfg.maxUsers())
	if err := e.pg.CreateTemplate(ctx, templateDB, cfg.maxUsers()); err != nil {
		return nil, err
	}
	e.users = make([]user, cfg.maxUsers())
	for i := range e.users {
		id := UserID(i + 1)
		e.users[i] = user{ID: id, Token: mustToken(e.secret, id)}
	}
	return e, nil
}

// randomHex is n random bytes in hex.
func randomHex(n int) string {
	buf := make([]byte, n)
	_, _ = rand.Read(buf) // never fails (crypto/rand)
	return hex.EncodeToString(buf)
}

// mustToken mints a user's HS256 token with secret, as Supabase would
// (audience "authenticated"), valid for 6 hours.
func mustToken(secret, userID string) string {
	tok, err := api.MintToken([]byte(secret), userID, false, 6*time.Hour, "authenticated")
	if err != nil {
		panic(err) // only for a secret or id MintToken cannot sign
	}
	return tok
}

// logDir is where the scenarios' processes log.
func (e *env) logDir() string { return filepath.Join(e.dir, "logs") }

func (e *env) close() {
	if e.falSrv != nil {
		_ = e.falSrv.Close()
	}
	if e.pg != nil {
		if err := e.pg.Stop(); err != nil {
			e.logf("stop postgres: %v", err)
		}
	}
	if e.ownDir && e.dir != "" {
		_ = os.RemoveAll(e.dir)
	}
}

func (e *env) logf(format string, args ...any) {
	if e.cfg.Log != nil {
		fmt.Fprintf(e.cfg.Log, "%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}
}

// newDB clones the template into a fresh database for one scenario and
// opens a pool of maxConns to it; the caller closes the pool.
func (e *env) newDB(ctx context.Context, name string, maxConns int32) (string, *pgxpool.Pool, error) {
	e.dbCount++
	url, err := e.pg.CloneTemplate(ctx, templateDB, fmt.Sprintf("bench_%s_%d", name, e.dbCount))
	if err != nil {
		return "", nil, err
	}
	pool, err := openPool(ctx, url, maxConns)
	if err != nil {
		return "", nil, err
	}
	return url, pool, nil
}

// benchKeys are the fal keys of the benchmark's simulator.
var benchKeys = []string{"bench-key-1", "bench-key-2", "bench-key-3"}

// newFal gives the next scenario a fresh fal simulator in fast mode (a
// request completes at its first status poll), served by this process, so
// the server's memory is its own (the simulator keeps every request) and
// fal requests can be counted per job.
func (e *env) newFal() *falsim.Server {
	s := falsim.New(falsim.Options{Keys: benchKeys, Fast: true})
	e.fal.Store(s)
	return s
}

// serverEnv is the environment of a benchmark server: the fal simulator of
// this process at zero latency and every limit that would refuse load
// raised, so the figures measure the queue and not the limiter. Variables a
// server does not know are ignored by it.
func (e *env) serverEnv(dbURL string, extra map[string]string) map[string]string {
	m := map[string]string{
		"DATABASE_URL":             dbURL,
		"AUTH_JWT_SECRET":          e.secret,
		"AUTO_MIGRATE":             "false",
		"LOG_LEVEL":                "warn",
		"FAL_SIMULATE":             "true",
		"FAL_KEYS":                 strings.Join(benchKeys, ","),
		"FAL_QUEUE_URL":            e.falURL,
		"FAL_KEY_MAX_IN_FLIGHT":    "1000",
		"RATE_LIMIT_PER_MINUTE":    "1000000",
		"RATE_LIMIT_BURST":         "1000000",
		"USER_MAX_PENDING":         "1000000",
		"QUEUE_MAX_PENDING":        "10000000",
		"QUEUE_URGENT_WORKERS":     strconv.Itoa(e.cfg.Limits.Urgent),
		"QUEUE_NORMAL_WORKERS":     strconv.Itoa(e.cfg.Limits.Normal),
		"QUEUE_BACKGROUND_WORKERS": strconv.Itoa(e.cfg.Limits.Background),
		"METRICS_ADDR":             "auto",
	}
	if e.cfg.ProfileDir != "" {
		m["PPROF_ADDR"] = "auto"
	}
	maps.Copy(m, extra)
	return m
}

func (e *env) startServer(ctx context.Context, name, dbURL string, extra map[string]string) (*Server, error) {
	spec := &ServerSpec{Bin: e.bin, Name: name, LogDir: e.logDir(), Env: e.serverEnv(dbURL, extra)}
	return StartServer(ctx, spec)
}

// stopServer stops s and records an unclean exit as a note.
func (e *env) stopServer(s *Server) {
	if _, err := s.Stop(30 * time.Second); err != nil {
		e.rep.note("%v", err)
	}
}

// profile records the server's CPU profile for d into ProfileDir (when
// set) and, when the returned function is called, its mutex profile; the
// function waits for the CPU profile.
func (e *env) profile(ctx context.Context, s *Server, name string, d time.Duration) func() {
	if e.cfg.ProfileDir == "" || s.PprofURL == "" {
		return func() {}
	}
	if err := os.MkdirAll(e.cfg.ProfileDir, 0o750); err != nil {
		e.rep.note("profile %s: %v", name, err)
		return func() {}
	}
	secs := max(int(d.Seconds()), 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.savePprof(ctx, s.PprofURL+"/debug/pprof/profile?seconds="+strconv.Itoa(secs), name+"-cpu.pprof")
	}()
	return func() {
		<-done
		e.savePprof(ctx, s.PprofURL+"/debug/pprof/mutex", name+"-mutex.pprof")
	}
}

func (e *env) savePprof(ctx context.Context, url, file string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.rep.note("profile %s: %v", file, err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e.rep.note("profile %s: %s", file, resp.Status)
		return
	}
	path := filepath.Join(e.cfg.ProfileDir, file)
	f, err := os.Create(path)
	if err != nil {
		e.rep.note("profile %s: %v", file, err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err == nil {
		e.rep.note("profile written: %s", path)
	}
}

// stmtStat is one pg_stat_statements row.
type stmtStat struct {
	Query   string  `json:"query"`
	Calls   int64   `json:"calls"`
	TotalMS float64 `json:"total_ms"`
	MeanMS  float64 `json:"mean_ms"`
	Rows    int64   `json:"rows"`
}

// resetStatements clears pg_stat_statements, when it is loaded.
func (e *env) resetStatements(ctx context.Context, pool *pgxpool.Pool) {
	if e.pg.StatStatements {
		_, _ = pool.Exec(ctx, `SELECT pg_stat_statements_reset()`)
	}
}

// topStatements records the statements of the current database that took
// the most time since the last reset.
func (e *env) topStatements(ctx context.Context, pool *pgxpool.Pool, key string) {
	if !e.pg.StatStatements {
		return
	}
	rows, err := pool.Query(ctx, `
SELECT left(regexp_replace(query, '\s+', ' ', 'g'), 300), calls, total_exec_time, mean_exec_time, rows
  FROM pg_stat_statements
 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
 ORDER BY total_exec_time DESC LIMIT 12`)
	if err != nil {
		e.rep.note("pg_stat_statements: %v", err)
		return
	}
	stats, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (stmtStat, error) {
		var s stmtStat
		err := r.Scan(&s.Query, &s.Calls, &s.TotalMS, &s.MeanMS, &s.Rows)
		return s, err
	})
	if err != nil {
		e.rep.note("pg_stat_statements: %v", err)
		return
	}
	e.rep.Details[key+".pg_stat_statements"] = stats
}

// BuildServer builds ./cmd/server of this module into dir and returns the
// binary's path.
func BuildServer(ctx context.Context, dir string) (string, error) {
	return buildCmd(ctx, dir, "server")
}

// BuildFalsim builds ./cmd/falsim of this module into dir and returns the
// binary's path.
func BuildFalsim(ctx context.Context, dir string) (string, error) {
	return buildCmd(ctx, dir, "falsim")
}

func buildCmd(ctx context.Context, dir, name string) (string, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/"+name)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/%s: %w\n%s", name, err, out)
	}
	return bin, nil
}

func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the aiqueue module (go env GOMOD is empty)")
	}
	return filepath.Dir(gomod), nil
}

// gitCommit is the short commit of the module's checkout, "-dirty" when it
// has changes, or "".
func gitCommit(ctx context.Context) string {
	root, err := moduleRoot(ctx)
	if err != nil {
		return ""
	}
	out, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.CommandContext(ctx, "git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += "-dirty"
	}
	return c
}

// Postgres is the private PostgreSQL cluster of a run.
type Postgres struct {
	Cluster *pglocal.Cluster
	// Version is the server's version string.
	Version string
	// StatStatements is true when pg_stat_statements is loaded.
	StatStatements bool
}

// StartPostgres starts a cluster in dir with durable default settings plus
// track_commit_timestamp (the pickup latency is measured from the commit
// timestamp of the submit transaction) and pg_stat_statements when it can be
// preloaded.
func StartPostgres(ctx context.Context, dir string, logger *slog.Logger) (*Postgres, error) {
	settings := map[string]string{
		"track_commit_timestamp":   "on",
		"shared_preload_libraries": "pg_stat_statements",
		"pg_stat_statements.track": "top",
	}
	c, err := pglocal.Start(ctx, pglocal.Options{Dir: dir, Settings: settings, Logger: logger})
	stat := true
	if err != nil && strings.Contains(err.Error(), "pg_stat_statements") {
		delete(settings, "shared_preload_libraries")
		delete(settings, "pg_stat_statements.track")
		stat = false
		c, err = pglocal.Start(ctx, pglocal.Options{Dir: dir, Settings: settings, Logger: logger})
	}
	if err != nil {
		return nil, err
	}
	p := &Postgres{Cluster: c, StatStatements: stat}
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		_ = c.Stop()
		return nil, err
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, `SHOW server_version`).Scan(&p.Version); err != nil {
		_ = c.Stop()
		return nil, err
	}
	return p, nil
}

// Stop stops the cluster.
func (p *Postgres) Stop() error { return p.Cluster.Stop() }

func (p *Postgres) admin(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, p.Cluster.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// CreateTemplate creates database name, migrates it, installs
// pg_stat_statements and grants users 1..users their credits.
func (p *Postgres) CreateTemplate(ctx context.Context, name string, users int) error {
	if err := p.admin(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, p.Cluster.URL(name))
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := migrations.Up(ctx, pool); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if p.StatStatements {
		if _, err := pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
			return err
		}
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	for i := 1; i <= users; i++ {
		if _, _, err := ledger.Grant(ctx, tx, UserID(i), userCredits, "benchmark", ""); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	_, err = pool.Exec(ctx, `VACUUM ANALYZE`)
	return err
}

// CloneTemplate creates database name from template and returns its URL.
func (p *Postgres) CloneTemplate(ctx context.Context, template, name string) (string, error) {
	err := p.admin(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", pgx.Identifier{name}.Sanitize(), pgx.Identifier{template}.Sanitize()))
	if err != nil {
		return "", err
	}
	return p.Cluster.URL(name), nil
}
