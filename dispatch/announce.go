package dispatch

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// This file owns the one dependency on River's internals: River offers no
// public way to tell its producers that jobs became available outside
// River's own insert (here: the line moving a job from pending to
// available with JobRetryTx, which sends nothing). So the announcer sends
// the notification River's own insert sends: on the channel
// "<schema>.river_insert" with the payload {"queue": "<name>"}.
// TestAnnouncer pins that River's producers fetch at once on it; if a River
// upgrade changes the channel or payload, that test fails. What to ask
// River upstream: a public Client.NotifyQueues(ctx, queues...) (or JobRetry
// sending the insert notification itself).
//
// A lost notification only costs latency: each queue's poll
// (FetchPollInterval) finds the jobs anyway.

// announcer tells River's producers, in every process, that jobs of a
// queue became available, per queue at most once per queue fetch cooldown
// with a trailing one: the first announcement is sent at once, those during
// the cooldown after it once at its end. It sends outside any write
// transaction: a transaction that notifies holds Postgres's notify lock
// from its commit until its WAL flush, which serializes the commits of
// everything that notifies.
type announcer struct {
	pool *pgxpool.Pool

	mu     sync.Mutex
	queues map[string]*announceState
}

type announceState struct {
	sending bool // a goroutine is sending or cooling down
	pending bool // an announcement came after the last send
}

func newAnnouncer(pool *pgxpool.Pool) *announcer { return &announcer{pool: pool} }

// announceTimeout bounds one notification.
const announceTimeout = 5 * time.Second

// announce tells the producers of queues that jobs became available.
func (n *announcer) announce(queues []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.queues == nil {
		n.queues = map[string]*announceState{}
	}
	for _, q := range queues {
		st := n.queues[q]
		if st == nil {
			st = &announceState{}
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
// announcements came in meanwhile.
func (n *announcer) send(q string, st *announceState) {
	cooldown := fetchCooldown(q)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), announceTimeout)
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
