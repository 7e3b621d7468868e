//go:build unix

package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pglocal"
)

// childModeEnv makes TestChildHelper misbehave in a re-executed test binary.
const childModeEnv = "PGTEST_CHILD_MODE"

func TestMain(m *testing.M) {
	Migrate = func(ctx context.Context, pool *pgxpool.Pool) error {
		_, err := pool.Exec(ctx, `CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL)`)
		return err
	}
	Main(m)
}

func count(t testing.TB, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(t.Context(), "SELECT count(*) FROM items").Scan(&n))
	return n
}

func dbName(t testing.TB, pool *pgxpool.Pool) string {
	t.Helper()
	var name string
	require.NoError(t, pool.QueryRow(t.Context(), "SELECT current_database()").Scan(&name))
	return name
}

func dbExists(t testing.TB, name string) bool {
	t.Helper()
	ctx := context.Background() // also used in cleanups, after t.Context ends
	conn, err := pgx.Connect(ctx, AdminURL())
	require.NoError(t, err)
	defer conn.Close(ctx)
	var exists bool
	require.NoError(t, conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists))
	return exists
}

func TestNewDBIsolated(t *testing.T) {
	a, b := NewDB(t), NewDB(t)
	assert.NotEqual(t, dbName(t, a), dbName(t, b))

	_, err := a.Exec(t.Context(), "INSERT INTO items (name) VALUES ('only in a')")
	require.NoError(t, err)
	assert.Equal(t, 1, count(t, a))
	assert.Equal(t, 0, count(t, b), "databases are isolated")
}

func TestNewDBParallel(t *testing.T) {
	var (
		mu    sync.Mutex
		names = map[string]bool{}
	)
	for i := range 10 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			begin := time.Now()
			pool := NewDB(t)
			t.Logf("NewDB took %v", time.Since(begin).Round(time.Millisecond))
			for j := range i + 1 {
				_, err := pool.Exec(t.Context(), "INSERT INTO items (name) VALUES ($1)", fmt.Sprint(j))
				require.NoError(t, err)
			}
			assert.Equal(t, i+1, count(t, pool))
			mu.Lock()
			names[dbName(t, pool)] = true
			mu.Unlock()
		})
	}
	t.Cleanup(func() {
		assert.Len(t, names, 10)
		for name := range names {
			assert.False(t, dbExists(t, name), "%s dropped", name)
		}
	})
}

func TestNewDBURLDroppedOnCleanup(t *testing.T) {
	var name string
	t.Run("use", func(t *testing.T) {
		dbURL := NewDBURL(t)
		conn, err := pgx.Connect(t.Context(), dbURL)
		require.NoError(t, err)
		require.NoError(t, conn.QueryRow(t.Context(), "SELECT current_database()").Scan(&name))
		_, err = conn.Exec(t.Context(), "INSERT INTO items (name) VALUES ('x')")
		require.NoError(t, err)
		// Left open on purpose: the drop terminates it.
	})
	require.NotEmpty(t, name)
	assert.False(t, dbExists(t, name))
}

func TestTemplateNotConnectable(t *testing.T) {
	e := current.Load()
	require.NotNil(t, e)
	assert.True(t, dbExists(t, e.template))
	_, err := pgx.Connect(t.Context(), e.dbURL(e.template))
	assert.ErrorContains(t, err, "not currently accepting connections")
}

// BenchmarkClone measures one clone of the migrated template (and its
// drop); a test database costs about this much.
func BenchmarkClone(b *testing.B) {
	e := current.Load()
	require.NotNil(b, e)
	for b.Loop() {
		name, err := e.clone(b.Context())
		require.NoError(b, err)
		require.NoError(b, e.drop(b.Context(), name))
	}
	b.Logf("strategy %q", e.strategy)
}

func TestClusterRestart(t *testing.T) {
	c := Cluster()
	if os.Getenv(EnvTestDatabaseURL) != "" || os.Getenv(EnvDatabaseURL) != "" {
		require.Nil(t, c)
		return
	}
	require.NotNil(t, c)
	assert.Equal(t, c.URL("postgres"), AdminURL())
	pool := NewDB(t)
	_, err := pool.Exec(t.Context(), "INSERT INTO items (name) VALUES ('before')")
	require.NoError(t, err)

	require.NoError(t, c.Restart(t.Context()))
	// The pool's old connection is gone, a new one is made.
	require.Eventually(t, func() bool { return pool.Ping(t.Context()) == nil }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, 1, count(t, pool))

	// The admin pool survives the restart too.
	assert.Equal(t, 0, count(t, NewDB(t)))

	// NewDB waits for a server that is down for a while.
	require.NoError(t, c.StopServer())
	go func() {
		time.Sleep(500 * time.Millisecond)
		assert.NoError(t, c.StartServer(context.Background()))
	}()
	assert.Equal(t, 0, count(t, NewDB(t)))
}

func TestWithDatabase(t *testing.T) {
	assert.Equal(t, "postgres://u:p@h:5432/new?sslmode=disable",
		withDatabase("postgres://u:p@h:5432/old?sslmode=disable", "new"))
	assert.Equal(t, "postgresql://h/new", withDatabase("postgresql://h", "new"))
	assert.Equal(t, `host=h dbname=old dbname='new'`, withDatabase("host=h dbname=old", "new"))

	cfg, err := pgx.ParseConfig(withDatabase("host=h dbname=old", "new"))
	require.NoError(t, err)
	assert.Equal(t, "new", cfg.Database)
}

// TestChildHelper does nothing unless the binary is re-executed by
// TestMainCleanup.
func TestChildHelper(t *testing.T) {
	switch os.Getenv(childModeEnv) {
	case "fail":
		NewDB(t)
		t.Fatal("failing on purpose")
	case "panic":
		NewDB(t)
		panic("panicking on purpose")
	}
}

// runChild runs this test binary with TestNewDBIsolated and TestChildHelper
// in the given mode, with PGTEST_TMPDIR set to tmp and the given database URL (""
// for a private cluster).
func runChild(t *testing.T, mode, tmp, dbURL string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^(TestNewDBIsolated|TestChildHelper)$", "-test.count=1", "-test.v")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, EnvTestDatabaseURL+"=") && !strings.HasPrefix(kv, EnvDatabaseURL+"=") &&
			!strings.HasPrefix(kv, EnvTmpDir+"=") && !strings.HasPrefix(kv, childModeEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, EnvTmpDir+"="+tmp, childModeEnv+"="+mode)
	if dbURL != "" {
		cmd.Env = append(cmd.Env, EnvTestDatabaseURL+"="+dbURL)
	}
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		require.NoError(t, err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestMainCleanup runs this test binary as a child to check the exit code
// and the cleanup of Main, with a private cluster and with an external
// server, and the removal of clusters left by killed binaries.
func TestMainCleanup(t *testing.T) {
	if testing.Short() {
		t.Log("-short: not re-executing the test binary")
		return
	}
	tmp := t.TempDir()
	if base := memoryTempDir(); base != "" {
		// Faster than a disk; the name does not match tmpPattern.
		var err error
		tmp, err = os.MkdirTemp(base, "pgtestself-")
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, os.RemoveAll(tmp)) })
	}
	if os.Geteuid() == 0 {
		require.NoError(t, os.Chmod(tmp, 0o755))
	}

	t.Run("private cluster, passing", func(t *testing.T) {
		out, code := runChild(t, "", tmp, "")
		require.Equal(t, 0, code, out)
		assert.Contains(t, out, "--- PASS: TestNewDBIsolated")
		assert.Empty(t, listDir(t, tmp), "temporary cluster removed")
	})
	t.Run("private cluster, failing", func(t *testing.T) {
		out, code := runChild(t, "fail", tmp, "")
		require.Equal(t, 1, code, out)
		assert.Contains(t, out, "failing on purpose")
		assert.Empty(t, listDir(t, tmp), "temporary cluster removed")
	})

	ext, err := pglocal.Start(t.Context(), pglocal.Options{
		Dir:      filepath.Join(tmp, "external"),
		Settings: clusterSettings,
	})
	require.NoError(t, err)
	defer func() { assert.NoError(t, ext.Stop()) }()
	testDBs := func() []string {
		conn, err := pgx.Connect(t.Context(), ext.URL("postgres"))
		require.NoError(t, err)
		defer conn.Close(context.Background())
		rows, err := conn.Query(t.Context(), "SELECT datname FROM pg_database WHERE datname LIKE 'pgtest%'")
		require.NoError(t, err)
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		return names
	}

	t.Run("external server, failing", func(t *testing.T) {
		out, code := runChild(t, "fail", tmp, ext.URL("postgres"))
		require.Equal(t, 1, code, out)
		assert.Contains(t, out, "--- PASS: TestNewDBIsolated")
		assert.Empty(t, testDBs(), "test databases and template dropped")
		assert.Equal(t, []string{"external", "external.lock"}, listDir(t, tmp), "the external cluster and its owner lock only")
	})

	t.Run("private cluster, panicking, reaped later", func(t *testing.T) {
		out, code := runChild(t, "panic", tmp, "")
		require.Equal(t, 2, code, out)
		assert.Contains(t, out, "panicking on purpose")
		left := listDir(t, tmp)
		require.Len(t, left, 3, "a panic in a test kills the process before Main can clean up")

		t.Setenv(EnvTmpDir, tmp)
		reapStale(t.Context(), nil)
		assert.Equal(t, []string{"external", "external.lock"}, listDir(t, tmp), "stale cluster stopped and removed")
	})
}
