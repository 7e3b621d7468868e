package webhooks

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/aiqueue/aiqueue/jobs"
)

// Delivery states.
const (
	StatePending   = "pending"   // due at next_attempt_at, or being attempted
	StateDelivered = "delivered" // the endpoint answered 2xx
	StateFailed    = "failed"    // no 2xx within the retry window: given up
)

// RetryWindow is how long a delivery is retried from its event (or from
// its replay) before it is given up.
const RetryWindow = 24 * time.Hour

// Delivery is one event for one endpoint, as the webhook_deliveries view
// shows it.
type Delivery struct {
	ID            string     `json:"id" doc:"The delivery's id." example:"42"`
	EventID       string     `json:"event_id" doc:"The event's id: the webhook-id header, the same on every retry and replay and for every endpoint of the event." example:"evt_5f1c2d3e4a5b6c7d8e9f0a1b2c3d4e5f"`
	Event         string     `json:"event" enum:"job.succeeded,job.failed,job.cancelled,batch.completed"`
	EndpointID    string     `json:"endpoint_id" format:"uuid"`
	JobID         string     `json:"job_id,omitempty" doc:"The job of a job event." example:"101"`
	BatchID       string     `json:"batch_id,omitempty" doc:"The batch of a batch.completed event, or of the job." example:"0b9e6c1e-1b7e-4c39-9a3e-2f1d0c7a5e11"`
	State         string     `json:"state" enum:"pending,delivered,failed" doc:"pending until the endpoint answers 2xx (delivered) or the retry window ends (failed)."`
	Attempts      int        `json:"attempts" doc:"HTTP calls made so far."`
	NextAttemptAt *time.Time `json:"next_attempt_at,omitempty" doc:"When it is tried next, while pending."`
	RetryUntil    time.Time  `json:"retry_until" doc:"When a pending delivery is given up: 24 hours after the event or the latest replay."`
	LastAttemptAt *time.Time `json:"last_attempt_at,omitempty"`
	LastStatus    *int       `json:"last_status,omitempty" doc:"The HTTP status of the last answer."`
	LastError     string     `json:"last_error,omitempty" doc:"Why the last attempt failed."`
	CreatedAt     time.Time  `json:"created_at" doc:"When the event happened."`
	DeliveredAt   *time.Time `json:"delivered_at,omitempty"`
}

const deliveryColumns = `id, event_id, event, endpoint_id::text, COALESCE(job_id, ''), COALESCE(batch_id::text, ''), state, attempts,
       next_attempt_at, retry_until, last_attempt_at, last_status, COALESCE(last_error, ''), created_at, delivered_at`

func scanDelivery(row pgx.Row) (*Delivery, error) {
	var d Delivery
	var id int64
	err := row.Scan(&id, &d.EventID, &d.Event, &d.EndpointID, &d.JobID, &d.BatchID, &d.State, &d.Attempts,
		&d.NextAttemptAt, &d.RetryUntil, &d.LastAttemptAt, &d.LastStatus, &d.LastError, &d.CreatedAt, &d.DeliveredAt)
	if err != nil {
		return nil, err
	}
	d.ID = strconv.FormatInt(id, 10)
	return &d, nil
}

// DeliveryFilter selects deliveries; zero fields select all.
type DeliveryFilter struct {
	EndpointID string
	JobID      string
	State      string
	// Limit is the page size (default 20); Cursor the previous page's
	// next cursor.
	Limit  int
	Cursor string
}

// ListDeliveries returns deliveries newest first, and the cursor of the
// next page ("" on the last).
func ListDeliveries(ctx context.Context, db Querier, f DeliveryFilter) ([]Delivery, string, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 20
	}
	var before *int64
	if f.Cursor != "" {
		n, err := strconv.ParseInt(f.Cursor, 10, 64)
		if err != nil || n <= 0 {
			return nil, "", &jobs.Error{Code: jobs.EINVALID, Message: "invalid cursor", Fields: []jobs.FieldError{
				{Location: "query.cursor", Message: "must be a next_cursor this endpoint returned", Value: f.Cursor}}}
		}
		before = &n
	}
	var endpoint *string
	if f.EndpointID != "" {
		if _, err := uuid.Parse(f.EndpointID); err != nil {
			return nil, "", &jobs.Error{Code: jobs.EINVALID, Message: "invalid endpoint_id", Fields: []jobs.FieldError{
				{Location: "query.endpoint_id", Message: "must be a UUID", Value: f.EndpointID}}}
		}
		endpoint = &f.EndpointID
	}
	var job, state *string
	if f.JobID != "" {
		job = &f.JobID
	}
	if f.State != "" {
		state = &f.State
	}
	rows, err := db.Query(ctx, `SELECT `+deliveryColumns+` FROM webhook_deliveries
 WHERE ($1::bigint IS NULL OR id < $1) AND ($2::uuid IS NULL OR endpoint_id = $2)
   AND ($3::text IS NULL OR job_id = $3) AND ($4::text IS NULL OR state = $4)
 ORDER BY id DESC LIMIT $5`, before, endpoint, job, state, limit+1)
	if err != nil {
		return nil, "", jobs.DBError(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Delivery, error) {
		d, err := scanDelivery(r)
		if err != nil {
			return Delivery{}, err
		}
		return *d, nil
	})
	if err != nil {
		return nil, "", jobs.DBError(err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = out[limit-1].ID
	}
	return out, next, nil
}

// Replay sends a delivered or failed delivery again: the same event id and
// body, due at once and retried for RetryWindow from now. A pending one is
// already on its way: jobs.ECONFLICT. jobs.ENOTFOUND when there is none.
func Replay(ctx context.Context, db Querier, id string) (*Delivery, error) {
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil || n <= 0 {
		return nil, &jobs.Error{Code: jobs.ENOTFOUND, Message: fmt.Sprintf("webhook delivery %q not found", id)}
	}
	tag, err := db.Exec(ctx, `
UPDATE webhook_outbox
   SET state = 'pending', next_attempt_at = now(), retry_until = now() + $2 * interval '1 second', delivered_at = NULL
 WHERE id = $1 AND state <> 'pending'`, n, int64(RetryWindow/time.Second))
	if err != nil {
		return nil, jobs.DBError(err)
	}
	d, err := scanDelivery(db.QueryRow(ctx, `SELECT `+deliveryColumns+` FROM webhook_deliveries WHERE id = $1`, n))
	if errNotFound(err) {
		return nil, &jobs.Error{Code: jobs.ENOTFOUND, Message: fmt.Sprintf("webhook delivery %q not found", id)}
	}
	if err != nil {
		return nil, jobs.DBError(err)
	}
	if tag.RowsAffected() == 0 {
		return nil, &jobs.Error{Code: jobs.ECONFLICT, Message: fmt.Sprintf("webhook delivery %s is pending: it is tried again at next_attempt_at", id)}
	}
	return d, nil
}
