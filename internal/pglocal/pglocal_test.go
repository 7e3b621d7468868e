//go:build unix

package pglocal

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

func startCluster(t *testing.T, opts Options) *Cluster {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	begin := time.Now()
	c, err := Start(t.Context(), opts)
	require.NoError(t, err)
	t.Logf("Start took %v (port %d, bin %s)", time.Since(begin).Round(time.Millisecond), c.Port(), c.BinDir())
	t.Cleanup(func() { assert.NoError(t, c.Stop()) })
	return c
}

func connect(t *testing.T, c *Cluster) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), c.URL("postgres"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func queryInt(t *testing.T, conn *pgx.Conn, sql string) int {
	t.Helper()
	var n int
	require.NoError(t, conn.QueryRow(t.Context(), sql).Scan(&n))
	return n
}

func TestStartRestartStopReuse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	opts := Options{Dir: dir, Settings: map[string]string{"fsync": "off"}}
	c := startCluster(t, opts)

	assert.Equal(t, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.Port()), c.URL("postgres"))
	assert.Equal(t, dir, c.Dir())
	assert.True(t, c.Running())

	conn := connect(t, c)
	assert.Equal(t, 2, queryInt(t, conn, "SELECT 1+1"))
	_, err := conn.Exec(t.Context(), "CREATE TABLE survivor (id int); INSERT INTO survivor VALUES (42)")
	require.NoError(t, err)

	var maxConns, fsync, listen, sockets string
	require.NoError(t, conn.QueryRow(t.Context(),
		"SELECT current_setting('max_connections'), current_setting('fsync'), current_setting('listen_addresses'), current_setting('unix_socket_directories')",
	).Scan(&maxConns, &fsync, &listen, &sockets))
	assert.Equal(t, "300", maxConns)
	assert.Equal(t, "off", fsync)
	assert.Equal(t, "127.0.0.1", listen)
	assert.Equal(t, "", sockets)

	port := c.Port()
	begin := time.Now()
	require.NoError(t, c.Restart(t.Context()))
	t.Logf("Restart took %v", time.Since(begin).Round(time.Millisecond))
	assert.Equal(t, port, c.Port(), "Restart keeps the port")
	assert.Error(t, conn.Ping(t.Context()), "connections do not survive a restart")

	conn = connect(t, c)
	assert.Equal(t, 42, queryInt(t, conn, "SELECT id FROM survivor"))
	require.NoError(t, conn.Close(t.Context()))

	// A stopped server refuses connections until StartServer.
	require.NoError(t, c.StopServer())
	assert.False(t, c.Running())
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	_, err = pgx.Connect(ctx, c.URL("postgres"))
	cancel()
	assert.Error(t, err)
	require.NoError(t, c.StartServer(t.Context()))
	assert.Equal(t, port, c.Port())
	assert.Equal(t, 42, queryInt(t, connect(t, c), "SELECT id FROM survivor"))

	require.NoError(t, c.Stop())
	require.NoError(t, c.Stop(), "Stop is idempotent")
	_, err = os.Stat(filepath.Join(dir, "postmaster.pid"))
	assert.ErrorIs(t, err, os.ErrNotExist)

	// Same Dir again: no initdb, data survives.
	c2 := startCluster(t, opts)
	assert.Equal(t, 42, queryInt(t, connect(t, c2), "SELECT id FROM survivor"))
	require.NoError(t, c2.Stop())
}

func TestSettingsAndFixedPort(t *testing.T) {
	port, err := freePort()
	require.NoError(t, err)
	c := startCluster(t, Options{
		Dir:  filepath.Join(t.TempDir(), "data"),
		Port: port,
		Settings: map[string]string{
			"fsync":            "off",
			"MAX_CONNECTIONS":  "50",
			"application_name": "it's quoted; $HOME `x`",
		},
	})
	assert.Equal(t, port, c.Port())
	conn := connect(t, c)
	var maxConns, app string
	require.NoError(t, conn.QueryRow(t.Context(),
		"SELECT current_setting('max_connections'), current_setting('application_name')").Scan(&maxConns, &app))
	assert.Equal(t, "50", maxConns)
	assert.Equal(t, "it's quoted; $HOME `x`", app)

	// A second cluster on the same fixed port fails with the server log.
	_, err = Start(t.Context(), Options{Dir: filepath.Join(t.TempDir(), "data2"), Port: port, Settings: map[string]string{"fsync": "off"}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "server log")
	assert.Contains(t, err.Error(), "could not")
	t.Logf("expected error:\n%v", err)
}

func TestInvalidOptions(t *testing.T) {
	_, err := Start(t.Context(), Options{})
	assert.ErrorContains(t, err, "Dir is required")
	_, err = Start(t.Context(), Options{Dir: t.TempDir(), Settings: map[string]string{"port": "1"}})
	assert.ErrorContains(t, err, "managed by pglocal")
	_, err = Start(t.Context(), Options{Dir: t.TempDir(), Settings: map[string]string{"bad name": "1"}})
	assert.ErrorContains(t, err, "invalid setting name")

	notData := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(notData, "file"), nil, 0o600))
	_, err = Start(t.Context(), Options{Dir: notData})
	assert.ErrorContains(t, err, "neither empty nor a PostgreSQL data directory")
}

// TestLeftoverServer simulates a process that was killed without stopping
// its cluster, then a stale postmaster.pid naming a dead process.
func TestLeftoverServer(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	opts := Options{Dir: dir, Settings: map[string]string{"fsync": "off"}}
	orphan := startCluster(t, opts)
	_, err := connect(t, orphan).Exec(t.Context(), "CREATE TABLE t (id int)")
	require.NoError(t, err)
	orphan.disown() // its process "dies": the kernel drops its lock

	// The "killed" process never calls Stop: a new Start stops the server
	// that is still running in Dir and starts its own.
	c := startCluster(t, opts)
	conn := connect(t, c)
	assert.Equal(t, 0, queryInt(t, conn, "SELECT count(*) FROM t"))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	_, err = pgx.Connect(ctx, orphan.URL("postgres"))
	cancel()
	assert.Error(t, err, "the leftover server was stopped")
	require.NoError(t, conn.Close(t.Context()))
	require.NoError(t, c.Stop())

	// Stale postmaster.pid naming a dead process.
	dead := exec.Command("true")
	require.NoError(t, dead.Run())
	writePidFile(t, dir, dead.Process.Pid)
	c = startCluster(t, opts)
	assert.Equal(t, 0, queryInt(t, connect(t, c), "SELECT count(*) FROM t"))
	require.NoError(t, c.Stop())

	// Stale postmaster.pid naming a live process that is not postgres.
	writePidFile(t, dir, os.Getpid())
	c = startCluster(t, opts)
	assert.Equal(t, 0, queryInt(t, connect(t, c), "SELECT count(*) FROM t"))
	require.NoError(t, c.Stop())

	// StopDataDir on a stopped data directory is a no-op.
	require.NoError(t, StopDataDir(t.Context(), dir, nil))
}

// TestOwnedByALiveProcess: a second Start on a data directory whose
// Cluster is alive (another make run) is refused, naming the owner's pid
// and port, and leaves the first server running; StopDataDir refuses too.
// Once the owner stops, the data directory is free again.
func TestOwnedByALiveProcess(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	opts := Options{Dir: dir, Settings: map[string]string{"fsync": "off"}}
	first := startCluster(t, opts)
	conn := connect(t, first)

	_, err := Start(t.Context(), opts)
	require.Error(t, err)
	t.Logf("expected error: %v", err)
	require.ErrorContains(t, err, "belongs to another live process")
	require.ErrorContains(t, err, fmt.Sprintf("pid %d", os.Getpid()))
	require.ErrorContains(t, err, fmt.Sprintf("PostgreSQL on 127.0.0.1:%d", first.Port()))
	require.NotContains(t, err.Error(), "\n", "one line")
	require.Error(t, StopDataDir(t.Context(), dir, testLogger(t)))

	// The first server was left alone.
	require.NoError(t, conn.Ping(t.Context()))
	assert.Equal(t, 1, queryInt(t, conn, "SELECT 1"))

	require.NoError(t, first.Stop())
	second := startCluster(t, opts)
	assert.Equal(t, 1, queryInt(t, connect(t, second), "SELECT 1"))
}

// writePidFile writes a postmaster.pid naming pid, owned like the data
// directory (the server user when the tests run as root).
func writePidFile(t *testing.T, dir string, pid int) {
	t.Helper()
	pidFile := filepath.Join(dir, "postmaster.pid")
	require.NoError(t, os.WriteFile(pidFile, []byte(strconv.Itoa(pid)+"\n"+dir+"\n"), 0o600))
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	st := fi.Sys().(*syscall.Stat_t)
	require.NoError(t, os.Lchown(pidFile, int(st.Uid), int(st.Gid)))
}

func TestStopDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	c := startCluster(t, Options{Dir: dir, Settings: map[string]string{"fsync": "off"}})
	c.disown() // its process "died"
	require.NoError(t, StopDataDir(t.Context(), dir, testLogger(t)))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	_, err := pgx.Connect(ctx, c.URL("postgres"))
	cancel()
	assert.Error(t, err)
	assert.NoError(t, c.Stop(), "Stop succeeds when the server is already gone")
}

func TestVersionLess(t *testing.T) {
	assert.True(t, versionLess("9.6", "15"))
	assert.True(t, versionLess("14", "15"))
	assert.False(t, versionLess("16", "15"))
	assert.True(t, versionLess("15", "15.1"))
}

func TestServerOptionsQuoting(t *testing.T) {
	got := serverOptions(map[string]string{"b": "it's", "a": ""})
	assert.Equal(t, `-c 'a=' -c 'b=it'\''s'`, got)
}
