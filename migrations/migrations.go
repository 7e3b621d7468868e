// Package migrations holds the database schema: River's own tables, applied
// through rivermigrate, and the project's goose migrations (ledger, views),
// all embedded in the binary.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

//go:embed sql/*.sql
var sqlFiles embed.FS

// riverVersions lists, in order, the goose version that brings River's
// schema to each River migration version. Upgrading River to a release with
// a new schema version adds one row here (and nothing else).
var riverVersions = []struct {
	gooseVersion int64
	riverVersion int
}{
	{gooseVersion: 1, riverVersion: 6}, // River v0.51.x schema, up to bulk unique
	{gooseVersion: 2, riverVersion: 8}, // notification outbox, job id autoincrement
}

// provider builds a goose provider over pool with the embedded SQL files and
// the Go migrations that apply River's schema.
func provider(pool *pgxpool.Pool, logger *slog.Logger) (*goose.Provider, *sql.DB, error) {
	fsys, err := fs.Sub(sqlFiles, "sql")
	if err != nil {
		return nil, nil, err
	}
	return providerFS(pool, fsys, logger)
}

// providerFS builds a goose provider over pool with the SQL files of fsys
// and the Go migrations that apply River's schema.
func providerFS(pool *pgxpool.Pool, fsys fs.FS, logger *slog.Logger) (*goose.Provider, *sql.DB, error) {
	driver := riverpgxv5.New(pool)
	var goMigrations []*goose.Migration
	prev := 0
	for _, rv := range riverVersions {
		up, down := rv.riverVersion, prev
		goMigrations = append(goMigrations, goose.NewGoMigration(rv.gooseVersion,
			&goose.GoFunc{RunDB: func(ctx context.Context, _ *sql.DB) error {
				return migrateRiver(ctx, driver, rivermigrate.DirectionUp, up)
			}},
			&goose.GoFunc{RunDB: func(ctx context.Context, _ *sql.DB) error {
				target := down
				if target == 0 {
					target = -1 // all the way down
				}
				return migrateRiver(ctx, driver, rivermigrate.DirectionDown, target)
			}},
		))
		prev = rv.riverVersion
	}
	db := stdlib.OpenDBFromPool(pool)
	opts := []goose.ProviderOption{
		goose.WithGoMigrations(goMigrations...),
		goose.WithDisableGlobalRegistry(true),
	}
	if logger != nil {
		opts = append(opts, goose.WithSlog(logger))
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys, opts...)
	if err != nil {
		_ = db.Close()
		return nil, nil, err
	}
	return p, db, nil
}

func migrateRiver(ctx context.Context, driver *riverpgxv5.Driver, dir rivermigrate.Direction, target int) error {
	m, err := rivermigrate.New(driver, nil)
	if err != nil {
		return err
	}
	_, err = m.Migrate(ctx, dir, &rivermigrate.MigrateOpts{TargetVersion: target})
	return err
}

// Up applies every pending migration.
func Up(ctx context.Context, pool *pgxpool.Pool) error {
	p, db, err := provider(pool, nil)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrate up: %w", err)
	}
	return nil
}

// Down rolls back the most recent migration.
func Down(ctx context.Context, pool *pgxpool.Pool) error {
	p, db, err := provider(pool, nil)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := p.Down(ctx); err != nil {
		return fmt.Errorf("migrate down: %w", err)
	}
	return nil
}

// Status is the state of one migration.
type Status struct {
	Version int64
	Source  string
	Applied bool
}

// List reports every known migration and whether it is applied.
func List(ctx context.Context, pool *pgxpool.Pool) ([]Status, error) {
	p, db, err := provider(pool, nil)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	st, err := p.Status(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Status, 0, len(st))
	for _, s := range st {
		out = append(out, Status{Version: s.Source.Version, Source: s.Source.Path, Applied: s.State == goose.StateApplied})
	}
	return out, nil
}

// ErrPending is returned by Check when migrations are not applied.
var ErrPending = errors.New("migrations pending")

// Check returns ErrPending (wrapped) when the database is behind the
// migrations embedded in this binary. /readyz uses it.
func Check(ctx context.Context, pool *pgxpool.Pool) error {
	p, db, err := provider(pool, nil)
	if err != nil {
		return err
	}
	defer db.Close()
	has, err := p.HasPending(ctx)
	if err != nil {
		return err
	}
	if has {
		return ErrPending
	}
	return nil
}
