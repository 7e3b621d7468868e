//go:build unix

// Package pgtest gives each test a clean, migrated PostgreSQL database.
//
// A package that needs a database calls Main from its TestMain, after
// setting the Migrate hook:
//
//	func TestMain(m *testing.M) {
//		pgtest.Migrate = migrations.Up
//		pgtest.Main(m)
//	}
//
// and each test calls NewDB (or NewDBURL):
//
//	func TestSomething(t *testing.T) {
//		pool := pgtest.NewDB(t) // fresh database, dropped at the end of the test
//		...
//	}
//
// Main uses the server named by TEST_DATABASE_URL, or else DATABASE_URL
// (the role needs CREATEDB; the database named in the URL is used as the
// maintenance database). When neither is set it starts a private cluster
// with pglocal in a temporary directory (fsync, synchronous_commit and
// full_page_writes off; under /dev/shm when possible, see EnvTmpDir) and
// removes it after the tests. Either way it then
// creates one template database for the test binary, migrated with Migrate,
// and NewDB clones it with CREATE DATABASE ... TEMPLATE, which takes tens of
// milliseconds on a private cluster (clones are serialized within the test
// binary). Database names start with "pgtest_<pid>_<random>", so test
// binaries of several packages can share one external server. All databases
// created by the binary are dropped when the tests end.
//
// Tests are never skipped for lack of a database: if Main cannot set up the
// server or the template, the test binary fails.
//
// A test binary killed before Main returns (test timeout, panic in a test,
// SIGKILL) cannot clean up. Its private cluster is stopped and removed by the
// next Main that runs on the same machine; databases it created on an
// external server are left behind (their names start with "pgtest_").
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/internal/pglocal"
)

// Migrate migrates the template database; Main calls it once, before the
// tests run, with a pool connected to the template. Every database returned
// by NewDB and NewDBURL is a copy of the migrated template. Set it in
// TestMain before calling Main, typically to migrations.Up. Nil (the
// default) leaves the template empty.
var Migrate func(ctx context.Context, pool *pgxpool.Pool) error

// SetupTimeout bounds the setup done by Main: starting the private cluster,
// creating and migrating the template.
var SetupTimeout = 5 * time.Minute

// Environment variables naming an external server, in order of precedence.
const (
	EnvTestDatabaseURL = "TEST_DATABASE_URL"
	EnvDatabaseURL     = "DATABASE_URL"
)

// EnvTmpDir names the environment variable that sets the directory in
// which Main creates the private cluster's temporary directory. By default
// it is /dev/shm on Linux when that tmpfs has at least 1 GiB free (cloning
// is ~10x faster than on disk), else os.TempDir().
const EnvTmpDir = "PGTEST_TMPDIR"

// Settings used for the private cluster: durability is useless for tests.
var clusterSettings = map[string]string{
	"fsync":              "off",
	"synchronous_commit": "off",
	"full_page_writes":   "off",
}

const (
	tmpPattern = "pgtest-"   // temporary directory of a private cluster
	ownerFile  = "owner.pid" // "<pid> <hostname>" of the process owning it
)

// env is the state set up by Main.
type env struct {
	cluster  *pglocal.Cluster // nil with an external server
	tmpDir   string           // private cluster's directory
	baseURL  string           // admin connection string
	admin    *pgxpool.Pool
	prefix   string // database name prefix, unique to this process
	template string
	strategy string // CREATE DATABASE ... STRATEGY clause, or ""
	counter  atomic.Int64
	logger   *slog.Logger

	cloneMu sync.Mutex // serializes clones of the template

	statsMu       sync.Mutex
	clusterStart  time.Duration
	templateSetup time.Duration
	clones        int
	cloneTotal    time.Duration
	cloneMax      time.Duration
}

var current atomic.Pointer[env]

// Main sets up the database server and the template database, runs the
// tests and cleans up: it drops every database it created, stops the
// private cluster and removes its directory, then exits the process with
// m.Run's exit code (1 when setup fails). Cleanup also runs when TestMain's
// goroutine panics. Call it from TestMain; it does not return.
func Main(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) (code int) {
	if !flag.Parsed() {
		flag.Parse()
	}
	logger := slog.New(slog.DiscardHandler)
	if testing.Verbose() || os.Getenv("PGTEST_DEBUG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	e := &env{logger: logger}
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "pgtest: panic: %v\n%s", r, debug.Stack())
			code = 2
		}
		current.Store(nil)
		if err := e.teardown(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: cleanup: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
		if testing.Verbose() || os.Getenv("PGTEST_DEBUG") != "" {
			fmt.Fprintln(os.Stderr, e.summary())
		}
	}()
	if err := e.setup(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: setup failed, no test was run: %v\n", err)
		return 1
	}
	current.Store(e)
	return m.Run()
}

func (e *env) setup() error {
	ctx, cancel := context.WithTimeout(context.Background(), SetupTimeout)
	defer cancel()

	e.baseURL = os.Getenv(EnvTestDatabaseURL)
	if e.baseURL == "" {
		e.baseURL = os.Getenv(EnvDatabaseURL)
	}
	if e.baseURL == "" {
		if err := e.startCluster(ctx); err != nil {
			return err
		}
		e.baseURL = e.cluster.URL("postgres")
	}

	cfg, err := pgxpool.ParseConfig(e.baseURL)
	if err != nil {
		return fmt.Errorf("parse database URL: %w", err)
	}
	cfg.MaxConns = 4
	cfg.MinConns = 0
	// Tests may restart the server: check connections before using them.
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return true }
	if e.admin, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	var version int
	if err := e.admin.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		return fmt.Errorf("connect to %s: %w", redact(e.baseURL), err)
	}
	if version < 130000 {
		return fmt.Errorf("PostgreSQL %d is too old: DROP DATABASE ... WITH (FORCE) needs 13 or later", version)
	}
	if version >= 150000 {
		// WAL_LOG (the default since 15) copies the template through the
		// WAL; FILE_COPY copies the files and checkpoints, which is faster
		// for a small template on a private cluster without fsync. External
		// servers keep their default: forced checkpoints can be slow there.
		if e.cluster != nil {
			e.strategy = " STRATEGY FILE_COPY"
		}
		switch s := strings.ToUpper(os.Getenv("PGTEST_CREATE_STRATEGY")); s {
		case "":
		case "WAL_LOG", "FILE_COPY":
			e.strategy = " STRATEGY " + s
		default:
			return fmt.Errorf("PGTEST_CREATE_STRATEGY=%q: want WAL_LOG or FILE_COPY", s)
		}
	}

	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	e.prefix = fmt.Sprintf("pgtest_%d_%s", os.Getpid(), hex.EncodeToString(suffix))
	return e.createTemplate(ctx)
}

// tempBases returns the directories where private clusters are created,
// preferred first.
func tempBases() []string {
	var bases []string
	for _, d := range []string{os.Getenv(EnvTmpDir), memoryTempDir(), os.TempDir()} {
		if d != "" && !slices.Contains(bases, d) {
			bases = append(bases, d)
		}
	}
	return bases
}

func (e *env) startCluster(ctx context.Context) error {
	reapStale(ctx, e.logger)
	var dir string
	var err error
	for _, base := range tempBases() {
		if dir, err = os.MkdirTemp(base, tmpPattern); err == nil {
			break
		}
		if os.Getenv(EnvTmpDir) != "" {
			return err
		}
	}
	if err != nil {
		return err
	}
	e.tmpDir = dir
	if os.Geteuid() == 0 {
		// The server runs as the postgres user; MkdirTemp made it 0700.
		if err := os.Chmod(dir, 0o755); err != nil {
			return err
		}
	}
	host, _ := os.Hostname()
	if err := os.WriteFile(filepath.Join(dir, ownerFile), fmt.Appendf(nil, "%d %s\n", os.Getpid(), host), 0o644); err != nil {
		return err
	}
	begin := time.Now()
	e.cluster, err = pglocal.Start(ctx, pglocal.Options{
		Dir:      filepath.Join(dir, "data"),
		Settings: clusterSettings,
		Logger:   e.logger,
	})
	if err != nil {
		return err
	}
	e.clusterStart = time.Since(begin)
	return nil
}

func (e *env) createTemplate(ctx context.Context) error {
	begin := time.Now()
	e.template = e.prefix + "_tpl"
	tpl := pgx.Identifier{e.template}.Sanitize()
	if err := e.exec(ctx, "CREATE DATABASE "+tpl); err != nil {
		return fmt.Errorf("create template database: %w", err)
	}
	if Migrate != nil {
		pool, err := pgxpool.New(ctx, e.dbURL(e.template))
		if err != nil {
			return fmt.Errorf("connect to template database: %w", err)
		}
		err = Migrate(ctx, pool)
		pool.Close()
		if err != nil {
			return fmt.Errorf("migrate template database: %w", err)
		}
	}
	// Nobody may connect to the template any more: CREATE DATABASE fails
	// while other sessions are connected to its template, and this also
	// keeps autovacuum workers away from it.
	if err := e.exec(ctx, "ALTER DATABASE "+tpl+" WITH ALLOW_CONNECTIONS false"); err != nil {
		return err
	}
	e.templateSetup = time.Since(begin)
	return nil
}

// teardown drops the databases of this process and stops the private
// cluster. It is safe on a partially set up env.
func (e *env) teardown() error {
	var errs []error
	if e.admin != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		// The private cluster is removed as a whole.
		if e.cluster == nil && e.prefix != "" {
			errs = append(errs, e.dropAll(ctx))
		}
		cancel()
		e.admin.Close()
	}
	if e.cluster != nil {
		errs = append(errs, e.cluster.Stop())
	}
	if e.tmpDir != "" {
		errs = append(errs, os.RemoveAll(e.tmpDir))
	}
	return errors.Join(errs...)
}

// dropAll drops the clones left behind and then the template.
func (e *env) dropAll(ctx context.Context) error {
	rows, err := e.admin.Query(ctx, "SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY datname = $2, datname",
		e.prefix+"_", e.template)
	if err != nil {
		return fmt.Errorf("list test databases: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("list test databases: %w", err)
	}
	var errs []error
	for _, name := range names {
		errs = append(errs, e.drop(ctx, name))
	}
	return errors.Join(errs...)
}

func (e *env) drop(ctx context.Context, name string) error {
	if err := e.exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

// exec runs a statement on the admin pool, retrying connection failures
// (the server may be restarting) until ctx ends. A duplicate_database error
// on a retry means an earlier attempt succeeded.
func (e *env) exec(ctx context.Context, sql string) error {
	for attempt := 1; ; attempt++ {
		_, err := e.admin.Exec(ctx, sql)
		if err == nil {
			return nil
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			if attempt > 1 && pgErr.Code == "42P04" { // duplicate_database
				return nil
			}
			if pgErr.Code != "57P01" && pgErr.Code != "57P03" { // admin_shutdown, cannot_connect_now
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		case <-time.After(min(time.Duration(attempt)*50*time.Millisecond, time.Second)):
		}
	}
}

func (e *env) clone(ctx context.Context) (string, error) {
	name := fmt.Sprintf("%s_%d", e.prefix, e.counter.Add(1))
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize() +
		" TEMPLATE " + pgx.Identifier{e.template}.Sanitize() + e.strategy
	e.cloneMu.Lock()
	begin := time.Now()
	err := e.exec(ctx, sql)
	took := time.Since(begin)
	e.cloneMu.Unlock()
	if err != nil {
		return "", fmt.Errorf("clone template database: %w", err)
	}
	e.statsMu.Lock()
	e.clones++
	e.cloneTotal += took
	e.cloneMax = max(e.cloneMax, took)
	e.statsMu.Unlock()
	return name, nil
}

// dbURL returns the connection string of database name on the server in use.
func (e *env) dbURL(name string) string {
	if e.cluster != nil {
		return e.cluster.URL(name)
	}
	return withDatabase(e.baseURL, name)
}

// withDatabase replaces the database of a URL or keyword/value connection
// string.
func withDatabase(connString, name string) string {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		if u, err := url.Parse(connString); err == nil {
			u.Path = "/" + name
			u.RawPath = ""
			return u.String()
		}
	}
	// Later keywords override earlier ones.
	return connString + " dbname='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(name) + "'"
}

func redact(connString string) string {
	if u, err := url.Parse(connString); err == nil && u.User != nil {
		return u.Redacted()
	}
	return "the database"
}

func (e *env) summary() string {
	e.statsMu.Lock()
	defer e.statsMu.Unlock()
	var avg time.Duration
	if e.clones > 0 {
		avg = e.cloneTotal / time.Duration(e.clones)
	}
	server := "external server"
	if e.cluster != nil {
		server = fmt.Sprintf("private cluster started in %v", e.clusterStart.Round(time.Millisecond))
	}
	return fmt.Sprintf("pgtest: %s; template created and migrated in %v; %d clones, avg %v, max %v",
		server, e.templateSetup.Round(time.Millisecond), e.clones,
		avg.Round(100*time.Microsecond), e.cloneMax.Round(100*time.Microsecond))
}

func mustEnv(t testing.TB) *env {
	t.Helper()
	e := current.Load()
	if e == nil {
		t.Fatal("pgtest: no database: call pgtest.Main(m) from TestMain (func TestMain(m *testing.M) { pgtest.Main(m) })")
	}
	return e
}

// NewDBURL creates a fresh database cloned from the migrated template and
// returns its connection string, for tests that boot the whole server or
// another process. The database is dropped WITH (FORCE) in t.Cleanup, which
// also terminates connections still open to it. It calls t.Fatal when the
// database cannot be created.
func NewDBURL(t testing.TB) string {
	t.Helper()
	e := mustEnv(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	name, err := e.clone(ctx)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := e.drop(ctx, name); err != nil {
			// Main drops whatever is left at the end.
			t.Logf("pgtest: %v (will retry after the tests)", err)
		}
	})
	return e.dbURL(name)
}

// NewDB creates a fresh database cloned from the migrated template and
// returns a pool connected to it. The pool is closed and the database
// dropped in t.Cleanup (connections still acquired after 10 seconds are
// terminated by the drop). It calls t.Fatal when the database cannot be
// created or reached.
func NewDB(t testing.TB) *pgxpool.Pool {
	t.Helper()
	dbURL := NewDBURL(t) // its cleanup (drop) runs after the pool's
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatalf("pgtest: connect to test database: %v", err)
	}
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() {
			pool.Close()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Logf("pgtest: pool connections still acquired after 10s; dropping the database anyway")
		}
	})
	if err := pool.Ping(ctx); err != nil {
		t.Fatalf("pgtest: connect to test database: %v", err)
	}
	return pool
}

// Cluster returns the private cluster started by Main, or nil when an
// external server (TEST_DATABASE_URL, DATABASE_URL) is used or Main is not
// running. Fault tests use it to stop, start or restart Postgres; they
// should leave it running for the tests that follow.
func Cluster() *pglocal.Cluster {
	if e := current.Load(); e != nil {
		return e.cluster
	}
	return nil
}

// AdminURL returns a connection string to the maintenance database of the
// server in use: the private cluster's "postgres" database, or the external
// URL as given. It panics when called outside Main.
func AdminURL() string {
	e := current.Load()
	if e == nil {
		panic("pgtest: AdminURL called without pgtest.Main in TestMain")
	}
	return e.baseURL
}

// reapStale stops and removes private clusters of earlier test binaries on
// this host that died without cleaning up.
func reapStale(ctx context.Context, logger *slog.Logger) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var dirs []string
	for _, base := range tempBases() {
		matches, _ := filepath.Glob(filepath.Join(base, tmpPattern+"*"))
		dirs = append(dirs, matches...)
	}
	host, _ := os.Hostname()
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		fields := strings.Fields(string(b))
		if len(fields) != 2 || fields[1] != host {
			continue
		}
		pid, err := strconv.Atoi(fields[0])
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
			continue // owner alive
		}
		logger.Info("pgtest: removing private cluster of a dead test process", "dir", dir, "pid", pid)
		if err := pglocal.StopDataDir(ctx, filepath.Join(dir, "data"), logger); err != nil {
			logger.Warn("pgtest: stop stale cluster", "dir", dir, "err", err)
			continue
		}
		_ = os.RemoveAll(dir)
	}
}
