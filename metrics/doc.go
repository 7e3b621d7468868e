// Package metrics is what /metrics shows about jobs, counted so that sum()
// over server processes is right: submissions where they commit, attempts
// where they run, endings from a database outbox that exactly one process
// takes each row of, and queue depths read from river_job.
package metrics
