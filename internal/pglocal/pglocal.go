//go:build unix

// Package pglocal starts and stops a private PostgreSQL cluster using the
// PostgreSQL server binaries installed on the machine (initdb, pg_ctl,
// postgres). It is meant for tests and local development: the server listens
// only on 127.0.0.1, trusts every local connection and runs with the
// settings the caller asks for.
//
// Binaries are looked up in this order: Options.BinDir, the PGLOCAL_BINDIR
// environment variable, the PATH (the directory pg_ctl resolves to through
// symlinks is preferred so that all three tools come from one installation),
// and finally the highest version under /usr/lib/postgresql/*/bin.
//
// initdb, pg_ctl and postgres refuse to run as root. When the current process
// is root, pglocal runs them as an unprivileged OS user (Options.User,
// "postgres" by default), makes the data directory owned by that user and
// makes the data directory's parents traversable (o+x) for it.
//
// The server is started through pg_ctl, so it is not a child of the calling
// process: it keeps running if the caller dies without calling Stop. It stays
// in the caller's process group, so a Ctrl-C in a terminal stops it too.
// A Cluster owns its data directory while it lives: it holds an exclusive
// lock on the file Dir + ".lock" (flock, released by the kernel when the
// process dies), which names its pid and port. A Start on a data directory
// another live process owns fails and names that process; a later Start on
// a data directory whose owner died stops the leftover server first.
//
// pglocal is Unix-only.
package pglocal

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Superuser is the name of the superuser role created by initdb. Connections
// are trusted, so no password is needed.
const Superuser = "postgres"

// LogFileName is the name of the server log file written inside the data
// directory. Every start appends to it.
const LogFileName = "postgres.log"

// DefaultStartTimeout bounds how long Start and StartServer wait for the
// server to accept connections when the context has no earlier deadline.
const DefaultStartTimeout = 60 * time.Second

// Options configures Start.
type Options struct {
	// Dir is the data directory. It is created and initialized with initdb
	// when it does not exist or is empty, and it is kept across runs: a
	// later Start on the same Dir reuses the data. Required.
	Dir string

	// Port is the TCP port to listen on, on 127.0.0.1 only. 0 picks a free
	// port (a new one on every Start; Restart keeps the current one).
	Port int

	// Settings are extra server settings (postgresql.conf parameters) passed
	// to the server as "-c name=value" on every start, for example
	// {"fsync": "off"} for tests. They override pglocal's defaults
	// (max_connections=300). listen_addresses, port and
	// unix_socket_directories are managed by pglocal and cannot be set
	// here. When Settings["fsync"] is "off", initdb also runs with
	// --no-sync.
	Settings map[string]string

	// Logger receives progress messages (initdb, start, stop, timings).
	// Optional; nil discards them.
	Logger *slog.Logger

	// BinDir is the directory holding initdb, pg_ctl and postgres.
	// Optional; see the package documentation for the default lookup.
	BinDir string

	// User is the OS user that runs initdb, pg_ctl and postgres when the
	// current process is root. Ignored otherwise. Default "postgres".
	User string
}

// Cluster is a PostgreSQL server started by Start. Its methods are safe for
// concurrent use. A data directory must be used by at most one Cluster at a
// time.
type Cluster struct {
	dir     string
	logFile string
	bins    binaries
	runAs   *syscall.Credential // nil when not root
	log     *slog.Logger
	opts    string // shell-quoted "-c name=value" list for pg_ctl -o

	mu      sync.Mutex
	port    int
	running bool
	owner   *os.File // the locked Dir + ".lock", until Stop
}

type binaries struct {
	dir      string
	initdb   string
	pgCtl    string
	postgres string
}

var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// managed are settings that pglocal controls itself.
var managed = map[string]bool{
	"listen_addresses":        true,
	"port":                    true,
	"unix_socket_directories": true,
}

// Start initializes the data directory if needed, starts the server and
// waits until it accepts connections (pg_ctl -w followed by a ping loop),
// for at most DefaultStartTimeout unless ctx ends earlier. A server left
// running in Dir by an earlier, killed process is stopped first; a stale
// postmaster.pid is ignored. When Port is 0 and the picked port is taken
// before the server binds it, Start retries with another port. On failure
// the error includes the tail of the server log.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Dir == "" {
		return nil, errors.New("pglocal: Options.Dir is required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("pglocal: %w", err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("pgdata", dir)

	settings := map[string]string{"max_connections": "300"}
	for k, v := range opts.Settings {
		if !settingName.MatchString(k) {
			return nil, fmt.Errorf("pglocal: invalid setting name %q", k)
		}
		k = strings.ToLower(k) // setting names are case-insensitive
		if managed[k] {
			return nil, fmt.Errorf("pglocal: setting %q is managed by pglocal", k)
		}
		settings[k] = v
	}
	settings["listen_addresses"] = "127.0.0.1"
	settings["unix_socket_directories"] = ""

	bins, err := findBinaries(opts.BinDir)
	if err != nil {
		return nil, err
	}
	owner, err := own(dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		dir:     dir,
		logFile: filepath.Join(dir, LogFileName),
		bins:    bins,
		log:     logger,
		opts:    serverOptions(settings),
		owner:   owner,
	}
	ok := false
	defer func() {
		if !ok {
			c.disown()
		}
	}()
	if os.Geteuid() == 0 {
		name := opts.User
		if name == "" {
			name = "postgres"
		}
		if c.runAs, err = lookupCredential(name); err != nil {
			return nil, err
		}
	}

	if err := c.prepareDir(); err != nil {
		return nil, err
	}
	if err := c.initdbIfNeeded(ctx, strings.EqualFold(settings["fsync"], "off")); err != nil {
		return nil, err
	}
	if err := c.stopLeftover(ctx); err != nil {
		return nil, err
	}

	if opts.Port != 0 {
		c.port = opts.Port
		if err := c.start(ctx); err != nil {
			return nil, err
		}
		ok = true
		return c, nil
	}
	const attempts = 5
	for i := 1; ; i++ {
		if c.port, err = freePort(); err != nil {
			return nil, fmt.Errorf("pglocal: pick a free port: %w", err)
		}
		err = c.start(ctx)
		if err == nil {
			ok = true
			return c, nil
		}
		if i == attempts || ctx.Err() != nil || !errors.Is(err, errPortInUse) {
			return nil, err
		}
		logger.Info("pglocal: port taken, retrying with another one", "port", c.port)
	}
}

// Dir returns the absolute path of the data directory.
func (c *Cluster) Dir() string { return c.dir }

// LogFile returns the path of the server log file.
func (c *Cluster) LogFile() string { return c.logFile }

// BinDir returns the directory of the PostgreSQL binaries in use.
func (c *Cluster) BinDir() string { return c.bins.dir }

// Port returns the TCP port the server listens on (on 127.0.0.1).
func (c *Cluster) Port() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.port
}

// URL returns a connection string for database dbname as the superuser,
// for example postgres://postgres@127.0.0.1:5432/dbname?sslmode=disable.
func (c *Cluster) URL(dbname string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.urlLocked(dbname)
}

// Running reports whether the server was started and not stopped through
// this Cluster.
func (c *Cluster) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running
}

// Stop stops the server (pg_ctl stop -m fast), disconnecting all clients,
// and gives up the data directory. It is idempotent and also succeeds when
// the server already died. The data directory is kept.
func (c *Cluster) Stop() error {
	err := c.StopServer()
	c.disown()
	return err
}

// StopServer stops the server like Stop; use StartServer to start it again
// on the same port, for example to keep Postgres down for a while in a
// fault test.
func (c *Cluster) StopServer() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.running {
		return nil
	}
	if err := c.stop(context.Background(), "fast"); err != nil {
		return err
	}
	c.running = false
	return nil
}

// StartServer starts a stopped server again on the same port and waits until
// it accepts connections. It is a no-op when the server is running.
func (c *Cluster) StartServer(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return nil
	}
	return c.startLocked(ctx)
}

// Restart stops the server and starts it again on the same port, which
// closes every client connection, like a real Postgres restart.
func (c *Cluster) Restart(ctx context.Context) error {
	if err := c.StopServer(); err != nil {
		return err
	}
	return c.StartServer(ctx)
}

// StopDataDir stops a server running in data directory dir, if any, with
// pg_ctl stop -m immediate. It is meant to clean up servers left behind by
// killed processes: it fails when a live process owns dir (see Start). It
// does nothing when no server runs there, and it never signals a process
// that is not a postgres server. When the current process
// is root, pg_ctl runs as the "postgres" OS user.
func StopDataDir(ctx context.Context, dir string, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if _, err := os.Stat(filepath.Join(dir, "postmaster.pid")); err != nil {
		return nil //nolint:nilerr // no pid file: no server to stop
	}
	bins, err := findBinaries("")
	if err != nil {
		return err
	}
	owner, err := own(dir)
	if err != nil {
		return err
	}
	c := &Cluster{dir: dir, bins: bins, log: logger.With("pgdata", dir), owner: owner}
	defer c.disown()
	if os.Geteuid() == 0 {
		if c.runAs, err = lookupCredential("postgres"); err != nil {
			return err
		}
	}
	return c.stopLeftoverMode(ctx, "immediate")
}

func (c *Cluster) start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.startLocked(ctx)
}

var errPortInUse = errors.New("port already in use")

func (c *Cluster) startLocked(ctx context.Context) error {
	begin := time.Now()
	ctx, cancel := withDefaultTimeout(ctx, DefaultStartTimeout)
	defer cancel()
	timeout := DefaultStartTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	secs := max(int(timeout.Seconds()), 1)

	var logOffset int64
	if fi, err := os.Stat(c.logFile); err == nil {
		logOffset = fi.Size()
	}
	opts := c.opts + " -c port=" + strconv.Itoa(c.port)
	out, err := c.run(ctx, c.bins.pgCtl, "start", "-w", "-t", strconv.Itoa(secs),
		"-D", c.dir, "-l", c.logFile, "-p", c.bins.postgres, "-o", opts)
	if err != nil {
		tail := readTail(c.logFile, logOffset)
		// The postmaster may still be starting up (timeout, cancellation):
		// make sure nothing is left behind.
		_ = c.stop(context.Background(), "immediate")
		err = fmt.Errorf("pglocal: start server on port %d: %w\npg_ctl output:\n%s\nserver log (%s):\n%s",
			c.port, err, indent(out), c.logFile, indent(tail))
		if strings.Contains(tail, "Address already in use") || strings.Contains(tail, "could not bind") {
			err = fmt.Errorf("%w: %w", errPortInUse, err)
		}
		return err
	}
	if err := c.waitReady(ctx); err != nil {
		tail := readTail(c.logFile, logOffset)
		_ = c.stop(context.Background(), "immediate")
		return fmt.Errorf("pglocal: server on port %d does not accept connections: %w\nserver log (%s):\n%s",
			c.port, err, c.logFile, indent(tail))
	}
	c.running = true
	if c.owner != nil {
		writeOwner(c.owner, c.port)
	}
	c.log.Info("pglocal: server started", "port", c.port, "took", time.Since(begin).Round(time.Millisecond))
	return nil
}

// own locks dir + ".lock" for this process, or fails naming the live
// process that holds it.
func own(dir string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o750); err != nil {
		return nil, fmt.Errorf("pglocal: %w", err)
	}
	path := dir + ".lock"
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644) //nolint:gosec // the path is the caller's data directory
	if err != nil {
		return nil, fmt.Errorf("pglocal: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil { //nolint:gosec // a file descriptor fits in an int
		holder, _ := io.ReadAll(io.LimitReader(f, 256))
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("pglocal: the PostgreSQL in %s belongs to another live process: %s (another make run?); stop that process first, or use another data directory",
				dir, describeOwner(string(holder)))
		}
		return nil, fmt.Errorf("pglocal: lock %s: %w", path, err)
	}
	writeOwner(f, 0)
	return f, nil
}

// describeOwner renders the lock file's "pid=N port=P" for a person.
func describeOwner(s string) string {
	fields := map[string]string{}
	for f := range strings.FieldsSeq(s) {
		if k, v, ok := strings.Cut(f, "="); ok {
			fields[k] = v
		}
	}
	desc := "pid " + cmp.Or(fields["pid"], "unknown")
	if fields["cmd"] != "" {
		desc += " (" + fields["cmd"] + ")"
	}
	if fields["port"] != "" {
		desc += ", PostgreSQL on 127.0.0.1:" + fields["port"]
	}
	return desc
}

// writeOwner records this process (and the server's port, once known) in
// the lock file f, for the message of a Start that is refused.
func writeOwner(f *os.File, port int) {
	line := fmt.Sprintf("pid=%d cmd=%s", os.Getpid(), filepath.Base(os.Args[0]))
	if port != 0 {
		line += fmt.Sprintf(" port=%d", port)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(line+"\n"), 0)
	}
}

// disown releases the data directory's lock (closing the file unlocks it).
func (c *Cluster) disown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.owner != nil {
		_ = c.owner.Close()
		c.owner = nil
	}
}

// waitReady connects and pings until the server answers or ctx ends.
func (c *Cluster) waitReady(ctx context.Context) error {
	cfg, err := pgx.ParseConfig(c.urlLocked("postgres"))
	if err != nil {
		return err
	}
	var lastErr error
	for {
		attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.ConnectConfig(attempt, cfg)
		if err == nil {
			err = conn.Ping(attempt)
			_ = conn.Close(context.Background())
		}
		cancel()
		if err == nil {
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), lastErr)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *Cluster) urlLocked(dbname string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(Superuser),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)),
		Path:     "/" + dbname,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// stop runs pg_ctl stop with the given mode and treats "no server running"
// as success.
func (c *Cluster) stop(ctx context.Context, mode string) error {
	begin := time.Now()
	out, err := c.run(ctx, c.bins.pgCtl, "stop", "-w", "-t", "60", "-D", c.dir, "-m", mode)
	if err != nil {
		if !c.serverRunning(ctx) {
			return nil
		}
		return fmt.Errorf("pglocal: stop server: %w\n%s", err, indent(out))
	}
	c.log.Info("pglocal: server stopped", "mode", mode, "took", time.Since(begin).Round(time.Millisecond))
	return nil
}

// serverRunning asks pg_ctl status whether a server runs in the data
// directory (exit status 0 means running, 3 not running).
func (c *Cluster) serverRunning(ctx context.Context) bool {
	_, err := c.run(ctx, c.bins.pgCtl, "status", "-D", c.dir)
	return err == nil
}

// stopLeftover handles a postmaster.pid left in the data directory by an
// earlier run: a live postgres server is stopped (fast), a pid file naming
// a dead process is left to the server, which ignores it, and a pid file
// naming a live process that is not postgres (pid reuse) is removed, since
// the server would refuse to start otherwise.
func (c *Cluster) stopLeftover(ctx context.Context) error {
	return c.stopLeftoverMode(ctx, "fast")
}

func (c *Cluster) stopLeftoverMode(ctx context.Context, mode string) error {
	pidFile := filepath.Join(c.dir, "postmaster.pid")
	data, err := os.ReadFile(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pglocal: %w", err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		c.log.Warn("pglocal: removing unreadable postmaster.pid")
		return removeFile(pidFile)
	}
	alive, isPG := processInfo(pid, c.dir)
	switch {
	case !alive:
		c.log.Info("pglocal: ignoring stale postmaster.pid", "pid", pid)
		return nil
	case isPG:
		c.log.Warn("pglocal: stopping server left running in the data directory", "pid", pid)
		if err := c.stop(ctx, mode); err != nil {
			return err
		}
		return nil
	default:
		c.log.Warn("pglocal: postmaster.pid names a live process that is not this data directory's server; removing it", "pid", pid)
		return removeFile(pidFile)
	}
}

func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("pglocal: %w", err)
	}
	return nil
}

// processInfo reports whether pid is alive and whether it is a postgres
// server running in data directory dir. Where /proc is available, the
// process's working directory (a postmaster chdirs into its data directory)
// must be dir, which guards against the pid having been reused by a
// process of another cluster.
func processInfo(pid int, dir string) (alive, isOurPostgres bool) {
	err := syscall.Kill(pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false, false
	}
	var name string
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
		name = strings.TrimSpace(string(b))
	} else if out, err := exec.CommandContext(context.Background(), "ps", "-o", "comm=", "-p", strconv.Itoa(pid)).Output(); err == nil {
		name = filepath.Base(strings.TrimSpace(string(out)))
	}
	if !strings.HasPrefix(name, "postgres") && !strings.HasPrefix(name, "postmaster") {
		return true, false
	}
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil {
		want, err := filepath.EvalSymlinks(dir)
		if err != nil {
			want = dir
		}
		return true, filepath.Clean(cwd) == filepath.Clean(want)
	}
	return true, true
}

// prepareDir creates the data directory and, when root, hands it to the
// server user and makes its parents traversable for that user.
func (c *Cluster) prepareDir() error {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return fmt.Errorf("pglocal: create data directory: %w", err)
	}
	if c.runAs == nil {
		return nil
	}
	empty, err := isEmptyDir(c.dir)
	if err != nil {
		return fmt.Errorf("pglocal: %w", err)
	}
	if empty {
		if err := os.Chown(c.dir, int(c.runAs.Uid), int(c.runAs.Gid)); err != nil {
			return fmt.Errorf("pglocal: chown data directory: %w", err)
		}
		if err := os.Chmod(c.dir, 0o700); err != nil {
			return fmt.Errorf("pglocal: %w", err)
		}
	}
	for p := filepath.Dir(c.dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("pglocal: %w", err)
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		traversable := fi.Mode().Perm()&0o001 != 0 ||
			(st != nil && st.Uid == c.runAs.Uid && fi.Mode().Perm()&0o100 != 0) ||
			(st != nil && st.Gid == c.runAs.Gid && fi.Mode().Perm()&0o010 != 0)
		if !traversable {
			mode := fi.Mode().Perm() | 0o001
			c.log.Info("pglocal: making directory traversable for the server user", "dir", p, "mode", fmt.Sprintf("%#o", mode))
			if err := os.Chmod(p, mode); err != nil {
				return fmt.Errorf("pglocal: make %s traversable for user %d: %w", p, c.runAs.Uid, err)
			}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

func (c *Cluster) initdbIfNeeded(ctx context.Context, noSync bool) error {
	if _, err := os.Stat(filepath.Join(c.dir, "PG_VERSION")); err == nil {
		return nil
	}
	empty, err := isEmptyDir(c.dir)
	if err != nil {
		return fmt.Errorf("pglocal: %w", err)
	}
	if !empty {
		return fmt.Errorf("pglocal: %s is neither empty nor a PostgreSQL data directory (no PG_VERSION); remove it or pick another Dir", c.dir)
	}
	begin := time.Now()
	args := []string{"-D", c.dir, "-U", Superuser, "--auth=trust", "-E", "UTF8", "--no-locale"}
	if noSync {
		args = append(args, "--no-sync")
	}
	out, err := c.run(ctx, c.bins.initdb, args...)
	if err != nil {
		return fmt.Errorf("pglocal: initdb: %w\n%s", err, indent(out))
	}
	c.log.Info("pglocal: initdb done", "took", time.Since(begin).Round(time.Millisecond))
	return nil
}

func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return false, err
}

// run runs a PostgreSQL tool as the server user and returns its combined
// output.
func (c *Cluster) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = c.dir
	cmd.Env = toolEnv()
	if c.runAs != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.runAs}
	}
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	// pg_ctl redirects the server's output to the log file, but make sure
	// an inherited pipe can never block us.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return buf.String(), err
}

// toolEnv is the environment for PostgreSQL tools: the current one without
// libpq/server variables that could redirect them, with C messages.
func toolEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "LANG=C")
}

func lookupCredential(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("pglocal: running as root, PostgreSQL needs an unprivileged OS user %q: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("pglocal: user %q: %w", name, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("pglocal: user %q is root", name)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// serverOptions renders settings as "-c name=value" options for pg_ctl -o,
// which passes them through /bin/sh, hence the quoting.
func serverOptions(settings map[string]string) string {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("-c ")
		b.WriteString(shellQuote(k + "=" + settings[k]))
	}
	return b.String()
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func freePort() (int, error) {
	l, err := new(net.ListenConfig).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func findBinaries(binDir string) (binaries, error) {
	if binDir == "" {
		binDir = os.Getenv("PGLOCAL_BINDIR")
	}
	if binDir != "" {
		b, ok := binariesIn(binDir)
		if !ok {
			return binaries{}, fmt.Errorf("pglocal: initdb, pg_ctl or postgres missing in %s", binDir)
		}
		return b, nil
	}
	// PATH: prefer the installation pg_ctl belongs to.
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			if b, ok := binariesIn(filepath.Dir(real)); ok {
				return b, nil
			}
		}
	}
	var b binaries
	var missing bool
	for _, t := range []struct {
		name string
		dst  *string
	}{{"initdb", &b.initdb}, {"pg_ctl", &b.pgCtl}, {"postgres", &b.postgres}} {
		p, err := exec.LookPath(t.name)
		if err != nil {
			missing = true
			break
		}
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		*t.dst = p
	}
	if !missing {
		b.dir = filepath.Dir(b.pgCtl)
		return b, nil
	}
	// Debian/Ubuntu layout.
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		return versionLess(filepath.Base(filepath.Dir(dirs[i])), filepath.Base(filepath.Dir(dirs[j])))
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if b, ok := binariesIn(dirs[i]); ok {
			return b, nil
		}
	}
	return binaries{}, errors.New("pglocal: PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH nor in /usr/lib/postgresql/*/bin; install the PostgreSQL server or set PGLOCAL_BINDIR")
}

func binariesIn(dir string) (binaries, bool) {
	b := binaries{
		dir:      dir,
		initdb:   filepath.Join(dir, "initdb"),
		pgCtl:    filepath.Join(dir, "pg_ctl"),
		postgres: filepath.Join(dir, "postgres"),
	}
	for _, p := range []string{b.initdb, b.pgCtl, b.postgres} {
		fi, err := os.Stat(p)
		if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return binaries{}, false
		}
	}
	return b, true
}

// versionLess compares dotted version strings numerically ("9.6" < "15").
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		x, errX := strconv.Atoi(as[i])
		y, errY := strconv.Atoi(bs[i])
		if errX != nil || errY != nil {
			if as[i] != bs[i] {
				return as[i] < bs[i]
			}
			continue
		}
		if x != y {
			return x < y
		}
	}
	return len(as) < len(bs)
}

// readTail returns up to the last 8 KiB of the log written since offset.
func readTail(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	const maxTail = 8 << 10
	if fi.Size() < offset {
		offset = 0
	}
	if fi.Size()-offset > maxTail {
		offset = fi.Size() - maxTail
	}
	b, err := io.ReadAll(io.NewSectionReader(f, offset, fi.Size()-offset))
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	if len(b) == 0 {
		return "(empty)"
	}
	return string(b)
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "  (none)"
	}
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}

func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}
