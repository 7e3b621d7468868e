// Package dispatch works AI jobs at fal: the River client and its three
// queues, the worker that submits a job's request to fal, follows it and
// records the result, and the fal_requests table, the durable record of
// every request from which each key's in-flight count is derived across all
// server processes.
//
// The flow of one job: the worker claims a slot of a fal key, submits,
// stores fal's request id before waiting (so a retry after a crash resumes
// the request instead of paying for a second one), polls until fal is done
// and completes the job; the job's credits are settled by the database in
// the transaction that ends it (package ledger).
package dispatch
