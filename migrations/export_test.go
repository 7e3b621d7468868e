package migrations

import (
	"context"
	"io/fs"

	"github.com/jackc/pgx/v5/pgxpool"
)

// UpFS applies River's schema and the SQL migrations of fsys, as Up does
// with the embedded ones: the schema test applies an older chain with it.
func UpFS(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS) error {
	p, db, err := providerFS(pool, fsys, nil)
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = p.Up(ctx)
	return err
}
