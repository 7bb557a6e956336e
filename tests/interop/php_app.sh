#!/usr/bin/env bash
# Interop: the PHP example application (examples/php) beside roostd.
#
#   bash tests/interop/php_app.sh
#
# Installs php-cli with apt-get when `php` is missing (when it cannot: prints
# "php_app: SKIPPED..." and exits 78 if the registry could not be reached,
# 77 otherwise; see .ci/lib.sh),
# starts roostd and `php -S` with the same secret (ROOSTD_SECRET), then checks
# with a plain python3 WebSocket client (raw socket, standard library only):
#   - a token minted by PHP (hash_hmac HS256) is accepted by roostd, and its
#     read/write patterns (room:*) are honoured;
#   - /publish on the PHP app publishes through roostd's HTTP API with the
#     app's own token ("api": true): the subscriber gets the message with
#     from = the app's sub, and a repeated Idempotency-Key is answered 200
#     with the original seq; a client token on the API is 403 api_forbidden;
#   - /hook answers as a publish hook would (called directly: roostd's
#     --publish-hook is not built yet).
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

ROOSTD_PORT=$ROOSTD_PORT PHP_PORT=$PHP_PORT APP_SUB=$APP_SUB python3 - <<'PY' || fail "see above"
"""A raw-socket WebSocket client (RFC 6455, standard library only)."""
import base64, hashlib, json, os, socket, struct, subprocess, sys, time

ROOSTD = int(os.environ["ROOSTD_PORT"])
PHP = f"http://127.0.0.1:{os.environ['PHP_PORT']}"
APP_SUB = os.environ["APP_SUB"]
SECRET = os.environ["ROOSTD_SECRET"]
TIMEOUT = 5
passed = 0


def check(cond, what):
    global passed
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    passed += 1
    print(f"ok: {what}")


def curl(url, *args):
    """(status, body) of a request to the PHP app, through curl."""
    out = subprocess.run(
        ["curl", "-s", "--noproxy", "*", "-m", str(TIMEOUT), "-w", "\n%{http_code}", *args, url],
        capture_output=True, text=True, check=True,
    ).stdout
    body, _, status = out.rpartition("\n")
    return int(status), body


class WS:
    def __init__(self, token):
        self.sock = socket.create_connection(("127.0.0.1", ROOSTD), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{ROOSTD}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise RuntimeError(f"closed during the handshake: {head!r}")
            head += chunk
        self.status = int(head.split(b" ", 2)[1])
        self.head = head.decode("latin-1")
        if self.status == 101:
            accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
            assert f"Sec-WebSocket-Accept: {accept.decode()}" in self.head, self.head

    def _exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise RuntimeError("the server closed the connection")
            data += chunk
        return data

    def _frame(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send(self, obj):
        self._frame(0x1, json.dumps(obj).encode())

    def recv(self):
        """The next text frame as JSON (pings answered; fragments joined)."""
        message = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._exact(8))[0]
            payload = self._exact(n)
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self._frame(0xA, payload)
                continue
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise RuntimeError(f"the server closed the WebSocket with {code}")
            if opcode in (0x1, 0x0):
                message += payload
                if b0 & 0x80:
                    return json.loads(message)

    def close(self):
        try:
            self._frame(0x8, struct.pack("!H", 1000))
        finally:
            self.sock.close()


def b64url_json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


# 1. /token: a PHP-minted HS256 JWT with the claims a client needs.
status, body = curl(f"{PHP}/token?sub=bob")
check(status == 200, f"/token answers 200 ({status} {body})")
token = json.loads(body)["token"]
header, claims = b64url_json(token.split(".")[0]), b64url_json(token.split(".")[1])
check(header == {"alg": "HS256", "typ": "JWT"}, f"the header is HS256 ({header})")
check(claims["sub"] == "bob" and claims["read"] == ["room:*"] and claims["write"] == ["room:*"]
      and claims["exp"] > time.time(), f"the claims ({claims})")
# An independent HMAC check of PHP's signature (Python's hmac, not PHP's).
import hmac
signing_input, _, sig = token.rpartition(".")
expected = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())
check(expected.rstrip(b"=").decode() == sig, "the signature is HMAC-SHA256 of the secret's bytes")
status, body = curl(f"{PHP}/token")
check(status == 400, f"/token without sub is 400 ({status})")

# 2. roostd accepts it, and honours its patterns.
ws = WS(token)
check(ws.status == 101, f"roostd accepts the PHP token ({ws.head.splitlines()[0]})")
ws.send({"op": "sub", "ch": "room:1", "id": "s"})
ok = ws.recv()
check(ok["op"] == "subok" and ok["ch"] == "room:1" and ok["seq"] == 0, f"subscribed to room:1 ({ok})")
ws.send({"op": "sub", "ch": "other", "id": "o"})
err = ws.recv()
check((err["op"], err.get("code")) == ("err", "forbidden"), f"read is room:* only ({err})")
bad = WS(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
check(bad.status == 401 and "token_invalid" in bad.head + bad.sock.recv(200).decode(), "a tampered token is 401")

# 3. /publish: through roostd's HTTP API with the app's own token.
status, body = curl(f"{PHP}/publish?ch=room:1&text=hi")
answer = json.loads(body)
check(status == 201 and answer["ch"] == "room:1" and answer["seq"] == 1, f"/publish → 201 from roostd ({status} {body})")
msg = ws.recv()
check(msg["op"] == "msg" and msg["ch"] == "room:1" and msg["seq"] == 1, f"the subscriber gets it ({msg})")
check(msg["from"] == APP_SUB, f"from is the PHP app's sub ({msg['from']})")
check(msg["data"] == {"text": "hi"} and msg["ts"] == answer["ts"], f"data and ts ({msg})")

# Idempotency-Key through the PHP app: the original seq, stored once.
status, body = curl(f"{PHP}/publish?ch=room:1&text=once&key=k-1")
first = json.loads(body)
check(status == 201 and first["seq"] == 2, f"keyed publish ({status} {body})")
status, body = curl(f"{PHP}/publish?ch=room:1&text=once&key=k-1")
check(status == 200 and json.loads(body) == first, f"the same key again → 200, same seq and ts ({status} {body})")
check(ws.recv()["seq"] == 2, "delivered once")
# roostd's refusals come back as they are.
status, body = curl(f"{PHP}/publish?ch=bad%20name&text=x")
check(status == 404 and json.loads(body) == {"error": "not_found"}, f"a bad channel name → 404 ({status} {body})")
# The HTTP API is the app's alone: bob's client token (no "api": true) is refused.
status, body = curl(f"http://127.0.0.1:{ROOSTD}/api/channels/room:1/messages",
                    "-H", f"Authorization: Bearer {token}")
check(status == 403 and json.loads(body) == {"error": "api_forbidden"},
      f"a PHP client token on roostd's HTTP API → 403 api_forbidden ({status} {body})")

# The PHP client token may publish to room:* over the WebSocket too.
ws.send({"op": "pub", "ch": "room:1", "data": {"text": "from bob"}, "id": "b1"})
ack = ws.recv()
check(ack["op"] == "ack" and ack["seq"] == 3, f"bob's pub is acked ({ack})")
msg = ws.recv()
check(msg["from"] == "bob" and msg["seq"] == 3, f"and delivered with from=bob ({msg})")
ws.close()

# 4. /hook, called directly (roostd's --publish-hook is not built yet).
hook = f"{PHP}/hook"
def post_hook(payload, token=token):
    return curl(hook, "-X", "POST", "-H", "Content-Type: application/json",
                "-H", f"Authorization: Bearer {token}", "--data-binary", json.dumps(payload))
status, body = post_hook({"ch": "room:1", "from": "bob", "data": {"text": "hello", "n": 1}, "id": "h1"})
check(status == 200 and json.loads(body) == {"data": {"text": "HELLO", "n": 1}}, f"/hook uppercases ({status} {body})")
status, body = post_hook({"ch": "room:1", "from": "bob", "data": {"text": "this is Forbidden"}, "id": "h2"})
check(status == 403, f"/hook refuses 'forbidden' ({status} {body})")
status, body = post_hook({"ch": "room:1", "from": "bob", "data": [1, 2], "id": None})
check(status == 200 and body == "", f"/hook lets other data through unchanged ({status} {body!r})")
status, body = post_hook({"ch": "room:1", "from": "bob", "data": {"text": "x"}}, token="not.a.token")
check(status == 401, f"/hook needs the client's valid token ({status})")
status, _ = curl(hook)
check(status == 405, f"/hook is POST only ({status})")

print(f"php_app: {passed} passed, 0 failed")
PY
echo "php_app: ok in $(( $(date +%s) - T0 ))s"
