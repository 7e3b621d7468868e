package dispatch

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aiqueue/aiqueue/jobs"
)

// Config is the dispatch of one server process.
type Config struct {
	Pool *pgxpool.Pool
	Fal  Fal
	// Capacities are the slots of each key, in key order
	// (FAL_KEY_MAX_IN_FLIGHT).
	Capacities []int
	Catalog    *jobs.Catalog
	Logger     *slog.Logger
	// Caps are the shares of the slots the lower queues may hold (default
	// DefaultCaps).
	Caps   Caps
	Worker WorkerConfig
	// Client configures River; its Worker is filled in.
	Client ClientConfig
}

// Dispatch is the line, the worker and the River client of one process.
type Dispatch struct {
	Line   *Line
	Worker *Worker
	River  *river.Client[pgx.Tx]

	pool       *pgxpool.Pool
	log        *slog.Logger
	capacities []int
	work       bool
}

// New builds the dispatch of cfg; Start starts it.
func New(cfg Config) (*Dispatch, error) {
	if cfg.Caps == (Caps{}) {
		cfg.Caps = DefaultCaps
	}
	if err := cfg.Caps.Validate(); err != nil {
		return nil, err
	}
	if len(cfg.Capacities) == 0 {
		return nil, fmt.Errorf("dispatch: no fal key capacities")
	}
	line := NewLine(cfg.Pool, cfg.Caps, cfg.Logger)
	cfg.Worker.RescueAfter = cmp.Or(cfg.Client.RescueAfter, DefaultRescueAfter)
	worker := NewWorker(cfg.Pool, cfg.Fal, cfg.Catalog, line, cfg.Logger, cfg.Worker)
	cfg.Client.Worker = worker
	client, err := NewClient(cfg.Pool, cfg.Client)
	if err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Dispatch{Line: line, Worker: worker, River: client, pool: cfg.Pool, log: logger, capacities: cfg.Capacities, work: cfg.Client.Work}, nil
}

// Requests returns the record of fal requests.
func (d *Dispatch) Requests() *Requests { return d.Worker.reqs }

// Start records this process's fal keys, serves the line and, when the
// process works jobs, starts River's queues. Both stop when ctx ends (River
// stops with its own Stop).
func (d *Dispatch) Start(ctx context.Context) error {
	if err := d.Line.SetKeys(ctx, d.capacities); err != nil {
		return fmt.Errorf("record fal keys: %w", err)
	}
	d.Line.Start(ctx, d.River)
	if d.work {
		// The first beat is in before River works a job: a process killed
		// at its first job is known, and its job handed back in seconds.
		hb := newHeartbeat(d.pool, d.River, d.Line, &d.Worker.working, d.log)
		if err := hb.beat(ctx); err != nil {
			return fmt.Errorf("first heartbeat: %w", err)
		}
		if err := d.River.Start(ctx); err != nil {
			return fmt.Errorf("start river: %w", err)
		}
		go hb.run(ctx)
	}
	return nil
}
