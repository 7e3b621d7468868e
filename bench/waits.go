package bench

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// waitSampler samples what the database's backends are doing every 50ms
// (pg_stat_activity): running on a CPU, waiting on a lock or I/O, or idle
// inside a transaction, waiting for the application's next statement. The
// shares say what bounded a scenario on the database side.
type waitSampler struct {
	stop   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	counts map[string]int
	total  int
}

func (e *env) sampleWaits(ctx context.Context, pool *pgxpool.Pool) *waitSampler {
	return sampleStates(ctx, pool, `
SELECT CASE WHEN state = 'idle in transaction' THEN 'idle in transaction (waiting for the app)'
            WHEN wait_event_type IS NULL THEN 'on CPU'
            ELSE wait_event_type || ': ' || wait_event END, count(*)
  FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid()
   AND state IN ('active', 'idle in transaction') AND backend_type = 'client backend'
 GROUP BY 1`)
}

// sampleLockWaits samples which statements wait on a heavyweight lock
// (wait_event_type Lock), by wait event, the relation waited on when the
// lock is on one (an extend lock: which table or index grows), and the
// statement's start: the shares say whose rows, transactions or relations
// the waiting is on.
func (e *env) sampleLockWaits(ctx context.Context, pool *pgxpool.Pool) *waitSampler {
	return sampleStates(ctx, pool, `
SELECT a.wait_event || COALESCE(' on ' || l.relation::regclass::text, '') || ': '
       || left(regexp_replace(a.query, '\s+', ' ', 'g'), 90), count(*)
  FROM pg_stat_activity a
  LEFT JOIN LATERAL (
      SELECT relation FROM pg_locks
       WHERE pid = a.pid AND NOT granted AND relation IS NOT NULL AND database = a.datid
       LIMIT 1) l ON true
 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.wait_event_type = 'Lock'
 GROUP BY 1`)
}

// sampleStates runs query, which returns (state, count) rows, every 50 ms
// and adds up the counts by state.
func sampleStates(ctx context.Context, pool *pgxpool.Pool, query string) *waitSampler {
	w := &waitSampler{stop: make(chan struct{}), done: make(chan struct{}), counts: map[string]int{}}
	go func() {
		defer close(w.done)
		for {
			rows, err := pool.Query(ctx, query)
			if err == nil {
				w.mu.Lock()
				for rows.Next() {
					var k string
					var n int
					if rows.Scan(&k, &n) == nil {
						w.counts[k] += n
						w.total += n
					}
				}
				w.mu.Unlock()
				rows.Close()
			}
			select {
			case <-w.stop:
				return
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return w
}

// WaitShare is the share of sampled busy backends in one state.
type WaitShare struct {
	State string  `json:"state"`
	Share float64 `json:"share"`
}

// finish stops sampling and returns the shares, largest first.
func (w *waitSampler) finish() []WaitShare {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]WaitShare, 0, len(w.counts))
	for k, n := range w.counts {
		out = append(out, WaitShare{State: k, Share: float64(n) / float64(max(w.total, 1))})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Share > out[j].Share })
	return out
}

// recordWaits stores the shares in the report's details and notes the top
// ones.
func (e *env) recordWaits(key string, shares []WaitShare) {
	e.rep.Details[key+".pg_waits"] = shares
	var parts []string
	for i, s := range shares {
		if i == 5 || s.Share < 0.02 {
			break
		}
		parts = append(parts, fmt.Sprintf("%.0f%% %s", 100*s.Share, s.State))
	}
	if len(parts) > 0 {
		e.rep.note("%s: busy Postgres backends were %s", key, strings.Join(parts, ", "))
	}
}
