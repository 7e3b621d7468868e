// Package bench measures aiqueue the way a user meets it and next to the
// references that bound it, and runs the fault drills.
//
// Run starts a private PostgreSQL (internal/pglocal), builds and starts the
// real server binary (cmd/server) as a subprocess with the fal simulator
// at zero latency, and measures in one run, on one machine:
//
//  1. submit: throughput and latency of POST /v1/jobs (JWT, reserve +
//     InsertTx in one transaction), next to raw River InsertTx from Go and to
//     pgbench running the project's reserve + insert SQL, on the same
//     database with the same concurrency;
//  2. pickup: urgent pickup latency (commit of the submit transaction to
//     the worker's fetch) while a backlog waits in the normal queue, next to
//     the same with an empty queue;
//  3. settle: jobs completed and charged per second while working a backlog,
//     next to raw River working no-op jobs with the same queue settings;
//  4. users: many studio users for a while (actions every few seconds, some
//     batches, status by SSE, long poll or polling, whichever the server
//     offers): submit latency, errors and the server's memory;
//  5. versus-seed: the server (ROLE=all) against the studio's seed design
//     (bench/seed: a Node route, reserve_credit in Postgres, BullMQ on
//     redis-server with appendfsync always, a Node worker), each on its own
//     cluster, under the same wrk load in interleaved runs: requests/s,
//     p50/p99, CPU per job per process, the backlog and how fast it drains;
//     pgbench running the bare SQL of a job as the reference for Postgres's
//     CPU; pg_stat_statements of one more aiqueue run;
//  6. backlog: submits under the same wrk load with 50,000 jobs waiting in
//     the queue against an empty queue, interleaved;
//  7. saturated: more work than fal's slots take (a batch, many users
//     clicking urgent actions, videos, one more user's single job) on a
//     fixed arrival trace, with fal's latencies scaled down: waits for a
//     slot, submit to final, slot use while work waits and writes per job,
//     each next to the ideal schedule of the same trace (the line's rule
//     with zero overhead, computed offline: idealSchedule);
//  8. overhead: one urgent click at a time, followed by long polls, minus
//     fal's own time, for an instant fal and a 1 s one.
//
// Each figure is reported with its ratio to its reference and its target
// (issues 8, 12, 13 and 19) as pass or miss; absolute numbers depend on
// the machine, ratios measured in one run much less. RunDrills runs the
// fault drills (kill -9 of a worker, with the recovery time of every job it
// caught; Postgres restarted and crashed; fal 429 storm and revoked key;
// SIGTERM under load), each ending with the ledger invariant check and a
// count of fal requests per job.
//
// cmd/loadgen is the command line (make bench, make drills); the package's
// tests run the core, saturated and overhead scenarios and the drills at
// smoke scale so the tooling keeps working, and versus-seed and backlog
// with BENCH_SEED_SMOKE=1 when redis-server, wrk, node and bench/seed's
// packages are there (bench/setup.sh installs them).
package bench
