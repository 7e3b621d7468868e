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

// response is what a write handler produced inside its transaction, and
// what an idempotency record stores and replays.
type response struct {
	Status   int
	Location string
	Body     []byte
	// Replayed is true when this is the stored first response to the key.
	Replayed bool
	// committed runs after the transaction commits (metrics).
	committed func()
}

func newResponse(status int, location string, body any) (response, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return response{}, err
	}
	return response{Status: status, Location: location, Body: b}, nil
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
// request that failed can be retried with the same key.
// The request (method, path, body) is hashed only when there is a key.
func (s *Server) inTx(ctx context.Context, userID, key, method, path string, body any, fn func(ctx context.Context, tx pgx.Tx) (response, error)) (response, error) {
	ctx, cancel := context.WithTimeout(ctx, s.dbTimeout)
	defer cancel()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return response{}, s.dbProblem(ctx, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit

	var hash []byte
	if key != "" {
		hash = requestHash(method, path, body)
		if res, done, err := s.lookupKey(ctx, tx, userID, key, hash); done || err != nil {
			return res, err
		}
	}
	res, err := fn(ctx, tx)
	if err != nil {
		return response{}, err
	}
	if key != "" {
		tag, err := tx.Exec(ctx, `
INSERT INTO idempotency_keys (user_id, key, request_hash, status, location, body)
VALUES ($1, $2, $3, $4, NULLIF($5, ''), $6)
ON CONFLICT (user_id, key) DO UPDATE
   SET request_hash = EXCLUDED.request_hash, status = EXCLUDED.status, location = EXCLUDED.location,
       body = EXCLUDED.body, created_at = now()
 WHERE idempotency_keys.created_at <= now() - $7 * interval '1 second'`,
			userID, key, hash, res.Status, res.Location, res.Body, int64(IdempotencyKeyTTL/time.Second))
		if err != nil {
			return response{}, s.dbProblem(ctx, err)
		}
		if tag.RowsAffected() != 1 {
			// A live record appeared despite the lock: never write twice.
			return response{}, inFlight(key)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return response{}, s.dbProblem(ctx, err)
	}
	if res.committed != nil {
		res.committed()
	}
	return res, nil
}

// lookupKey locks (user, key) for the transaction and looks the key up.
// done is true with the stored response to replay, or with an error (409
// in flight, 422 other request).
func (s *Server) lookupKey(ctx context.Context, tx pgx.Tx, userID, key string, hash []byte) (res response, done bool, err error) {
	var locked bool
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtextextended('aiqueue.idempotency:' || $1 || ':' || $2, 0))`,
		userID, key).Scan(&locked); err != nil {
		return response{}, true, s.dbProblem(ctx, err)
	}
	if !locked {
		return response{}, true, inFlight(key)
	}
	var stored []byte
	var location *string
	err = tx.QueryRow(ctx, `
SELECT request_hash, status, location, body FROM idempotency_keys
 WHERE user_id = $1 AND key = $2 AND created_at > now() - $3 * interval '1 second'`,
		userID, key, int64(IdempotencyKeyTTL/time.Second)).Scan(&stored, &res.Status, &location, &res.Body)
	if errors.Is(err, pgx.ErrNoRows) {
		return response{}, false, nil
	}
	if err != nil {
		return response{}, true, s.dbProblem(ctx, err)
	}
	if !bytes.Equal(stored, hash) {
		return response{}, true, newProblem(http.StatusUnprocessableEntity,
			"Idempotency-Key "+strconv.Quote(key)+" was already used for a different request; use a new key for a new request")
	}
	if location != nil {
		res.Location = *location
	}
	res.Replayed = true
	return res, true, nil
}

func inFlight(key string) *Problem {
	return newProblem(http.StatusConflict, "a request with Idempotency-Key "+strconv.Quote(key)+
		" is still in progress; retry after it finished to get its response").retryAfter(time.Second)
}

// replayedHeader marks a replayed response.
func replayedHeader(res response) string {
	if res.Replayed {
		return "true"
	}
	return ""
}
