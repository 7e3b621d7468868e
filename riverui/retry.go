package riverui

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aiqueue/aiqueue/ledger"
)

// retryPath is River UI's Retry endpoint: POST with {"ids": [...]} (ids as
// strings or numbers), answering {"status": "ok"}, or an error as
// {"message": ...}, which River UI shows under "Job retry failed".
const retryPath = Prefix + "/api/jobs/retry"

// maxRetryIDs is River UI's own bound on the ids of one retry.
const maxRetryIDs = 1000

// retryHandler answers River UI's Retry in place of River UI's endpoint,
// doing what that endpoint does (every job put back with River's
// JobRetryTx, in one transaction) but answering the database's refusals
// with their message. The database refuses to retry a succeeded AI job, or
// one whose user cannot pay for the new run (migrations/sql/00003_ledger.sql);
// River UI's own endpoint answers any such error with a bare 500 "Internal
// server error" and an ERROR log line, which tells the admin nothing.
type retryHandler struct {
	pool   *pgxpool.Pool
	client *river.Client[pgx.Tx]
	logger *slog.Logger
}

// retryError is an error answer in River UI's format.
type retryError struct {
	status  int
	message string
}

func (h *retryHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ids, rerr := readRetryIDs(w, r)
	if rerr == nil {
		rerr = h.retry(r.Context(), ids)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	if rerr != nil {
		w.WriteHeader(rerr.status)
		_ = json.NewEncoder(w).Encode(map[string]string{"message": rerr.message})
		return
	}
	_, _ = w.Write([]byte(`{"status":"ok"}`))
}

// readRetryIDs reads the ids of a retry request.
func readRetryIDs(w http.ResponseWriter, r *http.Request) ([]int64, *retryError) {
	var req struct {
		IDs []json.RawMessage `json:"ids"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		return nil, &retryError{http.StatusBadRequest, "Error unmarshaling request body: " + err.Error() + "."}
	}
	if len(req.IDs) < 1 || len(req.IDs) > maxRetryIDs {
		return nil, &retryError{http.StatusBadRequest, fmt.Sprintf("Field `ids` must contain between 1 and %d job ids.", maxRetryIDs)}
	}
	ids := make([]int64, 0, len(req.IDs))
	for _, raw := range req.IDs {
		id, err := strconv.ParseInt(strings.Trim(string(raw), `"`), 10, 64)
		if err != nil {
			return nil, &retryError{http.StatusBadRequest, fmt.Sprintf("Field `ids` has %s, which is not a job id.", raw)}
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// retry puts every job back in the queue in one transaction, or none.
func (h *retryHandler) retry(ctx context.Context, ids []int64) *retryError {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tx, err := h.pool.Begin(ctx)
	if err != nil {
		return h.internal(ctx, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	for _, id := range ids {
		if _, err := h.client.JobRetryTx(ctx, tx, id); err != nil {
			return h.refused(ctx, ids, id, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return h.internal(ctx, err)
	}
	h.logger.InfoContext(ctx, "River UI retried jobs", slog.Any("job_ids", ids))
	return nil
}

// refused says why job id could not be retried; with several ids, which
// one, and that none was.
func (h *retryHandler) refused(ctx context.Context, ids []int64, id int64, err error) *retryError {
	var pgErr *pgconn.PgError
	var rerr *retryError
	_, short := ledger.AsInsufficient(err)
	switch {
	case errors.Is(err, river.ErrNotFound):
		rerr = &retryError{http.StatusNotFound, fmt.Sprintf("Job not found: %d.", id)}
	case short && errors.As(err, &pgErr):
		rerr = &retryError{http.StatusPaymentRequired, pgErr.Message}
	case ledger.IsSucceededRerun(err) && errors.As(err, &pgErr):
		rerr = &retryError{http.StatusConflict, pgErr.Message}
	case errors.As(err, &pgErr) && pgErr.ConstraintName == "river_job_unique_idx":
		rerr = &retryError{http.StatusConflict, "Job can't be retried because another active job has the same unique properties. Wait for it to finish or delete it before retrying."}
	default:
		return h.internal(ctx, err)
	}
	if len(ids) > 1 {
		rerr.message = fmt.Sprintf("job %d: %s; no job was retried", id, rerr.message)
	}
	h.logger.InfoContext(ctx, "River UI retry refused", slog.Int64("job_id", id), slog.String("reason", rerr.message))
	return rerr
}

func (h *retryHandler) internal(ctx context.Context, err error) *retryError {
	if errors.Is(err, context.DeadlineExceeded) {
		return &retryError{http.StatusServiceUnavailable, "Request timed out. Retrying the request might work."}
	}
	h.logger.ErrorContext(ctx, "River UI retry failed", slog.Any("error", err))
	return &retryError{http.StatusInternalServerError, "Internal server error. Check logs for more information."}
}
