// Package dispatch works AI jobs at fal: the River client and its three
// queues, the line that gives fal's slots to waiting jobs (line.go), the
// worker that submits a job's request to fal, follows it and records the
// result (worker.go), fal_requests, the durable record of every request
// from which each key's slots in use are counted across all server
// processes (requests.go), the heartbeats that hand a dead process's jobs
// back (heartbeat.go) and the intake of fal's webhooks (webhook.go).
//
// The flow of one job: it waits in River's pending state until the line
// gives it a slot of a fal key and makes it available; the worker submits
// with that key, stores fal's request id before waiting (so a retry after a
// crash resumes the request instead of paying for a second one), follows
// the request until fal is done, and completes the job in the transaction
// that frees its slot; the job's credits are settled by the database in the
// transaction that ends it (package ledger).
package dispatch
