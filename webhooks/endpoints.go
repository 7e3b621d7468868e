package webhooks

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// Events an endpoint can subscribe to.
const (
	EventJobSucceeded   = "job.succeeded"
	EventJobFailed      = "job.failed"
	EventJobCancelled   = "job.cancelled"
	EventBatchCompleted = "batch.completed"
)

// Events lists every event.
var Events = []string{EventJobSucceeded, EventJobFailed, EventJobCancelled, EventBatchCompleted}

// MaxURLBytes bounds an endpoint's URL.
const MaxURLBytes = 2048

// secretBytes is the size of a signing key; Standard Webhooks asks for 24
// to 64 random bytes.
const secretBytes = 32

// secretPrefix starts every signing secret, as Standard Webhooks writes
// them: the rest is the base64 of the key.
const secretPrefix = "whsec_"

// Querier runs SQL: a pool, a connection or a transaction.
type Querier = ledger.Querier

// Endpoint is a registered webhook endpoint, without its secret.
type Endpoint struct {
	ID        string    `json:"id" format:"uuid" doc:"The endpoint's id." example:"7d1c0a52-3b8e-4f7e-9a51-2f0c9b1e6d40"`
	URL       string    `json:"url" doc:"Where the events are posted." example:"https://studio.example.com/hooks/aiqueue"`
	Events    []string  `json:"events" doc:"The events it receives." example:"[\"job.succeeded\",\"job.failed\"]"`
	CreatedAt time.Time `json:"created_at"`
}

// Create registers an endpoint receiving events at rawURL and returns it
// with its signing secret (whsec_ and the base64 of 32 random bytes),
// which is shown nowhere else. It refuses (jobs.EINVALID, every problem at
// once) a URL that is not https, carries a user name, password or
// fragment, or names a host that is not public (jobs.CheckPublicHost), and
// events outside Events; allowPrivate (WEBHOOK_ALLOW_PRIVATE) accepts http
// and any host. A name's address is checked again at every delivery.
func Create(ctx context.Context, db Querier, rawURL string, events []string, allowPrivate bool) (*Endpoint, string, error) {
	var fields []jobs.FieldError
	if msg := CheckURL(rawURL, allowPrivate); msg != "" {
		fields = append(fields, jobs.FieldError{Location: "body.url", Message: msg, Value: rawURL})
	}
	if len(events) == 0 {
		fields = append(fields, jobs.FieldError{Location: "body.events", Message: "must name at least one event", Value: events})
	}
	for i, ev := range events {
		switch {
		case !slices.Contains(Events, ev):
			fields = append(fields, jobs.FieldError{Location: fmt.Sprintf("body.events[%d]", i),
				Message: "must be one of " + strings.Join(Events, ", "), Value: ev})
		case slices.Contains(events[:i], ev):
			fields = append(fields, jobs.FieldError{Location: fmt.Sprintf("body.events[%d]", i), Message: "is listed twice", Value: ev})
		}
	}
	if len(fields) > 0 {
		return nil, "", &jobs.Error{Code: jobs.EINVALID, Message: "the webhook endpoint is not valid", Fields: fields}
	}
	secret, err := newSecret()
	if err != nil {
		return nil, "", err
	}
	e := &Endpoint{URL: rawURL, Events: events}
	err = db.QueryRow(ctx, `INSERT INTO webhook_endpoints (url, events, secret) VALUES ($1, $2, $3) RETURNING id::text, created_at`,
		rawURL, events, secret).Scan(&e.ID, &e.CreatedAt)
	if err != nil {
		return nil, "", jobs.DBError(err)
	}
	return e, secret, nil
}

// CheckURL says what is wrong with raw as an endpoint's URL, or "" when
// nothing is (see Create).
func CheckURL(raw string, allowPrivate bool) string {
	if len(raw) > MaxURLBytes {
		return fmt.Sprintf("must be at most %d bytes long", MaxURLBytes)
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil || u.Opaque != "" || u.Host == "":
		return "must be an absolute https URL"
	case u.Scheme != "https" && (!allowPrivate || u.Scheme != "http"):
		if allowPrivate {
			return "must be an http or https URL"
		}
		return "must be an https URL (http only with WEBHOOK_ALLOW_PRIVATE=true)"
	case u.User != nil:
		return "must not carry a user name or password"
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return "must not have a fragment"
	case allowPrivate:
		return ""
	}
	if msg := jobs.CheckPublicHost(u.Hostname()); msg != "" {
		return msg + " (private addresses only with WEBHOOK_ALLOW_PRIVATE=true)"
	}
	return ""
}

func newSecret() (string, error) {
	key := make([]byte, secretBytes)
	if _, err := rand.Read(key); err != nil {
		return "", err
	}
	return secretPrefix + base64.StdEncoding.EncodeToString(key), nil
}

// List returns every endpoint, oldest first, without secrets.
func List(ctx context.Context, db Querier) ([]Endpoint, error) {
	rows, err := db.Query(ctx, `SELECT id::text, url, events, created_at FROM webhook_endpoints ORDER BY created_at, id`)
	if err != nil {
		return nil, jobs.DBError(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Endpoint, error) {
		var e Endpoint
		err := r.Scan(&e.ID, &e.URL, &e.Events, &e.CreatedAt)
		return e, err
	})
	if err != nil {
		return nil, jobs.DBError(err)
	}
	return out, nil
}

// Delete removes an endpoint and its deliveries, pending ones included (a
// delivery in flight may still arrive). jobs.ENOTFOUND when there is none.
func Delete(ctx context.Context, db Querier, id string) error {
	if _, err := uuid.Parse(id); err != nil {
		return &jobs.Error{Code: jobs.ENOTFOUND, Message: fmt.Sprintf("webhook endpoint %q not found", id)}
	}
	tag, err := db.Exec(ctx, `DELETE FROM webhook_endpoints WHERE id = $1`, id)
	if err != nil {
		return jobs.DBError(err)
	}
	if tag.RowsAffected() == 0 {
		return &jobs.Error{Code: jobs.ENOTFOUND, Message: fmt.Sprintf("webhook endpoint %q not found", id)}
	}
	return nil
}

// errNotFound reports whether err is pgx's no rows.
func errNotFound(err error) bool { return errors.Is(err, pgx.ErrNoRows) }
