#!/usr/bin/env bash
# roostd's Pusher door against the real libraries (pusher.md): pusher-js and
# laravel-echo as clients, the `pusher` server library for the signed HTTP
# API and the auth endpoint, all pinned in package-lock.json:
#   test-pusher.mjs   the libraries in Node
#   test-browser.mjs  pusher-js and Echo's browser bundles in a page of
#                     Debian's Chromium (playwright-core): public, private and
#                     presence channels across two pages, a client event not
#                     echoed to its sender, reconnection after a restart
#
#   bash tests/pusher/run.sh
#
# ROOSTD_BIN picks the binary (default: target/debug/roostd, built here when
# ROOSTD_BIN is unset). Chromium comes from Debian (apt-get) when missing, as
# in tests/browser/run.sh. Where node >= 20, the npm packages or Chromium
# cannot be had, prints "pusher: SKIPPED <reason>" and exits 77, or 78 when a
# registry could not be reached (see .ci/lib.sh).
#
# `node gen-vectors.mjs > vectors.json` (same folder) remakes the signed
# requests that src/proto's unit tests check against the `pusher` library.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
here="$root/tests/pusher"
t0=$(date +%s)

SKIP_NAME=pusher
. "$root/.ci/lib.sh"
log="$(mktemp "${TMPDIR:-/tmp}/roostd-pusher.XXXXXX")"
trap 'rm -f "$log"' EXIT

node_project "$here" "pusher-js, laravel-echo, pusher and playwright-core"

status=0
echo "--- pusher: pusher-js, laravel-echo and the pusher server library against roostd"
(cd "$here" && timeout 300 node --test-reporter=spec test-pusher.mjs) || status=1

need_chromium "$status"
echo "--- pusher in $("$chromium" --version 2>/dev/null | head -1): pusher-js and laravel-echo in a page"
(cd "$here" && CHROMIUM="$chromium" timeout 300 node --test-reporter=spec test-browser.mjs) || status=1
echo "--- tests/pusher: $(( $(date +%s) - t0 ))s"
exit $status
