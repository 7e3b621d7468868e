#!/usr/bin/env bash
# The browser tests (make test-browser): installs what they need when it is
# missing -- Debian's chromium and node (with apt-get, as root), the npm
# packages (npm ci) and bin/server -- then runs one of them, bounded in time:
# e2e.mjs (River UI, the default) or playground.mjs (/playground and /docs).
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"

apt_install() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "e2e: $* missing; install it: sudo apt-get install $*" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

[[ -x /usr/bin/chromium ]] || apt_install chromium
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm

# npm ci unless node_modules already holds the locked playwright-core.
locked() {
  node -e 'const lock = require("./package-lock.json").packages["node_modules/playwright-core"].version;
    process.exit(require("./node_modules/playwright-core/package.json").version === lock ? 0 : 1)' 2>/dev/null
}
locked || npm ci --no-audit --no-fund --loglevel=error

export SERVER_BIN="${SERVER_BIN:-$root/bin/server}"
if [[ ! -x "$SERVER_BIN" ]]; then
  (cd "$root" && go build -o "$SERVER_BIN" ./cmd/server)
fi

script="${1:-e2e.mjs}"
exec timeout --kill-after=10 300 node "$script"
