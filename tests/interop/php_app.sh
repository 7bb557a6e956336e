#!/usr/bin/env bash
# Interop: the PHP example application (examples/php) beside roostd.
#
#   bash tests/interop/php_app.sh
#
# Installs php-cli with apt-get when `php` is missing (when it cannot: prints
# "php_app: SKIPPED..." and exits 78 if the registry could not be reached,
# 77 otherwise; see .ci/lib.sh),
# starts roostd and `php -S` with the same secret (ROOSTD_SECRET), then checks
# with a plain python3 WebSocket client (raw socket, standard library only;
# tests/interop/php_app_check.py on the harness tests/interop/roostd_server.py):
#   - a token minted by PHP (hash_hmac HS256) is accepted by roostd, and its
#     read/write patterns (room:*) are honoured;
#   - /publish on the PHP app publishes through roostd's HTTP API with the
#     app's own token ("api": true): the subscriber gets the message with
#     from = the app's sub, and a repeated Idempotency-Key is answered 200
#     with the original seq; a client token on the API is 403 api_forbidden;
#   - /hook answers as a publish hook would (called directly: roostd's
#     --publish-hook is not built yet);
#   - the Laravel-style broadcaster (tests/interop/php_pusher_check.py, a
#     Pusher-protocol client on roostd's /app/KEY door): /broadcasting/auth
#     signs private and presence channels for the logged-in user only, roostd
#     accepts those signatures and refuses tampered ones, and /broadcast
#     (signed like pusher-php-server) reaches the subscriber; a badly signed
#     API request is 401 and delivers nothing.
# Exit status: 0 when every check passed, 77/78 when skipped, 1 otherwise.
#
# Environment:
#   ROOSTD_BIN   the server binary (default: target/debug/roostd, built here
#                when missing)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
T0=$(date +%s)

SKIP_NAME=php_app
. .ci/lib.sh
need_apt php php-cli
php --version | head -n1

BIN=${ROOSTD_BIN:-$ROOT/target/debug/roostd}
if [[ ! -x "$BIN" ]]; then
    if [[ -n "${ROOSTD_BIN:-}" ]]; then
        echo "php_app: no server binary at $BIN" >&2
        exit 1
    fi
    cargo build --quiet --bin roostd
fi

# The one secret both sides use, from the environment (>= 32 bytes).
export ROOSTD_SECRET="php-interop-secret-0123456789abcdef-0123456789"
APP_SUB=php-app
export PUSHER_APP_ID=4242 PUSHER_APP_KEY=php-app-key

TMP=$(mktemp -d "${TMPDIR:-/tmp}/roostd-php.XXXXXX")
PIDS=()
cleanup() {
    local rc=$? p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
    echo "php_app: FAILED: $*"
    echo "--- roostd log (tail)"; tail -n 20 "$TMP/roostd.log" 2>/dev/null || true
    echo "--- php -S log (tail)"; tail -n 20 "$TMP/php.log" 2>/dev/null || true
    exit 1
}

# roostd on a port the kernel picks, read from its --ready-file.
: >"$TMP/roostd.log"
RUST_LOG=info "$BIN" serve --listen 127.0.0.1:0 --data "$TMP/data" --ready-file "$TMP/roostd.addr" \
    --pusher-app-id "$PUSHER_APP_ID" --pusher-key "$PUSHER_APP_KEY" \
    2>"$TMP/roostd.log" >/dev/null &
PIDS+=("$!")
ROOSTD_PID=$!
ROOSTD_PORT=
for _ in $(seq 1 100); do
    [[ -s "$TMP/roostd.addr" ]] && ROOSTD_PORT=$(sed 's/.*://' "$TMP/roostd.addr")
    [[ -n "$ROOSTD_PORT" ]] && break
    kill -0 "$ROOSTD_PID" 2>/dev/null || break
    sleep 0.1
done
[[ -n "$ROOSTD_PORT" ]] || fail "roostd did not start"

# php -S on a free port (asked of the kernel, then handed to php).
PHP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ROOSTD_URL="http://127.0.0.1:$ROOSTD_PORT" APP_SUB=$APP_SUB \
    php -S "127.0.0.1:$PHP_PORT" -t "$ROOT/examples/php" "$ROOT/examples/php/app.php" >"$TMP/php.log" 2>&1 &
PIDS+=("$!")
PHP_PID=$!
for _ in $(seq 1 100); do
    curl -s -o /dev/null --noproxy '*' "http://127.0.0.1:$PHP_PORT/token?sub=probe" && break
    kill -0 "$PHP_PID" 2>/dev/null || break
    sleep 0.1
done
curl -s -o /dev/null --noproxy '*' "http://127.0.0.1:$PHP_PORT/token?sub=probe" || fail "php -S did not start"
echo "php_app: roostd on :$ROOSTD_PORT, php -S on :$PHP_PORT"

ROOSTD_PORT=$ROOSTD_PORT PHP_PORT=$PHP_PORT APP_SUB=$APP_SUB PYTHONDONTWRITEBYTECODE=1 \
    python3 tests/interop/php_app_check.py || fail "see above"
ROOSTD_PORT=$ROOSTD_PORT PHP_PORT=$PHP_PORT PYTHONDONTWRITEBYTECODE=1 TMPDIR="$TMP" \
    python3 tests/interop/php_pusher_check.py || fail "see above"
echo "php_app: ok in $(( $(date +%s) - T0 ))s"
