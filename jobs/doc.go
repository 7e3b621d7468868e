// Package jobs is what the studio can ask for and what it asked: the
// operations catalog (each operation's fal model, params, price and queue)
// and the service that submits, reads, lists and cancels AI jobs.
//
// A submission validates its items against the catalog, then in one
// transaction makes the admission checks (rate limit, pending cap, queue
// cap) and inserts the River jobs; inserting an AI job is the reservation of
// its credits (a trigger on river_job, see package ledger). The API's view
// of a job (Job) is read from the ai_jobs view, so what a DBA sees is what
// the frontend sees. Working the jobs at fal is package dispatch's.
package jobs
