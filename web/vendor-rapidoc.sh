#!/usr/bin/env bash
# make web-vendor: copies the /docs renderer into static/docs from the npm
# registry: RapiDoc's single-file bundle (dist/rapidoc-min.js), its MIT
# license and the licenses of the code it bundles, from the pinned version's tarball, checked against the pinned
# integrity. The copy is committed; web_test.go pins its sha256.
set -euo pipefail
cd "$(dirname "$0")"
version=9.3.8
integrity=sha512-eCYEbr1Xr8OJZvVCw8SXl9zBCRoLJbhNGuG5IZTHq/RWAOq/O4MafUCuFEyZHsrhLrlUcGZMa64pyhpib8fQKQ==

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack "rapidoc@$version" --silent >/dev/null)
tgz="$tmp/rapidoc-$version.tgz"
got="sha512-$(node -e 'process.stdout.write(require("crypto").createHash("sha512").update(require("fs").readFileSync(process.argv[1])).digest("base64"))' "$tgz")"
if [[ "$got" != "$integrity" ]]; then
  echo "vendor-rapidoc: rapidoc@$version has integrity $got, want $integrity" >&2
  exit 1
fi
tar -xzf "$tgz" -C "$tmp" package/dist/rapidoc-min.js package/dist/rapidoc-min.js.LICENSE.txt package/LICENSE.txt
cp "$tmp/package/dist/rapidoc-min.js" static/docs/rapidoc-min.js
cp "$tmp/package/LICENSE.txt" static/docs/rapidoc-LICENSE.txt
# The licenses of what the bundle includes (lit, marked, ...), named by its first line.
cp "$tmp/package/dist/rapidoc-min.js.LICENSE.txt" static/docs/rapidoc-min.js.LICENSE.txt
echo "vendored rapidoc@$version: static/docs/rapidoc-min.js ($(wc -c < static/docs/rapidoc-min.js) bytes)"
