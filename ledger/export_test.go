package ledger

// ReserveSQL is the reservation statement, for the test that keeps the
// pgbench script (bench/pgbench_submit.sql) running the same SQL.
const ReserveSQL = reserveSQL
