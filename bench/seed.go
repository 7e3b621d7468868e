package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/internal/pglocal"
)

// seedQueue is the BullMQ queue of the seed design.
const seedQueue = "ai"

// seedFalKey is the key the seed's worker sends to its fal simulator.
const seedFalKey = "seed-fal-key"

// seedSystem is the studio's seed design, as bench/seed copies it: the
// Node route (verify the JWT, reserve_credit in Postgres, add a BullMQ
// job), redis-server with every write fsynced (appendfsync always), the Node
// BullMQ worker (fal, then confirm_credit), its own Postgres cluster, and a
// fal simulator process (cmd/falsim, fast) standing in for fal.
type seedSystem struct {
	e       *env
	dir     string // bench/seed of this checkout
	pg      *pglocal.Cluster
	pool    *pgxpool.Pool
	dbURL   string
	redis   *proc
	redisAt string
	rconn   *redisConn
	secret  string
	tokens  string

	route, worker, falsim *proc
	routeURL              string
}

// seedTools checks that what the seed design needs is installed: node, the
// locked npm packages in bench/seed (bench/setup.sh installs both),
// redis-server and wrk. It returns bench/seed's path.
func seedTools(ctx context.Context) (string, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, "bench", "seed")
	var missing []string
	for _, t := range []string{"node", "redis-server", "wrk"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "bullmq")); err != nil {
		missing = append(missing, "bench/seed/node_modules (npm ci)")
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("missing %v: run bench/setup.sh (as root it installs them)", missing)
	}
	return dir, nil
}

// startSeed starts the seed's Postgres (settings as given), applies
// bench/seed/schema.sql, funds users and starts redis-server. The Node
// processes start per run (start).
func (e *env) startSeed(ctx context.Context, dir string, settings map[string]string, users []user) (_ *seedSystem, err error) {
	s := &seedSystem{e: e, dir: dir}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if s.pg, err = pglocal.Start(ctx, pglocal.Options{Dir: filepath.Join(e.dir, "seed-pg"), Settings: settings}); err != nil {
		return nil, err
	}
	if err := (&Postgres{Cluster: s.pg}).admin(ctx, "CREATE DATABASE seed"); err != nil {
		return nil, err
	}
	s.dbURL = s.pg.URL("seed")
	if s.pool, err = openPool(ctx, s.dbURL, 4); err != nil {
		return nil, err
	}
	schema, err := os.ReadFile(filepath.Join(dir, "schema.sql"))
	if err != nil {
		return nil, err
	}
	if _, err := s.pool.Exec(ctx, string(schema), pgx.QueryExecModeSimpleProtocol); err != nil {
		return nil, fmt.Errorf("seed schema: %w", err)
	}
	ids := make([]string, len(users))
	for i, u := range users {
		ids[i] = u.ID
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO credit_accounts (user_id, available) SELECT unnest($1::uuid[]), $2`, ids, userCredits); err != nil {
		return nil, err
	}
	if _, err := s.pool.Exec(ctx, `VACUUM ANALYZE`); err != nil {
		return nil, err
	}

	s.secret = randomHex(32)
	seedUsers := make([]user, len(users))
	for i, u := range users {
		seedUsers[i] = user{ID: u.ID, Token: mustToken(s.secret, u.ID)}
	}
	s.tokens = filepath.Join(e.dir, "seed-tokens.txt")
	if err := writeTokens(s.tokens, seedUsers); err != nil {
		return nil, err
	}

	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s.redisAt = "127.0.0.1:" + strconv.Itoa(port)
	rdir := filepath.Join(e.dir, "seed-redis")
	if err := os.MkdirAll(rdir, 0o750); err != nil {
		return nil, err
	}
	s.redis, err = startProc("seed-redis", e.logDir(), rdir, nil, "redis-server",
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", rdir, "--protected-mode", "no",
		"--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction",
		"--daemonize", "no")
	if err != nil {
		return nil, err
	}
	err = waitFor(ctx, 20*time.Second, func() (bool, error) {
		if s.redis.exited() {
			return false, fmt.Errorf("redis-server exited:\n%s", s.redis.logTail(10))
		}
		c, err := dialRedis(ctx, s.redisAt)
		if err != nil {
			return false, nil //nolint:nilerr // not listening yet
		}
		if _, err := c.do("PING"); err != nil {
			c.close()
			return false, nil //nolint:nilerr // loading
		}
		s.rconn = c
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (s *seedSystem) name() string       { return "seed" }
func (s *seedSystem) url() string        { return s.routeURL }
func (s *seedSystem) tokensFile() string { return s.tokens }
func (s *seedSystem) db() *pgxpool.Pool  { return s.pool }

// start starts the fal simulator, the worker and the route, fresh.
func (s *seedSystem) start(ctx context.Context) error {
	e := s.e
	falPort, err := freePort()
	if err != nil {
		return err
	}
	falAddr := "127.0.0.1:" + strconv.Itoa(falPort)
	if s.falsim, err = startProc("seed-falsim", e.logDir(), "", nil, e.falsimBin, "-fast", "-addr", falAddr); err != nil {
		return err
	}
	if err := waitHTTP(ctx, "http://"+falAddr+"/healthz", s.falsim); err != nil {
		return err
	}
	host, port := splitHostPort(s.redisAt)
	common := map[string]string{"DATABASE_URL": s.dbURL, "REDIS_HOST": host, "REDIS_PORT": port, "QUEUE_NAME": seedQueue,
		"NODE_ENV": "production"}
	wenv := map[string]string{"FAL_URL": "http://" + falAddr, "FAL_KEY": seedFalKey, "CONCURRENCY": strconv.Itoa(e.cfg.SeedConcurrency)}
	for k, v := range common {
		wenv[k] = v
	}
	if s.worker, err = startProc("seed-worker", e.logDir(), s.dir, wenv, "node", "worker.js"); err != nil {
		return err
	}
	routePort, err := freePort()
	if err != nil {
		return err
	}
	renv := map[string]string{"PORT": strconv.Itoa(routePort), "JWT_SECRET": s.secret}
	for k, v := range common {
		renv[k] = v
	}
	if s.route, err = startProc("seed-route", e.logDir(), s.dir, renv, "node", "route.js"); err != nil {
		return err
	}
	s.routeURL = "http://127.0.0.1:" + strconv.Itoa(routePort)
	if err := waitHTTP(ctx, s.routeURL+"/healthz", s.route); err != nil {
		return err
	}
	// The worker says it is ready once it listens on its queue.
	return waitFor(ctx, 30*time.Second, func() (bool, error) {
		if s.worker.exited() {
			return false, fmt.Errorf("seed worker exited:\n%s", s.worker.logTail(10))
		}
		b, _ := os.ReadFile(s.worker.logPath)
		return bytes.Contains(b, []byte("seed worker ready")), nil
	})
}

// stop stops the Node processes and the fal simulator; Redis and Postgres
// keep running for the next run.
func (s *seedSystem) stop() error {
	var errs []error
	for _, p := range []*proc{s.route, s.worker, s.falsim} {
		errs = append(errs, p.stop(20*time.Second))
	}
	s.route, s.worker, s.falsim = nil, nil, nil
	return errors.Join(errs...)
}

func (s *seedSystem) backlog(context.Context) (int, error) { return s.rconn.bullBacklog(seedQueue) }

func (s *seedSystem) drained(ctx context.Context) (bool, error) {
	n, err := s.backlog(ctx)
	return n == 0, err
}

// cpu is the CPU time used so far by each process of the system; the fal
// simulator is reported apart (it stands in for fal, which is not the
// system's cost).
func (s *seedSystem) cpu() map[string]time.Duration {
	m := map[string]time.Duration{"postgres": clusterCPU(s.pg.Dir())}
	for name, p := range map[string]*proc{"route": s.route, "worker": s.worker, "redis": s.redis, falsimPart: s.falsim} {
		if p != nil {
			m[name], _ = procCPU(p.pid(), false)
		}
	}
	return m
}

func (s *seedSystem) close() {
	_ = s.stop()
	if s.rconn != nil {
		s.rconn.close()
	}
	if s.redis != nil {
		_ = s.redis.stop(20 * time.Second)
	}
	if s.pool != nil {
		s.pool.Close()
	}
	if s.pg != nil {
		_ = s.pg.Stop()
	}
}
