// Package groupcommit commits what many goroutines write in shared
// transactions: a group commit. An item that arrives while fewer than
// Leaders commits are on their way is committed at once (with any item
// waiting); the others wait, and as each commit ends, the first of them
// leads the next group, of every item that arrived meanwhile. So a quiet
// process adds no wait to an item, and a busy one pays one transaction
// (its round trips, statements and WAL flush) per group instead of one per
// item. Submissions (package jobs), stored fal request ids and job
// completions (package dispatch) use it.
package groupcommit

import (
	"context"
	"sync"
)

// DefaultMax is the largest group when Committer.Max is zero.
const DefaultMax = 100

// Committer commits items of type T in groups. Its zero value is not
// usable: Commit must be set.
type Committer[T any] struct {
	// Commit commits one group in one transaction; the error is every
	// item's outcome.
	Commit func(group []T) error
	// Leaders bounds the commits on their way at once (0: one).
	Leaders int
	// Max bounds the items of one group (0: DefaultMax).
	Max int
	// Alone reports whether a group of several items that failed with
	// err is committed again one item at a time, so that one item the
	// database refuses does not fail the others (nil: never). It should be
	// false for a database that does not answer: each item would wait out
	// its timeout again.
	Alone func(err error) bool

	mu         sync.Mutex
	pending    []*waiter[T]
	committing int // commits on their way
}

type waiter[T any] struct {
	ctx  context.Context
	item T
	lead chan []*waiter[T] // the group this waiter commits next
	done chan error        // the outcome of its commit
}

// Do commits item with the items that arrive meanwhile and returns its
// outcome. An item whose ctx has ended by the time its group commits is
// left out and gets ctx's error; once its group commits, Do waits for the
// outcome whatever ctx does, so a caller never returns while its item may
// still be written.
func (g *Committer[T]) Do(ctx context.Context, item T) error {
	w := &waiter[T]{ctx: ctx, item: item, lead: make(chan []*waiter[T], 1), done: make(chan error, 1)}
	g.mu.Lock()
	g.pending = append(g.pending, w)
	var group []*waiter[T]
	if g.committing < max(g.Leaders, 1) {
		g.committing++
		group = g.take()
	}
	g.mu.Unlock()
	if group == nil {
		select {
		case err := <-w.done:
			return err
		case group = <-w.lead:
		}
	}

	g.commitGroup(group)

	g.mu.Lock()
	if len(g.pending) > 0 {
		// The first waiter leads the next group, taken now: an item is in
		// one group only, and is told either its outcome or its group.
		next := g.pending[0]
		next.lead <- g.take()
	} else {
		g.committing--
	}
	g.mu.Unlock()
	return <-w.done
}

// Waiting returns how many items wait for a group.
func (g *Committer[T]) Waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.pending)
}

// Committing returns how many commits are on their way.
func (g *Committer[T]) Committing() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.committing
}

// take takes the next group off pending; g.mu is held.
func (g *Committer[T]) take() []*waiter[T] {
	limit := g.Max
	if limit <= 0 {
		limit = DefaultMax
	}
	n := min(len(g.pending), limit)
	group := g.pending[:n:n]
	g.pending = g.pending[n:]
	return group
}

// commitGroup commits group in one transaction and tells each waiter its
// outcome; a group of several that fails as Alone says is committed again
// one item at a time.
func (g *Committer[T]) commitGroup(group []*waiter[T]) {
	live := group[:0:0]
	for _, w := range group {
		if err := w.ctx.Err(); err != nil {
			w.done <- err
			continue
		}
		live = append(live, w)
	}
	if len(live) == 0 {
		return
	}
	items := make([]T, len(live))
	for i, w := range live {
		items[i] = w.item
	}
	err := g.Commit(items)
	if err == nil || len(live) == 1 || g.Alone == nil || !g.Alone(err) {
		for _, w := range live {
			w.done <- err
		}
		return
	}
	for _, w := range live {
		w.done <- g.Commit([]T{w.item})
	}
}
