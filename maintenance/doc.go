// Package maintenance holds every periodic job of the service, each a small
// River job worked on the elected leader: the ledger reconciler, the pruner
// of API state (idempotency records, rate limits, the metrics outbox) and
// the sweeper of fal requests no job waits for any more.
package maintenance
