package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// IdempotencyKeyTTL is how long the first response to an Idempotency-Key is
// kept and replayed. A periodic job deletes older records.
const IdempotencyKeyTTL = 24 * time.Hour

// written is what a write handler produced inside its transaction, and
// what an idempotency record stores (Body as JSON) and replays.
type written[T any] struct {
	Status   int
	Location string
	Body     T
	// Replayed is true when this is the stored first response to the key.
	Replayed bool
	// committed runs after the transaction commits (metrics, notifications).
	committed func()
}

// replayedHeader is the Idempotent-Replayed header of w.
func (w written[T]) replayedHeader() string {
	if w.Replayed {
		return "true"
	}
	return ""
}

// requestHash identifies a request for idempotency: method, path and the
// body in canonical form (parsed and encoded again: object keys sorted,
// insignificant whitespace dropped, numbers kept as written), so a client
// that re-encodes the same body is not refused.
func requestHash(method, path string, req any) []byte {
	body, _ := json.Marshal(req)
	h := sha256.New()
	h.Write([]byte(method + " " + path + "\n"))
	var v any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&v); err == nil {
		if canonical, err := json.Marshal(v); err == nil {
			body = canonical
		}
	}
	h.Write(body)
	return h.Sum(nil)
}

// inTx runs fn in one transaction bounded by the database timeout and
// commits it. With an idempotency key it first takes a transaction-scoped
// advisory lock on (user, key), so at most one request per key is in
// flight (another gets 409 at once), and replays a stored response (same
// request) or refuses the key (422, other request). A new response is
// stored in the same transaction as what fn wrote, so the record exists
// exactly when the jobs do. Only successful responses are stored: a
// request that failed can be retried with the same key. Without a key
// nothing is hashed or encoded here: fn's value is returned as it is.
func inTx[T any](ctx context.Context, s *Server, userID, key, method, path string, req any, fn func(ctx context.Context, tx pgx.Tx) (written[T], error)) (written[T], error) {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return written[T]{}, s.dbProblem(ctx, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit

	var hash []byte
	if key != "" {
		hash = requestHash(method, path, req)
		stored, done, err := s.lookupKey(ctx, tx, userID, key, hash)
		if err != nil {
			return written[T]{}, err
		}
		if done {
			w := written[T]{Status: stored.status, Location: stored.location, Replayed: true}
			if err := json.Unmarshal(stored.body, &w.Body); err != nil {
				return written[T]{}, err
			}
			return w, nil
		}
	}
	w, err := fn(ctx, tx)
	if err != nil {
		return written[T]{}, err
	}
	if key != "" {
		body, err := json.Marshal(w.Body)
		if err != nil {
			return written[T]{}, err
		}
		tag, err := tx.Exec(ctx, `
INSERT INTO idempotency_keys (user_id, key, request_hash, status, location, body)
VALUES ($1, $2, $3, $4, NULLIF($5, ''), $6)
ON CONFLICT (user_id, key) DO UPDATE
   SET request_hash = EXCLUDED.request_hash, status = EXCLUDED.status, location = EXCLUDED.location,
       body = EXCLUDED.body, created_at = now()
 WHERE idempotency_keys.created_at <= now() - $7 * interval '1 second'`,
			userID, key, hash, w.Status, w.Location, body, int64(IdempotencyKeyTTL/time.Second))
		if err != nil {
			return written[T]{}, s.dbProblem(ctx, err)
		}
		if tag.RowsAffected() != 1 {
			// A live record appeared despite the lock: never write twice.
			return written[T]{}, inFlight(key)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return written[T]{}, s.dbProblem(ctx, err)
	}
	if w.committed != nil {
		w.committed()
	}
	return w, nil
}

// storedResponse is an idempotency record's response.
type storedResponse struct {
	status   int
	location string
	body     []byte
}

// lookupKey locks (user, key) for the transaction and looks the key up.
// done is true with the stored response to replay, or with an error (409
// in flight, 422 other request).
func (s *Server) lookupKey(ctx context.Context, tx pgx.Tx, userID, key string, hash []byte) (res storedResponse, done bool, err error) {
	var locked bool
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtextextended('aiqueue.idempotency:' || $1 || ':' || $2, 0))`,
		userID, key).Scan(&locked); err != nil {
		return storedResponse{}, true, s.dbProblem(ctx, err)
	}
	if !locked {
		return storedResponse{}, true, inFlight(key)
	}
	var stored []byte
	var location *string
	err = tx.QueryRow(ctx, `
SELECT request_hash, status, location, body FROM idempotency_keys
 WHERE user_id = $1 AND key = $2 AND created_at > now() - $3 * interval '1 second'`,
		userID, key, int64(IdempotencyKeyTTL/time.Second)).Scan(&stored, &res.status, &location, &res.body)
	if errors.Is(err, pgx.ErrNoRows) {
		return storedResponse{}, false, nil
	}
	if err != nil {
		return storedResponse{}, true, s.dbProblem(ctx, err)
	}
	if !bytes.Equal(stored, hash) {
		return storedResponse{}, true, newProblem(http.StatusUnprocessableEntity,
			"Idempotency-Key "+strconv.Quote(key)+" was already used for a different request; use a new key for a new request")
	}
	if location != nil {
		res.location = *location
	}
	return res, true, nil
}

func inFlight(key string) *Problem {
	return newProblem(http.StatusConflict, "a request with Idempotency-Key "+strconv.Quote(key)+
		" is still in progress; retry after it finished to get its response").retryAfter(time.Second)
}
