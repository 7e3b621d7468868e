#!/usr/bin/env bash
# pgbench_submit.sh runs the submit transaction (bench/pgbench_submit.sql:
# River's job insert + ledger.Reserve, one transaction) with pgbench, in a
# scratch database it creates on the server of DATABASE_URL (the role needs
# CREATEDB), migrates, fills with USERS funded users and drops at the end.
# It never writes to the database named in DATABASE_URL itself.
#
#   DATABASE_URL=postgres://user:pass@host:5432/postgres bench/pgbench_submit.sh
#
# CLIENTS (default 16), USERS (default 1: every client on one account; set it
# to CLIENTS for one account each) and DURATION in seconds (default 10).
# SETTLE=1 runs a job's whole life instead: the submit, then River's fetch and
# completion with its settle (bench/pgbench_settle.sql), as versus-seed does.
# BenchmarkSubmitTx (go test ./jobs -bench SubmitTx) runs the same script next
# to the Go code path on one database.
set -euo pipefail

: "${DATABASE_URL:?set DATABASE_URL to a Postgres server where this role can CREATE DATABASE}"
CLIENTS=${CLIENTS:-16}
USERS=${USERS:-1}
DURATION=${DURATION:-10}
SETTLE=${SETTLE:-0}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
scratch="aiqueue_pgbench_$$"

# The scratch database's URL: DATABASE_URL with its path replaced.
base=${DATABASE_URL%%\?*}
query=""
[[ $DATABASE_URL == *\?* ]] && query="?${DATABASE_URL#*\?}"
scratch_url="${base%/*}/${scratch}${query}"

psql "$DATABASE_URL" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE ${scratch}"
trap 'psql "$DATABASE_URL" -qX -c "DROP DATABASE IF EXISTS ${scratch} WITH (FORCE)"' EXIT

(cd "$root" && DATABASE_URL="$scratch_url" go run ./cmd/server migrate up >/dev/null)
psql "$scratch_url" -qX -v ON_ERROR_STOP=1 <<SQL
INSERT INTO credit_entries (user_id, kind, amount, reason)
SELECT format('00000000-0000-4000-8000-%s', lpad(i::text, 12, '0'))::uuid, 'grant', 1125899906842624, 'pgbench'
  FROM generate_series(0, ${USERS} - 1) AS i;
INSERT INTO credit_accounts (user_id, available)
SELECT user_id, amount FROM credit_entries WHERE reason = 'pgbench';
SQL

script="$here/pgbench_submit.sql"
if [[ $SETTLE == 1 ]]; then
	script=$(mktemp)
	cat "$here/pgbench_submit.sql" "$here/pgbench_settle.sql" >"$script"
fi
pgbench --no-vacuum --protocol=prepared --client="$CLIENTS" --jobs=2 --time="$DURATION" \
	--file="$script" --define=users="$USERS" --define=client_init=0 "$scratch_url"
