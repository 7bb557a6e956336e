#!/usr/bin/env bash
# End-to-end tests of web/roost.js and the demo page against the real roostd
# binary:
#   test-node.mjs  roost.js in Node with the `ws` package: 200 publishes across
#                  two SIGKILL restarts, token expiry (4001), refusals
#   test-node-15.mjs  roost.js presence, `last`, keyed publish and state Maps
#                  across restarts (issue 15: NEEDS the server's presence and
#                  state sync; fails on a roostd without them)
#   test.mjs       Debian's Chromium via playwright-core: two pages chat
#                  across a SIGTERM restart, with the "online now" list and
#                  the live values panel (those parts need issue 15's server
#                  side); writes docs/demo.png
#
#   bash tests/browser/run.sh
#
# ROOSTD_BIN picks the binary (default: target/debug/roostd, built here when
# ROOSTD_BIN is unset). Chromium comes from Debian (apt-get) when missing.
# Where node >= 20, the npm packages (pinned in package-lock.json) or
# Chromium cannot be had, prints "browser: SKIPPED <reason>" and exits 77, or
# 78 when a registry could not be reached (see .ci/lib.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
here="$root/tests/browser"
t0=$(date +%s)

SKIP_NAME=browser
. "$root/.ci/lib.sh"
log="$(mktemp "${TMPDIR:-/tmp}/roostd-browser.XXXXXX")"
trap 'rm -f "$log"' EXIT

node_project "$here" "playwright-core and ws"

status=0
echo "--- node: roost.js with the ws package"
timeout 300 node "$here/test-node.mjs" || status=1
echo "--- node: presence, last, keys and state (issue 15)"
timeout 300 node "$here/test-node-15.mjs" || status=1

need_chromium "$status"

echo "--- browser: $("$chromium" --version 2>/dev/null | head -1)"
CHROMIUM="$chromium" timeout 300 node "$here/test.mjs" || status=1
echo "--- browser over https:// and wss://"
CHROMIUM="$chromium" timeout 120 node "$here/test-tls.mjs" || status=1

echo "--- tests/browser: $(( $(date +%s) - t0 ))s"
exit $status
