#!/usr/bin/env bash
# setup.sh installs what make bench needs and is missing, on Debian as root:
# PostgreSQL (initdb, pgbench, pg_stat_statements), redis-server and wrk
# (the versus-seed scenario), node and npm, and the seed design's locked npm
# packages (bench/seed, npm ci). It changes nothing that is already there,
# so a second run only checks. make bench runs it first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

need=()
have() { command -v "$1" >/dev/null 2>&1; }
# Debian's postgresql-NN package has initdb and pgbench (and pg_stat_statements).
{ have initdb || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } &&
  { have pgbench || ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1; } || need+=(postgresql)
have redis-server || need+=(redis-server)
have wrk || need+=(wrk)
{ have node && have npm; } || need+=(nodejs npm)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "bench/setup.sh: missing ${need[*]}: run it as root, or install them (apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "bench/setup.sh: installing ${need[*]}"
  apt-get update -qq
  # policy-rc.d-less machines start Debian's own redis-server on 6379; the
  # benchmark starts its own on a free loopback port and never uses it.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)'; then
  echo "bench/setup.sh: the seed design needs Node 18 or newer, found $(node --version)" >&2
  exit 1
fi

seed="$here/seed"
if [[ ! -f $seed/node_modules/.package-lock.json || $seed/package-lock.json -nt $seed/node_modules/.package-lock.json ]]; then
  echo "bench/setup.sh: npm ci in bench/seed"
  (cd "$seed" && npm ci --no-audit --no-fund --loglevel=error)
fi
