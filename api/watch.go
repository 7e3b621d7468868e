package api

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/jackc/pgx/v5"

	"github.com/aiqueue/aiqueue/jobs"
)

// StateChannel is the notification channel on which the database sends the
// id of a watched AI job when something the studio sees of it changed: its
// state, or fal's progress (migrations/sql/00005_api.sql).
const StateChannel = "aiqueue_job_state"

// WatcherApplicationName is the application_name of the Watcher's
// connection, so a DBA can tell it apart in pg_stat_activity.
const WatcherApplicationName = "aiqueue-watch"

// Watcher holds one LISTEN connection for the whole process and wakes the
// subscribers of a job when the job changes in a way the studio sees.
// Long polls and event streams subscribe here instead of each holding a
// connection or polling the table. When the connection drops it reconnects
// with back-off and then wakes every subscriber, since notifications sent
// in between are lost; subscribers re-read the job when woken.
//
// The database notifies only about jobs someone watches: the Watcher
// records the jobs its subscribers watch in job_watchers, so the commits of
// jobs nobody watches never wait on Postgres's notify lock.
type Watcher struct {
	config *pgx.ConnConfig
	logger *slog.Logger
	// token names this Watcher's rows in job_watchers.
	token string

	// regMu orders the recording of watched jobs with the subscriptions,
	// and guards reg, the connection that records them.
	regMu sync.Mutex
	reg   *pgx.Conn

	mu   sync.Mutex
	subs map[int64]map[*Subscription]struct{}
	// Versions: seq counts the wake-ups; changed holds, per watched job,
	// the seq of its last wake-up (or of its first subscription), and
	// reset the seq of the last wake-up of every job (Version).
	seq     uint64
	changed map[int64]uint64
	reset   uint64

	// recheck: after recording newly watched jobs, their subscribers are
	// woken again after each of these delays (see Subscribe).
	recheck []time.Duration

	connected     atomic.Bool
	notifications atomic.Int64
}

// defaultRecheck are the delays after which the subscribers of a newly
// watched job are woken once more. A transaction that changed the job
// before the record was visible to it found nobody watching and sends no
// notification; when it commits only after the subscriber's first read,
// the change would wait for the next one (a job's final state: the long
// poll's whole wait). Such a transaction was already running when the
// record committed, so it commits soon after: the re-reads see it.
var defaultRecheck = []time.Duration{100 * time.Millisecond, time.Second, 5 * time.Second}

// NewWatcher returns a Watcher that connects with a copy of config. Call
// Run to start it.
func NewWatcher(config *pgx.ConnConfig, logger *slog.Logger) *Watcher {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg := config.Copy()
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["application_name"] = WatcherApplicationName
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > 5*time.Second {
		cfg.ConnectTimeout = 5 * time.Second
	}
	return &Watcher{config: cfg, logger: logger, token: uuid.NewString(), subs: map[int64]map[*Subscription]struct{}{}, changed: map[int64]uint64{},
		recheck: defaultRecheck}
}

// Subscription receives a value on C (buffered, never blocks the Watcher)
// after one of its jobs may have changed. Close it when done.
type Subscription struct {
	C <-chan struct{}

	c   chan struct{}
	w   *Watcher
	ids []int64
	// notified: a notification (or a reconnect) woke it since the last
	// Notified, not only a re-check.
	notified atomic.Bool
}

// Notified reports whether a notification of a change (or the listener's
// reconnect) woke the subscription since the last call, and clears it. A
// wake-up without one is the re-check of a newly watched job
// (defaultRecheck): only a change of state is news then, since a
// transaction that missed the record sent no notification for it.
func (s *Subscription) Notified() bool { return s.notified.Swap(false) }

// Subscribe starts watching jobs ids (River job ids): one job for a job's
// long poll or stream, every job of a batch for the batch's. The jobs are
// recorded as watched before Subscribe returns. Subscribe before reading
// them, so a change between the read and the wait is not lost: one
// committed while the job was being recorded wakes the subscription a
// little later (defaultRecheck).
func (w *Watcher) Subscribe(ids ...int64) *Subscription {
	c := make(chan struct{}, 1)
	s := &Subscription{C: c, c: c, w: w, ids: ids}
	w.regMu.Lock()
	defer w.regMu.Unlock()
	w.mu.Lock()
	var first []int64
	for _, id := range ids {
		set := w.subs[id]
		if set == nil {
			set = map[*Subscription]struct{}{}
			w.subs[id] = set
			w.changed[id] = w.seq
		}
		if _, ok := set[s]; ok {
			continue // the same id twice
		}
		set[s] = struct{}{}
		if len(set) == 1 {
			first = append(first, id)
		}
	}
	w.mu.Unlock()
	if len(first) > 0 {
		w.record(`INSERT INTO job_watchers (job_id, watcher)
			SELECT id, $2 FROM unnest($1::bigint[]) AS id ON CONFLICT DO NOTHING`, first)
		for _, d := range w.recheck {
			time.AfterFunc(d, func() {
				for _, id := range first {
					w.wakeJob(id, false)
				}
			})
		}
	}
	return s
}

// Version is a number that grows each time the watcher wakes the
// subscribers of job id (an API job id): a read of the job that began at
// version v shows every change the watcher announced, as long as the
// version is still v. For a job nobody watches it is the newest version.
// A nil Watcher's version is always 0. Subscribers share reads with it
// (Server.rereadJob).
func (w *Watcher) Version(id string) uint64 {
	if w == nil {
		return 0
	}
	n, ok := jobs.JobID(id)
	w.mu.Lock()
	defer w.mu.Unlock()
	v, watched := w.changed[n]
	if !ok || !watched {
		return w.seq // not watched: only a read from now on is current
	}
	return max(v, w.reset)
}

// Close stops the subscription.
func (s *Subscription) Close() {
	w := s.w
	w.regMu.Lock()
	defer w.regMu.Unlock()
	w.mu.Lock()
	var last []int64
	for _, id := range s.ids {
		set := w.subs[id]
		if set == nil {
			continue
		}
		if _, ok := set[s]; !ok {
			continue // already closed, or the same id twice
		}
		delete(set, s)
		if len(set) == 0 {
			delete(w.subs, id)
			delete(w.changed, id)
			last = append(last, id)
		}
	}
	w.mu.Unlock()
	if len(last) > 0 {
		w.record(`DELETE FROM job_watchers WHERE job_id = ANY($1) AND watcher = $2`, last)
	}
}

// recordTimeout bounds recording a watched job.
const recordTimeout = 2 * time.Second

// record runs sql (with the job ids and this Watcher's token) on the
// registration connection, opening it when needed; regMu is held. A
// failure is logged: the subscriber then hears of the job's changes only
// when it reads it again.
func (w *Watcher) record(sql string, ids []int64) {
	ctx, cancel := context.WithTimeout(context.Background(), recordTimeout)
	defer cancel()
	if w.reg == nil || w.reg.IsClosed() {
		cfg := w.config.Copy()
		cfg.RuntimeParams["application_name"] = WatcherApplicationName + "-register"
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			w.logger.WarnContext(ctx, "could not record watched jobs", slog.Int("jobs", len(ids)), slog.Any("error", err))
			return
		}
		w.reg = conn
	}
	// Without a WAL flush: a record lost in a database crash costs only
	// notifications, and the LISTEN reconnect wakes everyone anyway.
	b := &pgx.Batch{}
	b.Queue(`SELECT set_config('synchronous_commit', 'off', false)`)
	b.Queue(sql, ids, w.token)
	if err := w.reg.SendBatch(ctx, b).Close(); err != nil {
		w.logger.WarnContext(ctx, "could not record watched jobs", slog.Int("jobs", len(ids)), slog.Any("error", err))
		_ = w.reg.Close(ctx)
		w.reg = nil
	}
}

func (s *Subscription) wake() {
	select {
	case s.c <- struct{}{}:
	default: // a wake-up is already pending
	}
}

func (w *Watcher) wake(id int64) { w.wakeJob(id, true) }

// wakeJob wakes the subscribers of job id: notified for a notification,
// not for a re-check. Either way the job's version moves, so a read shared
// from before is not taken for a new one.
func (w *Watcher) wakeJob(id int64, notified bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seq++
	if _, ok := w.changed[id]; ok {
		w.changed[id] = w.seq
	}
	for s := range w.subs[id] {
		if notified {
			s.notified.Store(true)
		}
		s.wake()
	}
}

func (w *Watcher) wakeAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seq++
	w.reset = w.seq
	for _, set := range w.subs {
		for s := range set {
			s.notified.Store(true)
			s.wake() // a subscription of several jobs is woken once: C holds one value
		}
	}
}

// Connected reports whether the LISTEN connection is up.
func (w *Watcher) Connected() bool { return w.connected.Load() }

// Notifications is the number of notifications received so far.
func (w *Watcher) Notifications() int64 { return w.notifications.Load() }

// Subscribers is the number of open subscriptions.
func (w *Watcher) Subscribers() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	subs := map[*Subscription]struct{}{}
	for _, set := range w.subs {
		for s := range set {
			subs[s] = struct{}{}
		}
	}
	return len(subs)
}

// Run listens until ctx ends, reconnecting after failures with back-off
// from 100 ms to 5 s.
func (w *Watcher) Run(ctx context.Context) {
	defer func() {
		w.regMu.Lock()
		defer w.regMu.Unlock()
		if w.reg != nil {
			closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = w.reg.Close(closeCtx)
			cancel()
			w.reg = nil
		}
	}()
	const maxBackoff = 5 * time.Second
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		began := time.Now()
		err := w.listen(ctx)
		w.connected.Store(false)
		if ctx.Err() != nil {
			return
		}
		if time.Since(began) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		w.logger.WarnContext(ctx, "job state listener disconnected; reconnecting",
			slog.String("error", err.Error()), slog.Duration("backoff", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// idleCheck is how long the listener waits for a notification before it
// pings the connection, so a silently dead connection is noticed.
const idleCheck = 30 * time.Second

func (w *Watcher) listen(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, w.config)
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+StateChannel); err != nil {
		return err
	}
	w.wakeAll() // whatever changed while we were not listening
	w.connected.Store(true)
	w.logger.DebugContext(ctx, "job state listener connected")
	for {
		waitCtx, cancel := context.WithTimeout(ctx, idleCheck)
		n, err := conn.WaitForNotification(waitCtx)
		cancel()
		switch {
		case err == nil:
			w.notifications.Add(1)
			if id, perr := strconv.ParseInt(n.Payload, 10, 64); perr == nil {
				w.wake(id)
			}
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded) && !conn.IsClosed():
			pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := conn.Ping(pingCtx)
			cancel()
			if err != nil {
				return err
			}
		default:
			return err
		}
	}
}
