package dispatch

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// InsertNotifier tells River's producers, in every process, that a
// submission committed jobs in a queue, so they fetch at once instead of at
// their next poll.
//
// River sends its own insert notification inside the inserting transaction,
// at most once per queue per client FetchCooldown, decided at insert time.
// That has two costs here. A job that commits just after the fetch that the
// previous job's notification triggered gets no notification of its own and
// waits for its queue's poll (make bench: urgent pickup p99 ~67 ms with a 5 ms
// cooldown, jobs arriving at 25/s). And a transaction that notifies holds
// Postgres's notify lock from its commit until its WAL flush, so notifying
// with every submission serializes the submissions' commits (make bench:
// 60% of busy backends waiting on "Lock: object", submit throughput -40%).
//
// So River's own notification is spaced out (the client's FetchCooldown is
// a second, see NewClient) and the service sends one after commit instead,
// outside any write transaction, per queue at most once per queue fetch
// cooldown with a trailing one: the first commit notifies at once, the
// commits during the cooldown after it notify once at its end. Every
// committed job is thus announced after its commit, within one cooldown.
// A lost notification (database unreachable) costs only latency: the
// queue's poll still finds the job.
type InsertNotifier struct {
	pool *pgxpool.Pool

	mu     sync.Mutex
	queues map[string]*notifyState
}

type notifyState struct {
	sending bool // a goroutine is sending or cooling down
	pending bool // a commit came after the last send
}

// NewInsertNotifier returns a notifier on pool; its Committed is the
// service's jobs.Hooks.Committed.
func NewInsertNotifier(pool *pgxpool.Pool) *InsertNotifier { return &InsertNotifier{pool: pool} }

// notifyTimeout bounds one notification.
const notifyTimeout = 5 * time.Second

// Committed announces that jobs committed in queues.
func (n *InsertNotifier) Committed(queues []string) {
	if n == nil || n.pool == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.queues == nil {
		n.queues = map[string]*notifyState{}
	}
	for _, q := range queues {
		st := n.queues[q]
		if st == nil {
			st = &notifyState{}
			n.queues[q] = st
		}
		if st.sending {
			st.pending = true
			continue
		}
		st.sending = true
		go n.send(q, st)
	}
}

// send notifies q, waits out the queue's cooldown and notifies again while
// commits came in meanwhile.
func (n *InsertNotifier) send(q string, st *notifyState) {
	cooldown := fetchCooldown(q)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), notifyTimeout)
		// An error is left alone: the queue's poll finds the jobs.
		_, _ = n.pool.Exec(ctx, `SELECT pg_notify(current_schema() || '.river_insert', $1)`, fmt.Sprintf(`{"queue": %q}`, q))
		cancel()
		time.Sleep(cooldown)
		n.mu.Lock()
		if !st.pending {
			st.sending = false
			n.mu.Unlock()
			return
		}
		st.pending = false
		n.mu.Unlock()
	}
}
